"""The pass over the data before the first training step, and the check of what a run skipped.

One pass over the training and validation files (image headers, masks decoded: sizes,
modes, formats, values) finds what would stop a run hours in, and what would let it
finish with a wrong number: overlapping splits, classes with no labelled pixel, a split
that would be mostly skipped. Only commands call this; modules never see ``cfg``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..data.check import DataCheckError, Problem, check_command, check_split, require_clean
from ..data.holdout import fingerprint
from ..data.preflight import absent_class_problems, overlap_problems
from ..data.segmentation import skipped_samples
from ..engine.runtime.checkpoint import load_checkpoint
from .datasets import class_names, label_mapping, layout_for, train_split, val_split

log = logging.getLogger(__name__)

#: Problems no ``dataset.on_error=skip`` can work around.
FATAL_KINDS = ("missing_list", "empty_list", "missing_dir", "no_images", "overlap", "absent_class")
#: Problems of one sample (a skipped sample), as opposed to a list's (a duplicate line).
SAMPLE_KINDS = ("missing_image", "missing_mask", "unreadable_image", "unreadable_mask", "jpeg_mask", "rgb_mask",
                "bad_mask_mode", "unknown_colour", "size_mismatch", "bad_mask_values")  # fmt: skip
#: The holdout a flat folder's run trained and validated on (see ``data/holdout.py``).
HOLDOUT_FILE = "holdout.json"
#: Every problem the pass before training found, when it refuses to start.
PROBLEMS_FILE = "data_problems.json"


@dataclass
class Preflight:
    """What the pass found that the run works around (skipped samples), and the splits' sizes."""

    skipped: list[Problem]
    sizes: dict[str, int]


def _test_split(cfg: DictConfig, layout: Any) -> list[str]:
    """The test split too when it has images of its own (a missing test folder or list is common); not for a
    fold of ``deeplab-split``, whose training split pools other splits than the dataset's own."""
    d = cfg.dataset
    if d.test_split in (train_split(d), val_split(d)) or layout.is_flat or d.get("fold") is not None:
        return []
    try:
        return [d.test_split] if layout.listing(d.test_split).stems else []
    except Exception:  # noqa: BLE001 - an unreadable test list is not this run's business
        return []


def check_before_training(cfg: DictConfig, run_dir: Path, deep: bool = True, workers: int = 8) -> Preflight:
    """Raise DataCheckError for anything that stops the run or makes its numbers wrong.

    ``deep=False`` (the other ranks under torchrun) checks only the lists and the files'
    existence, as rank 0 already did the full pass.
    """
    d = cfg.dataset
    splits = list(dict.fromkeys([train_split(d), val_split(d)]))
    layout = layout_for(cfg, *splits)
    labels = label_mapping(d)
    hint = check_command(d.name, d.root, splits)
    if not deep:
        for split in splits:
            found = check_split(layout, split, labels, deep=False).problems
            require_clean([p for p in found if d.on_error != "skip" or p.kind in FATAL_KINDS], split, hint)
        return Preflight([], {})
    fatal: list[Problem] = []
    if not d.allow_overlap:
        fatal += overlap_problems(layout, train_split(d), [val_split(d), *_test_split(cfg, layout)])
    skipped: list[Problem] = []
    sizes: dict[str, int] = {}
    for split in splits:
        found = check_split(layout, split, labels, decode_images=False, workers=workers)
        sizes[split] = found.count
        file_problems = [p for p in found.problems if p.kind not in FATAL_KINDS]
        fatal += [p for p in found.problems if p.kind in FATAL_KINDS]
        if split == train_split(d) and found.stats is not None:
            absent = absent_class_problems(
                layout, split, found.stats, class_names(cfg), found.stems or [], d.num_classes
            )
            if d.allow_absent_classes:
                for p in absent:
                    log.warning("dataset check: %s (dataset.allow_absent_classes=true)", p.reason)
            else:
                fatal += absent
        if d.on_error == "skip":
            skipped += file_problems
            _check_share(split, file_problems, found.count, float(d.max_skipped), run_dir)
        else:
            fatal += file_problems
    if fatal:
        _write_problems(run_dir, fatal)
        wrong = [p for p in fatal if p.kind in ("overlap", "absent_class")]
        if wrong:  # not a file to fix: the message is the reason itself
            raise DataCheckError(" ".join(f"{p.reason.rstrip('.')}." for p in wrong))
        require_clean(fatal, "/".join(splits), hint)
    _record_holdout(cfg, layout, run_dir)
    return Preflight(skipped, sizes)


def _write_problems(run_dir: Path, problems: list[Problem]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"kind": p.kind, "path": p.path, "reason": p.reason} for p in problems]
    (run_dir / PROBLEMS_FILE).write_text(json.dumps(rows, indent=2))


