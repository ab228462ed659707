"""Build a model from explicit arguments; the only place that knows every variant."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..imagenet import IMAGENET_MEAN, IMAGENET_STD
from .backbones.base import Backbone
from .backbones.mobilenet import MobileNetV2Backbone
from .backbones.mobilenet_v3 import MobileNetV3LargeBackbone
from .backbones.mobilenet_vainf import VainFMobileNetV2Backbone
from .backbones.resnet import ResNetBackbone
from .backbones.resnet_caffe import CaffeResNetBackbone
from .backbones.timm_encoder import TimmBackbone, pretrained_preprocess, probe
from .backbones.vgg import VGG16DeepLab
from .backbones.xception import TIMM_WEIGHTS_URL, Xception65, load_xception65_weights
from .heads.aspp_v2 import ASPPv2Head
from .heads.aspp_v3 import ASPPv3Head, V3PlusHead, scaled_rates
from .heads.largefov import LargeFOVHead
from .multiscale import AttentionToScale, MultiScaleInputs
from .pretrained import IMAGENET, PretrainedWeightsError, load_torchvision_imagenet, load_vgg16_imagenet
from .segmenter import DeepLab
from .weights.catalogue import entries_for_backbone
from .weights.provenance import SCRATCH, Provenance
from .weights.resolve import identify
from .weights.timm_weights import pretrained_timm_backbone

BACKBONES = (
    "vgg16", "resnet50", "resnet101", "xception65", "mobilenet_v2",
    # layouts of imported checkpoints (see models/importers): same keys, their computation
    "resnet50_caffe", "resnet101_caffe", "mobilenet_v2_vainf", "mobilenet_v3_large",
    "timm",  # any timm model: backbone.model=NAME[.TAG]
)  # fmt: skip
_CAFFE_DEPTHS = {"resnet50_caffe": 50, "resnet101_caffe": 101}
HEADS = ("largefov", "aspp_v2", "aspp_v3", "v3plus")
SCALE_MODES = ("single", "msc", "attention")


class ModelConfigError(ConfigError):
    """An impossible combination of model options."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild an architecture (stored in checkpoints)."""

    backbone: str
    head: str
    num_classes: int
    output_stride: int = 8
    backbone_args: dict[str, Any] = field(default_factory=dict)
    head_args: dict[str, Any] = field(default_factory=dict)
    scales: dict[str, Any] = field(default_factory=dict)


def _build_backbone(spec: ModelSpec, pretrained: bool = False, weights_file: str | None = None) -> Backbone:
    """The backbone, without weights (timm's pretrained ones are loaded by :func:`_timm_pretrained`)."""
    os_ = spec.output_stride
    if os_ not in (8, 16, 32):
        raise ModelConfigError(f"model.output_stride={os_} is not supported; choose one of 8, 16, 32.")
    if spec.backbone == "vgg16":
        return VGG16DeepLab(**spec.backbone_args, output_stride=os_)
    if spec.backbone in ("resnet50", "resnet101"):
        return ResNetBackbone(spec.backbone, os_, **spec.backbone_args)
    if spec.backbone == "mobilenet_v2":
        return MobileNetV2Backbone(os_, **spec.backbone_args)
    if spec.backbone == "xception65":
        return Xception65(os_, **spec.backbone_args)
    if spec.backbone in _CAFFE_DEPTHS:
        return CaffeResNetBackbone(_CAFFE_DEPTHS[spec.backbone], os_, **spec.backbone_args)
    if spec.backbone == "mobilenet_v2_vainf":
        return VainFMobileNetV2Backbone(os_, **spec.backbone_args)
    if spec.backbone == "mobilenet_v3_large":
        return MobileNetV3LargeBackbone(os_, **spec.backbone_args)
    if spec.backbone == "timm":
        return TimmBackbone(output_stride=os_, pretrained=False, **spec.backbone_args)
    raise ModelConfigError(f"backbone={spec.backbone!r} is unknown; choose one of {', '.join(BACKBONES)}.")


IMAGENET_MEAN_STD = (IMAGENET_MEAN, IMAGENET_STD)
#: Backbones whose ImageNet weights expect inputs in [-1, 1] (TF-slim / timm ports).
_HALF_MEAN_STD = {"xception65": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])}


