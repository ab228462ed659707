"""Every model= preset: parameter count, logit size at OS 8/16, two training iterations + evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from deeplab_cli._paths import config_dir
from deeplab_cli.cli import train as train_mod
from deeplab_cli.config import checks, models
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.data.synthetic import SyntheticSpec, ensure_synthetic_voc
from deeplab_cli.errors import ConfigError

#: Parameter counts for 21 classes. v1/v2/v3 numbers are the papers' layer sizes (and
#: torchvision's deeplabv3_resnet50/101 without aux); v3+ uses the paper's two 3x3
#: decoder convs (VainF's one-conv layout is 590,336 fewer: 58,753,973 / 5,225,717).
PARAMS = {
    "deeplabv1_largefov": 20_505_429,
    "deeplabv2_vgg16_aspp_s": 37_877_652,
    "deeplabv2_vgg16_aspp_l": 37_877_652,
    "deeplabv2_resnet101": 44_048_532,
    "deeplabv2_resnet101_msc": 44_048_532,  # MSC shares the network across scales: no extra parameters
    "attention_to_scale_vgg16": 34_663_256,  # LargeFOV + attention: 3x3 conv 3*1024->512, 1x1 conv 512->3
    "deeplabv3_resnet101": 58_630_997,
    "deeplabv3_resnet50": 39_638_869,
    "deeplabv3plus_resnet101": 59_344_309,
    # mmsegmentation's: ResNetV1c-101 42,519,392 (timm resnet101c minus fc) + DepthwiseSeparableASPPHead 17,698,949
    # (pool and 1x1 branches 2 x 1,049,600, three separable 2048->512 3 x 1,072,128, 3x3 bottleneck 11,797,504,
    # c1 12,384, decoder 293,904 + 268,800, classifier 10,773) + auxiliary FCN head 2,365,205 (training only)
    "deeplabv3plus_resnet101_v1c": 62_583_546,
    "deeplabv3plus_mobilenet_v2": 5_816_053,
    "deeplabv3plus_xception65": 41_055_413,  # backbone 37,867,312 = timm xception65 minus fc
    # VGG16-BN at x0.25 width (16..128 channels): 920,784 conv + 2,112 BN; head fc6 3x3 128->256
    # (295,168), fc7 256->256 (65,792), fc8 256->21 (5,397)
    "quickstart": 1_289_253,
    # timm backbones: timm's model minus its classifier (and EfficientNet's 1x1 conv_head to 1280 + BN):
    # EfficientNet-B0 5,288,548 - 1,281,000 - 412,160 = 3,595,388 (paper: 5.3M with its head)
    "deeplabv3plus_efficientnet_b0": 7_599_729,
    "deeplabv3_efficientnet_b0": 6_897_553,
    "deeplabv3plus_efficientnet_b4": 21_697_213,  # backbone 16,742,216 (paper's B4: 19M with its head)
    "deeplabv3_efficientnet_b4": 20_994_653,
    "deeplabv3plus_xception71": 43_477_837,  # backbone 40,289,736 = timm xception71 (42,338,736) minus fc
    "deeplabv3_convnext_tiny": 34_446_709,  # backbone 27,818,592 = ConvNeXt-T (28.6M) minus norm + fc
    "deeplabv3plus_convnext_tiny": 35_152_341,
    # EfficientNet-Lite0/1/2: timm's 4,652,008 / 5,416,680 / 6,092,072 (the TF release's 4.7M / 5.4M / 6.1M)
    # minus conv_head + BN + classifier (1,693,160; Lite2's 352-channel last stage: 1,734,120) = backbones of
    # 2,958,848 / 3,723,520 / 4,357,952; the v3+ head adds 4,004,341 (4,241,909 on Lite2's 352 channels)
    "deeplabv3plus_efficientnet_lite0": 6_963_189,
    "deeplabv3plus_efficientnet_lite1": 7_727_861,
    "deeplabv3plus_efficientnet_lite2": 8_599_861,
}
PRESETS = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))


_cfg = compose_train


def test_every_preset_has_a_parameter_count() -> None:
    assert set(PRESETS) >= set(PARAMS), "a preset is missing"
    missing = set(PRESETS) - set(PARAMS)
    assert not missing, f"add the parameter count of {missing} to PARAMS"


@pytest.mark.parametrize("preset", PRESETS)
def test_parameter_count(preset: str) -> None:
    model = models.make_model(_cfg([f"model={preset}"]), pretrained=False)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[preset]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_logit_size(preset: str, output_stride: int) -> None:
    cfg = _cfg([f"model={preset}", f"model.output_stride={output_stride}"])
    model = models.make_model(cfg, pretrained=False).eval()
    logit_stride = 4 if cfg.head.name == "v3plus" else output_stride
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 65))["out"]
    # torchvision/Caffe-style padding rounds up; ConvNeXt's 4x4 patchify stem (timm) rounds down
    sizes = {math.ceil(65 / logit_stride)} | ({65 // logit_stride} if cfg.backbone.name == "timm" else set())
    assert out.shape[:2] == (1, 21) and out.shape[2] == out.shape[3] and out.shape[2] in sizes


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic_voc(root, SyntheticSpec(num_train=4, num_val=2))
    return root


@pytest.mark.parametrize("preset", PRESETS)
def test_two_iterations_and_evaluation(preset: str, tmp_path: Path, synthetic_root: Path) -> None:
    overrides = [
        f"model={preset}", "model.pretrained=false", "dataset=synthetic",
        f"dataset.root={synthetic_root}", "dataset.synthetic.num_train=4", "dataset.synthetic.num_val=2",
        "dataset.crop_size=49", "dataset.num_workers=0", "trainer.max_iters=2", "trainer.val_interval=2",
        "trainer.batch_size=2", "trainer.progress=false", "optim.lr=1e-4",
    ]  # fmt: skip
    metrics = train_mod.run_train(_cfg(overrides, tmp_path))
    assert metrics["num_images"] == 2 and 0.0 <= metrics["mIoU"] <= 100.0
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


@pytest.mark.parametrize("preset", ["deeplabv2_resnet101_msc", "attention_to_scale_vgg16"])
def test_multi_scale_presets_need_two_scales(preset: str) -> None:
    with pytest.raises(ConfigError, match=r"scales.factors=\[1.0\]"):
        checks.validate(_cfg([f"model={preset}", "scales.factors=[1.0]"]))
