"""Checkpoint importers: layout detection, strict loading, and logits equal to the original implementations.

torchvision's models are built here (weights=None) and compared directly. kazuto1011's
and VainF's code is not installed: their layouts come from the key lists in
``shared/reference`` and their forward passes from small functional re-implementations
below, written from ``checkpoint_layouts.md``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.models.segmentation as tv_seg
from clitools import REFERENCE, needs_shared
from torch import Tensor, nn

from deeplab_cli.config import models
from deeplab_cli.errors import ConfigError, DeepLabError
from deeplab_cli.models.builder import ModelSpec, build_model
from deeplab_cli.models.importers import (
    CAFFE_BGR,
    IMAGENET_RGB,
    LAYOUTS,
    CheckpointLayoutError,
    detect_layout,
    import_checkpoint,
)
from deeplab_cli.models.multiscale import MultiScaleInputs

# one list: a second ``pytestmark =`` would replace the skip, and a fresh clone without ../shared would fail
pytestmark = [
    needs_shared(REFERENCE),
    pytest.mark.usefixtures("one_thread"),
]

KAZUTO = "kazuto_deeplabv2_resnet101_msc.keys.tsv"
VAINF = {
    "vainf_deeplabv3_resnet101_os16.keys.tsv": ("vainf_deeplabv3_resnet101", 58_630_997),
    "vainf_deeplabv3plus_resnet101_os16.keys.tsv": ("vainf_deeplabv3plus_resnet101", 58_753_973),
    "vainf_deeplabv3plus_mobilenet_os16.keys.tsv": ("vainf_deeplabv3plus_mobilenet", 5_225_717),
}
Rows = list[tuple[str, tuple[int, ...], torch.dtype]]


def read_keys(name: str) -> Rows:
    """``key, shape, dtype`` rows of a reference key list (an empty shape is a 0-dim tensor)."""
    rows = [line.split("\t") for line in (REFERENCE / name).read_text().splitlines()[1:]]
    return [(k, tuple(int(s) for s in shape.split(",")) if shape else (), getattr(torch, dt)) for k, shape, dt in rows]


def with_classes(rows: Rows, prefixes: tuple[str, ...], n: int) -> Rows:
    """The rows with the classifier's class dimension set to ``n``."""
    return [(k, (n, *s[1:]) if k.startswith(prefixes) else s, dt) for k, s, dt in rows]


