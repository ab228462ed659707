"""A Hydra callback that ranks the jobs of a multirun by mIoU (``summary.md``/``summary.json``).

Hydra leaves one directory per job; finding the best CRF or learning-rate setting
should not need a script. Registered in ``train.yaml`` and ``eval.yaml`` under
``hydra.callbacks``, so every ``-m`` sweep (basic grid or Optuna) gets it.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("deeplab_cli.sweep")
COST_INPUT = 513  # multiply-adds at the DeepLab papers' 513x513, as in the README's model zoo


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job under ``sweep_dir`` that wrote ``metrics.json``, with its overrides."""
    jobs = []
    for metrics_file in sorted(sweep_dir.glob("**/metrics.json")):
        job_dir = metrics_file.parent
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file():
            continue
        metrics = json.loads(metrics_file.read_text())
        if "mIoU" not in metrics:
            continue
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        jobs.append(
            {
                "job": str(job_dir.relative_to(sweep_dir)),
                "overrides": list(overrides),
                "mIoU": float(metrics["mIoU"]),
                "mIoU_network": metrics.get("mIoU_network"),
                "train_images_per_s": metrics.get("train_images_per_s"),
                "per_class_iou": metrics.get("per_class_iou"),
            }
        )
    return jobs


def model_cost(job_dir: Path, size: int = COST_INPUT) -> dict[str, float] | None:
    """Parameters and multiply-adds (G, one ``size`` x ``size`` image) of a training job's model.

    Rebuilt from the job's ``.hydra/config.yaml`` on the meta device (no memory, no
    weights), so comparing backbones needs no extra script. None if it cannot be built.
    """
    from omegaconf import OmegaConf

    from ..config import models
    from ..config.schema import TrainConfig
    from .flops import measure

    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(job_dir / ".hydra" / "config.yaml"))
        import torch

        with torch.device("meta"):
            model = models.build_model(models.model_spec(cfg)).eval()
        cost = measure(model, (size, size))
    except Exception as exc:  # noqa: BLE001 - a summary column must not fail the sweep
        log.warning("no parameter/multiply-add count for %s: %s", job_dir, exc)
        return None
    return {"params": cost["params"], "gmacs": cost["gmacs"]}


def varying_overrides(jobs: list[dict[str, Any]]) -> list[list[str]]:
    """Each job's overrides minus those shared by all jobs: the swept setting itself."""
    if not jobs:
        return []
    common = set(jobs[0]["overrides"]).intersection(*(set(j["overrides"]) for j in jobs))
    return [[o for o in j["overrides"] if o not in common] for j in jobs]


FOLD_OVERRIDE = re.compile(r"dataset\.fold=(\d+)")


def _mean_std(values: list[float]) -> dict[str, float | int]:
    """Mean and sample standard deviation (n - 1), the spread of a k-fold estimate."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values), "folds": len(values)}


def cross_validation(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Jobs that differ only in ``dataset.fold``, pooled: mean +- std of mIoU and of every class IoU.

    A class absent from a fold's validation images (IoU null) is averaged over the
    folds where it occurs. Settings with fewer than two folds are left out; the rest
    come best mean mIoU first.
    """
    pools: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for job in jobs:
        folds = [m for o in job["overrides"] if (m := FOLD_OVERRIDE.fullmatch(o))]
        if folds:
            rest = tuple(o for o in job["setting"].split(" ") if not FOLD_OVERRIDE.fullmatch(o))
            pools.setdefault(rest, []).append({**job, "fold": int(folds[-1].group(1))})
    results = []
    for rest, members in pools.items():
        if len({m["fold"] for m in members}) < 2:
            continue
        members.sort(key=lambda m: m["fold"])
        names = list(dict.fromkeys(n for m in members for n in (m["per_class_iou"] or {})))
        per_class = {}
        for name in names:
            values = [(m["per_class_iou"] or {}).get(name) for m in members]
            present = [float(v) for v in values if v is not None]
            per_class[name] = _mean_std(present) if len(present) > 1 else None
        results.append(
            {
                "setting": " ".join(rest) or "(all folds)",
                "folds": [m["fold"] for m in members],
                "jobs": [m["job"] for m in members],
                "mIoU": _mean_std([m["mIoU"] for m in members]),
                "per_class_iou": per_class,
            }
        )
    return sorted(results, key=lambda r: r["mIoU"]["mean"], reverse=True)


def plus_minus(stat: dict[str, float | int] | None) -> str:
    return "-" if stat is None else f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def cross_validation_lines(results: list[dict[str, Any]]) -> list[str]:
    """Markdown: per pooled setting, mIoU and each class IoU as mean ± std over the folds."""
    if not results:
        return []
    lines = ["", "## Cross-validation: mean ± std over folds (sample std, n - 1)", ""]
    header = "| class | " + " | ".join(f"`{r['setting']}` (folds {','.join(map(str, r['folds']))})" for r in results)
    lines += [header + " |", "|---" * (len(results) + 1) + "|"]
    lines.append("| **mIoU %** | " + " | ".join(f"**{plus_minus(r['mIoU'])}**" for r in results) + " |")
    names = list(dict.fromkeys(n for r in results for n in r["per_class_iou"]))
    for name in names:
        lines.append(f"| {name} | " + " | ".join(plus_minus(r["per_class_iou"].get(name)) for r in results) + " |")
    return lines


def _cell(value: float | None, scale: float, digits: int) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rank the jobs best first and write ``summary.json`` and ``summary.md`` into ``sweep_dir``."""
    jobs = collect_jobs(sweep_dir)
    for job, setting in zip(jobs, varying_overrides(jobs), strict=True):
        job["setting"] = " ".join(setting) or "(no varying override)"
    jobs.sort(key=lambda j: j["mIoU"], reverse=True)
    training = any(j["train_images_per_s"] is not None for j in jobs)
    if training:  # a training sweep (backbones, learning rates): what each model costs beside what it scores
        for j in jobs:
            j.update(model_cost(sweep_dir / j["job"]) or {"params": None, "gmacs": None})
    folds = cross_validation(jobs)
    (sweep_dir / "summary.json").write_text(json.dumps({"jobs": jobs, "cross_validation": folds}, indent=2))
    with_network = any(j["mIoU_network"] is not None for j in jobs)
    header = "| rank | setting | mIoU % |" + (" network mIoU % |" if with_network else "")
    if training:
        header += f" params (M) | Multiply-Adds (G, {COST_INPUT}x{COST_INPUT}) | train images/s |"
    header += " job |"
    lines = [f"# Sweep summary: {sweep_dir}", "", header, "|---" * (header.count("|") - 1) + "|"]
    for rank, j in enumerate(jobs, 1):
        net = f" {j['mIoU_network']:.2f} |" if with_network and j["mIoU_network"] is not None else ""
        net = net or (" - |" if with_network else "")
        cost = ""
        if training:
            cost = "".join(
                f" {_cell(j.get(key), scale, digits)} |"
                for key, scale, digits in (("params", 1e-6, 2), ("gmacs", 1, 2), ("train_images_per_s", 1, 2))
            )
        lines.append(f"| {rank} | `{j['setting']}` | {j['mIoU']:.2f} |{net}{cost} {j['job']} |")
    lines += cross_validation_lines(folds)
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return jobs
