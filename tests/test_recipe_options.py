"""The options that make the Cityscapes/ADE20K recipes the published ones (issue 24), each against an
independent reference: a hand computation, PIL/colorsys, mmengine's recursive PolyLR, timm's ResNet-C.

Every test here fails if its option is a no-op: the crop rule's retries are counted, the distortion's
steps are compared with another library's colour maths, the floor of the schedule is the last LR, the
auxiliary loss is weighed by hand, the deep stem's weights reproduce timm's features.
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from deeplab_cli.config import checks, models
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.data import photometric
from deeplab_cli.data.photometric import PhotoMetricDistortion, scale_saturation
from deeplab_cli.data.transforms import PadCrop, RandomScale, fit_factor, train_transforms
from deeplab_cli.engine.eval.inference import predict_probabilities
from deeplab_cli.engine.train.losses import LossSpec, loss_terms, total_loss
from deeplab_cli.engine.train.optim import poly_scheduler
from deeplab_cli.errors import ConfigError
from deeplab_cli.models.builder import ModelSpec, build_model
from deeplab_cli.models.registry import ModelConfigError

FILL = {tv_tensors.Image: (0, 0, 0), tv_tensors.Mask: 255}

# ------------------------------------------------------------------ cat_max_ratio (mmseg RandomCrop)


def _two_class_pair() -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """20x40: columns 0-29 class 1, 30-39 class 2. A 20x20 crop at left L holds (L-10)/20 of class 2,
    so only L = 16..20 (5 of the 21 positions) have no class above 75%."""
    mask = torch.ones(20, 40, dtype=torch.int64)
    mask[:, 30:] = 2
    return tv_tensors.Image(torch.zeros(3, 20, 40, dtype=torch.uint8)), tv_tensors.Mask(mask)


def _dominated_share(ratio: float, seeds: int = 300) -> float:
    image, mask = _two_class_pair()
    crop = PadCrop((20, 20), FILL, cat_max_ratio=ratio)
    dominated = 0
    for seed in range(seeds):
        torch.manual_seed(seed)
        _, out = crop(image, mask)
        counts = torch.bincount(out.flatten())[1:]
        dominated += int(counts.max() / counts.sum() >= 0.75 or (counts > 0).sum() < 2)
    return dominated / seeds


def test_cat_max_ratio_redraws_crops_that_one_class_dominates() -> None:
    # without the rule 16/21 = 76% of crops are dominated; with 10 re-draws (16/21)^11 = 5%
    assert _dominated_share(1.0) == pytest.approx(16 / 21, abs=0.07)
    assert _dominated_share(0.75) == pytest.approx((16 / 21) ** 11, abs=0.04)


def test_cat_max_ratio_ignores_255_and_keeps_the_11th_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[int] = []
    original = PadCrop._draw

    def counted(self, h, w):  # noqa: ANN001, ANN202
        draws.append(1)
        return original(self, h, w)

    monkeypatch.setattr(PadCrop, "_draw", counted)
    # every crop: 20 px of class 1, 20 of class 2, 360 ignored -> 50%/50%: kept at once
    mask = torch.full((20, 40), 255, dtype=torch.int64)
    mask[0], mask[1] = 1, 2
    image = tv_tensors.Image(torch.zeros(3, 20, 40, dtype=torch.uint8))
    PadCrop((20, 20), FILL, 0.75)(image, tv_tensors.Mask(mask))
    assert len(draws) == 1, "ignored pixels must not count towards a class's share"
    draws.clear()
    one_class = tv_tensors.Mask(torch.ones(20, 40, dtype=torch.int64))
    _, out = PadCrop((20, 20), FILL, 0.75)(image, one_class)
    assert len(draws) == 11 and out.shape == (20, 20), "10 re-draws, then the 11th crop is kept"


def test_padding_is_bottom_right_like_every_source() -> None:
    image = tv_tensors.Image(torch.full((3, 10, 12), 7, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.ones(10, 12, dtype=torch.int64))
    out_image, out_mask = PadCrop((16, 16), {tv_tensors.Image: (9, 9, 9), tv_tensors.Mask: 255})(image, mask)
    assert torch.equal(out_mask[:10, :12], torch.ones(10, 12, dtype=torch.int64))
    assert (out_mask[10:] == 255).all() and (out_mask[:, 12:] == 255).all()
    assert (out_image[:, :10, :12] == 7).all() and (out_image[:, 10:] == 9).all()


# ------------------------------------------------------------------ PhotoMetricDistortion


def _colorsys_saturation(rgb: np.ndarray, alpha: float) -> np.ndarray:
    out = np.empty_like(rgb)
    for idx in np.ndindex(rgb.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*(rgb[idx] / 255.0))
        out[idx] = [round(255 * c) for c in colorsys.hsv_to_rgb(h, min(1.0, s * alpha), v)]
    return out


@pytest.mark.parametrize("alpha", [0.5, 0.8, 1.4])
def test_saturation_is_hsv_saturation_as_colorsys_computes_it(alpha: float) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ours = scale_saturation(torch.from_numpy(rgb).permute(2, 0, 1), alpha).permute(1, 2, 0).numpy()
    theirs = _colorsys_saturation(rgb, alpha)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1
    assert np.abs(ours.astype(int) - rgb.astype(int)).max() > 20  # and it did change the image


def test_each_distortion_step_against_a_hand_or_colorsys_computation() -> None:
    grey = tv_tensors.Image(torch.full((3, 2, 2), 128, dtype=torch.uint8))
    step = PhotoMetricDistortion()
    out = step.transform(grey, {"brightness": 20.7, "contrast_first": True})
    assert (out == 148).all()  # 128 + 20.7, truncated as np.uint8 does
    out = step.transform(grey, {"contrast": 1.3, "contrast_first": False})
    assert (out == 166).all()  # 128 * 1.3 = 166.4
    out = step.transform(tv_tensors.Image(torch.full((3, 1, 1), 200, dtype=torch.uint8)),
                         {"brightness": 80.0, "contrast_first": True})  # fmt: skip
    assert (out == 255).all()  # clipped
    red = tv_tensors.Image(torch.tensor([200, 60, 40], dtype=torch.uint8).view(3, 1, 1))
    out = step.transform(red, {"hue": 15, "contrast_first": True}).flatten().tolist()
    h, s, v = colorsys.rgb_to_hsv(200 / 255, 60 / 255, 40 / 255)
    expected = [round(255 * c) for c in colorsys.hsv_to_rgb((h + 15 / 180) % 1.0, s, v)]  # 15 OpenCV units = 30 deg
    assert max(abs(a - b) for a, b in zip(out, expected, strict=True)) <= 1


def test_contrast_position_depends_on_the_mode() -> None:
    pixel = tv_tensors.Image(torch.tensor([200, 100, 90], dtype=torch.uint8).view(3, 1, 1))
    params = {"contrast": 1.5, "saturation": 0.5}
    step = PhotoMetricDistortion()
    first = step.transform(pixel, {**params, "contrast_first": True})
    last = step.transform(pixel, {**params, "contrast_first": False})
    contrast = lambda x: (x.float() * 1.5).clamp(0, 255).to(torch.uint8)  # noqa: E731
    assert torch.equal(first, scale_saturation(contrast(pixel), 0.5))
    assert torch.equal(last, contrast(scale_saturation(pixel, 0.5)))
    assert not torch.equal(first, last)  # clipping makes the order matter


def test_distortion_draws_mmsegs_ranges_each_half_the_time() -> None:
    torch.manual_seed(0)
    step = PhotoMetricDistortion()
    drawn = [step.make_params([]) for _ in range(4000)]
    for key, (low, high) in (("brightness", (-32, 32)), ("contrast", (0.5, 1.5)), ("saturation", (0.5, 1.5)),
                             ("hue", (-18, 17))):  # fmt: skip
        values = [p[key] for p in drawn if key in p]
        assert len(values) / len(drawn) == pytest.approx(0.5, abs=0.03), key
        assert low <= min(values) and max(values) <= high, key
        assert min(values) < low + 0.1 * (high - low) and max(values) > high - 0.1 * (high - low), key
    assert {p["hue"] for p in drawn if "hue" in p} == set(range(-18, 18))  # numpy randint(-18, 18): -18..17
    assert sum(p["contrast_first"] for p in drawn) / len(drawn) == pytest.approx(0.5, abs=0.03)
    assert photometric.BRIGHTNESS_DELTA == 32 and photometric.HUE_DELTA == 18


def test_train_transforms_distort_the_image_only_when_asked() -> None:
    rgb = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 24, 24), dtype=np.uint8))
    image, mask = tv_tensors.Image(rgb), tv_tensors.Mask(torch.randint(0, 5, (24, 24)))
    outs = {}
    for on in (False, True):
        torch.manual_seed(3)
        outs[on] = train_transforms(24, scale_range=(1.0, 1.0), flip=False, photometric=on)(image, mask)
    assert torch.equal(outs[False][1], outs[True][1])  # the mask is untouched
    assert not torch.allclose(outs[False][0], outs[True][0])


# ------------------------------------------------------------------ resizing: fit (ADE20K) and stepped scales


@pytest.mark.parametrize(("size", "fitted"), [((400, 1000), (512, 1280)), ((1000, 400), (1280, 512)),
                                              ((300, 600), (512, 1024)), ((600, 300), (1024, 512))])  # fmt: skip
def test_ade20k_fit_rule_on_wide_and_tall_images(size: tuple[int, int], fitted: tuple[int, int]) -> None:
    """mmcv rescale_size((2048, 512)): factor min(2048 / long, 512 / short), then x ratio."""
    h, w = size
    assert fit_factor(size, (2048, 512)) == pytest.approx(min(2048 / max(h, w), 512 / min(h, w)))
    image = tv_tensors.Image(torch.zeros(3, h, w, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(h, w, dtype=torch.int64))
    out, out_mask = RandomScale(1.0, 1.0, fit=(2048, 512))(image, mask)
    assert tuple(out.shape[-2:]) == fitted and tuple(out_mask.shape) == fitted
    torch.manual_seed(0)
    out, _ = RandomScale(2.0, 2.0, fit=(2048, 512))(image, mask)  # the ratio multiplies the fitted size
    assert tuple(out.shape[-2:]) == (2 * fitted[0], 2 * fitted[1])


def test_evaluation_runs_at_the_fitted_size_and_answers_at_the_stored_one() -> None:
    seen: list[tuple[int, int]] = []

    class Spy(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            seen.append(tuple(x.shape[-2:]))
            return {"out": torch.zeros(x.shape[0], 3, x.shape[-2] // 4, x.shape[-1] // 4)}

    probs = predict_probabilities(Spy(), torch.zeros(1, 3, 400, 1000), fit=(2048, 512))
    assert seen == [(512, 1280)] and probs.shape == (1, 3, 400, 1000)
    predict_probabilities(Spy(), torch.zeros(1, 3, 400, 1000), scales=(0.5,), fit=(2048, 512))
    assert seen[-1] == (256, 640)


def test_stepped_scales_take_only_the_seven_tf_values() -> None:
    image = tv_tensors.Image(torch.zeros(3, 100, 100, dtype=torch.uint8))
    scale = RandomScale(0.5, 2.0, step=0.25)
    sizes = set()
    for seed in range(300):
        torch.manual_seed(seed)
        sizes.add(scale(image).shape[-1])
    assert sizes == {50, 75, 100, 125, 150, 175, 200}
    torch.manual_seed(0)
    continuous = {RandomScale(0.5, 2.0)(image).shape[-1] for _ in range(50)}
    assert len(continuous) > 20


def test_bad_augmentation_values_are_one_line_errors() -> None:
    for override, key in (("dataset.scale_step=0", "dataset.scale_step"), ("dataset.cat_max_ratio=1.5",
                          "dataset.cat_max_ratio"), ("dataset.fit_size=[512,2048]", "dataset.fit_size")):  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            checks.validate(compose_train([override]))


# ------------------------------------------------------------------ poly with a floor (mmseg eta_min)


def test_poly_floor_matches_mmengines_recursive_polylr() -> None:
    """mmengine's PolyLR steps ``lr = (lr - eta_min) * (1 - 1 / (T - t + 1)) ** p + eta_min``; ours is closed-form."""
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": [params[0]], "lr": 0.01}, {"params": [params[1]], "lr": 0.1}], lr=0.01)
    total, eta_min, power = 50, 1e-4, 0.9
    sched = poly_scheduler(opt, total, power, min_lr=eta_min)
    expected = [0.01, 0.1]
    for t in range(1, total + 1):
        opt.step()
        sched.step()
        expected = [(lr - eta_min) * (1 - 1 / (total - t + 1)) ** power + eta_min for lr in expected]
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(expected, rel=1e-9, abs=1e-12), t
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([eta_min, eta_min])
    plain = poly_scheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01), total, power)
    for _ in range(total):
        plain.optimizer.step()
        plain.step()
    assert plain.optimizer.param_groups[0]["lr"] == 0.0  # without a floor the DeepLab papers' poly ends at 0


