"""Helpers for tests that run the installed console scripts and watch a dataset folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VOC_SAMPLE = REPO.parent / "shared" / "data" / "voc_sample"
CAMVID = REPO.parent / "shared" / "data" / "camvid"
BIN = Path(sys.executable).parent
MODEL_PRESETS = sorted(p.stem for p in (REPO / "configs" / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))


def cli(name: str, *args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run console script ``name`` as a user would; Hydra's own error reporting left at its default."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file and ``<dir>`` of every folder under ``root``."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        found[rel] = "<dir>" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def voc_copy(dest: Path) -> Path:
    """A writable copy of the real VOC sample, plus what ``prepare_voc`` adds (``train_aug`` lists and
    ``SegmentationClassAug``), under ``dest/VOCdevkit/VOC2012``; returns ``dest``."""
    voc = dest / "VOCdevkit" / "VOC2012"
    shutil.copytree(VOC_SAMPLE / "VOC2012", voc)
    for path in voc.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    shutil.copytree(voc / "SegmentationClass", voc / "SegmentationClassAug")
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train_aug.txt").write_text((lists / "train.txt").read_text())
    return dest
