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
    assert "deeplab-train = deeplab_cli.cli.train:main" in text
    assert "deeplab-eval = deeplab_cli.cli.evaluate:main" in text
    assert "deeplab-predict = deeplab_cli.cli.predict:main" in text
    assert "deeplab-check-data = deeplab_cli.cli.check_data:main" in text
    assert "deeplab-split = deeplab_cli.cli.split:main" in text
    assert "deeplab-export = deeplab_cli.cli.export:main" in text
    assert "deeplab-weights = deeplab_cli.cli.weights:main" in text
    assert "deeplab-prepare = deeplab_cli.cli.prepare:main" in text


def test_installed_wheel_finds_its_configs_from_any_directory(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run(
        [sys.executable, "-m", "deeplab_cli.cli.train", "--info", "searchpath"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert str(target / "deeplab_cli" / "configs") in proc.stdout
    assert str(REPO / "configs") not in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "deeplab_cli.cli.weights", "list", "resnet101"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0 and "| torchvision/resnet101.imagenet1k_v1 |" in proc.stdout, proc.stderr[-2000:]


def test_wheel_users_can_prepare_every_family_the_hints_name(wheel: Path, tmp_path: Path) -> None:
    """Defect 3 of issue 22: the hints pointed at ``scripts/prepare_*.py``, which a wheel does not ship, and
    only VOC had a console script. From the installed wheel alone: the hints name ``deeplab-prepare``, which
    unpacks a (tiny) Cityscapes download into the tree ``dataset=cityscapes`` reads."""
    from test_prepare_datasets import _cityscapes_zips

    target = tmp_path / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    shipped = "\n".join(p.read_text() for p in (target / "deeplab_cli").rglob("*.py"))
    shipped = shipped.replace("``scripts/prepare_*.py`` are", "")  # the docstring that says where they are
    assert "scripts/prepare" not in shipped, "a hint names a file the wheel does not ship"
    env = {**os.environ, "PYTHONPATH": str(target)}

    def prepare(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "deeplab_cli.cli.prepare", *args], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=120)  # fmt: skip

    for family in ("voc", "cityscapes", "ade20k"):
        done = prepare(family, "--help")
        assert done.returncode == 0 and f"usage: deeplab-prepare {family}" in done.stdout, done.stderr
    bad = prepare("camvid")
    assert bad.returncode == 2 and "invalid choice: 'camvid'" in bad.stderr and "Traceback" not in bad.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "deeplab_cli.cli.train", f"hydra.run.dir={tmp_path / 'run'}", "dataset=cityscapes",
         f"dataset.root={tmp_path / 'data'}", "model=quickstart"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )  # fmt: skip
    assert missing.returncode == 1 and "deeplab-prepare cityscapes --zips" in missing.stderr, missing.stderr[-2000:]
    _cityscapes_zips(tmp_path / "zips")
    done = prepare("cityscapes", "--zips", str(tmp_path / "zips"), "--root", str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr
    frame = tmp_path / "data/cityscapes/gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png"
    assert frame.is_file()