def random_state(rows: Rows, seed: int) -> dict[str, Tensor]:
    """Seeded values of a plausible scale: He-scaled convs, BN stats that do not normalise exactly."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in rows:
        if dtype == torch.int64:
            state[key] = torch.zeros(shape, dtype=dtype)
        elif key.endswith("running_var"):
            state[key] = torch.empty(shape).uniform_(1.0, 2.0, generator=g)
        elif len(shape) == 4:
            state[key] = torch.randn(shape, generator=g) * math.sqrt(2 / math.prod(shape[1:]))
        elif key.endswith("weight"):
            state[key] = torch.empty(shape).uniform_(0.5, 1.0, generator=g)
        else:  # biases and running means
            state[key] = torch.randn(shape, generator=g) * 0.1
    return state


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def vainf_ckpt(state: dict[str, Tensor]) -> dict:
    return {"model_state": state, "optimizer_state": {}, "cur_itrs": 0, "best_score": 0.0}


# ---------------------------------------------------------------- references, from checkpoint_layouts.md


def _bn(x: Tensor, sd: dict[str, Tensor], p: str) -> Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"])


def _kazuto_unit(x: Tensor, sd: dict[str, Tensor], p: str, stride: int = 1, dil: int = 1, relu: bool = True) -> Tensor:
    w = sd[f"{p}.conv.weight"]
    x = _bn(F.conv2d(x, w, stride=stride, padding=dil * (w.shape[-1] // 2), dilation=dil), sd, f"{p}.bn")
    return F.relu(x) if relu else x


def kazuto_base(x: Tensor, sd: dict[str, Tensor]) -> Tensor:
    """DeepLabV2: Caffe bottlenecks (stride in ``reduce``), ceil-mode pool, dilated first blocks, summed ASPP."""
    x = F.max_pool2d(_kazuto_unit(x, sd, "base.layer1.conv1", stride=2), 3, 2, 1, ceil_mode=True)
    for layer, blocks, stride, dil in ((2, 3, 1, 1), (3, 4, 2, 1), (4, 23, 1, 2), (5, 3, 1, 4)):
        for b in range(1, blocks + 1):
            p, s = f"base.layer{layer}.block{b}", stride if b == 1 else 1
            h = _kazuto_unit(x, sd, f"{p}.reduce", stride=s)
            h = _kazuto_unit(_kazuto_unit(h, sd, f"{p}.conv3x3", dil=dil), sd, f"{p}.increase", relu=False)
            x = F.relu(h + (_kazuto_unit(x, sd, f"{p}.shortcut", stride=s, relu=False) if b == 1 else x))
    aspp = (F.conv2d(x, sd[f"base.aspp.c{i}.weight"], sd[f"base.aspp.c{i}.bias"], padding=r, dilation=r)
            for i, r in enumerate((6, 12, 18, 24)))  # fmt: skip
    return sum(aspp)


def kazuto_msc(x: Tensor, sd: dict[str, Tensor]) -> Tensor:
    """MSC eval: 1.0 plus scale_factor-interpolated 0.5 and 0.75, resized to the 1.0 logits by size, max."""
    full = kazuto_base(x, sd)
    scaled = [
        kazuto_base(F.interpolate(x, scale_factor=p, mode="bilinear", align_corners=False), sd) for p in (0.5, 0.75)
    ]
    resized = [F.interpolate(y, size=full.shape[-2:], mode="bilinear", align_corners=False) for y in scaled]
    return torch.stack([full, *resized]).max(dim=0).values


def vainf_mobilenet(x: Tensor, sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """VainF's MobileNetV2 at OS 16: unpadded convs, block input zero-padded by its dilation, residual unpadded."""

    def key(i: int) -> str:
        return f"backbone.{'low' if i < 4 else 'high'}_level_features.{i}"

    def dw(h: Tensor, w: Tensor, s: int, d: int) -> Tensor:
        return F.conv2d(h, w, stride=s, dilation=d, groups=w.shape[0])

    x = F.relu6(_bn(F.conv2d(x, sd[f"{key(0)}.0.weight"], stride=2), sd, f"{key(0)}.1"))
    low = x
    for i in range(1, 18):
        p, s, d = f"{key(i)}.conv", 2 if i in (2, 4, 7) else 1, 2 if i >= 15 else 1
        h = F.pad(x, [d] * 4)
        if i == 1:  # expansion 1: depthwise, then projection
            h = F.relu6(_bn(dw(h, sd[f"{p}.0.0.weight"], s, d), sd, f"{p}.0.1"))
            h = _bn(F.conv2d(h, sd[f"{p}.1.weight"]), sd, f"{p}.2")
        else:
            h = F.relu6(_bn(F.conv2d(h, sd[f"{p}.0.0.weight"]), sd, f"{p}.0.1"))
            h = F.relu6(_bn(dw(h, sd[f"{p}.1.0.weight"], s, d), sd, f"{p}.1.1"))
            h = _bn(F.conv2d(h, sd[f"{p}.2.weight"]), sd, f"{p}.3")
        x = x + h if s == 1 and h.shape[1] == x.shape[1] else h
        low = x if i == 3 else low
    return {"low_level": low, "out": x}


def _cbr(x: Tensor, sd: dict[str, Tensor], conv: str, bn: str, **kw: int) -> Tensor:
    return F.relu(_bn(F.conv2d(x, sd[conv], **kw), sd, bn))


def vainf_aspp(x: Tensor, sd: dict[str, Tensor], p: str, rates: tuple[int, ...] = (6, 12, 18)) -> Tensor:
    out = [_cbr(x, sd, f"{p}convs.0.0.weight", f"{p}convs.0.1")]
    out += [
        _cbr(x, sd, f"{p}convs.{i}.0.weight", f"{p}convs.{i}.1", padding=r, dilation=r) for i, r in enumerate(rates, 1)
    ]
    pooled = _cbr(x.mean((2, 3), keepdim=True), sd, f"{p}convs.4.1.weight", f"{p}convs.4.2")
    out.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False))
    return _cbr(torch.cat(out, 1), sd, f"{p}project.0.weight", f"{p}project.1")


def vainf_head(feats: dict[str, Tensor], sd: dict[str, Tensor]) -> Tensor:
    """DeepLabHead (v3) or DeepLabHeadV3Plus (low-level 48 ch concatenated *first*), eval mode."""
    c = "classifier.classifier"
    if "classifier.project.0.weight" not in sd:
        y = _cbr(vainf_aspp(feats["out"], sd, f"{c}.0."), sd, f"{c}.1.weight", f"{c}.2", padding=1)
        return F.conv2d(y, sd[f"{c}.4.weight"], sd[f"{c}.4.bias"])
    low = _cbr(feats["low_level"], sd, "classifier.project.0.weight", "classifier.project.1")
    y = vainf_aspp(feats["out"], sd, "classifier.aspp.")
    y = F.interpolate(y, size=low.shape[-2:], mode="bilinear", align_corners=False)
    y = _cbr(torch.cat([low, y], 1), sd, f"{c}.0.weight", f"{c}.1", padding=1)
    return F.conv2d(y, sd[f"{c}.3.weight"], sd[f"{c}.3.bias"])


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def kazuto_state() -> dict[str, Tensor]:
    return random_state(read_keys(KAZUTO), seed=1)


