"""A Hydra callback that ranks the jobs of a multirun by mIoU (``summary.md``/``summary.json``).

Hydra leaves one directory per job; finding the best CRF or learning-rate setting
should not need a script. Registered in ``train.yaml`` and ``eval.yaml`` under
``hydra.callbacks``, so every ``-m`` sweep (basic grid or Optuna) gets it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("deeplab_cli.sweep")


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
            }
        )
    return jobs


def varying_overrides(jobs: list[dict[str, Any]]) -> list[list[str]]:
    """Each job's overrides minus those shared by all jobs: the swept setting itself."""
    if not jobs:
        return []
    common = set(jobs[0]["overrides"]).intersection(*(set(j["overrides"]) for j in jobs))
    return [[o for o in j["overrides"] if o not in common] for j in jobs]


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    """Rank the jobs best first and write ``summary.json`` and ``summary.md`` into ``sweep_dir``."""
    jobs = collect_jobs(sweep_dir)
    for job, setting in zip(jobs, varying_overrides(jobs), strict=True):
        job["setting"] = " ".join(setting) or "(no varying override)"
    jobs.sort(key=lambda j: j["mIoU"], reverse=True)
    (sweep_dir / "summary.json").write_text(json.dumps(jobs, indent=2))
    with_network = any(j["mIoU_network"] is not None for j in jobs)
    header = "| rank | setting | mIoU % |" + (" network mIoU % |" if with_network else "") + " job |"
    lines = [f"# Sweep summary: {sweep_dir}", "", header, "|---" * (header.count("|") - 1) + "|"]
    for rank, j in enumerate(jobs, 1):
        net = f" {j['mIoU_network']:.2f} |" if with_network and j["mIoU_network"] is not None else ""
        net = net or (" - |" if with_network else "")
        lines.append(f"| {rank} | `{j['setting']}` | {j['mIoU']:.2f} |{net} {j['job']} |")
    (sweep_dir / "summary.md").write_text("\n".join(lines) + "\n")
    return jobs


class SweepSummary(Callback):
    """Writes the ranked summary when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        jobs = write_summary(sweep_dir)
        if jobs:
            best = jobs[0]
            log.info(
                "sweep of %d jobs; best mIoU %.2f with %s (%s)",
                len(jobs),
                best["mIoU"],
                best["setting"],
                sweep_dir / "summary.md",
            )
