"""A Hydra callback that checks the run directory is writable before Hydra creates it.

Hydra makes ``hydra.run.dir`` before the job starts; when that fails (a path under a
file, a read-only or full disk) it shows a bare traceback. This prints one clear
paragraph instead and exits with status 1.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..engine.runtime.checkpoint import OutputDirError, check_writable
from ..tools.sweep import cross_validation, plus_minus, write_summary

log = logging.getLogger(__name__)


def _check(folder: str, what: str) -> None:
    try:
        check_writable(Path(folder), what)
    except OutputDirError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


class CheckRunDir(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(config.hydra.run.dir, "the run directory (hydra.run.dir)")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(config.hydra.sweep.dir, "the sweep directory (hydra.sweep.dir)")


class SweepSummary(Callback):
    """Writes the ranked summary when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        jobs = write_summary(sweep_dir)
        for pooled in cross_validation(jobs):
            log.info("cross-validation of %s: mIoU %s over folds %s", pooled["setting"], plus_minus(pooled["mIoU"]),
                     pooled["folds"])  # fmt: skip
        if jobs:
            best = jobs[0]
            log.info(
                "sweep of %d jobs; best mIoU %.2f with %s (%s)",
                len(jobs),
                best["mIoU"],
                best["setting"],
                sweep_dir / "summary.md",
            )
