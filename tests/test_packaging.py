"""The configs/ tree must be found from a built wheel, whatever the working directory."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = out.glob("deeplab_cli-*.whl")
    return path


def test_wheel_ships_configs_and_console_scripts(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    configs = (
        "train.yaml",
        "eval.yaml",
        "predict.yaml",
        "check_data.yaml",
        "split.yaml",
        "export.yaml",
        "sweep/kfold.yaml",
        "model/deeplabv1_largefov.yaml",
        "model/quickstart.yaml",
        "trainer/quickstart.yaml",
        "crf/deeplabv2_resnet101.yaml",
        "sweep/crf_grid.yaml",
        "experiment/camvid_cpu_pretrained.yaml",
        "model/deeplabv3plus_efficientnet_lite0.yaml",
    )
    for cfg in configs:
        assert f"deeplab_cli/configs/{cfg}" in names
    assert "deeplab_cli/models/weights/catalogue.yaml" in names  # deeplab-weights and every pretrained load read it
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "deeplab-train = deeplab_cli.train:main" in text
    assert "deeplab-eval = deeplab_cli.evaluate:main" in text
    assert "deeplab-predict = deeplab_cli.predict:main" in text
    assert "deeplab-check-data = deeplab_cli.check_data:main" in text
    assert "deeplab-split = deeplab_cli.split:main" in text
    assert "deeplab-export = deeplab_cli.export:main" in text
    assert "deeplab-weights = deeplab_cli.weights:main" in text


def test_installed_wheel_finds_its_configs_from_any_directory(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run(
        [sys.executable, "-m", "deeplab_cli.train", "--info", "searchpath"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(target / "deeplab_cli" / "configs") in proc.stdout
    assert str(REPO / "configs") not in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "deeplab_cli.weights", "list", "resnet101"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0 and "| torchvision/resnet101.imagenet1k_v1 |" in proc.stdout, proc.stderr[-2000:]
