"""Map a composed config to objects. Only the entry points call this; modules never see ``cfg``."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from .data.segmentation import ON_ERROR, SegmentationDataset
from .data_factory import (  # noqa: F401 - the data half of the factory, re-exported for the entry points
    check_dataset_lists,
    class_names,
    class_weights,
    dataset_layout,
    dataset_root,
    label_mapping,
    layout_for,
    loss_spec,
    make_eval_dataset,
    make_train_loader,
    normalisation,
    palette,
    resolve_preprocess,
    validate_dataset,
)
from .engine import distributed
from .engine.checkpoint import load_checkpoint
from .engine.inference import SlideSpec
from .engine.losses import LABEL_POLICIES
from .engine.metrics import compute_metrics
from .engine.optim import impl_kwargs
from .engine.pipeline import EvalSettings, PredictionHook, run_evaluation
from .engine.precision import check_precision
from .errors import ConfigError
from .models.builder import ModelSpec, build_model, build_model_with_provenance, check_spec
from .models.importers import OURS, CheckpointLayoutError, Imported, Preprocess, import_checkpoint, state_dict_of
from .models.segmenter import DeepLab
from .models.weights.provenance import Provenance
from .postprocess.crf import CRFParams, default_workers, require_pydensecrf

RESUME_VALUES = ("false", "true", "auto")
NONFINITE_POLICIES = ("stop", "skip")


def validate(cfg: DictConfig) -> None:
    """Combinations the schema cannot express; checked before any data or weights load."""
    if cfg.trainer.label_policy not in LABEL_POLICIES:
        raise ConfigError(f"trainer.label_policy={cfg.trainer.label_policy!r}; choose one of {LABEL_POLICIES}.")
    if str(cfg.resume).lower() not in RESUME_VALUES:
        raise ConfigError(f"resume={cfg.resume!r}; choose one of {', '.join(RESUME_VALUES)}.")
    if cfg.model.num_classes != cfg.dataset.num_classes:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} disagrees with dataset.num_classes="
            f"{cfg.dataset.num_classes} ({cfg.dataset.name}); set both to the number of classes."
        )
    if cfg.model.output_stride not in (8, 16, 32):
        raise ConfigError(f"model.output_stride={cfg.model.output_stride}; choose one of 8, 16, 32.")
    _validate_trainer(cfg)
    _validate_scales(cfg)
    lo, hi = cfg.dataset.scale_range
    if not 0 < lo <= hi:
        raise ConfigError(f"dataset.scale_range={[lo, hi]} must satisfy 0 < low <= high.")
    validate_dataset(cfg)
    check_spec(model_spec(cfg))  # a timm model's output stride and stride-4 feature, built on the meta device


def _validate_trainer(cfg: DictConfig) -> None:
    check_precision(cfg.trainer.precision)
    impl_kwargs(cfg.optim.impl)
    for key in ("max_iters", "batch_size", "accumulate", "val_interval", "log_interval", "checkpoint_interval"):
        if cfg.trainer[key] is not None and cfg.trainer[key] < 1:
            raise ConfigError(f"trainer.{key}={cfg.trainer[key]} must be at least 1.")
    if cfg.trainer.on_nonfinite not in NONFINITE_POLICIES:
        raise ConfigError(
            f"trainer.on_nonfinite={cfg.trainer.on_nonfinite!r}; choose one of {', '.join(NONFINITE_POLICIES)}."
        )
    if cfg.trainer.grad_clip is not None and not cfg.trainer.grad_clip > 0:
        raise ConfigError(f"trainer.grad_clip={cfg.trainer.grad_clip} must be a positive norm, or null (no clipping).")
    if cfg.dataset.on_error not in ON_ERROR:
        raise ConfigError(f"dataset.on_error={cfg.dataset.on_error!r}; choose one of {', '.join(ON_ERROR)}.")
    if cfg.dataset.crop_width is not None and cfg.dataset.crop_width < cfg.model.output_stride:
        raise ConfigError(
            f"dataset.crop_width={cfg.dataset.crop_width} is smaller than model.output_stride="
            f"{cfg.model.output_stride}; use null (square crops) or at least {cfg.model.output_stride}."
        )
    if cfg.dataset.crop_size < cfg.model.output_stride:
        raise ConfigError(
            f"dataset.crop_size={cfg.dataset.crop_size} is smaller than model.output_stride="
            f"{cfg.model.output_stride}: the network's output would be empty. Use a crop of at least "
            f"{cfg.model.output_stride} (DeepLab uses 321 or 513)."
        )


def _validate_scales(cfg: DictConfig) -> None:
    modes, fusions = ("single", "msc", "attention"), ("max", "mean")
    sc = cfg.scales
    if sc.mode not in modes:
        raise ConfigError(f"scales.mode={sc.mode!r} is unknown; choose one of {', '.join(modes)}.")
    if sc.mode != "single" and (len(sc.factors) < 2 or 1.0 not in sc.factors):
        raise ConfigError(
            f"scales.mode={sc.mode} needs at least two scale factors including 1.0, got scales.factors="
            f"{list(sc.factors)}; e.g. scales.factors=[1.0,0.75,0.5], or scales=single."
        )
    if sc.fusion not in fusions:
        raise ConfigError(f"scales.fusion={sc.fusion!r} is unknown; choose one of {', '.join(fusions)}.")


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
    )


def make_model(cfg: DictConfig, pretrained: bool | None = None) -> DeepLab:
    use_pretrained = cfg.model.pretrained if pretrained is None else pretrained
    return build_model(model_spec(cfg), pretrained=use_pretrained, weights_file=cfg.model.weights)


def make_model_with_provenance(cfg: DictConfig, pretrained: bool | None = None) -> tuple[DeepLab, Provenance]:
    """:func:`make_model` and where its initial weights came from (stored in checkpoints)."""
    use_pretrained = cfg.model.pretrained if pretrained is None else pretrained
    return build_model_with_provenance(model_spec(cfg), pretrained=use_pretrained, weights_file=cfg.model.weights)


def validate_distributed(cfg: DictConfig, world_size: int, device: torch.device) -> None:
    """``trainer.batch_size`` is the global batch: it must split evenly between the ``torchrun`` processes."""
    if world_size == 1:
        return
    if cfg.trainer.batch_size % world_size:
        raise ConfigError(
            f"trainer.batch_size={cfg.trainer.batch_size} is the global batch and does not split evenly between "
            f"{world_size} processes; use a multiple of {world_size} (e.g. trainer.batch_size="
            f"{world_size * max(1, cfg.trainer.batch_size // world_size)})."
        )
    if cfg.trainer.sync_bn and device.type != "cuda":
        raise ConfigError(
            f"trainer.sync_bn=true needs one GPU per process (SyncBatchNorm has no CPU implementation), but this "
            f"job runs on {device.type}; drop trainer.sync_bn or run on GPUs."
        )


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


def eval_settings(options: DictConfig, crf: DictConfig, num_classes: int, has_targets: bool = True) -> EvalSettings:
    """Check the ``eval`` and ``crf`` nodes and turn them into pipeline settings."""
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
    )


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


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} but CUDA is not available; use trainer.device=cpu or auto.")
    return device


def rebuild_our_checkpoint(obj: dict[str, Any], output_stride: int | None, num_classes: int | None) -> Imported:
    """Our checkpoint: the model its stored config describes (migrated to today's layout), loaded strictly.

    The config layer's half of :func:`import_any_checkpoint`; the importers know only foreign layouts.
    """
    from .config import TrainConfig, migrate_stored_config
    from .models.builder import backbone_preprocess
    from .models.importers.base import identity_rules, load_renamed, meta_build

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
