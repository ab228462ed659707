"""The ``model``, ``backbone``, ``head`` and ``scales`` nodes -> a model; our checkpoints rebuilt from their config.

Only commands call this; modules never see ``cfg``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..engine.runtime.checkpoint import load_checkpoint
from ..models.builder import ModelSpec, build_model, build_model_with_provenance
from ..models.importers import (
    OURS,
    CheckpointLayoutError,
    Imported,
    Preprocess,
    import_checkpoint,
    state_dict_of,
)
from ..models.segmenter import DeepLab
from ..models.weights.provenance import Provenance


def model_spec(cfg: DictConfig) -> ModelSpec:
    """Architecture arguments from the ``model``, ``backbone`` and ``head`` nodes."""
    backbone: dict[str, Any] = OmegaConf.to_container(cfg.backbone, resolve=True)  # type: ignore[assignment]
    head: dict[str, Any] = OmegaConf.to_container(cfg.head, resolve=True)  # type: ignore[assignment]
    return ModelSpec(
        backbone=backbone.pop("name"),
        head=head.pop("name"),
        num_classes=cfg.model.num_classes,
        output_stride=cfg.model.output_stride,
        backbone_args=backbone,
        head_args=head,
        scales=OmegaConf.to_container(cfg.scales, resolve=True),  # type: ignore[arg-type]
        aux_head=aux_head_args(cfg.model),
    )


def aux_head_args(model: DictConfig) -> dict[str, Any]:
    """``model.aux_head`` as the builder's arguments (no loss weight); {} when null or absent (old checkpoints)."""
    aux = model.get("aux_head")
    if aux is None:
        return {}
    return {"channels": int(aux.channels), "dropout": float(aux.dropout)}


def make_model(cfg: DictConfig, pretrained: bool | None = None) -> DeepLab:
    use_pretrained = cfg.model.pretrained if pretrained is None else pretrained
    return build_model(model_spec(cfg), pretrained=use_pretrained, weights_file=cfg.model.weights)


def make_model_with_provenance(cfg: DictConfig, pretrained: bool | None = None) -> tuple[DeepLab, Provenance]:
    """:func:`make_model` and where its initial weights came from (stored in checkpoints)."""
    use_pretrained = cfg.model.pretrained if pretrained is None else pretrained
    return build_model_with_provenance(model_spec(cfg), pretrained=use_pretrained, weights_file=cfg.model.weights)


def rebuild_our_checkpoint(obj: dict[str, Any], output_stride: int | None, num_classes: int | None) -> Imported:
    """Our checkpoint: the model its stored config describes (migrated to today's layout), loaded strictly.

    The config layer's half of :func:`import_any_checkpoint`; the importers know only foreign layouts.
    """
    from ..models.builder import backbone_preprocess
    from ..models.importers.base import identity_rules, load_renamed, meta_build
    from .migrate import migrate_stored_config
    from .schema import TrainConfig

    if not isinstance(obj.get("config"), dict):
        raise CheckpointLayoutError(f"{OURS} checkpoint without its 'config' entry; cannot rebuild the model")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), migrate_stored_config(obj["config"]))
    except Exception as exc:  # noqa: BLE001 - OmegaConf raises many types for a bad config
        raise CheckpointLayoutError(f"{OURS} checkpoint has an unusable config ({type(exc).__name__}: {exc})") from exc
    if num_classes is not None and num_classes != cfg.model.num_classes:
        raise CheckpointLayoutError(f"checkpoint has {cfg.model.num_classes} classes but num_classes={num_classes}")
    if output_stride is not None:
        cfg.model.output_stride = output_stride
    spec = model_spec(cfg)
    model = meta_build(lambda: build_model(spec))
    header = f"{OURS} checkpoint does not fit the model its config describes:"
    load_renamed(model, state_dict_of(obj), identity_rules(""), header)
    nodes = [node for node in ("model", "backbone", "head", "scales") if node in cfg]
    overrides = {node: OmegaConf.to_container(cfg[node], resolve=True) for node in nodes}
    p = cfg.model.preprocess
    mean, std = backbone_preprocess(spec.backbone, spec.backbone_args)
    preprocess = Preprocess.from_config(p.mean or mean, p.std or std, p.bgr)
    overrides["model"]["preprocess"] = preprocess.as_config()
    return Imported(model.eval(), OURS, preprocess, overrides, [])


def import_any_checkpoint(obj: Any, *, output_stride: int | None = None, num_classes: int | None = None) -> Imported:
    """Any checkpoint ``import_checkpoint`` knows (ours, torchvision, kazuto1011, VainF), loaded or a path,
    as our model + its config."""
    if isinstance(obj, (str, Path)):
        obj = load_checkpoint(obj)
    return import_checkpoint(obj, output_stride=output_stride, num_classes=num_classes,
                             rebuild_ours=rebuild_our_checkpoint)  # fmt: skip
