"""Aligned Xception-65 (DeepLab v3+): shapes, strides/dilations, TF layer layout, weight loading."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from deeplab_cli.models.backbones.base import FeatureInfo
from deeplab_cli.models.backbones.xception import (
    NUM_PARAMETERS,
    TIMM_WEIGHTS_URL,
    TIMM_XCEPTION65_MODULES,
    SeparableConv2d,
    Xception65,
    XceptionUnit,
    convert_timm_xception65,
    load_xception65_weights,
)
from deeplab_cli.models.pretrained import PretrainedWeightsError

SIZE = 97  # odd, so every stride-2 conv has to round up: ceil(97 / 2) = 49, ...
# timm 1.0.31 ``xception65``: 39,916,312 parameters, of which head.fc (ImageNet classifier) is 2048 * 1000 + 1000.
TIMM_XCEPTION65_PARAMS = 39_916_312


@pytest.fixture(scope="module")
def models() -> dict[int, Xception65]:
    """One model per output stride, built once (construction is the slow part of these tests).

    Architecture tests only read them; weight-loading tests overwrite their weights.
    """
    torch.manual_seed(0)
    return {os_: Xception65(os_).eval() for os_ in (8, 16, 32)}


def _random_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s state with random weights and BN statistics, so every entry is checked."""
    return {k: v.clone() if v.dtype == torch.long else torch.rand_like(v) + 0.5 for k, v in model.state_dict().items()}


def _depthwise(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_feature_shapes_strides_and_info(models: dict[int, Xception65], output_stride: int) -> None:
    model = models[output_stride]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, SIZE, SIZE))
    assert set(feats) == {"low_level", "out"}
    assert model.feature_info == {"low_level": FeatureInfo(256, 4), "out": FeatureInfo(2048, output_stride)}
    for name, info in model.feature_info.items():
        side = math.ceil(SIZE / info.stride)
        assert feats[name].shape == (1, info.channels, side, side), name
    # TF semantics: low_level is taken before the ReLU, the exit flow ends with BN + ReLU.
    assert (feats["low_level"] < 0).any()
    assert (feats["out"] >= 0).all()


@pytest.mark.parametrize("output_stride", [4, 12, 64])
def test_invalid_output_stride_raises(output_stride: int) -> None:
    with pytest.raises(ValueError, match=rf"model\.output_stride={output_stride} .*\(8, 16, 32\)"):
        Xception65(output_stride)


def test_parameter_count(models: dict[int, Xception65]) -> None:
    counts = {os_: sum(p.numel() for p in m.parameters()) for os_, m in models.items()}
    assert counts == {8: 37_867_312, 16: 37_867_312, 32: 37_867_312}
    assert NUM_PARAMETERS == 37_867_312
    # Same as timm's xception65 without its classifier: both follow TF (bias-free convs, BN everywhere).
    assert TIMM_XCEPTION65_PARAMS - (2048 * 1000 + 1000) == NUM_PARAMETERS


def test_tf_layer_layout(models: dict[int, Xception65]) -> None:
    model = models[16]
    assert not any(isinstance(m, nn.MaxPool2d | nn.AvgPool2d) for m in model.modules())
    assert list(model.entry_flow) and [u.skip for u in model.entry_flow] == ["conv"] * 3
    assert len(model.middle_flow) == 16
    assert all(isinstance(u, XceptionUnit) and u.skip == "sum" and u.shortcut is None for u in model.middle_flow)
    assert [u.skip for u in model.exit_flow] == ["conv", "none"]
    assert [u.residual[-1].bn_pointwise.num_features for u in model.exit_flow] == [1024, 2048]

    # Every 3x3 depthwise conv is followed by BN (module order is execution order inside a SeparableConv2d).
    flat = list(model.modules())
    depthwise = [i for i, m in enumerate(flat) if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 21 * 3
    for i in depthwise:
        assert flat[i].kernel_size == (3, 3) and flat[i].groups == flat[i].in_channels
        assert isinstance(flat[i + 1], nn.BatchNorm2d) and flat[i + 1].eps == 1e-3

    # ReLUs as in TF's xception_65: pre-activation units put one in front of each separable conv;
    # only exit block 2 (activation_fn_in_separable_conv=True) has ReLU after each depthwise and pointwise BN.
    for unit in [*model.entry_flow, *model.middle_flow, model.exit_flow.block1]:
        kinds = [type(m) for m in unit.residual]
        assert kinds == [nn.ReLU, SeparableConv2d] * 3
        assert not any(isinstance(m, nn.ReLU) for sep in unit.residual[1::2] for m in sep)
    for sep in model.exit_flow.block2.residual:
        kinds = [type(m) for m in sep]
        assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.ReLU]


