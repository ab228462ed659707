"""Multi-scale wrappers: MSC max/mean fusion and attention to scale (shapes, fusion, sharing, losses)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeplab_cli.engine.train.losses import total_loss
from deeplab_cli.engine.train.optim import param_groups
from deeplab_cli.models.builder import ModelSpec, build_model
from deeplab_cli.models.multiscale import AttentionToScale, MultiScaleInputs, resize, scaled_size
from deeplab_cli.models.segmenter import DeepLab

TINY = ModelSpec(
    "vgg16", "largefov", 5, backbone_args={"width_mult": 0.125}, head_args={"channels": 16, "dropout": 0.0}
)
SCALES = [1.0, 0.75, 0.5]
NUM_CLASSES = 5


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny() -> DeepLab:
    torch.manual_seed(0)
    return build_model(TINY)


def _image(h: int = 65, w: int = 65) -> Tensor:
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1))


def _labels(h: int = 65, w: int = 65) -> Tensor:
    g = torch.Generator().manual_seed(2)
    labels = torch.randint(0, NUM_CLASSES, (1, h, w), generator=g)
    labels[:, :5] = 255  # some ignored pixels
    return labels


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _hand_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """DeepLab v1/v2 loss written out: labels shrunk (nearest, pixel centres) to the logits, CE ignoring 255."""
    small = F.interpolate(labels[:, None].float(), size=logits.shape[-2:], mode="nearest-exact")[:, 0].long()
    return F.cross_entropy(logits, small, ignore_index=255)


def _hand_branches(model: DeepLab, x: Tensor, scales: list[float]) -> list[Tensor]:
    """Native-size logits of the plain model on each rescaled input."""
    return [model(resize(x, scaled_size(x.shape, s)))["out"] for s in scales]


def _hand_scores(model: DeepLab, x: Tensor, scales: list[float]) -> list[Tensor]:
    """Score maps per scale from features()/classify(), resized to the 1.0 branch's size."""
    scores = [
        model.head.classify(model.head.features(model.backbone(resize(x, scaled_size(x.shape, s)))["out"]))
        for s in scales
    ]
    size = scores[scales.index(1.0)].shape[-2:]
    return [resize(s, size) for s in scores]


def _wrap(kind: str, model: DeepLab, scales: list[float]) -> nn.Module:
    if kind == "msc":
        return MultiScaleInputs(model, scales)
    return AttentionToScale(model, scales, hidden=8, dropout=0.0)


# --------------------------------------------------------------------------- shared


def test_scaled_size_rounds_half_up_like_caffe_interp() -> None:
    assert scaled_size((1, 3, 321, 321), 0.75) == (241, 241)
    assert scaled_size((1, 3, 321, 321), 0.5) == (161, 161)  # Python's round() would give 160
    assert scaled_size((57, 71), 0.5) == (29, 36)
    assert scaled_size((3, 3), 0.01) == (1, 1)