# ------------------------------------------------------------------ the auxiliary FCN head


def _mmseg_model(**aux: float) -> torch.nn.Module:
    spec = ModelSpec("resnet50_v1c", "v3plus", 5, 8,
                     head_args={"channels": 16, "low_level_out": 8, "separable": True, "project_kernel": 3,
                                "aspp_dropout": 0.0, "classifier_dropout": 0.1},
                     aux_head={"channels": 8, "dropout": 0.1, **aux})  # fmt: skip
    torch.manual_seed(0)
    return build_model(spec)


def test_aux_head_loss_is_weighted_and_absent_at_inference() -> None:
    model = _mmseg_model()
    x, labels = torch.randn(2, 3, 33, 33), torch.randint(0, 5, (2, 33, 33))
    model.train()
    out = model(x)
    assert set(out) == {"out", "aux_head"} and out["aux_head"].shape == (2, 5, 5, 5)  # stage 3 at OS 8
    ce = lambda logits: F.cross_entropy(F.interpolate(logits, size=(33, 33), mode="bilinear"), labels)  # noqa: E731
    expected = ce(out["out"]) + 0.4 * ce(out["aux_head"])
    torch.testing.assert_close(total_loss(out, labels, "upsample", LossSpec()), expected)
    terms = loss_terms(out, labels, "upsample", LossSpec(aux_head_weight=1.0))
    torch.testing.assert_close(terms["aux_head"], ce(out["aux_head"]))
    model.eval()
    with torch.no_grad():
        before = model(x)
        torch.nn.init.normal_(model.aux_head.classifier.weight, std=10.0)  # inference must not see it
        after = model(x)
    assert set(before) == {"out"}
    torch.testing.assert_close(before["out"], after["out"])