def _check_share(split: str, problems: list[Problem], count: int, limit: float, run_dir: Path) -> None:
    """Under ``on_error=skip``: refuse a split whose bad samples exceed ``dataset.max_skipped``.

    A sample is counted once whatever its number of problems (its image and mask share a stem).
    """
    bad = len({Path(p.path).stem for p in problems if p.kind in SAMPLE_KINDS})
    if count and bad / count > limit:
        _write_problems(run_dir, problems)
        raise DataCheckError(
            f"{bad} of the {count} samples of split {split!r} ({100 * bad / count:.0f}%) would be skipped "
            f"(dataset.on_error=skip), more than dataset.max_skipped={limit}: a run on the rest would report a "
            f"number about other data. The files and their problems are listed in {run_dir / PROBLEMS_FILE}, e.g. "
            f"{problems[0].path}: {problems[0].reason}. Fix the files, or raise dataset.max_skipped if you mean it."
        )


def _record_holdout(cfg: DictConfig, layout: Any, run_dir: Path) -> None:
    """``holdout.json`` in the run dir for a flat folder; on resume, the folder must give the same cut."""
    if not layout.assigned:
        return
    d = cfg.dataset
    lists = dict(layout.assigned)
    record = {
        "folder": str(layout.image_folder("")),
        "fraction": d.holdout,
        "seed": d.holdout_seed,
        "group": d.holdout_group,
        "counts": {name: len(stems) for name, stems in lists.items()},
        "fingerprints": {name: fingerprint(list(stems)) for name, stems in lists.items()},
        "splits": {name: list(stems) for name, stems in lists.items()},
    }
    path = run_dir / HOLDOUT_FILE
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("fingerprints") != record["fingerprints"]:
            raise DataCheckError(
                f"the holdout split of {record['folder']} differs from the one this run started with ({path}): "
                "images were added, removed or renamed since, so resuming would move validation images into "
                "training. Restore the folder, or start a new run (another hydra.run.dir)."
            )
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    counts = record["counts"]
    log.info(
        "holdout: %s has no split folders or lists; %s (dataset.holdout=%s, seed %s, stratified by class) -> %s",
        record["folder"], " / ".join(f"{n} {k}" for k, n in counts.items()), d.holdout, d.holdout_seed, path,
    )  # fmt: skip


def holdout_record(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint's copy of the holdout (fingerprints and counts), or None for a run with its own splits."""
    path = run_dir / HOLDOUT_FILE
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    return {k: stored[k] for k in ("folder", "fraction", "seed", "group", "counts", "fingerprints")}


def check_skipped(log_file: Path, sizes: dict[str, int], limit: float) -> None:
    """After a run under ``on_error=skip``: fail when a split lost more than ``limit`` of its samples."""
    if skipped_samples(log_file) is None:
        return
    per_split: dict[str, set[str]] = {}
    for line in log_file.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            per_split.setdefault(row["split"], set()).add(row["error"])
    for split, errors in per_split.items():
        count = sizes.get(split, 0)
        if count and len(errors) / count > limit:
            raise DataCheckError(
                f"{len(errors)} of the {count} samples of split {split!r} were skipped (dataset.on_error=skip), "
                f"more than dataset.max_skipped={limit}: the run's numbers do not describe the data. The skipped "
                f"files are listed in {log_file}. Fix them, or raise dataset.max_skipped if you mean it."
            )


def check_eval_holdout(checkpoint: str, layout: Any, split: str, stems: list[str], allow_overlap: bool) -> None:
    """Evaluating a flat folder: the holdout must be the one the checkpoint was validated on.

    Only a flat folder's split is checked (its checkpoint is read again for the record), so
    a folder that changed since training cannot move training images into the evaluation.
    """
    if not layout.assigned or allow_overlap:
        return
    state = load_checkpoint(checkpoint)
    stored = state.get("holdout") if isinstance(state, dict) else None
    if not isinstance(stored, dict) or not isinstance(stored.get("fingerprints"), dict):
        return
    expected = stored["fingerprints"].get(split)
    if expected is not None and expected != fingerprint(stems):
        raise DataCheckError(
            f"the holdout split {split!r} of {layout.image_folder('')} ({len(stems)} images) is not the one "
            f"{checkpoint} was validated on ({stored.get('counts', {}).get(split)} images): the folder changed "
            "since training, or it is another folder, so some of these images may have been training images. "
            "Evaluate the folder the run trained on as it was, or pass dataset.holdout=null to score every image "
            "of a folder of new images (dataset.allow_overlap=true skips this check)."
        )
