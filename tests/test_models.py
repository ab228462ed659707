"""DeepLab v1 VGG16-LargeFOV: architecture, ImageNet conversion, builder errors, LR groups."""

from __future__ import annotations

import math
import urllib.error

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import VGG16_Weights

from deeplab_cli.engine.train.optim import param_groups, poly_scheduler
from deeplab_cli.errors import ConfigError
from deeplab_cli.models.backbones.vgg import CONV_NAMES, VGG16DeepLab
from deeplab_cli.models.builder import ModelConfigError, ModelSpec, build_model, build_model_with_provenance
from deeplab_cli.models.pretrained import PretrainedWeightsError, load_vgg16_imagenet
from deeplab_cli.models.weights.verify import WeightsHashError, sha256_file

SPEC = ModelSpec("vgg16", "largefov", 21)
# A narrow network for tests where only the topology matters (same strides and layers).
NARROW = ModelSpec("vgg16", "largefov", 21, backbone_args={"width_mult": 0.125}, head_args={"channels": 32})
HUB_FILE = "vgg16-397923af.pth"
# Indices of the 13 convs inside torchvision's ``vgg16().features``.
TV_CONV_IDX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def full_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model(SPEC).eval()


@pytest.fixture(scope="module")
def tv_vgg16(tmp_path_factory: pytest.TempPathFactory):
    """torchvision's VGG16 (random, fixed seed) saved where torch.hub would cache it."""
    torch.manual_seed(1234)
    state = torchvision.models.vgg16(weights=None).state_dict()
    hub_dir = tmp_path_factory.mktemp("hub")
    path = hub_dir / "checkpoints" / HUB_FILE
    path.parent.mkdir()
    torch.save(state, path)
    return state, path, hub_dir


# ------------------------------------------------------------------ architecture


def test_parameter_count_matches_deeplab_v1_largefov(full_model):
    # VGG16 conv1_1..conv5_3: sum of (3*3*cin + 1) * cout
    assert _numel(full_model.backbone) == 14_714_688
    # fc6: 1024 x 512 x 3 x 3 + 1024
    assert _numel(full_model.head.fc6) == 1024 * 512 * 9 + 1024 == 4_719_616
    # fc7: 1024 x 1024 + 1024
    assert _numel(full_model.head.fc7) == 1024 * 1024 + 1024 == 1_049_600
    # fc8: 21 x 1024 + 21
    assert _numel(full_model.head.fc8) == 21 * 1024 + 21 == 21_525
    assert _numel(full_model) == 20_505_429
    assert 14_714_688 + 4_719_616 + 1_049_600 + 21_525 == 20_505_429


def test_full_model_321_crop_gives_41x41_logits_dict(full_model):
    with torch.no_grad():
        out = full_model(torch.randn(1, 3, 321, 321))
    assert isinstance(out, dict)
    assert list(out) == ["out"]
    assert out["out"].shape == (1, 21, 41, 41)
    assert full_model.output_stride == 8


def _caffe_pool(n: int) -> int:
    """Caffe/PyTorch ceil-mode size of a 3x3 stride-2 pad-1 max pool."""
    out = math.ceil((n + 2 - 3) / 2) + 1
    return out - 1 if (out - 1) * 2 >= n + 1 else out


@pytest.mark.parametrize(
    ("hw", "expected"),
    [((64, 64), (9, 9)), ((97, 75), (13, 11)), ((33, 17), (5, 3)), ((321, 200), (41, 26))],
)
def test_output_stride_8_with_ceil_mode_pools(hw, expected):
    # The expected sizes follow from three ceil-mode stride-2 pools (pool4/pool5 keep the size).
    assert tuple(_caffe_pool(_caffe_pool(_caffe_pool(n))) for n in hw) == expected
    torch.manual_seed(0)
    model = build_model(NARROW).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))["out"]
    assert out.shape == (2, 21, *expected)


def test_logits_are_not_rectified():
    torch.manual_seed(0)
    model = build_model(NARROW).eval()
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        logits = model(x)["out"]
        manual = model.head.fc8(model.head.features(model.backbone(x)["out"]))
    assert (logits < 0).any(), "fc8 output must not pass through a ReLU"
    assert (logits > 0).any()
    torch.testing.assert_close(logits, manual, rtol=0, atol=0)
    # nothing follows fc8 in the head
    assert list(dict(model.head.named_children()))[-1] == "fc8"