@pytest.fixture(scope="module")
def kazuto(kazuto_state: dict[str, Tensor]):
    return import_checkpoint(kazuto_state)


@pytest.fixture(scope="module")
def vainf_cache() -> dict:
    return {}


def vainf(cache: dict, name: str):
    """(state, Imported) of one VainF key list, imported once per module."""
    if name not in cache:
        state = random_state(read_keys(name), seed=2)
        cache[name] = (state, import_checkpoint(vainf_ckpt(state)))
    return cache[name]


# ---------------------------------------------------------------- detection and strict loading


@pytest.mark.parametrize("name", [KAZUTO, *VAINF])
def test_layout_keys_are_exactly_the_reference_key_lists(name: str) -> None:
    keys = [k for k, _, _ in read_keys(name)]
    layout = detect_layout({k: torch.zeros(()) for k in keys})
    assert layout == (VAINF[name][0] if name in VAINF else "kazuto_deeplabv2_resnet101_msc")
    assert sorted(LAYOUTS[layout].expected_keys()) == sorted(keys)


def test_kazuto_loads_strictly_with_its_parameter_count(kazuto) -> None:
    assert kazuto.layout == "kazuto_deeplabv2_resnet101_msc"
    assert isinstance(kazuto.model, MultiScaleInputs) and kazuto.model.scales == (1.0, 0.5, 0.75)
    assert kazuto.model.input_resize == "scale_factor"
    assert n_params(kazuto.model) == 44_048_532
    assert kazuto.preprocess == CAFFE_BGR
    assert kazuto.config_overrides["model"] == {
        "name": "kazuto_deeplabv2_resnet101_msc",
        "num_classes": 21,
        "output_stride": 8,
        "preprocess": CAFFE_BGR.as_config(),  # stored with the model: it belongs to the weights
    }
    assert kazuto.config_overrides["head"] == {"name": "aspp_v2", "form": "conv", "rates": [6, 12, 18, 24]}
    scales = kazuto.config_overrides["scales"]
    assert (scales["mode"], scales["factors"], scales["fusion"]) == ("msc", [1.0, 0.5, 0.75], "max")


