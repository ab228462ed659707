"""Any checkpoint -> (model, config): the one place a checkpoint meets the command line.

``deeplab-eval``, ``deeplab-predict`` and ``deeplab-export`` rebuild a checkpoint the same
way (ours from its stored config, another project's from its keys) with the user's overrides
on top; ``deeplab-train init_from=`` starts from one. Keeping this here, not in a command,
lets every command share it without importing another command.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from ..engine.runtime.checkpoint import CheckpointError, load_checkpoint, load_matching, load_weights
from ..models.importers import is_ours
from ..models.weights.provenance import (
    Provenance,
    checkpoint_provenance,
    imported_provenance,
    init_from_provenance,
)
from . import checks, datasets, models
from .migrate import migrate_stored_config
from .schema import TrainConfig

#: Selecting one of these groups on the command line replaces these stored nodes.
_GROUP_NODES = {
    "model": ("model", "backbone", "head", "scales"),
    "backbone": ("backbone",),
    "head": ("head",),
    "scales": ("scales",),
    "dataset": ("dataset",),
    "trainer": ("trainer",),
}

log = logging.getLogger(__name__)


#: The one way to change the checkpoint's input normalisation: naming these keys.
_PREPROCESS_KEY = "model.preprocess"


def merge_overrides(stored: dict[str, Any], cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The checkpoint's training config with the user's command-line overrides on top.

    Only keys the user named are taken from the eval-time composition, so a
    checkpoint trained on VOC with a ResNet is evaluated as such unless asked. The
    input normalisation (``model.preprocess``) belongs to the weights: it stays the
    checkpoint's under every group override (``dataset=``, ``model=``) and changes only
    when ``model.preprocess.*`` is named, which is logged.
    """
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), migrate_stored_config(stored))
    weights_preprocess = merged.model.preprocess.copy()
    explicit = False
    parsed = OverridesParser.create().parse_overrides(overrides)
    # groups before keys, as Hydra composes them: `model.preprocess.mean=... model=X` keeps the mean
    parsed.sort(key=lambda o: "." in o.key_or_group)
    for override in parsed:
        key = override.key_or_group
        top = key.split(".")[0].split("/")[0]
        if top not in _GROUP_NODES:
            continue
        if "." not in key:
            for node in _GROUP_NODES[top]:
                merged[node] = cfg[node]
            merged.model.preprocess = weights_preprocess
        else:
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
            explicit |= key.startswith(_PREPROCESS_KEY)
    if not explicit:
        merged.model.preprocess = weights_preprocess
    elif merged.model.preprocess != weights_preprocess:
        log.warning(
            "model.preprocess=%s differs from the checkpoint's %s (what its weights were trained with); "
            "the given values are used",
            OmegaConf.to_container(merged.model.preprocess),
            OmegaConf.to_container(weights_preprocess),
        )
    return merged


def user_output_stride(overrides: list[str]) -> int | None:
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group == "model.output_stride":
            return int(override.value())
    return None


def load_for_eval(cfg: DictConfig, overrides: list[str]) -> tuple[torch.nn.Module, DictConfig]:
    """Our checkpoint (rebuilt from its stored config) or another project's, recognised by its keys.

    Foreign checkpoints bring their architecture and their test-time preprocessing
    (e.g. BGR mean subtraction); the user's overrides still apply on top.
    """
    model, train_cfg, _ = load_with_provenance(cfg, overrides)
    return model, train_cfg


def load_with_provenance(cfg: DictConfig, overrides: list[str]) -> tuple[torch.nn.Module, DictConfig, Provenance]:
    """:func:`load_for_eval` and where the checkpoint's initial weights came from (logged)."""
    state = load_checkpoint(cfg.checkpoint)
    if is_ours(state):
        provenance = checkpoint_provenance(state)
        log.info("initial weights of %s: %s", cfg.checkpoint, provenance.describe())
        train_cfg = merge_overrides(state["config"], cfg, overrides)
        checks.validate(train_cfg)
        datasets.resolve_preprocess(train_cfg)
        model = models.make_model(train_cfg, pretrained=False)
        load_weights(model, state["model"], str(cfg.checkpoint))
        return model, train_cfg, provenance
    try:
        imported = models.import_any_checkpoint(state, output_stride=user_output_stride(overrides))
    except CheckpointError as exc:
        raise CheckpointError(f"{cfg.checkpoint}: {exc}") from exc
    stored = OmegaConf.to_container(cfg, resolve=True)
    for node in set(stored) - {f.name for f in fields(TrainConfig)}:  # eval/predict-only nodes
        stored.pop(node)
    stored.update(imported.config_overrides)  # with the weights' model.preprocess
    for note in imported.notes:
        log.info("%s: %s", imported.layout, note)
    train_cfg = merge_overrides(stored, cfg, overrides)
    checks.validate(train_cfg)
    datasets.resolve_preprocess(train_cfg)
    log.info("imported a %s checkpoint (%d classes)", imported.layout, train_cfg.model.num_classes)
    return imported.model, train_cfg, imported_provenance(Path(cfg.checkpoint), imported.layout)


def init_from_checkpoint(cfg: DictConfig) -> tuple[torch.nn.Module, Provenance]:
    """Start from any checkpoint ``models.import_any_checkpoint`` knows (ours, torchvision, kazuto, VainF).

    The file decides the architecture and the input normalisation (``model.preprocess``);
    ``cfg`` is updated in place so that this run's own checkpoints rebuild the same
    model. The class count stays this run's (``model.num_classes``, by default the
    dataset's): when it differs from the file's, :func:`reheaded` puts the file's
    weights into a model with the new classifier(s).
    """
    try:
        state = load_checkpoint(cfg.model.init_from)
        imported = models.import_any_checkpoint(state)
    except CheckpointError as exc:
        raise CheckpointError(f"model.init_from={cfg.model.init_from}: {exc}") from exc
    provenance = init_from_provenance(Path(cfg.model.init_from), state, imported.layout)
    init_from, num_classes = cfg.model.init_from, int(cfg.model.num_classes)
    for node, values in imported.config_overrides.items():
        # backbone/head are typed per option (replace the node); model/scales share one schema (merge)
        cfg[node] = OmegaConf.create(values) if node in ("backbone", "head") else OmegaConf.merge(cfg[node], values)
    file_classes = int(cfg.model.num_classes)
    cfg.model.init_from, cfg.model.pretrained, cfg.model.num_classes = init_from, False, num_classes
    for note in imported.notes:
        log.info("%s: %s", imported.layout, note)
    log.info("initialised from %s (%s, %d classes)", init_from, imported.layout, file_classes)
    return imported.model, provenance


def reheaded(cfg: DictConfig, source: torch.nn.Module) -> torch.nn.Module:
    """The architecture of ``cfg`` with every tensor of ``source`` whose name and shape fit.

    Fine-tuning onto another label set: the classifier(s) of ``source`` have the
    file's class count, so they are left freshly initialised (seeded by
    ``trainer.seed``), and their names are logged; everything else is copied exactly.
    """
    model = models.make_model(cfg, pretrained=False)
    skipped = load_matching(model, source.state_dict(), f"model.init_from={cfg.model.init_from}")
    log.info(
        "model.init_from: new label set (%d classes): loaded %d tensors, re-initialised %d: %s",
        cfg.model.num_classes, len(model.state_dict()) - len(skipped), len(skipped), ", ".join(skipped),
    )  # fmt: skip
    return model
