"""``deeplab-eval``: evaluate a checkpoint on whole images at their original size."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from . import factory
from ._paths import config_dir
from .config import TrainConfig, register_configs
from .data.palette import voc_palette
from .engine.checkpoint import CheckpointError, load_checkpoint
from .engine.logger import format_table
from .errors import DeepLabError
from .models.importers import import_checkpoint, is_ours

log = logging.getLogger("deeplab_cli.evaluate")
register_configs()

#: Selecting one of these groups on the command line replaces these stored nodes.
_GROUP_NODES = {
    "model": ("model", "backbone", "head"),
    "backbone": ("backbone",),
    "head": ("head",),
    "scales": ("scales",),
    "dataset": ("dataset",),
}


def merge_overrides(stored: dict[str, Any], cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The checkpoint's training config with the user's command-line overrides on top.

    Only keys the user named are taken from the eval-time composition, so a
    checkpoint trained on VOC with a ResNet is evaluated as such unless asked.
    """
    merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), stored)
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.key_or_group
        top = key.split(".")[0].split("/")[0]
        if top not in _GROUP_NODES:
            continue
        if "." not in key:
            for node in _GROUP_NODES[top]:
                merged[node] = cfg[node]
        else:
            OmegaConf.update(merged, key, OmegaConf.select(cfg, key), merge=False)
    return merged


def save_prediction(out_dir: Path, image_id: str, pred: torch.Tensor) -> None:
    """A VOC-palette PNG of the image's size."""
    img = Image.fromarray(pred.to(torch.uint8).cpu().numpy(), mode="P")
    img.putpalette(voc_palette())
    img.save(out_dir / f"{image_id}.png")


def _user_output_stride(overrides: list[str]) -> int | None:
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.key_or_group == "model.output_stride":
            return int(override.value())
    return None


def load_for_eval(cfg: DictConfig, overrides: list[str]) -> tuple[torch.nn.Module, DictConfig]:
    """Our checkpoint (rebuilt from its stored config) or another project's, recognised by its keys.

    Foreign checkpoints bring their architecture and their test-time preprocessing
    (e.g. BGR mean subtraction); the user's overrides still apply on top.
    """
    state = load_checkpoint(cfg.checkpoint)
    if is_ours(state):
        train_cfg = merge_overrides(state["config"], cfg, overrides)
        factory.validate(train_cfg)
        model = factory.make_model(train_cfg, pretrained=False)
        model.load_state_dict(state["model"])
        return model, train_cfg
    try:
        imported = import_checkpoint(state, output_stride=_user_output_stride(overrides))
    except CheckpointError as exc:
        raise CheckpointError(f"{cfg.checkpoint}: {exc}") from exc
    stored = OmegaConf.to_container(cfg, resolve=True)
    for node in ("checkpoint", "save_predictions", "eval"):
        stored.pop(node, None)
    stored.update(imported.config_overrides)
    stored["dataset"].update(imported.preprocess.as_dataset_config())
    for note in imported.notes:
        log.info("%s: %s", imported.layout, note)
    train_cfg = merge_overrides(stored, cfg, overrides)
    factory.validate(train_cfg)
    log.info("imported a %s checkpoint (%d classes)", imported.layout, train_cfg.model.num_classes)
    return imported.model, train_cfg


def run_eval(cfg: DictConfig) -> dict[str, Any]:
    """Rebuild the model from the checkpoint, evaluate, write ``metrics.json``."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    model, train_cfg = load_for_eval(cfg, list(HydraConfig.get().overrides.task))
    device = factory.select_device(train_cfg.trainer.device)
    model.to(device)
    dataset = factory.make_eval_dataset(train_cfg, cfg.eval.split)
    pred_dir = run_dir / "predictions"
    if cfg.save_predictions:
        pred_dir.mkdir(parents=True, exist_ok=True)

    def on_prediction(index: int, pred: torch.Tensor, target: torch.Tensor) -> None:
        if cfg.save_predictions:
            save_prediction(pred_dir, dataset.ids[index], pred)

    metrics = factory.evaluate_split(model, train_cfg, dataset, device, cfg.eval.num_workers, on_prediction)
    metrics.update(checkpoint=str(cfg.checkpoint), split=dataset.split)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(format_table(metrics))
    return metrics


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
def main(cfg: DictConfig) -> float:
    try:
        return float(run_eval(cfg)["mIoU"])
    except DeepLabError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