def test_vgg_layer_order_strides_and_dilations():
    feats = VGG16DeepLab().features
    expected = []
    for block, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)):
        for i in range(1, n + 1):
            expected += [f"conv{block}_{i}", f"relu{block}_{i}"]
        expected.append(f"pool{block}")
    expected.append("pool5a")
    names = [name for name, _ in feats.named_children()]
    assert names == expected
    assert names.index("relu3_3") == names.index("conv3_3") + 1
    assert tuple(n for n in names if n.startswith("conv")) == CONV_NAMES

    mods = dict(feats.named_children())
    for block, stride in ((1, 2), (2, 2), (3, 2), (4, 1), (5, 1)):
        pool = mods[f"pool{block}"]
        assert isinstance(pool, nn.MaxPool2d)
        assert (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (3, stride, 1, True)
    for name in CONV_NAMES:
        conv = mods[name]
        d = 2 if name.startswith("conv5") else 1
        assert conv.dilation == (d, d) and conv.padding == (d, d) and conv.kernel_size == (3, 3), name
    assert isinstance(mods["pool5a"], nn.AvgPool2d)
    assert (mods["pool5a"].kernel_size, mods["pool5a"].stride, mods["pool5a"].padding) == (3, 1, 1)
    channels = [mods[n].out_channels for n in CONV_NAMES]
    assert channels == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]


def test_avg_pool_flag_adds_or_removes_pool5a():
    with_pool = [n for n, _ in VGG16DeepLab(avg_pool=True, width_mult=0.125).features.named_children()]
    without = [n for n, _ in VGG16DeepLab(avg_pool=False, width_mult=0.125).features.named_children()]
    assert with_pool[-1] == "pool5a"
    assert "pool5a" not in without
    assert with_pool[:-1] == without


