"""``deeplab-check-data``: report every problem of a VOC-layout dataset in one pass.

Prints one line per problem and a summary, writes ``report.json`` into the Hydra
run dir, and exits 1 when anything is wrong, so scripts and CI can gate on it.
"""

from __future__ import annotations

import json
import sys
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
from .data.check import Problem, check_split, count_ids, format_report, summarize
from .data.voc import resolve_voc_dir
from .errors import ConfigError, DeepLabError, user_message

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
        names = [dataset.train_split, dataset.val_split]
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


def run_check(cfg: DictConfig, run_dir: Path) -> list[Problem]:
    """Check every split, print the report, write ``report.json``; the problems found."""
    dataset = dataset_node(cfg)
    workers = _workers(cfg.workers)
    splits = split_names(requested_splits(cfg), dataset)
    root = dataset.root
    if dataset.synthetic is not None:
        from . import factory  # imports the models too: only when a synthetic set must be generated

        root = factory.dataset_root(OmegaConf.create({"dataset": dataset}))
    voc_dir = resolve_voc_dir(root)
    problems: list[Problem] = []
    checked: dict[str, int] = {}
    for split in splits:
        problems += check_split(
            voc_dir, split, dataset.mask_dir, dataset.num_classes, progress=bool(cfg.progress), workers=workers
        )
        checked[split] = count_ids(voc_dir, split)
    problems = list(dict.fromkeys(problems))  # a file listed in several splits is reported once
    print(f"dataset {dataset.name}: {voc_dir}")
    print(format_report(problems, checked))
    report = {
        "voc_dir": str(voc_dir),
        "mask_dir": dataset.mask_dir,
        "num_classes": dataset.num_classes,
        "checked": checked,
        "counts": summarize(problems),
        "total": len(problems),
        "problems": [asdict(p) for p in problems],
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    return problems


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="check_data")
def hydra_main(cfg: DictConfig) -> None:
    try:
        problems = run_check(cfg, Path(HydraConfig.get().runtime.output_dir))
    except (DeepLabError, OmegaConfBaseException) as exc:
        print(f"Error: {user_message(exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    if problems:
        raise SystemExit(1)


def main() -> None:
    """``deeplab-check-data``."""
    entry.run(hydra_main)


if __name__ == "__main__":
    main()
