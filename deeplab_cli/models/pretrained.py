"""ImageNet initialisation from torchvision weights, with offline-friendly errors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .backbones.vgg import CONV_NAMES
from .weights.catalogue import get_entry
from .weights.provenance import Provenance
from .weights.resolve import PretrainedWeightsError, entry_file

__all__ = ["PretrainedWeightsError", "load_weights_file", "load_vgg16_imagenet", "load_torchvision_imagenet"]


def load_weights_file(entry_id: str, weights_file: str | None, what: str) -> tuple[dict[str, Tensor], Provenance]:
    """Load ``weights_file`` if given, else the catalogue entry's file: installed, cached or downloaded.

    Every file is checked against the catalogue's sha256 (a user's own ``model.weights``
    is identified by it, not refused), and any failure becomes one message that says
    which file is needed and where to put it, because offline clusters are the norm.
    """
    path, provenance = entry_file(get_entry(entry_id), weights_file, what)
    return torch.load(path, map_location="cpu", weights_only=True), provenance


def convert_vgg16_imagenet(state: dict[str, Tensor], fc_prefixes: tuple[str, ...] = ("head.",)) -> dict[str, Tensor]:
    """Map torchvision's VGG16 state dict onto our backbone and every fc6/fc7 under ``fc_prefixes``.

    fc6/fc7 are subsampled exactly as the DeepLab authors did: fc6 (4096 x 512x7x7)
    keeps every 4th filter and every 3rd spatial tap -> 1024 x 512x3x3 (used with
    dilation 12 = 4 x 3); fc7 (4096x4096) keeps every 4th row and column. DeepLab v2's
    VGG ASPP initialises each branch's fc6/fc7 from the same converted layers.
    """
    convs = [k[: -len(".weight")] for k in state if k.startswith("features.") and k.endswith(".weight")]
    if len(convs) != len(CONV_NAMES):
        raise PretrainedWeightsError(f"expected {len(CONV_NAMES)} VGG16 convs, found {len(convs)}")
    out: dict[str, Tensor] = {}
    for src, name in zip(convs, CONV_NAMES, strict=True):
        out[f"backbone.features.{name}.weight"] = state[f"{src}.weight"]
        out[f"backbone.features.{name}.bias"] = state[f"{src}.bias"]
    fc6 = state["classifier.0.weight"].view(4096, 512, 7, 7)[::4, :, ::3, ::3].contiguous()
    fc7 = state["classifier.3.weight"][::4, ::4].contiguous()[:, :, None, None]
    for prefix in fc_prefixes:
        out[f"{prefix}fc6.weight"], out[f"{prefix}fc6.bias"] = fc6, state["classifier.0.bias"][::4].contiguous()
        out[f"{prefix}fc7.weight"], out[f"{prefix}fc7.bias"] = fc7, state["classifier.3.bias"][::4].contiguous()
    return out


def _resnet_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"backbone.{k}": v for k, v in state.items() if not k.startswith("fc.")}


#: timm's ResNet-C stem (``conv1`` a Sequential, its last BN outside as ``bn1``) -> mmcv's ``stem.*`` names
_TIMM_DEEP_STEM = {
    "conv1.0.": "stem.0.",
    "conv1.1.": "stem.1.",
    "conv1.3.": "stem.3.",
    "conv1.4.": "stem.4.",
    "conv1.6.": "stem.6.",
    "bn1.": "stem.7.",
}


def _resnet_v1c_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """ResNetV1c ImageNet weights in mmcv's layout (``stem.*``, maybe under ``state_dict``) or timm's
    (``resnet101c.gluon_in1k``: ``conv1.0`` ... ``bn1``) -> our backbone; the classifier is dropped."""
    state = state.get("state_dict", state)  # type: ignore[assignment]
    out = {}
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        for old, new in _TIMM_DEEP_STEM.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[f"backbone.{key}"] = value
    return out


def _mobilenet_v2_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """features.0-3 -> low_level, 4-17 -> high_level; the last 1x1 conv and classifier are unused."""
    out = {}
    for key, value in state.items():
        if not key.startswith("features."):
            continue
        index, rest = key.split(".", 2)[1:]
        if int(index) < 4:
            out[f"backbone.low_level.{index}.{rest}"] = value
        elif int(index) < 18:
            out[f"backbone.high_level.{int(index) - 4}.{rest}"] = value
    return out


#: backbone name -> (weights catalogue entry, key converter)
IMAGENET = {
    "resnet50": ("torchvision/resnet50.imagenet1k_v1", _resnet_keys),
    "resnet101": ("torchvision/resnet101.imagenet1k_v1", _resnet_keys),
    "resnet50_v1c": ("open-mmlab/resnet50_v1c", _resnet_v1c_keys),
    "resnet101_v1c": ("open-mmlab/resnet101_v1c", _resnet_v1c_keys),
    "mobilenet_v2": ("torchvision/mobilenet_v2.imagenet1k_v1", _mobilenet_v2_keys),
}
VGG16_ENTRY = "torchvision/vgg16.imagenet1k_v1"


def load_into(model: nn.Module, mapped: dict[str, Tensor], what: str) -> None:
    """Copy ``mapped`` into ``model``; every key must exist with the same shape."""
    own = model.state_dict()
    for key, value in mapped.items():
        if key not in own or own[key].shape != value.shape:
            raise PretrainedWeightsError(
                f"{what} weight {key} {tuple(value.shape)} does not fit the model "
                f"({tuple(own[key].shape) if key in own else 'missing'})"
            )
    model.load_state_dict(mapped, strict=False)


def load_vgg16_imagenet(
    model: nn.Module, weights_file: str | None = None, fc_prefixes: tuple[str, ...] = ("head.",)
) -> Provenance:
    """Initialise ``model``'s VGG16 backbone (and fc6/fc7 under ``fc_prefixes``) from ImageNet weights."""
    state, provenance = load_weights_file(VGG16_ENTRY, weights_file, "VGG16")
    load_into(model, convert_vgg16_imagenet(state, fc_prefixes), "VGG16")
    return provenance


def load_torchvision_imagenet(model: nn.Module, backbone: str, weights_file: str | None = None) -> Provenance:
    """ImageNet initialisation of a torchvision backbone (ResNet, MobileNetV2)."""
    entry_id, convert = IMAGENET[backbone]
    state, provenance = load_weights_file(entry_id, weights_file, backbone)
    load_into(model, convert(state), backbone)
    return provenance
