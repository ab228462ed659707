"""The ``eval`` and ``crf`` nodes -> the evaluation pipeline's settings; the validation of training runs."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
from omegaconf import DictConfig
from torch import Tensor

from ..data.segmentation import SegmentationDataset
from ..engine.eval.inference import SlideSpec
from ..engine.eval.metrics import compute_metrics
from ..engine.eval.pipeline import EvalSettings, PredictionHook, run_evaluation
from ..engine.runtime import distributed
from ..errors import ConfigError
from ..models.segmenter import DeepLab
from ..postprocess.crf import CRFParams, default_workers, require_pydensecrf
from .datasets import class_names, fit_size


def split_metrics(matrix: Tensor, cfg: DictConfig, num_images: int) -> dict[str, Any]:
    """``compute_metrics`` plus the image count and the raw confusion matrix (rows: ground truth)."""
    metrics = compute_metrics(matrix, class_names(cfg))
    metrics["num_images"] = num_images
    metrics["confusion_matrix"] = matrix.cpu().tolist()
    return metrics


def evaluate_split(
    model: DeepLab,
    cfg: DictConfig,
    dataset: SegmentationDataset,
    device: torch.device,
    num_workers: int,
    on_prediction: PredictionHook | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on ``dataset`` (one scale, no CRF): the validation of training runs.

    It is ``run_evaluation`` with default settings, the same path ``deeplab-eval``
    takes, so an eval of a checkpoint reproduces its training mIoU exactly. Under
    ``torchrun`` each rank scores every N-th image and the counts are summed, so
    every image counts once and every rank gets the same metrics.
    """
    t = cfg.trainer
    info = distributed.current()
    settings = EvalSettings(
        num_classes=cfg.model.num_classes,
        num_workers=num_workers,
        precision=t.precision,
        channels_last=t.channels_last,
        shard=(info.rank, info.world_size),
        fit=fit_size(cfg.dataset),
    )
    result = run_evaluation(model, dataset, device, settings, on_prediction=on_prediction)
    result.all_reduce()
    return split_metrics(result.network.matrix, cfg, result.images)


EXPORTS = ("voc_test", "labels")


CACHE_MODES = ("auto", "true", "false")


def crf_params(crf: DictConfig) -> CRFParams | None:
    """The CRF settings of the ``crf`` group, or None for ``crf=none``; fails early without pydensecrf."""
    if crf.name == "none":
        return None
    require_pydensecrf()
    return CRFParams(**{f.name: crf[f.name] for f in fields(CRFParams)})


def eval_settings(
    options: DictConfig,
    crf: DictConfig,
    num_classes: int,
    has_targets: bool = True,
    fit: tuple[int, int] | None = None,
) -> EvalSettings:
    """Check the ``eval`` and ``crf`` nodes and turn them into pipeline settings (``fit``: ``dataset.fit_size``)."""
    scales = tuple(float(x) for x in options.scales)
    if not scales or min(scales) <= 0:
        raise ConfigError(f"eval.scales={list(scales)} must list positive factors, e.g. eval.scales=[0.75,1.0,1.25].")
    if options.batch_size < 1:
        raise ConfigError(f"eval.batch_size={options.batch_size} must be at least 1.")
    if any(int(w) < 1 for w in options.trimap):
        raise ConfigError(f"eval.trimap={list(options.trimap)} must list band widths of at least 1 pixel.")
    if options.export is not None and options.export not in EXPORTS:
        raise ConfigError(f"eval.export={options.export!r} is unknown; choose one of {', '.join(EXPORTS)} or null.")
    if str(options.cache).lower() not in CACHE_MODES:
        raise ConfigError(f"eval.cache={options.cache!r}; choose one of {', '.join(CACHE_MODES)}.")
    slide = slide_spec(options)
    workers = crf.workers if crf.workers is not None else default_workers()
    if workers < 0:
        raise ConfigError(f"crf.workers={crf.workers} must be 0 (in-process), a positive count or null (all cores).")
    return EvalSettings(
        num_classes=num_classes,
        scales=scales,
        flip=options.flip,
        batch_size=options.batch_size,
        num_workers=options.num_workers,
        crf=crf_params(crf),
        crf_workers=workers,
        trimap=tuple(int(w) for w in options.trimap) if has_targets else (),
        progress=options.progress,
        slide=slide,
        fit=fit,
    )


def fit_for(dataset: DictConfig, batch_size: int) -> tuple[int, int] | None:
    """``dataset.fit_size`` for evaluation; refused with batches, whose padded images would share one factor."""
    fit = fit_size(dataset)
    if fit is not None and batch_size > 1:
        raise ConfigError(
            f"dataset.fit_size={list(fit)} rescales each image by its own factor, which eval.batch_size="
            f"{batch_size} (images padded to one size) cannot do; use eval.batch_size=1."
        )
    return fit


EVAL_MODES = ("whole", "slide")


def slide_spec(options: DictConfig) -> SlideSpec | None:
    """``eval.mode``, ``eval.window`` and ``eval.stride`` as a :class:`SlideSpec` (None: whole images)."""
    if options.mode not in EVAL_MODES:
        raise ConfigError(f"eval.mode={options.mode!r}; choose one of {', '.join(EVAL_MODES)}.")
    if options.mode == "whole":
        return None
    pairs = {}
    for key in ("window", "stride"):
        value = list(options[key])
        if len(value) == 1:
            value = value * 2
        if len(value) != 2 or min(value) < 1:
            raise ConfigError(
                f"eval.{key}={list(options[key])} must be [height, width] in pixels (or one number for both), "
                "e.g. eval.window=[769,769] eval.stride=[513,513]."
            )
        pairs[key] = (int(value[0]), int(value[1]))
    if pairs["stride"][0] > pairs["window"][0] or pairs["stride"][1] > pairs["window"][1]:
        raise ConfigError(
            f"eval.stride={list(pairs['stride'])} is larger than eval.window={list(pairs['window'])}: pixels between "
            "windows would get no prediction. Use a stride of at most the window (e.g. 2/3 of it)."
        )
    return SlideSpec(pairs["window"], pairs["stride"])
