"""``deeplab-split``: stratified, group-aware k-fold lists for cross-validation.

Reads every mask of the pooled splits once (after the dataset's label mapping),
assigns images to k folds with :func:`~deeplab_cli.data.folds.stratified_folds`,
and writes ``fold<i>_train.txt`` / ``fold<i>_val.txt`` (``<stem> <split>`` per
line) and ``folds.json``: per fold and class the image count, image-count share
and pixel share, the largest deviations from the whole set, and the same figures
for a random k-fold with the same seed. Training on fold i is then
``dataset.folds=DIR dataset.fold=i``.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from .._paths import config_dir
from ..config import datasets
from ..config.datasets import (
    class_names,
    dataset_layout,
    dataset_node,
    label_mapping,
    split_names,
    validate_dataset,
    worker_count,
)
from ..data.check import check_command, check_split, require_clean
from ..data.folds import (
    FOLDS_FILE,
    FoldError,
    Groups,
    check_k,
    fold_balance,
    group_images,
    random_folds,
    stratified_folds,
)
from ..data.labels import LabelMapping
from ..data.layout import Layout
from ..data.segmentation import load_mask
from . import _hydra


def read_pixels(
    layout: Layout, refs: list[tuple[str, str]], labels: LabelMapping, workers: int, progress: bool
) -> np.ndarray:
    """(images, classes) labelled pixels per class of each ``(split, stem)`` mask, after label mapping."""

    def one(ref: tuple[str, str]) -> np.ndarray:
        return labels.counts(load_mask(layout.mask_path(*ref), labels))[:-1]

    with ThreadPoolExecutor(max_workers=workers) as pool:
        rows = list(tqdm(pool.map(one, refs), total=len(refs), desc="reading masks", disable=not progress))
    return np.stack(rows) if rows else np.zeros((0, labels.num_classes), dtype=np.int64)


def pooled_refs(layout: Layout, splits: list[str], dataset: DictConfig) -> list[tuple[str, str]]:
    """``(split, stem)`` of every image of ``splits``, after the cheap existence check of each split."""
    refs: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for split in splits:
        problems = check_split(layout, split, label_mapping(dataset), deep=False).problems
        require_clean(problems, split, check_command(dataset.name, dataset.root, [split]))
        for stem in layout.listing(split).stems:
            if stem in seen:
                raise FoldError(
                    f"image id {stem!r} is in split {seen[stem]!r} and in split {split!r}; a fold list names each "
                    "image by its id, so pool splits whose ids differ (rename one copy), or split them one at a time."
                )
            seen[stem] = split
            refs.append((split, stem))
    return refs


def output_dir(cfg: DictConfig, run_dir: Path) -> Path:
    """``out=`` (or the run dir); an earlier split's lists there are kept unless ``overwrite=true``."""
    out = Path(cfg.out).expanduser() if cfg.out else run_dir
    if (out / FOLDS_FILE).is_file() and not cfg.overwrite:
        raise FoldError(
            f"out={str(out)!r} already holds the lists of an earlier deeplab-split ({FOLDS_FILE}); runs trained on "
            "them would change meaning. Choose another out=, or pass overwrite=true to replace them."
        )
    return out


def write_lists(out: Path, refs: list[tuple[str, str]], fold: np.ndarray, k: int) -> None:
    """``fold<i>_val.txt`` (the images of fold i) and ``fold<i>_train.txt`` (all others), written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    for i in range(k):
        for name, rows in ((f"fold{i}_val.txt", fold == i), (f"fold{i}_train.txt", fold != i)):
            text = "".join(f"{stem} {split}\n" for (split, stem), keep in zip(refs, rows, strict=True) if keep)
            tmp = out / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(out / name)


def fold_groups(groups: Groups, fold: np.ndarray, k: int) -> list[list[str]]:
    """The group keys of each fold, for the report."""
    first = {}
    for image, g in enumerate(groups.index):
        first.setdefault(int(g), image)
    return [sorted(groups.keys[g] for g, image in first.items() if fold[image] == j) for j in range(k)]


def report(
    cfg: DictConfig, dataset: DictConfig, splits: list[str], refs: list, pixels: np.ndarray, groups: Groups
) -> tuple[dict[str, Any], np.ndarray]:
    """The stratified fold of each image, and both assignments' balance as written to ``folds.json``."""
    k, names = cfg.k, class_names(OmegaConf.create({"dataset": dataset}))
    fold = stratified_folds(pixels, groups, k, cfg.seed)
    baseline = random_folds(groups, k, cfg.seed)
    ours, theirs = fold_balance(pixels, fold, k, names), fold_balance(pixels, baseline, k, names)
    ratio = {
        key: ours["max_deviation"][key] / theirs["max_deviation"][key] if theirs["max_deviation"][key] else None
        for key in ("image_share", "pixel_share")
    }
    info: dict[str, Any] = {
        "k": k,
        "seed": cfg.seed,
        "group": cfg.group,
        "splits": splits,
        "dataset": dataset.name,
        "root": str(dataset.root),
        "num_classes": dataset.num_classes,
        "class_names": names,
        "images": len(refs),
        "groups": len(groups.keys) if cfg.group is not None else None,
        "unmatched_ids": groups.unmatched,
        "stratified": ours,
        "random": theirs,
        "ratio_to_random": ratio,
    }
    if cfg.group is not None:
        info["stratified"]["groups"] = fold_groups(groups, fold, k)
        info["random"]["groups"] = fold_groups(groups, baseline, k)
    return info, fold