def backbone_preprocess(backbone: str, backbone_args: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Input mean/std (0-1 RGB) that the backbone's ImageNet weights were trained with: ``model.preprocess``'s default.

    It is a property of the weights, so the backbone answers it, not a dataset or a preset.
    """
    if backbone == "timm":
        return pretrained_preprocess(str(backbone_args["model"]))
    mean, std = _HALF_MEAN_STD.get(backbone, IMAGENET_MEAN_STD)
    return list(mean), list(std)


def check_spec(spec: ModelSpec) -> None:
    """What can be checked without building: a timm model's output stride and stride-4 feature."""
    if spec.backbone == "timm":
        probe(
            str(spec.backbone_args["model"]),
            spec.output_stride,
            dict(spec.backbone_args.get("kwargs") or {}),
            low_level=spec.head == "v3plus",
        )


def _build_head(spec: ModelSpec, backbone: Backbone) -> nn.Module:
    info, args, n = backbone.feature_info, dict(spec.head_args), spec.num_classes
    if spec.head == "largefov":
        return LargeFOVHead(info["out"].channels, n, **args)
    if spec.head == "aspp_v2":
        return ASPPv2Head(info["out"].channels, n, **args)
    if spec.head in ("aspp_v3", "v3plus"):
        args["rates"] = scaled_rates(args.get("rates", (6, 12, 18)), spec.output_stride)
        if spec.head == "aspp_v3":
            return ASPPv3Head(info["out"].channels, n, **args)
        if "low_level" not in info:
            raise ModelConfigError(
                f"head=v3plus needs low-level (stride 4) features, which backbone={spec.backbone} lacks."
            )
        return V3PlusHead(info["out"].channels, info["low_level"].channels, n, **args)
    raise ModelConfigError(f"head={spec.head!r} is unknown; choose one of {', '.join(HEADS)}.")


def _vgg_fc_prefixes(spec: ModelSpec, head: nn.Module) -> tuple[str, ...]:
    """Where VGG16's converted fc6/fc7 go: LargeFOV's, or every VGG-form ASPP branch's."""
    if isinstance(head, LargeFOVHead):
        return ("head.",)
    if isinstance(head, ASPPv2Head) and head.form == "fc":
        return tuple(f"head.branches.{i}." for i in range(len(head.branches)))
    return ()


def _wrap_scales(model: DeepLab, scales: dict[str, Any]) -> nn.Module:
    """Multi-scale inputs around the shared single-scale network (``scales.mode``)."""
    mode = scales.get("mode", "single")
    if mode == "single":
        return model
    if mode == "msc":
        return MultiScaleInputs(
            model, scales["factors"], scales.get("fusion", "max"), scales.get("input_resize", "size")
        )
    if mode == "attention":
        return AttentionToScale(model, scales["factors"], esup=scales.get("esup", True))
    raise ModelConfigError(f"scales.mode={mode!r} is unknown; choose one of {', '.join(SCALE_MODES)}.")


def build_model(spec: ModelSpec, pretrained: bool = False, weights_file: str | None = None) -> nn.Module:
    """Construct the network; with ``pretrained`` load ImageNet weights into its backbone."""
    return build_model_with_provenance(spec, pretrained, weights_file)[0]


def _timm_pretrained(spec: ModelSpec, weights_file: str | None) -> tuple[Backbone, Provenance]:
    args = dict(spec.backbone_args)
    return pretrained_timm_backbone(str(args.pop("model")), spec.output_stride, weights_file, args.get("kwargs"))


def _load_imagenet(model: DeepLab, spec: ModelSpec, weights_file: str | None) -> Provenance:
    """ImageNet weights into a torchvision-layout or our Xception-65 backbone; returns where they came from."""
    if spec.backbone == "vgg16":
        return load_vgg16_imagenet(model, weights_file, _vgg_fc_prefixes(spec, model.head))
    if spec.backbone in IMAGENET:
        return load_torchvision_imagenet(model, spec.backbone, weights_file)
    if spec.backbone == "xception65":
        if not weights_file:
            raise PretrainedWeightsError(
                "backbone=xception65 has no torchvision ImageNet weights: download timm's xception65 "
                f"({TIMM_WEIGHTS_URL}) and pass model.weights=/path/to/pytorch_model.bin, "
                "or train from scratch with model.pretrained=false."
            )
        load_xception65_weights(model.backbone, weights_file)
        entries = entries_for_backbone("xception65")
        return identify(Path(weights_file).expanduser(), entries[0] if entries else None, "model.weights")
    return SCRATCH  # layouts of imported checkpoints: no ImageNet weights of their own


def build_model_with_provenance(
    spec: ModelSpec, pretrained: bool = False, weights_file: str | None = None
) -> tuple[nn.Module, Provenance]:
    """The network and where its initial weights came from (:class:`Provenance`).

    ImageNet weights go into the single-scale network before any multi-scale wrapper
    is put around it, so the wrapper's own layers (attention) stay freshly initialised.
    """
    check_spec(spec)
    provenance = SCRATCH
    try:
        if pretrained and spec.backbone == "timm":
            backbone, provenance = _timm_pretrained(spec, weights_file)
        else:
            backbone = _build_backbone(spec, pretrained, weights_file)
        head = _build_head(spec, backbone)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ModelConfigError(f"backbone={spec.backbone} head={spec.head}: {exc}") from exc
    model = DeepLab(backbone, head, spec.num_classes)
    if pretrained and spec.backbone != "timm":
        provenance = _load_imagenet(model, spec, weights_file)
    try:
        return _wrap_scales(model, spec.scales), provenance
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ModelConfigError(str(exc)) from exc