def test_residual_sum_is_not_rectified(models: dict[int, Xception65]) -> None:
    """The ReLU comes before each separable conv, not after the sum, and the shortcut sees the raw input."""
    unit = models[16].middle_flow.unit1
    x = torch.randn(1, 728, 5, 5)
    with torch.no_grad():
        out = unit(x)
        assert (out < 0).any()
        assert torch.allclose(out, unit.residual(x) + x)


def _strides_dilations(unit: XceptionUnit) -> list[tuple[int, int]]:
    return [(conv.stride[0], conv.dilation[0]) for conv in _depthwise(unit)]


def test_dilation_follows_output_stride(models: dict[int, Xception65]) -> None:
    for model in models.values():
        for conv in _depthwise(model):
            assert conv.padding == conv.dilation  # TF fixed_padding: symmetric, ceil(n / stride)
    os8, os16, os32 = models[8], models[16], models[32]
    # OS 32: the classification network, five stride-2 stages, no dilation.
    assert all(d == 1 for conv in _depthwise(os32) for d in conv.dilation)
    assert _strides_dilations(os32.exit_flow.block1) == [(1, 1), (1, 1), (2, 1)]
    # OS 16: exit block 1 runs dense (its former strided conv keeps dilation 1, as in TF), exit block 2 has rate 2.
    assert _strides_dilations(os16.entry_flow.block3) == [(1, 1), (1, 1), (2, 1)]
    assert all(sd == (1, 1) for u in os16.middle_flow for sd in _strides_dilations(u))
    assert _strides_dilations(os16.exit_flow.block1) == [(1, 1)] * 3
    assert _strides_dilations(os16.exit_flow.block2) == [(1, 2)] * 3
    # OS 8: entry block 3 runs dense, the middle flow and exit block 1 have rate 2, exit block 2 rate 4.
    assert _strides_dilations(os8.entry_flow.block3) == [(1, 1)] * 3
    assert all(sd == (1, 2) for u in os8.middle_flow for sd in _strides_dilations(u))
    assert _strides_dilations(os8.exit_flow.block1) == [(1, 2)] * 3
    assert _strides_dilations(os8.exit_flow.block2) == [(1, 4)] * 3
    # The entry blocks up to stride 4 never change; low_level is always at stride 4.
    for model in models.values():
        assert _strides_dilations(model.entry_flow.block1) == [(1, 1), (1, 1), (2, 1)]
        assert _strides_dilations(model.entry_flow.block2) == [(1, 1), (1, 1), (2, 1)]


def test_load_own_state_dict(tmp_path: Path, models: dict[int, Xception65]) -> None:
    torch.manual_seed(1)
    source = Xception65(16).eval()
    source.load_state_dict(_random_state(source))
    path = tmp_path / "xception65.pth"
    torch.save(source.state_dict(), path)
    target = models[16]
    load_xception65_weights(target, path)
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        expected, got = source(x), target(x)
    for name in expected:
        assert torch.equal(expected[name], got[name])
    # The weights do not depend on the output stride.
    load_xception65_weights(models[8], path)
    loaded = models[8].state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in source.state_dict().items())