def test_aux_head_parameters_by_hand() -> None:
    model = _mmseg_model()
    count = sum(p.numel() for p in model.aux_head.parameters())
    assert count == 1024 * 8 * 9 + 2 * 8 + 8 * 5 + 5  # conv3x3 (no bias) + BN + classifier


def test_aux_head_is_not_in_the_export(tmp_path: Path) -> None:
    from deeplab_cli.deploy.wrapper import DeployModel

    model = _mmseg_model().eval()
    program = torch.export.export(DeployModel(model, [0.5] * 3, [0.5] * 3), (torch.zeros(1, 3, 33, 33,
                                  dtype=torch.uint8),), strict=False)  # fmt: skip
    names = list(program.graph_signature.parameters) + list(program.graph_signature.buffers)
    assert names and not [n for n in names if "aux_head" in n]
    assert any("head.classifier" in n for n in names)


def test_aux_head_needs_resnet_stage3_and_single_scale() -> None:
    spec = ModelSpec("mobilenet_v2", "aspp_v3", 3, 16, head_args={"channels": 8}, aux_head={"channels": 8})
    with pytest.raises(ModelConfigError, match=r"model.aux_head needs the backbone's stage-3 features"):
        build_model(spec)
    spec = ModelSpec("resnet50", "aspp_v3", 3, 8, head_args={"channels": 8}, aux_head={"channels": 8},
                     scales={"mode": "msc", "factors": [1.0, 0.5]})  # fmt: skip
    with pytest.raises(ModelConfigError, match="multi-scale wrappers would drop"):
        build_model(spec)


