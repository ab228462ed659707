"""``deeplab-check-data``: report every problem of a dataset in one pass, and its label statistics.

Prints one line per problem and a summary, writes ``report.json`` into the Hydra
run dir, and exits 1 when anything is wrong, so scripts and CI can gate on it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .._paths import config_dir
from ..config import datasets
from ..config.datasets import (
    class_names,
    dataset_layout,
    dataset_node,
    label_mapping,
    requested_splits,
    split_names,
    train_split,
    validate_dataset,
    worker_count,
)
from ..data.check import LabelStats, Problem, check_split, format_report, summarize
from ..data.preflight import absent_class_problems, overlap_problems
from . import _hydra


def label_table(names: list[str], stats: LabelStats) -> str:
    """Per class: pixels, share of the labelled pixels, and images containing it."""
    labelled = max(1, int(stats.pixels[:-1].sum()))
    width = max(len("class"), *(len(n) for n in names))
    lines = [f"{'class':<{width}}  {'pixels':>12}  {'share':>7}  {'images':>7}", "-" * (width + 34)]
    for name, pixels, images in zip(names, stats.pixels[:-1], stats.images, strict=True):
        lines.append(f"{name:<{width}}  {int(pixels):>12}  {100 * pixels / labelled:>6.2f}%  {int(images):>7}")
    lines.append(f"{'(ignored)':<{width}}  {int(stats.pixels[-1]):>12}")
    return "\n".join(lines)


def run_check(cfg: DictConfig, run_dir: Path) -> list[Problem]:
    """Check every split, print the report and label statistics, write ``report.json``; the problems found."""
    dataset = dataset_node(cfg)
    workers = worker_count(cfg.workers)
    splits = split_names(requested_splits(cfg), dataset)
    root = dataset.root
    if dataset.synthetic is not None:
        root = datasets.dataset_root(OmegaConf.create({"dataset": dataset}))
    validate_dataset(OmegaConf.create({"dataset": dataset}))
    layout = dataset_layout(dataset, splits, root)
    labels = label_mapping(dataset)
    names = class_names(OmegaConf.create({"dataset": dataset}))
    problems: list[Problem] = []
    checked: dict[str, int] = {}
    stats: dict[str, LabelStats] = {}
    for split in splits:
        result = check_split(layout, split, labels, progress=bool(cfg.progress), workers=workers)
        problems += result.problems
        checked[split] = result.count
        if result.stats is not None:
            stats[split] = result.stats
    train = train_split(dataset)
    if not dataset.allow_overlap and train in splits:
        problems += overlap_problems(layout, train, [s for s in splits if s != train])
    if train in stats and not dataset.allow_absent_classes:
        found = stats[train]
        problems += absent_class_problems(layout, train, found, names, layout.listing(train).stems, dataset.num_classes)
    problems = list(dict.fromkeys(problems))  # a file listed in several splits is reported once
    print(f"dataset {dataset.name}: {layout.root}")
    print(format_report(problems, checked))
    for split, split_stats in stats.items():
        print(f"\nlabels of {split} ({split_stats.masks} masks, after label mapping):")
        print(label_table(names, split_stats))
    report = {
        "root": str(layout.root),
        "layout": {
            "image_dir": layout.image_dir,
            "mask_dir": layout.mask_dir,
            "image_suffix": layout.image_suffix,
            "mask_suffix": layout.mask_suffix,
            "split_list": layout.split_list,
        },
        "num_classes": dataset.num_classes,
        "class_names": names,
        "checked": checked,
        "counts": summarize(problems),
        "total": len(problems),
        "problems": [asdict(p) for p in problems],
        "labels": {split: s.as_dict(names) for split, s in stats.items()},
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    return problems


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="check_data")
def hydra_main(cfg: DictConfig) -> None:
    with _hydra.user_errors():
        problems = run_check(cfg, Path(HydraConfig.get().runtime.output_dir))
    if problems:
        raise SystemExit(1)


def main() -> None:
    """``deeplab-check-data``."""
    _hydra.run(hydra_main)


if __name__ == "__main__":
    main()