def test_kazuto_logits_match_reference_forward(kazuto, kazuto_state: dict[str, Tensor]) -> None:
    x = torch.randn(1, 3, 65, 65, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, ref = kazuto.model(x)["out"], kazuto_msc(x, kazuto_state)
    assert ours.shape == ref.shape == (1, 21, 9, 9)
    assert (ours - ref).abs().max().item() < 1e-4
    assert ref.abs().max().item() > 0.1  # the comparison is not between two near-zero maps


@pytest.mark.parametrize("name", list(VAINF))
def test_vainf_loads_strictly_with_its_parameter_count(vainf_cache: dict, name: str) -> None:
    _, imported = vainf(vainf_cache, name)
    assert imported.layout == VAINF[name][0]
    assert n_params(imported.model) == VAINF[name][1]
    assert imported.preprocess == IMAGENET_RGB
    assert imported.model.output_stride == 16
    assert any("output stride" in note for note in imported.notes)


@pytest.mark.parametrize("name", list(VAINF))
def test_vainf_logits_match_reference_forward(vainf_cache: dict, name: str) -> None:
    """The heads (v3+ concatenation order included) on our backbone's features; MobileNet end to end."""
    state, imported = vainf(vainf_cache, name)
    x = torch.randn(1, 3, 65, 97, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        feats = imported.model.backbone(x)
        ours = imported.model.head(feats)  # what DeepLab.forward returns, without a second backbone pass
        ref = vainf_head(vainf_mobilenet(x, state) if "mobilenet" in name else feats, state)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4
    assert ref.abs().max().item() > 0.1


def test_vainf_mobilenet_backbone_padding_and_sizes(vainf_cache: dict) -> None:
    state, imported = vainf(vainf_cache, "vainf_deeplabv3plus_mobilenet_os16.keys.tsv")
    backbone = imported.model.backbone
    for size, low_size, out_size in (((129, 129), (32, 32), (8, 8)), ((97, 161), (24, 40), (6, 10))):
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            ours, ref = backbone(x), vainf_mobilenet(x, state)
        assert ours["low_level"].shape[-2:] == low_size and ours["out"].shape[-2:] == out_size
        for tap in ("low_level", "out"):
            assert (ours[tap] - ref[tap]).abs().max().item() < 1e-4


def _randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    """Random BN affine and running stats, so that a wrong BN mapping changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0, generator=g)
                m.bias.normal_(0, 0.1, generator=g)
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(1.0, 2.0, generator=g)
    return model.eval()


@pytest.mark.parametrize(
    ("factory", "output_stride"),
    [
        (tv_seg.deeplabv3_resnet50, 8),
        (tv_seg.deeplabv3_resnet101, 8),
        (tv_seg.deeplabv3_mobilenet_v3_large, 16),
    ],
)
def test_torchvision_logits_match(factory, output_stride: int) -> None:
    torch.manual_seed(6)
    tv = _randomise_bn(factory(weights=None, weights_backbone=None, num_classes=21, aux_loss=True), seed=6)
    imported = import_checkpoint(tv.state_dict())
    assert imported.layout == f"torchvision_{factory.__name__}"
    assert imported.model.output_stride == output_stride
    assert any("aux_classifier" in note for note in imported.notes)
    x = torch.randn(1, 3, 97, 97, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = tv.classifier(tv.backbone(x)["out"])  # torchvision's logits before its final upsampling
        ours = imported.model(x)["out"]
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4
    assert ref.abs().max().item() > 0.01
    n_aux = sum(p.numel() for p in tv.aux_classifier.parameters())
    assert n_params(imported.model) == n_params(tv) - n_aux


# ---------------------------------------------------------------- errors


def test_unknown_layout_lists_keys_of_the_closest_layout_and_counts() -> None:
    rows = read_keys("vainf_deeplabv3plus_mobilenet_os16.keys.tsv")
    state = {k.replace("classifier.", "decoder."): torch.zeros(()) for k, _, _ in rows}
    with pytest.raises(CheckpointLayoutError) as info:
        detect_layout(state)
    message = str(info.value)
    assert "matches no known layout" in message and "the closest is vainf_deeplabv3" in message
    assert "missing: classifier." in message and "unexpected: decoder." in message
    assert "decoder.project.0.weight" in message
    assert f"{len(info.value.missing)} missing, {len(info.value.unexpected)} unexpected" in message
    assert len(info.value.unexpected) == sum(k.startswith("classifier.") for k, _, _ in rows)
    assert isinstance(info.value, DeepLabError)


def test_unrelated_state_dict_is_rejected() -> None:
    with pytest.raises(CheckpointLayoutError, match=r"unexpected: fc\.weight, fc\.bias"):
        import_checkpoint({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)})
    with pytest.raises(CheckpointLayoutError, match="not tensors"):
        import_checkpoint({"epoch": 3, "weights": [1, 2]})
    with pytest.raises(CheckpointLayoutError, match="not a list"):
        import_checkpoint([torch.zeros(1)])


def test_a_removed_key_is_named() -> None:
    state = random_state(read_keys("vainf_deeplabv3plus_mobilenet_os16.keys.tsv"), seed=8)
    del state["backbone.high_level_features.14.conv.1.0.weight"]
    with pytest.raises(CheckpointLayoutError) as info:
        import_checkpoint(vainf_ckpt(state))
    assert "looks like vainf_deeplabv3plus_mobilenet" in str(info.value)
    assert info.value.missing == ["backbone.high_level_features.14.conv.1.0.weight"]
    assert "missing: backbone.high_level_features.14.conv.1.0.weight" in str(info.value)
    assert "(1 missing, 0 unexpected, 0 with a wrong shape)" in str(info.value)


def test_an_extra_key_is_named_and_nothing_loads(kazuto_state: dict[str, Tensor]) -> None:
    state = {**kazuto_state, "base.aspp.c4.weight": torch.zeros(21, 2048, 3, 3)}
    with pytest.raises(CheckpointLayoutError, match=r"unexpected: base\.aspp\.c4\.weight"):
        import_checkpoint(state)


def test_vainf_with_another_class_count_loads_as_that_count() -> None:
    rows = with_classes(read_keys("vainf_deeplabv3plus_mobilenet_os16.keys.tsv"), ("classifier.classifier.3.",), 19)
    state = random_state(rows, seed=9)
    imported = import_checkpoint(vainf_ckpt(state))
    assert imported.model.num_classes == 19 and imported.config_overrides["model"]["num_classes"] == 19
    with torch.no_grad():
        assert imported.model(torch.randn(1, 3, 33, 33))["out"].shape == (1, 19, 8, 8)  # unpadded stem: 33 -> 16
    with pytest.raises(CheckpointLayoutError, match="has 19 classes"):
        import_checkpoint(vainf_ckpt(state), num_classes=21)


def test_separable_vainf_checkpoint_is_refused() -> None:
    state = {k: torch.zeros(()) for k, _, _ in read_keys("vainf_deeplabv3plus_mobilenet_os16.keys.tsv")}
    state["classifier.aspp.convs.1.0.body.0.weight"] = state.pop("classifier.aspp.convs.1.0.weight")
    with pytest.raises(CheckpointLayoutError, match="separable"):
        detect_layout(vainf_ckpt(state))


def test_output_stride_override() -> None:
    state = random_state(read_keys("vainf_deeplabv3plus_mobilenet_os16.keys.tsv"), seed=10)
    imported = import_checkpoint(vainf_ckpt(state), output_stride=8)
    assert imported.model.output_stride == 8 and imported.config_overrides["model"]["output_stride"] == 8
    assert [c[0].dilation[0] for c in imported.model.head.aspp.convs[1:4]] == [12, 24, 36]
    assert not any("does not record" in note for note in imported.notes)
    with pytest.raises(ConfigError, match="output_stride=16 is not available"):
        import_checkpoint({k: torch.zeros(()) for k, _, _ in read_keys(KAZUTO)}, output_stride=16)


# ---------------------------------------------------------------- config, our checkpoints, preprocessing


def _spec(overrides: dict) -> ModelSpec:
    backbone, head = dict(overrides["backbone"]), dict(overrides["head"])
    model, scales = overrides["model"], overrides.get("scales", {})
    return ModelSpec(
        backbone.pop("name"), head.pop("name"), model["num_classes"], model["output_stride"], backbone, head, scales
    )


@pytest.mark.parametrize(
    "name", ["vainf_deeplabv3_resnet101_os16.keys.tsv", "vainf_deeplabv3plus_resnet101_os16.keys.tsv"]
)
def test_config_overrides_rebuild_the_imported_model(vainf_cache: dict, name: str) -> None:
    _, imported = vainf(vainf_cache, name)
    with torch.device("meta"):
        rebuilt = build_model(_spec(imported.config_overrides))
    rebuilt.load_state_dict(imported.model.state_dict(), strict=True, assign=True)
    assert repr(rebuilt) == repr(imported.model)  # same modules, strides, dilations and paddings


def test_our_checkpoint_round_trip(tmp_path: Path) -> None:
    config = {
        "model": {"name": "tiny", "num_classes": 5, "output_stride": 16},
        "backbone": {"name": "mobilenet_v2"},
        "head": {"name": "v3plus", "rates": [6, 12, 18], "channels": 32, "low_level_out": 8, "decoder_convs": 1},
        "scales": {"mode": "msc", "factors": [1.0, 0.5], "fusion": "max", "esup": False},
    }
    torch.manual_seed(11)
    model = _randomise_bn(build_model(_spec(config)), seed=11)
    torch.save(
        {"format": "deeplab-cli", "version": 1, "model": model.state_dict(), "config": config}, tmp_path / "a.pt"
    )
    with pytest.raises(CheckpointLayoutError, match="rebuilt from their stored config"):
        import_checkpoint(torch.load(tmp_path / "a.pt"))  # the importers know foreign layouts; ours needs its config
    imported = models.import_any_checkpoint(tmp_path / "a.pt")
    assert imported.layout == "deeplab-cli" and imported.preprocess == IMAGENET_RGB
    assert imported.config_overrides["head"]["channels"] == 32
    assert imported.config_overrides["scales"]["factors"] == [1.0, 0.5]
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        assert torch.equal(imported.model(x)["out"], model(x)["out"])
    broken = {
        "format": "deeplab-cli",
        "model": {**model.state_dict(), "extra.weight": torch.zeros(1)},
        "config": config,
    }
    with pytest.raises(CheckpointLayoutError, match=r"unexpected: extra\.weight"):
        models.import_any_checkpoint(broken)


def test_preprocess() -> None:
    image = torch.tensor([[[10.0, 20.0, 30.0]]])  # 1x1 RGB
    caffe = CAFFE_BGR(image)
    assert caffe.shape == (3, 1, 1)
    assert torch.allclose(caffe.flatten(), torch.tensor([30 - 104.008, 20 - 116.669, 10 - 122.675]))
    rgb = IMAGENET_RGB(image)
    means, stds = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected = [(v / 255 - m) / s for v, m, s in zip((10, 20, 30), means, stds, strict=True)]
    assert torch.allclose(rgb.flatten(), torch.tensor(expected))
