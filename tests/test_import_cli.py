"""deeplab-eval on checkpoints of other projects: layout recognised, their preprocessing applied."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from deeplab_cli.data.synthetic import SyntheticSpec, ensure_synthetic_voc
from deeplab_cli.data.transforms import eval_transforms
from deeplab_cli.models.importers import CAFFE_BGR, IMAGENET_RGB

BIN = Path(sys.executable).parent


def _eval(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "deeplab-eval"), *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic_voc(root, SyntheticSpec(num_train=2, num_val=2))
    return root


def test_eval_torchvision_checkpoint_matches_torchvision_predictions(tmp_path: Path, synthetic_root: Path) -> None:
    torch.manual_seed(0)
    tv = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21)
    ckpt = tmp_path / "deeplabv3_resnet50.pth"
    torch.save(tv.state_dict(), ckpt)
    out = tmp_path / "eval"
    proc = _eval(f"checkpoint={ckpt}", f"hydra.run.dir={out}", f"dataset.root={synthetic_root}",
                 "dataset.synthetic.num_train=2", "dataset.synthetic.num_val=2", "save_predictions=true",
                 "eval.num_workers=0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 2
    tv.eval()
    voc = synthetic_root / "VOC2012"
    for png in sorted((out / "predictions").glob("*.png")):
        rgb = np.array(Image.open(voc / "JPEGImages" / f"{png.stem}.jpg").convert("RGB"))
        with torch.no_grad():
            expected = tv(IMAGENET_RGB(rgb)[None])["out"].argmax(1)[0].numpy()
        assert (np.array(Image.open(png)) == expected).mean() > 0.999


def test_foreign_file_with_unknown_keys_is_refused_with_the_keys(tmp_path: Path) -> None:
    ckpt = tmp_path / "mystery.pth"
    torch.save({"encoder.conv.weight": torch.zeros(3, 3), "decoder.fc.bias": torch.zeros(2)}, ckpt)
    proc = _eval(f"checkpoint={ckpt}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert proc.returncode == 1
    assert "matches no known layout" in proc.stderr and "mystery.pth" in proc.stderr
    assert "unexpected: encoder.conv.weight, decoder.fc.bias" in proc.stderr
    assert "missing: backbone.conv1.weight" in proc.stderr and "2 unexpected" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_caffe_bgr_preprocessing_as_model_config_equals_the_importers() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    cfg = CAFFE_BGR.as_config()
    assert cfg["bgr"] is True
    from torchvision import tv_tensors

    image = tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1))
    mask = tv_tensors.Mask(torch.zeros(7, 9, dtype=torch.uint8))
    ours, _ = eval_transforms(cfg["mean"], cfg["std"], cfg["bgr"])(image, mask)
    torch.testing.assert_close(ours.as_subclass(torch.Tensor), CAFFE_BGR(rgb), rtol=1e-5, atol=1e-3)
    rgb_cfg = IMAGENET_RGB.as_config()
    ours, _ = eval_transforms(rgb_cfg["mean"], rgb_cfg["std"], rgb_cfg["bgr"])(image, mask)
    torch.testing.assert_close(ours.as_subclass(torch.Tensor), IMAGENET_RGB(rgb), rtol=1e-5, atol=1e-5)


def test_train_init_from_torchvision_checkpoint(tmp_path: Path, synthetic_root: Path) -> None:
    torch.manual_seed(0)
    tv = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21)
    ckpt = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), ckpt)
    run = tmp_path / "run"
    args = [
        f"hydra.run.dir={run}", f"model.init_from={ckpt}", f"dataset.root={synthetic_root}",
        "dataset.synthetic.num_train=2", "dataset.synthetic.num_val=2", "dataset.crop_size=49",
        "dataset.num_workers=0", "trainer.max_iters=1", "trainer.batch_size=2", "trainer.progress=false",
        "optim.lr=1e-9",
    ]  # fmt: skip
    proc = subprocess.run([str(BIN / "deeplab-train"), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["config"]["backbone"]["name"] == "resnet50" and state["config"]["head"]["name"] == "aspp_v3"
    assert state["config"]["model"]["output_stride"] == 8 and state["config"]["model"]["init_from"] == str(ckpt)
    # trained from the file's weights (a tiny LR keeps them within float noise)
    torch.testing.assert_close(state["model"]["backbone.conv1.weight"], tv.state_dict()["backbone.conv1.weight"],
                               rtol=0, atol=1e-6)  # fmt: skip
    assert json.loads((run / "metrics.json").read_text())["num_images"] == 2


def test_eval_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    proc = _eval(f"checkpoint={tmp_path / 'nope.pt'}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert proc.returncode == 1
    assert f"{tmp_path / 'nope.pt'} does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save({"format": "deeplab-cli", "model": {"w": torch.zeros(1000)}}, good)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[:200])
    proc = _eval(f"checkpoint={bad}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert proc.returncode == 1
    assert f"checkpoint {bad} could not be read" in proc.stderr and "Traceback" not in proc.stderr
