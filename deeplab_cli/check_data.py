"""``deeplab-check-data``: report every problem of a dataset in one pass, and its label statistics.

Prints one line per problem and a summary, writes ``report.json`` into the Hydra
run dir, and exits 1 when anything is wrong, so scripts and CI can gate on it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import entry
from ._paths import config_dir
from .config import DatasetConfig, register_configs
from .data.check import LabelStats, Problem, check_split, format_report, summarize
from .data_factory import class_names, dataset_layout, label_mapping, train_split, val_split, validate_dataset
from .errors import ConfigError

register_configs()


def dataset_node(cfg: DictConfig) -> DictConfig:
    """``cfg.dataset`` typed by the training schema: defaults filled in, wrong types reported."""
    node = OmegaConf.to_container(cfg.dataset)
    node.pop("split", None)  # check-data's own key (see requested_splits)
    try:
        return OmegaConf.merge(OmegaConf.structured(DatasetConfig), node)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = f"dataset.{exc.full_key}" if getattr(exc, "full_key", None) else "dataset"
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{key}: {message}. Fix the value on the command line or in configs/dataset/.") from None


def split_names(splits: Any, dataset: DictConfig) -> list[str]:
    """``splits`` as a list without repeats; null means the training and validation splits."""
    if splits is None:
        names = [train_split(dataset), val_split(dataset)]
    elif isinstance(splits, str):
        names = [splits]
    elif isinstance(splits, ListConfig | list | tuple) and all(isinstance(s, str) for s in splits):
        names = list(splits)
    else:
        raise ConfigError(f"splits={splits!r} must be a list of split names, e.g. splits=[train,val], or null.")
    if not names:
        raise ConfigError("splits=[] names no split; list some, e.g. splits=[train,val], or set splits=null.")
    return list(dict.fromkeys(names))


def requested_splits(cfg: DictConfig) -> Any:
    """``splits=`` or its alias ``dataset.split=``; naming both with different values is an error."""
    alias = cfg.dataset.get("split")
    if alias is None:
        return cfg.splits
    if cfg.splits is not None and split_names(cfg.splits, cfg.dataset) != split_names(alias, cfg.dataset):
        raise ConfigError(
            f"splits={cfg.splits} and dataset.split={alias} disagree; give one of them, e.g. splits=[train,val]."
        )
    return alias


def _workers(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"workers={value!r} must be a positive number of decoding threads, e.g. workers=8.")
    return value


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
    workers = _workers(cfg.workers)
    splits = split_names(requested_splits(cfg), dataset)
    root = dataset.root
    if dataset.synthetic is not None:
        from . import factory  # imports the models too: only when a synthetic set must be generated

        root = factory.dataset_root(OmegaConf.create({"dataset": dataset}))
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
    with entry.user_errors():
        problems = run_check(cfg, Path(HydraConfig.get().runtime.output_dir))
    if problems:
        raise SystemExit(1)


def main() -> None:
    """``deeplab-check-data``."""
    entry.run(hydra_main)


if __name__ == "__main__":
    main()