# ------------------------------------------------------------------ ResNetV1c and the 512-channel separable head


def test_deep_stem_shapes_and_timm_resnet50c_features() -> None:
    """Our ResNetV1c-50 with timm's resnet50c weights (through the loader's key map) computes timm's features."""
    timm = pytest.importorskip("timm")
    from deeplab_cli.models.pretrained import _resnet_v1c_keys, load_into

    peer = timm.create_model("resnet50c", pretrained=False).eval()
    ours = build_model(ModelSpec("resnet50_v1c", "aspp_v3", 3, 32, head_args={"channels": 8})).eval()
    assert [tuple(m.weight.shape) for m in ours.backbone.stem if isinstance(m, torch.nn.Conv2d)] == [
        (32, 3, 3, 3), (32, 32, 3, 3), (64, 32, 3, 3)]  # fmt: skip
    load_into(ours, _resnet_v1c_keys(peer.state_dict()), "resnet50c")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert ours.backbone.stem(x).shape == (1, 64, 32, 32)
        torch.testing.assert_close(ours.backbone(x)["out"], peer.forward_features(x), rtol=1e-4, atol=1e-4)
    mapped = _resnet_v1c_keys(peer.state_dict())
    mmcv_layout = {"state_dict": {k.removeprefix("backbone."): v for k, v in mapped.items()}}
    from_mmcv = _resnet_v1c_keys(mmcv_layout)  # mmcv's own names (stem.*, under state_dict) load as they are
    assert from_mmcv.keys() == mapped.keys() and all(torch.equal(from_mmcv[k], mapped[k]) for k in mapped)


