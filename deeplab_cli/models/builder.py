"""Build a model from explicit arguments: the backbone and head looked up in the registry, no if-chain.

Which backbones and heads exist, how each is built, what it needs and which weights it
loads is said by the option itself (:mod:`.registry`); this module only wires them:
backbone -> head -> :class:`DeepLab` -> ImageNet weights -> multi-scale wrapper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import ConfigError
from . import registry
from .backbones.base import Backbone
from .heads.auxiliary import AUX_FEATURE, FCNAuxHead
from .multiscale import AttentionToScale, MultiScaleInputs
from .registry import ModelConfigError
from .segmenter import DeepLab
from .weights.provenance import SCRATCH, Provenance

OUTPUT_STRIDES = (8, 16, 32)


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
    #: ``model.aux_head`` without its loss weight: ``{channels, dropout}``; empty: no auxiliary head
    aux_head: dict[str, Any] = field(default_factory=dict)


def backbone_preprocess(backbone: str, backbone_args: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Input mean/std (0-1 RGB) that the backbone's ImageNet weights were trained with: ``model.preprocess``'s default.

    It is a property of the weights, so the backbone answers it, not a dataset or a preset.
    """
    mean, std = registry.backbone(backbone).preprocess(backbone_args)
    return list(mean), list(std)


def check_spec(spec: ModelSpec) -> None:
    """What can be checked without building: the names, and (timm) the output stride and stride-4 feature."""
    if spec.output_stride not in OUTPUT_STRIDES:
        raise ModelConfigError(f"model.output_stride={spec.output_stride} is not supported; choose one of 8, 16, 32.")
    backbone, head = registry.backbone(spec.backbone), registry.head(spec.head)
    if backbone.check is not None:
        backbone.check(dict(spec.backbone_args), spec.output_stride, head.needs)


def _build_backbone(spec: ModelSpec, pretrained: bool, weights_file: str | None) -> tuple[Backbone, Provenance | None]:
    """The backbone, with its weights when its entry loads them while building (timm); else ``None`` provenance."""
    entry = registry.backbone(spec.backbone)
    if pretrained and entry.build_pretrained is not None:
        return entry.build_pretrained(spec.output_stride, weights_file, **spec.backbone_args)
    return entry.build(spec.output_stride, **spec.backbone_args), None


def _build_head(spec: ModelSpec, backbone: Backbone) -> nn.Module:
    entry = registry.head(spec.head)
    missing = [name for name in entry.needs if name not in backbone.feature_info]
    if missing:
        wanted = " and ".join("low-level (stride 4)" if n == "low_level" else repr(n) for n in missing)
        raise ModelConfigError(f"head={spec.head} needs {wanted} features, which backbone={spec.backbone} lacks.")
    inputs = registry.HeadInputs(dict(backbone.feature_info), spec.num_classes, spec.output_stride)
    return entry.build(inputs, **spec.head_args)


def _build_aux_head(spec: ModelSpec, backbone: Backbone) -> FCNAuxHead | None:
    """The auxiliary FCN head on the backbone's stage-3 features, when ``model.aux_head`` asks for one."""
    if not spec.aux_head:
        return None
    if AUX_FEATURE not in backbone.feature_info:
        raise ModelConfigError(
            f"model.aux_head needs the backbone's stage-3 features ({AUX_FEATURE!r}), which backbone={spec.backbone} "
            "lacks (the ResNets have them); set model.aux_head=null."
        )
    if spec.scales.get("mode", "single") != "single":
        raise ModelConfigError(
            f"model.aux_head with scales={spec.scales.get('mode')}: the multi-scale wrappers would drop its "
            "logits; use scales=single or model.aux_head=null."
        )
    info = backbone.feature_info[AUX_FEATURE]
    return FCNAuxHead(info.channels, spec.num_classes, **spec.aux_head)


#: ``scales.mode`` -> the wrapper around the shared single-scale network
_SCALE_WRAPPERS = {
    "single": lambda model, s: model,
    "msc": lambda model, s: MultiScaleInputs(
        model, s["factors"], s.get("fusion", "max"), s.get("input_resize", "size")
    ),
    "attention": lambda model, s: AttentionToScale(model, s["factors"], esup=s.get("esup", True)),
}
SCALE_MODES = tuple(_SCALE_WRAPPERS)


def _wrap_scales(model: DeepLab, scales: dict[str, Any]) -> nn.Module:
    """Multi-scale inputs around the shared single-scale network (``scales.mode``)."""
    mode = scales.get("mode", "single")
    if mode not in _SCALE_WRAPPERS:
        raise ModelConfigError(f"scales.mode={mode!r} is unknown; choose one of {', '.join(SCALE_MODES)}.")
    return _SCALE_WRAPPERS[mode](model, scales)


def build_model(spec: ModelSpec, pretrained: bool = False, weights_file: str | None = None) -> nn.Module:
    """Construct the network; with ``pretrained`` load ImageNet weights into its backbone."""
    return build_model_with_provenance(spec, pretrained, weights_file)[0]


def build_model_with_provenance(
    spec: ModelSpec, pretrained: bool = False, weights_file: str | None = None
) -> tuple[nn.Module, Provenance]:
    """The network and where its initial weights came from (:class:`Provenance`).

    ImageNet weights go into the single-scale network before any multi-scale wrapper
    is put around it, so the wrapper's own layers (attention) stay freshly initialised.
    """
    check_spec(spec)
    try:
        backbone, provenance = _build_backbone(spec, pretrained, weights_file)
        head = _build_head(spec, backbone)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ModelConfigError(f"backbone={spec.backbone} head={spec.head}: {exc}") from exc
    model = DeepLab(backbone, head, spec.num_classes, _build_aux_head(spec, backbone))
    if provenance is None:
        load = registry.backbone(spec.backbone).load_imagenet
        # layouts of imported checkpoints have no ImageNet weights of their own: they start from scratch
        provenance = load(model, weights_file) if pretrained and load is not None else SCRATCH
    try:
        return _wrap_scales(model, spec.scales), provenance
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ModelConfigError(str(exc)) from exc
