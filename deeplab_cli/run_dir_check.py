"""A Hydra callback that checks the run directory is writable before Hydra creates it.

Hydra makes ``hydra.run.dir`` before the job starts; when that fails (a path under a
file, a read-only or full disk) it shows a bare traceback. This prints one clear
paragraph instead and exits with status 1.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .engine.checkpoint import OutputDirError, check_writable


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