def test_batch_norm_flag_inserts_bn_between_conv_and_relu():
    feats = VGG16DeepLab(batch_norm=True, width_mult=0.125).features
    names = [n for n, _ in feats.named_children()]
    bns = [m for m in feats if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 13
    for name in CONV_NAMES:
        bn = name.replace("conv", "bn")
        i = names.index(name)
        assert names[i + 1 : i + 3] == [bn, name.replace("conv", "relu")]
        assert dict(feats.named_children())[bn].num_features == dict(feats.named_children())[name].out_channels
    assert not any(isinstance(m, nn.BatchNorm2d) for m in VGG16DeepLab(width_mult=0.125).features)


def test_width_mult_scales_channels_with_floor_of_8():
    half = VGG16DeepLab(width_mult=0.5)
    convs = [m for m in half.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128, 128, 256, 256, 256, 256, 256, 256]
    assert half.feature_info["out"].channels == 256
    tiny = VGG16DeepLab(width_mult=0.05)  # 64 * 0.05 = 3.2 -> clamped to 8
    assert [m.out_channels for m in tiny.features if isinstance(m, nn.Conv2d)][:2] == [8, 8]
    model = build_model(ModelSpec("vgg16", "largefov", 5, backbone_args={"width_mult": 0.5}))
    assert model.head.fc6.in_channels == 256
    assert model.head.fc8.out_channels == 5


# ------------------------------------------------------------------ ImageNet weights


def test_load_vgg16_imagenet_converts_torchvision_weights(tv_vgg16):
    state, path, _ = tv_vgg16
    torch.manual_seed(0)
    model = build_model(SPEC)
    fc8_before = {k: v.clone() for k, v in model.head.fc8.state_dict().items()}
    load_vgg16_imagenet(model, weights_file=str(path))
    own = model.state_dict()

    for name, idx in zip(CONV_NAMES, TV_CONV_IDX, strict=True):
        assert torch.equal(own[f"backbone.features.{name}.weight"], state[f"features.{idx}.weight"]), name
        assert torch.equal(own[f"backbone.features.{name}.bias"], state[f"features.{idx}.bias"]), name

    fc6 = state["classifier.0.weight"].view(4096, 512, 7, 7)[::4, :, ::3, ::3]
    assert own["head.fc6.weight"].shape == (1024, 512, 3, 3)
    assert torch.equal(own["head.fc6.weight"], fc6)
    assert torch.equal(own["head.fc6.bias"], state["classifier.0.bias"][::4])
    assert own["head.fc7.weight"].shape == (1024, 1024, 1, 1)
    assert torch.equal(own["head.fc7.weight"][:, :, 0, 0], state["classifier.3.weight"][::4, ::4])
    assert torch.equal(own["head.fc7.bias"], state["classifier.3.bias"][::4])
    for key, value in fc8_before.items():
        assert torch.equal(own[f"head.fc8.{key}"], value), "fc8 must keep its fresh initialisation"


def test_build_model_pretrained_with_weights_file(tv_vgg16):
    state, path, _ = tv_vgg16
    model = build_model(SPEC, pretrained=True, weights_file=str(path))
    own = model.state_dict()
    assert torch.equal(own["backbone.features.conv5_3.weight"], state["features.28.weight"])
    assert torch.equal(own["head.fc7.bias"], state["classifier.3.bias"][::4])


def test_pretrained_uses_hub_cache_without_download(tv_vgg16, monkeypatch, patch_catalogue):
    state, path, hub_dir = tv_vgg16
    patch_catalogue("torchvision/vgg16.imagenet1k_v1", sha256=sha256_file(path))

    def no_download(*args, **kwargs):
        raise AssertionError("the cached file should have been used")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # restored by monkeypatch after the test
    torch.hub.set_dir(str(hub_dir))
    model, provenance = build_model_with_provenance(SPEC, pretrained=True)
    assert torch.equal(model.state_dict()["backbone.features.conv1_1.weight"], state["features.0.weight"])
    assert provenance.as_dict() == {
        "source": "catalogue", "entry": "torchvision/vgg16.imagenet1k_v1", "sha256": sha256_file(path),
        "path": str(path), "via": "torch hub cache",
    }  # fmt: skip


def test_hub_cache_file_with_another_hash_is_refused(tv_vgg16, monkeypatch):
    """The fixture's random file sits under torchvision's real name: its hash is not 397923af..."""
    _, path, hub_dir = tv_vgg16
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    torch.hub.set_dir(str(hub_dir))
    with pytest.raises(WeightsHashError) as info:
        build_model(SPEC, pretrained=True)
    message = str(info.value)
    assert str(path) in message and sha256_file(path) in message and "397923af..." in message
    assert path.is_file()  # a cached file is the user's: reported, not deleted


def test_offline_without_cache_raises_actionable_error(tmp_path, monkeypatch):
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # restored by monkeypatch after the test
    torch.hub.set_dir(str(tmp_path))
    with pytest.raises(PretrainedWeightsError) as info:
        build_model(SPEC, pretrained=True)
    message = str(info.value)
    assert calls == [VGG16_Weights.IMAGENET1K_V1.url]
    assert str(tmp_path / "checkpoints" / HUB_FILE) in message
    assert "model.weights=" in message
    assert "model.pretrained=false" in message
    assert "no network" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no partial file left to be trusted later


def test_missing_weights_file_is_named(tmp_path, monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("an explicit weights file must not fall back to a download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    missing = tmp_path / "nowhere" / "vgg16.pth"
    with pytest.raises(PretrainedWeightsError) as info:
        build_model(NARROW, pretrained=True, weights_file=str(missing))
    assert str(missing) in str(info.value)
    assert "model.pretrained=false" in str(info.value)


def test_pretrained_width_mismatch_is_reported(tv_vgg16):
    _, path, _ = tv_vgg16
    with pytest.raises(PretrainedWeightsError, match="conv1_1.weight"):
        build_model(NARROW, pretrained=True, weights_file=str(path))


# ------------------------------------------------------------------ builder errors


def test_unknown_backbone_lists_choices():
    with pytest.raises(ModelConfigError) as info:
        build_model(ModelSpec("resnet9000", "largefov", 21))
    assert "resnet9000" in str(info.value) and "vgg16" in str(info.value)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_unknown_head_lists_choices():
    with pytest.raises(ModelConfigError) as info:
        build_model(ModelSpec("vgg16", "aspp-xxl", 21, backbone_args={"width_mult": 0.125}))
    assert "aspp-xxl" in str(info.value) and "largefov" in str(info.value)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_vgg16_at_every_output_stride_with_a_stride_4_feature(output_stride: int):
    """OS 8 is DeepLab's form; 16/32 restore pool4/pool5's strides (same weights) for backbone comparisons."""
    model = build_model(ModelSpec("vgg16", "v3plus", 5, output_stride, {"width_mult": 0.125})).eval()
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 65, 65))  # Caffe's ceil-mode pools: 65 -> 33 -> 17 -> 9 ...
    assert {k: v.shape[-1] for k, v in feats.items()} == {"low_level": 17, "out": math.ceil(65 / output_stride)}
    assert model.backbone.feature_info["low_level"].channels == feats["low_level"].shape[1] == 16
    largefov = build_model(ModelSpec("vgg16", "largefov", 21, output_stride))
    assert sum(p.numel() for p in largefov.parameters()) == 20_505_429  # DeepLab-LargeFOV at every stride
    with pytest.raises(ModelConfigError, match=r"model\.output_stride=4"):
        build_model(ModelSpec("vgg16", "largefov", 21, output_stride=4))


# ------------------------------------------------------------------ optimiser groups and schedule


def test_param_groups_apply_deeplab_lr_multipliers():
    model = build_model(NARROW)
    groups = param_groups(model, lr=1e-3, weight_decay=5e-4, head_lr_mult=10, bias_lr_mult=2)
    by_id = {}
    for g in groups:
        for p in g["params"]:
            assert id(p) not in by_id, "a parameter appears in two groups"
            by_id[id(p)] = g
    assert set(by_id) == {id(p) for p in model.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))

    def check(p, lr, wd):
        assert by_id[id(p)]["lr"] == pytest.approx(lr)
        assert by_id[id(p)]["weight_decay"] == pytest.approx(wd)

    check(model.head.fc8.weight, 1e-2, 5e-4)
    check(model.head.fc8.bias, 2e-2, 0.0)
    for name in CONV_NAMES:
        conv = model.backbone.features.get_submodule(name)
        check(conv.weight, 1e-3, 5e-4)
        check(conv.bias, 2e-3, 0.0)
    # fc6/fc7 come from ImageNet's fc layers: no head multiplier
    for conv in (model.head.fc6, model.head.fc7):
        check(conv.weight, 1e-3, 5e-4)
        check(conv.bias, 2e-3, 0.0)
    assert len(groups) == 4