def test_mismatched_keys_raise(tmp_path: Path, models: dict[int, Xception65]) -> None:
    state = {k: torch.zeros(1) for k in models[16].state_dict()}  # keys are checked before shapes
    del state["middle_flow.unit7.residual.sepconv2.pointwise.weight"]
    state["decoder.conv.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(PretrainedWeightsError) as err:
        load_xception65_weights(models[16], path)
    message = str(err.value)
    assert "1 missing keys (middle_flow.unit7.residual.sepconv2.pointwise.weight)" in message
    assert "1 unexpected keys (decoder.conv.weight)" in message
    assert TIMM_WEIGHTS_URL in message


def test_missing_file_raises(tmp_path: Path, models: dict[int, Xception65]) -> None:
    with pytest.raises(PretrainedWeightsError, match=r"does not exist.*xception65\.tf_in1k.*model\.pretrained=false"):
        load_xception65_weights(models[16], tmp_path / "nope.bin")


def _to_timm_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict in timm's ``xception65`` names (inverse of the mapping table), plus its classifier."""
    inverse = {ours: theirs for theirs, ours in TIMM_XCEPTION65_MODULES.items()}
    assert len(inverse) == len(TIMM_XCEPTION65_MODULES)
    out = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if param != "num_batches_tracked":  # absent from some ported checkpoints; must be tolerated
            out[f"{inverse[module]}.{param}"] = value
    out["head.fc.weight"], out["head.fc.bias"] = torch.zeros(1000, 2048), torch.zeros(1000)
    return out


def test_timm_layout_round_trip(tmp_path: Path, models: dict[int, Xception65]) -> None:
    torch.manual_seed(2)
    source = _random_state(models[32])
    timm_state = _to_timm_layout(source)
    # Names and shapes as in timm 1.0.31's xception65: 794 entries, less 132 BN num_batches_tracked here.
    assert len(timm_state) == 794 - 132
    assert timm_state["stem.1.conv.weight"].shape == (64, 32, 3, 3)
    assert timm_state["blocks.1.stack.conv2.conv_pw.weight"].shape == (256, 256, 1, 1)
    assert timm_state["blocks.19.shortcut.conv.weight"].shape == (1024, 728, 1, 1)
    assert timm_state["blocks.20.stack.conv3.conv_pw.weight"].shape == (2048, 1536, 1, 1)
    assert not any(k.startswith("blocks.3.shortcut") for k in timm_state)
    path = tmp_path / "pytorch_model.bin"
    torch.save(timm_state, path)
    target = models[16]
    load_xception65_weights(target, path)
    loaded = target.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in source.items() if "num_batches" not in k)

    timm_state = {k: torch.zeros(1) for k in timm_state}  # keys are checked before shapes
    del timm_state["blocks.5.stack.conv1.bn_dw.running_var"]
    timm_state["blocks.21.stack.conv1.conv_dw.weight"] = torch.zeros(1)
    torch.save(timm_state, path)
    with pytest.raises(PretrainedWeightsError) as err:
        load_xception65_weights(target, path)
    message = str(err.value)
    assert "1 missing keys (middle_flow.unit3.residual.sepconv1.bn_depthwise.running_var)" in message
    assert "1 unexpected keys (blocks.21.stack.conv1.conv_dw.weight)" in message


@pytest.mark.parametrize("output_stride", [32, 16, 8])
def test_same_features_as_timms_xception65_given_the_same_weights(output_stride: int) -> None:
    """An independent implementation of the same modified aligned Xception-65: timm's ``xception65``
    (``xception_aligned.py``), with its random weights and randomised BatchNorm statistics renamed to ours.
    The deepest features (``forward_features``) and the low-level feature (timm's ``blocks.1.stack.conv2``, the
    decoder's stride-4 input) agree to float precision at every output stride, on an odd input size."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(output_stride)
    theirs = timm.create_model("xception65", pretrained=False, output_stride=output_stride).eval()
    with torch.no_grad():
        for m in theirs.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # not the identity: a wrong BN mapping would show
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    ours = Xception65(output_stride).eval()
    ours.load_state_dict(convert_timm_xception65(theirs.state_dict()), strict=True)
    low: list[torch.Tensor] = []
    theirs.blocks[1].stack.conv2.register_forward_hook(lambda _m, _i, out: low.append(out.clone()))  # before ReLU
    x = torch.randn(1, 3, 97, 97)
    with torch.no_grad():
        expected, got = theirs.forward_features(x), ours(x)
    assert got["out"].shape == expected.shape == (1, 2048, -(-97 // output_stride), -(-97 // output_stride))
    torch.testing.assert_close(got["out"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["low_level"], low[0], atol=1e-5, rtol=1e-5)
