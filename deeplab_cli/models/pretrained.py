"""ImageNet initialisation from torchvision weights, with offline-friendly errors."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import MobileNet_V2_Weights, ResNet50_Weights, ResNet101_Weights, VGG16_Weights

from ..errors import DeepLabError
from .backbones.vgg import CONV_NAMES


class PretrainedWeightsError(DeepLabError):
    """The ImageNet weights could not be found or fetched."""


def hub_checkpoint_path(url: str) -> Path:
    """Where ``torch.hub`` caches (and looks for) the file behind ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_weights_file(url: str, weights_file: str | None, what: str) -> dict[str, Tensor]:
    """Load ``weights_file`` if given, else the torch hub cache, else download ``url``.

    Any failure becomes one message that says which file is needed and where to
    put it, because offline clusters are the norm for our users.
    """
    cached = hub_checkpoint_path(url)
    path = Path(weights_file).expanduser() if weights_file else cached
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    if weights_file:
        raise PretrainedWeightsError(
            f"model.weights={weights_file!r} does not exist. Point it at the {what} ImageNet "
            f"weights file ({url}) or set model.pretrained=false."
        )
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True)
    except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, socket errors, ...
        raise PretrainedWeightsError(
            f"Could not download the {what} ImageNet weights from {url} ({exc}). Download that "
            f"file on a machine with internet access and put it at {cached} (or pass "
            f"model.weights=/path/to/{cached.name}), or train from scratch with "
            "model.pretrained=false."
        ) from exc


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


#: backbone name -> (torchvision weights, key converter)
IMAGENET = {
    "resnet50": (ResNet50_Weights.IMAGENET1K_V1, _resnet_keys),
    "resnet101": (ResNet101_Weights.IMAGENET1K_V1, _resnet_keys),
    "mobilenet_v2": (MobileNet_V2_Weights.IMAGENET1K_V1, _mobilenet_v2_keys),
}


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
) -> None:
    """Initialise ``model``'s VGG16 backbone (and fc6/fc7 under ``fc_prefixes``) from ImageNet weights."""
    url = VGG16_Weights.IMAGENET1K_V1.url
    load_into(model, convert_vgg16_imagenet(load_weights_file(url, weights_file, "VGG16"), fc_prefixes), "VGG16")


def load_torchvision_imagenet(model: nn.Module, backbone: str, weights_file: str | None = None) -> None:
    """ImageNet initialisation of a torchvision backbone (ResNet, MobileNetV2)."""
    weights, convert = IMAGENET[backbone]
    load_into(model, convert(load_weights_file(weights.url, weights_file, backbone)), backbone)
