"""Helpers for tests that run the installed console scripts and watch a dataset folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The real-data folder (``shared/`` beside the clone, or ``DEEPLAB_SHARED``). Every test path into it is built
#: here, and every test that reads it carries ``needs_shared``, so a fresh clone without it skips exactly those.
SHARED = Path(os.environ.get("DEEPLAB_SHARED") or REPO.parent / "shared").expanduser()
VOC_SAMPLE = SHARED / "data" / "voc_sample"  # 12 VOC 2012 image/mask pairs in VOC layout
VOC_MASKS = SHARED / "data" / "voc_masks"  # the 2,913 real VOC 2012 masks (SegmentationClass/)
CAMVID = SHARED / "data" / "camvid"  # CamVid's train/val splits in SegNet's layout
REFERENCE = SHARED / "reference"  # key lists of the public PyTorch DeepLab checkpoints
BIN = Path(sys.executable).parent
MODEL_PRESETS = sorted(p.stem for p in (REPO / "configs" / "model").glob("*.yaml"))
EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))


def shared_reason(path: Path) -> str:
    """The one skip reason of a test that needs the real-data folder: what is missing and how to provide it."""
    return (
        f"needs the real-data folder: {path} not found; put shared/ beside the clone, or set "
        "DEEPLAB_SHARED=/path/to/shared"
    )


def needs_shared(path: Path = VOC_SAMPLE):  # -> pytest.MarkDecorator (pytest imported lazily: not a test module)
    """Mark a test (or a module, in ``pytestmark``) as reading ``path`` under the real-data folder;
    ``conftest.py`` skips it when the path is absent, and ``pytest -m needs_shared`` selects these tests."""
    import pytest

    return pytest.mark.needs_shared(path)


def require_shared(path: Path) -> None:
    """For helpers and fixtures: skip with :func:`shared_reason` when ``path`` is absent. A test reaching this
    must also carry :func:`needs_shared` (conftest fails it otherwise), so the marker selection stays complete."""
    import pytest

    if not path.exists():
        pytest.skip(shared_reason(path))


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