@pytest.mark.parametrize("kind", ["msc", "attention"])
@pytest.mark.parametrize(
    ("scales", "match"),
    [
        ([1.0], "MSC needs >= 2 scales"),
        ([0.75, 0.5], "must include 1.0"),
        ([1.0, 1.0], "distinct"),
        ([1.0, -1], "positive"),
    ],
)
def test_invalid_scales_raise(kind: str, scales: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        _wrap(kind, _tiny(), scales)
    assert "scales=" in str(err.value)


def test_unknown_fusion_raises() -> None:
    with pytest.raises(ValueError, match="fusion='sum' is unknown"):
        MultiScaleInputs(_tiny(), SCALES, fusion="sum")


@pytest.mark.parametrize("kind", ["msc", "attention"])
@pytest.mark.parametrize("scales", [[1.0, 0.5], SCALES])
def test_backbone_runs_once_per_scale(kind: str, scales: list[float]) -> None:
    model = _tiny()
    wrapper = _wrap(kind, model, scales)
    calls = []
    model.backbone.register_forward_hook(lambda *_: calls.append(1))
    for training in (True, False):
        calls.clear()
        wrapper.train(training)(_image())
        assert len(calls) == len(scales), training


@pytest.mark.parametrize("kind", ["msc", "attention"])
def test_parameters_are_shared_across_scales(kind: str) -> None:
    counts = []
    for scales in ([1.0, 0.5], SCALES, [1.25, 1.0, 0.75, 0.5]):
        model = _tiny()
        wrapper = _wrap(kind, model, scales)
        extra = _numel(wrapper.attention) if kind == "attention" else 0
        assert _numel(wrapper) == _numel(model) + extra
        assert len(wrapper.state_dict()) == len(model.state_dict()) + (4 if kind == "attention" else 0)
        counts.append(len(list(wrapper.parameters())))
    assert len(set(counts)) == 1, counts


@pytest.mark.parametrize("kind", ["msc", "attention"])
def test_wrapper_exposes_model_properties(kind: str) -> None:
    model = _tiny()
    wrapper = _wrap(kind, model, SCALES)
    assert wrapper.backbone is model.backbone
    assert wrapper.head is model.head
    assert wrapper.output_stride == model.output_stride == 8
    assert wrapper.num_classes == NUM_CLASSES


# --------------------------------------------------------------------------- MSC


@pytest.mark.parametrize("size", [(65, 65), (57, 71)])
@pytest.mark.parametrize("scales", [[1.0, 0.5], SCALES, [0.5, 1.0, 1.5]])
def test_msc_output_sizes(size: tuple[int, int], scales: list[float]) -> None:
    model = _tiny()
    x = _image(*size)
    out = MultiScaleInputs(model, scales).train()(x)
    assert out["out"].shape == model(x)["out"].shape
    assert [a.shape for a in out["aux"]] == [b.shape for b in _hand_branches(model, x, scales)]


@pytest.mark.parametrize("fusion", ["max", "mean"])
@pytest.mark.parametrize("size", [(65, 65), (57, 71)])
def test_msc_fusion_matches_hand_computation(fusion: str, size: tuple[int, int]) -> None:
    model = _tiny()
    x = _image(*size)
    out = MultiScaleInputs(model, SCALES, fusion=fusion).train()(x)
    branches = _hand_branches(model, x, SCALES)
    resized = [resize(b, branches[0].shape[-2:]) for b in branches]
    if fusion == "max":
        expected = torch.maximum(torch.maximum(resized[0], resized[1]), resized[2])
    else:
        expected = (resized[0] + resized[1] + resized[2]) / 3
    torch.testing.assert_close(out["out"], expected)
    for got, want in zip(out["aux"], branches, strict=True):
        torch.testing.assert_close(got, want)
    assert not torch.allclose(resized[0], resized[2])  # the scales really differ


def test_msc_eval_returns_only_out() -> None:
    model = _tiny()
    x = _image()
    out = MultiScaleInputs(model, SCALES).eval()(x)
    assert list(out) == ["out"]
    assert out["out"].shape == model(x)["out"].shape


@pytest.mark.parametrize("scales", [[1.0, 0.5], SCALES])
def test_msc_loss_adds_one_term_per_scale(scales: list[float]) -> None:
    model = _tiny()
    x, labels = _image(), _labels()
    out = MultiScaleInputs(model, scales).train()(x)
    assert len(out["aux"]) == len(scales)
    expected = _hand_ce(out["out"], labels) + sum(_hand_ce(b, labels) for b in _hand_branches(model, x, scales))
    torch.testing.assert_close(total_loss(out, labels, "nearest"), expected)


def test_msc_classifier_parameters_delegate_and_get_head_lr() -> None:
    model = _tiny()
    wrapper = MultiScaleInputs(model, SCALES)
    assert [id(p) for p in wrapper.classifier_parameters()] == [id(p) for p in model.head.fc8.parameters()]
    groups = param_groups(wrapper, lr=1.0, weight_decay=0.0)
    head_ids = {id(p) for g in groups if g["lr"] >= 10.0 for p in g["params"]}
    assert head_ids == {id(p) for p in model.head.fc8.parameters()}


# --------------------------------------------------------------------------- attention to scale


def _force_attention(wrapper: AttentionToScale, k: int) -> None:
    """Make the softmax pick scale ``k`` everywhere: zero last-conv weights, logit 0 for k and -1000 elsewhere."""
    last = wrapper.attention[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.fill_(-1000.0)
        last.bias[k] = 0.0


@pytest.mark.parametrize("scales", [[1.0, 0.5], [0.5, 1.0, 0.75]])
def test_attention_weight_s_selects_score_map_s(scales: list[float]) -> None:
    model = _tiny()
    x = _image(57, 71)
    wrapper = AttentionToScale(model, scales, hidden=8, dropout=0.0).eval()
    with torch.no_grad():
        scores = _hand_scores(model, x, scales)
        for a, b in itertools.combinations(scores, 2):
            assert not torch.allclose(a, b)  # otherwise picking the wrong map would go unnoticed
        for k in range(len(scales)):
            _force_attention(wrapper, k)
            out = wrapper(x)
            assert (out["attention"].argmax(dim=1) == k).all()
            torch.testing.assert_close(out["attention"].amax(dim=1), torch.ones_like(out["attention"][:, 0]))
            torch.testing.assert_close(out["out"], scores[k])


@pytest.mark.parametrize("scales", [[1.0, 0.5], SCALES])
def test_attention_weights_are_a_distribution_and_start_near_uniform(scales: list[float]) -> None:
    out = AttentionToScale(_tiny(), scales).eval()(_image())
    weights = out["attention"]
    assert weights.shape[1] == len(scales)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones_like(weights[:, 0]))
    assert (weights - 1 / len(scales)).abs().max() < 0.05


def test_attention_eval_keys_and_odd_input() -> None:
    model = _tiny()
    x = _image(57, 71)
    out = AttentionToScale(model, SCALES).eval()(x)
    assert list(out) == ["out", "attention"]
    size = model(x)["out"].shape[-2:]
    assert out["out"].shape == (1, NUM_CLASSES, *size)
    assert out["attention"].shape == (1, len(SCALES), *size)


@pytest.mark.parametrize("scales", [[1.0, 0.5], SCALES])
def test_attention_extra_supervision_adds_one_term_per_scale(scales: list[float]) -> None:
    model = _tiny()
    x, labels = _image(), _labels()
    out = AttentionToScale(model, scales, esup=True, dropout=0.0).train()(x)
    assert len(out["aux"]) == len(scales)
    scores = _hand_scores(model, x, scales)
    for got, want in zip(out["aux"], scores, strict=True):
        torch.testing.assert_close(got, want)
    expected = _hand_ce(out["out"], labels) + sum(_hand_ce(s, labels) for s in scores)
    torch.testing.assert_close(total_loss(out, labels, "nearest"), expected)


def test_attention_without_extra_supervision_has_no_aux_terms() -> None:
    x, labels = _image(), _labels()
    out = AttentionToScale(_tiny(), SCALES, esup=False).train()(x)
    assert out["aux"] == []
    torch.testing.assert_close(total_loss(out, labels, "nearest"), _hand_ce(out["out"], labels))


class _PlainHead(nn.Module):
    """A head with only forward(): no features/classify split to attend over."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, NUM_CLASSES, 1)

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        return self.conv(feats["out"])


def test_attention_requires_features_classify_head() -> None:
    backbone = _tiny().backbone
    model = DeepLab(backbone, _PlainHead(backbone.feature_info["out"].channels), NUM_CLASSES)
    with pytest.raises(ValueError, match="_PlainHead .*features, classify, out_channels"):
        AttentionToScale(model, SCALES)


def test_attention_classifier_parameters_include_attention_layers() -> None:
    model = _tiny()
    wrapper = AttentionToScale(model, SCALES)
    ids = {id(p) for p in wrapper.classifier_parameters()}
    expected = {id(p) for p in itertools.chain(model.head.fc8.parameters(), wrapper.attention.parameters())}
    assert ids == expected
    assert len(list(wrapper.attention.parameters())) == 4  # two convs, weights and biases
    groups = param_groups(wrapper, lr=1.0, weight_decay=0.0)
    head_ids = {id(p) for g in groups if g["lr"] >= 10.0 for p in g["params"]}
    assert head_ids == expected
