"""``deeplab-predict``: palette PNG masks and overlay JPEGs for any images, with optional TTA and CRF."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from PIL import Image

from .._paths import config_dir
from ..config import datasets, evaluation, runtime
from ..config.checkpoints import load_for_eval
from ..data.images import ImageFiles, resolve_inputs
from ..data.results import save_prediction
from ..data.transforms import eval_transforms
from ..deploy.predict_exported import EXPORTED_SUFFIXES, check_plain, predict_exported
from ..engine.eval.pipeline import PredictionHook, run_evaluation
from ..engine.report.logger import colorize
from ..engine.runtime.precision import to_memory_format
from ..errors import ConfigError
from . import _hydra

log = logging.getLogger(__name__)


def overlay(
    image: np.ndarray, pred: np.ndarray, alpha: float, palette: np.ndarray | None = None, keep_background: bool = True
) -> np.ndarray:
    """The image with class colours blended in at ``alpha``; with ``keep_background`` class 0
    ("background", as in VOC) is left as it is, else every class is coloured (road scenes)."""
    colours = colorize(pred, palette).astype(np.float32)
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours
    if not keep_background:
        return blended.round().astype(np.uint8)
    return np.where((pred > 0)[..., None], blended, image).round().astype(np.uint8)


def _writer(
    dataset: ImageFiles, out_dir: Path, alpha: float, final_stage: str, palette: np.ndarray, keep_background: bool
) -> PredictionHook:
    write_one = _write_outputs(out_dir, alpha)

    def write(index: int, pred: torch.Tensor, target: torch.Tensor, stage: str) -> None:
        if stage == final_stage:
            write_one(dataset, index, pred, palette, keep_background)

    return write


def _write_outputs(out_dir: Path, alpha: float) -> Callable[[ImageFiles, int, torch.Tensor, np.ndarray, bool], None]:
    """The mask PNG and overlay JPEG of one image (shared by the checkpoint and exported-file paths)."""

    def write(dataset: ImageFiles, index: int, pred: torch.Tensor, palette: np.ndarray, background: bool) -> None:
        save_prediction(out_dir, dataset.ids[index], pred, palette)
        mixed = overlay(dataset.load_rgb(index), pred.cpu().numpy().astype(np.uint8), alpha, palette, background)
        Image.fromarray(mixed).save(out_dir / f"{dataset.ids[index]}_overlay.jpg", quality=90)

    return write


def run_predict(cfg: DictConfig) -> dict[str, Any]:
    """Segment every input image; returns where the files went and how many."""
    if not 0.0 <= cfg.overlay_alpha <= 1.0:
        raise ConfigError(f"overlay_alpha={cfg.overlay_alpha} must lie in [0, 1].")
    settings = evaluation.eval_settings(cfg.eval, cfg.crf, cfg.model.num_classes, has_targets=False)
    files = resolve_inputs(str(cfg.input))
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    out_dir = Path(cfg.output).expanduser() if cfg.output else run_dir / "predictions"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"output={str(out_dir)!r} cannot be created ({exc}); choose a writable folder.") from exc
    exported = Path(str(cfg.checkpoint)).expanduser()
    if exported.suffix in EXPORTED_SUFFIXES:
        check_plain(list(cfg.eval.scales), bool(cfg.eval.flip), settings.crf is not None)
        start = time.perf_counter()
        count = predict_exported(exported, ImageFiles(files, None), _write_outputs(out_dir, cfg.overlay_alpha))
        seconds = time.perf_counter() - start
        print(f"{count} images -> {out_dir} ({exported.name})")
        return {"output": str(out_dir), "num_images": count, "seconds": seconds}
    model, train_cfg = load_for_eval(cfg, list(HydraConfig.get().overrides.task))
    device = runtime.select_device(train_cfg.trainer.device)
    t = train_cfg.trainer
    model = to_memory_format(model.to(device), t.channels_last)
    settings = replace(
        settings,
        num_classes=train_cfg.model.num_classes,
        precision=t.precision,
        channels_last=t.channels_last,
        fit=evaluation.fit_for(train_cfg.dataset, settings.batch_size),
    )
    dataset = ImageFiles(files, eval_transforms(*datasets.normalisation(train_cfg)))
    final_stage = "crf" if settings.crf is not None else "network"
    background = datasets.class_names(train_cfg)[0].lower() == "background"
    hook = _writer(dataset, out_dir, cfg.overlay_alpha, final_stage, datasets.palette(train_cfg), background)
    result = run_evaluation(model, dataset, device, settings, on_prediction=hook)
    log.info("wrote %d masks and overlays to %s in %.1f s", len(dataset), out_dir, result.seconds)
    print(f"{len(dataset)} images -> {out_dir}")
    return {"output": str(out_dir), "num_images": len(dataset), "seconds": result.seconds}


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="predict")
def hydra_main(cfg: DictConfig) -> None:
    with _hydra.user_errors():
        run_predict(cfg)


def main() -> None:
    """``deeplab-predict``."""
    _hydra.run(hydra_main)


if __name__ == "__main__":
    main()