def test_resnet101_v1c_parameter_count_is_timms() -> None:
    """42,519,392 without the classifier: torchvision R101's 42,500,160 - 9,536 (7x7 stem) + 28,768 (3 convs)."""
    model = build_model(ModelSpec("resnet101_v1c", "aspp_v3", 3, 16, head_args={"channels": 8}))
    assert sum(p.numel() for p in model.backbone.parameters()) == 42_500_160 - (9_408 + 128) + (
        3 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 2 * (32 + 32 + 64))  # fmt: skip
    assert sum(p.numel() for p in model.backbone.parameters()) == 42_519_392


def test_mmseg_head_parameter_count_by_hand() -> None:
    """DepthwiseSeparableASPPHead(2048 -> 512, dilations 1/12/24/36, c1 256 -> 48) + classifier, 19 classes."""
    cfg = compose_train(["experiment=deeplabv3plus_resnet101_cityscapes", "model.pretrained=false"])
    spec = models.model_spec(cfg)
    head = build_model(spec).head
    c, cin, bn = 512, 2048, lambda n: 2 * n  # noqa: E731
    sep = lambda a, b: a * 9 + bn(a) + a * b + bn(b)  # noqa: E731  depthwise 3x3 + BN, pointwise 1x1 + BN
    expected = (
        cin * c
        + bn(c)  # image pooling 1x1
        + cin * c
        + bn(c)  # 1x1 branch
        + 3 * sep(cin, c)  # dilations 12, 24, 36
        + 5 * c * c * 9
        + bn(c)  # 3x3 bottleneck over the concatenation
        + 256 * 48
        + bn(48)  # c1 bottleneck
        + sep(c + 48, c)
        + sep(c, c)  # separable decoder
        + c * 19
        + 19  # classifier
    )
    assert sum(p.numel() for p in head.parameters()) == expected
    dilations = [head.aspp.convs[i][0].dilation for i in (1, 2, 3)]
    assert dilations == [(12, 12), (24, 24), (36, 36)]


def test_fit_size_with_batched_evaluation_is_refused() -> None:
    from deeplab_cli.config.evaluation import fit_for

    dataset = compose_train(["dataset.fit_size=[64,32]"]).dataset
    assert fit_for(dataset, 1) == (64, 32)
    with pytest.raises(ConfigError, match=r"dataset.fit_size=\[64, 32\] .* use eval.batch_size=1"):
        fit_for(dataset, 2)
