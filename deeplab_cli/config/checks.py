"""Combinations of config values the schema cannot express, checked before any data or weights load.

The dataclasses of :mod:`.schema` give every key a type; these checks cover what a type
cannot (a crop smaller than the output stride, a multi-scale mode without 1.0), each with
a message that names the key and the fix.
"""

from __future__ import annotations

from omegaconf import DictConfig

from ..data.segmentation import ON_ERROR
from ..engine.runtime.precision import check_precision
from ..engine.train.losses import LABEL_POLICIES
from ..engine.train.optim import impl_kwargs
from ..engine.train.trainer import NONFINITE_POLICIES
from ..errors import ConfigError
from ..models.builder import check_spec
from .datasets import validate_dataset
from .models import model_spec

RESUME_VALUES = ("false", "true", "auto")


def validate(cfg: DictConfig) -> None:
    """Combinations the schema cannot express; checked before any data or weights load."""
    if cfg.trainer.label_policy not in LABEL_POLICIES:
        raise ConfigError(f"trainer.label_policy={cfg.trainer.label_policy!r}; choose one of {LABEL_POLICIES}.")
    if str(cfg.resume).lower() not in RESUME_VALUES:
        raise ConfigError(f"resume={cfg.resume!r}; choose one of {', '.join(RESUME_VALUES)}.")
    if cfg.model.num_classes != cfg.dataset.num_classes:
        n = cfg.model.num_classes
        raise ConfigError(
            f"model.num_classes={n} disagrees with dataset.num_classes={cfg.dataset.num_classes} "
            f"({cfg.dataset.name}). A checkpoint's model predicts its {n} classes: evaluate it on data with {n} "
            f"classes (dataset.num_classes={n}, with that dataset's dataset.root, label keys and class_names), "
            f"or, to train, set both to the number of classes (model.init_from= re-heads a checkpoint)."
        )
    if cfg.model.output_stride not in (8, 16, 32):
        raise ConfigError(f"model.output_stride={cfg.model.output_stride}; choose one of 8, 16, 32.")
    _validate_trainer(cfg)
    _validate_scales(cfg)
    lo, hi = cfg.dataset.scale_range
    if not 0 < lo <= hi:
        raise ConfigError(f"dataset.scale_range={[lo, hi]} must satisfy 0 < low <= high.")
    _validate_augment(cfg.dataset)
    validate_dataset(cfg)
    check_spec(model_spec(cfg))  # a timm model's output stride and stride-4 feature, built on the meta device


def _validate_augment(d: DictConfig) -> None:
    """``dataset.scale_step``, ``fit_size`` and ``cat_max_ratio``: each value the transforms would reject, named."""
    step = d.get("scale_step")
    if step is not None and not step > 0:
        raise ConfigError(f"dataset.scale_step={step} must be a positive step (e.g. 0.25), or null (uniform scales).")
    validate_fit_size(d.get("fit_size"), "dataset.fit_size")
    ratio = d.get("cat_max_ratio", 1.0)
    if not 0 < ratio <= 1:
        raise ConfigError(f"dataset.cat_max_ratio={ratio} must lie in (0, 1]: 1 keeps every crop, 0.75 is mmseg's.")


def validate_fit_size(value: object, key: str) -> None:
    """A ``[long, short]`` pair of positive sides with long >= short, or null."""
    if value is None:
        return
    pair = list(value)  # type: ignore[call-overload]
    if len(pair) != 2 or min(pair) < 1 or pair[0] < pair[1]:
        raise ConfigError(
            f"{key}={pair} must be [long side, short side] in pixels with long >= short (ADE20K: [2048,512]), "
            "or null (keep the stored size)."
        )


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