def test_backbone_lr_mult_scales_the_encoders_step_alone():
    """One plain SGD step: every backbone weight moves by lr * 0.1 * grad, every head weight by lr * grad."""
    torch.manual_seed(0)
    model = build_model(NARROW)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    groups = param_groups(model, lr=0.5, weight_decay=0.0, head_lr_mult=1, bias_lr_mult=1, backbone_lr_mult=0.1)
    opt = torch.optim.SGD(groups, lr=0.5, momentum=0.0)
    model(torch.randn(2, 3, 33, 33))["out"].square().mean().backward()
    opt.step()
    moved = 0
    for name, p in model.named_parameters():
        if p.grad is None or not p.grad.abs().sum():
            continue
        mult = 0.1 if name.startswith("backbone.") else 1.0
        assert torch.allclose(before[name] - p.detach(), 0.5 * mult * p.grad, rtol=1e-4, atol=1e-7), name
        moved += 1
    assert moved == len(list(model.parameters()))

    class NoBackbone(nn.Linear):
        def classifier_parameters(self):
            return iter(())

    with pytest.raises(ConfigError, match="backbone_lr_mult=0.1: NoBackbone has no backbone"):
        param_groups(NoBackbone(2, 2), lr=1.0, weight_decay=0.0, backbone_lr_mult=0.1)


def test_poly_scheduler_follows_power_0_9():
    model = build_model(NARROW)
    groups = param_groups(model, lr=1e-3, weight_decay=5e-4)
    bases = [g["lr"] for g in groups]
    opt = torch.optim.SGD(groups, lr=1e-3, momentum=0.9)
    sched = poly_scheduler(opt, max_iters=20, power=0.9)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx(bases)
    seen = {}
    for k in range(1, 21):
        opt.step()
        sched.step()
        for base, g in zip(bases, opt.param_groups, strict=True):
            assert g["lr"] == pytest.approx(base * (1 - k / 20) ** 0.9, rel=1e-9, abs=1e-15)
        seen[k] = opt.param_groups[0]["lr"]
    assert all(g["lr"] == 0 for g in opt.param_groups)
    # 1e-3 * 0.75 ** 0.9 and 1e-3 * 0.5 ** 0.9, written out
    assert seen[5] == pytest.approx(7.718895e-4, rel=1e-6)
    assert seen[10] == pytest.approx(5.358867e-4, rel=1e-6)
