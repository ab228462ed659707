"""ImageNet initialisation from torchvision weights, with offline-friendly errors."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import VGG16_Weights

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


def convert_vgg16_imagenet(state: dict[str, Tensor], with_fc: bool = True) -> dict[str, Tensor]:
    """Map torchvision's VGG16 state dict onto our backbone and LargeFOV fc6/fc7.

    fc6/fc7 are subsampled exactly as the DeepLab authors did: fc6 (4096 x 512x7x7)
    keeps every 4th filter and every 3rd spatial tap -> 1024 x 512x3x3 (used with
    dilation 12 = 4 x 3); fc7 (4096x4096) keeps every 4th row and column.
    """
    convs = [k[: -len(".weight")] for k in state if k.startswith("features.") and k.endswith(".weight")]
    if len(convs) != len(CONV_NAMES):
        raise PretrainedWeightsError(f"expected {len(CONV_NAMES)} VGG16 convs, found {len(convs)}")
    out: dict[str, Tensor] = {}
    for src, name in zip(convs, CONV_NAMES, strict=True):
        out[f"backbone.features.{name}.weight"] = state[f"{src}.weight"]
        out[f"backbone.features.{name}.bias"] = state[f"{src}.bias"]
    if with_fc:
        fc6 = state["classifier.0.weight"].view(4096, 512, 7, 7)
        out["head.fc6.weight"] = fc6[::4, :, ::3, ::3].contiguous()
        out["head.fc6.bias"] = state["classifier.0.bias"][::4].contiguous()
        out["head.fc7.weight"] = state["classifier.3.weight"][::4, ::4].contiguous()[:, :, None, None]
        out["head.fc7.bias"] = state["classifier.3.bias"][::4].contiguous()
    return out


def load_vgg16_imagenet(model: nn.Module, weights_file: str | None = None, with_fc: bool = True) -> None:
    """Initialise ``model``'s VGG16 backbone (and fc6/fc7) from ImageNet weights."""
    url = VGG16_Weights.IMAGENET1K_V1.url
    mapped = convert_vgg16_imagenet(load_weights_file(url, weights_file, "VGG16"), with_fc=with_fc)
    own = model.state_dict()
    for key, value in mapped.items():
        if key not in own or own[key].shape != value.shape:
            raise PretrainedWeightsError(
                f"VGG16 weight {key} {tuple(value.shape)} does not fit the model "
                f"({tuple(own[key].shape) if key in own else 'missing'})"
            )
    model.load_state_dict(mapped, strict=False)