def summary_text(info: dict[str, Any], out: Path) -> str:
    """Fold sizes and the largest deviations per class, stratified against random, in percentage points."""
    ours, theirs = info["stratified"], info["random"]
    names = info["class_names"]
    width = max(len("class"), *(len(n) for n in names))
    lines = [
        f"{info['k']} folds of {info['images']} images"
        + (f" in {info['groups']} groups" if info["groups"] is not None else "")
        + f" from {', '.join(info['splits'])}: sizes {[f['images'] for f in ours['folds']]}"
        + f" (random: {[f['images'] for f in theirs['folds']]})",
        "",
        "largest deviation from the whole set over the folds, percentage points (stratified | random):",
        f"{'class':<{width}}  {'image share':>17}  {'pixel share':>17}",
    ]
    for n in names:
        a, b = ours["max_deviation_per_class"][n], theirs["max_deviation_per_class"][n]
        lines.append(
            f"{n:<{width}}  {100 * a['image_share']:>7.2f} | {100 * b['image_share']:>7.2f}"
            f"  {100 * a['pixel_share']:>7.2f} | {100 * b['pixel_share']:>7.2f}"
        )
    a, b = ours["max_deviation"], theirs["max_deviation"]
    lines.append(
        f"{'(all)':<{width}}  {100 * a['image_share']:>7.2f} | {100 * b['image_share']:>7.2f}"
        f"  {100 * a['pixel_share']:>7.2f} | {100 * b['pixel_share']:>7.2f}"
    )
    if info["unmatched_ids"]:
        unmatched = info["unmatched_ids"]
        lines.append(f"\n{unmatched} ids did not match group={info['group']!r}; each is a group of its own.")
    lines.append(f"\nwrote fold0..{info['k'] - 1}_train.txt / _val.txt and {FOLDS_FILE} to {out}")
    lines.append(f"train on fold i: deeplab-train dataset=... dataset.folds={out} dataset.fold=i")
    return "\n".join(lines)


def run_split(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Read the masks, make the folds, write the lists and ``folds.json``; returns the report."""
    dataset = dataset_node(cfg)
    dataset.fold = None  # the split tool makes folds; it does not read them
    dataset.holdout = None  # nor a flat folder's holdout: its folds are cut from every image
    workers = worker_count(cfg.workers)
    splits = split_names(cfg.splits if cfg.splits is not None else [dataset.train_split], dataset)
    root = dataset.root
    if dataset.synthetic is not None:
        root = datasets.dataset_root(OmegaConf.create({"dataset": dataset}))
    validate_dataset(OmegaConf.create({"dataset": dataset}))
    if isinstance(cfg.k, bool) or not isinstance(cfg.k, int):
        raise FoldError(f"k={cfg.k!r} must be a whole number of folds, at least 2 (e.g. k=5).")
    out = output_dir(cfg, run_dir)
    layout = dataset_layout(dataset, splits, root)
    refs = pooled_refs(layout, splits, dataset)
    groups = group_images([stem for _, stem in refs], cfg.group)
    check_k(cfg.k, len(refs), len(groups.keys), len(groups.keys) < len(refs))
    pixels = read_pixels(layout, refs, label_mapping(dataset), workers, bool(cfg.progress))
    info, fold = report(cfg, dataset, splits, refs, pixels, groups)
    write_lists(out, refs, fold, cfg.k)
    tmp = out / f".{FOLDS_FILE}.tmp"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(out / FOLDS_FILE)
    print(summary_text(info, out))
    return info


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="split")
def hydra_main(cfg: DictConfig) -> None:
    with _hydra.user_errors():
        run_split(cfg, Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    """``deeplab-split``."""
    _hydra.run(hydra_main)


if __name__ == "__main__":
    main()
