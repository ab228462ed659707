"""Any timm model as a DeepLab backbone: ``features_only`` at the requested output stride.

timm (https://github.com/huggingface/pytorch-image-models) builds hundreds of CNN
families with ``features_only=True`` and, for most of them, an ``output_stride`` that
turns the last strides into dilation, the atrous form DeepLab needs. What timm does
not do is say *before* building whether a model can dilate or has the stride-4
feature the v3+ decoder needs: a bare ``AssertionError`` or ``TypeError`` comes out
of its constructor instead. :func:`probe` builds the model on PyTorch's ``meta``
device (shapes only, no memory, milliseconds) and turns each failure into one line
that names the model and the output strides it does support.

``out`` is timm's deepest feature and ``low_level`` its last stride-4 one; channels
and strides come from timm's ``feature_info``. Models whose features are channels-last
(Swin, MambaOut: ``output_fmt == "NHWC"``) are permuted to NCHW for the heads.
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ...errors import ConfigError
from ...imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..registry import register_backbone
from ..schema import MISSING
from .base import Backbone, FeatureInfo

log = logging.getLogger(__name__)

OUTPUT_STRIDES = (8, 16, 32)
#: The stride of the low-level feature the v3+ decoder concatenates (DeepLab v3+, section 3.1).
LOW_LEVEL_STRIDE = 4
TIMM_LIST = "docs/timm_backbones.md"


class TimmModelError(ConfigError):
    """A timm model name that does not exist, cannot run at the asked output stride, or lacks a feature."""


class TimmWeightsError(ConfigError):
    """timm's pretrained weights could not be found or fetched."""


def import_timm():
    """Import timm lazily: only ``backbone=timm`` needs it, and the import costs a second."""
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm is a dependency
        raise TimmModelError("backbone=timm needs the timm package: pip install timm") from exc
    return timm


@dataclass(frozen=True)
class TimmFeatures:
    """What :func:`probe` learnt of a timm model at one output stride."""

    name: str
    output_stride: int
    pass_output_stride: bool  # False: the model takes no output_stride argument (native stride 32 only)
    indices: tuple[int, ...]  # timm's feature indices (absolute), in order
    reductions: tuple[int, ...]
    channels: tuple[int, ...]
    channels_last: bool

    @property
    def out_index(self) -> int:
        return self.indices[-1]

    @property
    def low_level_index(self) -> int | None:
        """timm's index of the deepest stride-4 feature (None if the model has none)."""
        found = [i for i, r in zip(self.indices, self.reductions, strict=True) if r == LOW_LEVEL_STRIDE]
        return found[-1] if found else None

    def info(self, index: int) -> FeatureInfo:
        at = self.indices.index(index)
        return FeatureInfo(self.channels[at], self.reductions[at])


def arch_name(name: str) -> str:
    """``efficientnet_b0`` of ``efficientnet_b0.ra_in1k`` (the tag names weights, not an architecture)."""
    return name.split(".", 1)[0]


def _unknown(name: str) -> TimmModelError:
    timm = import_timm()
    arch = arch_name(name)
    near = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    return TimmModelError(
        f'backbone.model={name!r} is not a timm model.{hint} `python -c "import timm; '
        f"print(timm.list_models('*{arch[:6]}*'))\"` lists the names; {TIMM_LIST} says which run at "
        "output stride 8/16/32."
    )


def _create(name: str, output_stride: int, pass_os: bool, kwargs: dict[str, Any], **extra: Any) -> torch.nn.Module:
    timm = import_timm()
    args: dict[str, Any] = {"features_only": True, **kwargs, **extra}
    if pass_os:
        args["output_stride"] = output_stride
    return timm.create_model(name, **args)


def _try_probe(name: str, output_stride: int, kwargs: dict[str, Any]) -> TimmFeatures:
    """Build on the meta device (falling back to the CPU for models whose constructor reads tensor values)."""
    last: Exception | None = None
    for pass_os in (True, False):  # without: models that take no output_stride keep their native one
        for device in ("meta", "cpu"):
            try:
                with torch.device(device):
                    net = _create(name, output_stride, pass_os, kwargs, pretrained=False)
            except TypeError as exc:
                last = exc
                if "output_stride" in str(exc):
                    break  # this model takes no output_stride: try without it
                continue
            except Exception as exc:  # noqa: BLE001 - timm asserts, raises ValueError/RuntimeError/...
                last = exc
                continue
            info = net.feature_info
            indices = tuple(getattr(info, "out_indices", range(len(info.reduction()))))
            fmt = str(getattr(net, "output_fmt", "NCHW"))
            return TimmFeatures(
                name=name,
                output_stride=output_stride,
                pass_output_stride=pass_os,
                indices=tuple(int(i) for i in indices),
                reductions=tuple(int(r) for r in info.reduction()),
                channels=tuple(int(c) for c in info.channels()),
                channels_last=fmt.endswith("NHWC"),
            )
        else:
            break  # it takes output_stride but failed on every device: not a question of the argument
    text = str(last).strip()
    reason = text.splitlines()[0] if text else "its constructor refuses that stride: it cannot dilate"
    raise TimmModelError(f"{type(last).__name__}: {reason}")


@functools.lru_cache(maxsize=256)
def _probe_cached(name: str, output_stride: int, kwargs_json: str) -> TimmFeatures | str:
    try:
        features = _try_probe(name, output_stride, json.loads(kwargs_json))
    except TimmModelError as exc:
        return str(exc)
    if max(features.reductions) != output_stride:
        return f"its deepest feature has stride {max(features.reductions)}"
    return features


def supported_strides(name: str, kwargs: dict[str, Any] | None = None) -> tuple[int, ...]:
    """The output strides (8, 16, 32) at which timm can build ``name`` with ``features_only``."""
    key = json.dumps(kwargs or {}, sort_keys=True)
    return tuple(os_ for os_ in OUTPUT_STRIDES if isinstance(_probe_cached(name, os_, key), TimmFeatures))


def probe(name: str, output_stride: int, kwargs: dict[str, Any] | None = None, low_level: bool = False) -> TimmFeatures:
    """The features of ``name`` at ``output_stride``, or one line saying why not and what works.

    ``low_level``: the head needs a stride-4 feature (v3+). Nothing is allocated: the
    model is built on the meta device.
    """
    timm = import_timm()
    if not name or name == "???":
        raise TimmModelError(
            "backbone=timm needs the model's name: add backbone.model=NAME, e.g. backbone.model=efficientnet_b0 "
            f"(any timm.list_models() name, optionally with a pretrained tag: NAME.TAG; {TIMM_LIST})."
        )
    arch = arch_name(name)
    if not timm.is_model(arch):
        raise _unknown(name)
    if arch != name and name not in timm.list_pretrained(f"{arch}.*"):
        tags = timm.list_pretrained(f"{arch}.*")
        raise TimmModelError(
            f"backbone.model={name}: timm has no weights tagged {name.split('.', 1)[1]!r} for {arch}; "
            + (f"choose one of {', '.join(tags[:8])}." if tags else f"it has no pretrained weights: use {arch}.")
        )
    kwargs = dict(kwargs or {})
    result = _probe_cached(arch, output_stride, json.dumps(kwargs, sort_keys=True))
    if not isinstance(result, TimmFeatures):
        works = supported_strides(arch, kwargs)
        what = (
            f"it runs at model.output_stride={' or '.join(map(str, works))} only"
            if works
            else "it cannot be built with features_only at any output stride"
        )
        fix = f"use model.output_stride={works[-1]} or " if works else "use "
        raise TimmModelError(
            f"backbone.model={name} cannot run at model.output_stride={output_stride}: {what} "
            f"(timm: {result.splitlines()[0] if result else 'no reason given'}); "
            f"{fix}another model ({TIMM_LIST} lists what each timm model supports)."
        )
    if low_level and result.low_level_index is None:
        raise TimmModelError(
            f"backbone.model={name} has no stride-{LOW_LEVEL_STRIDE} feature (its features have strides "
            f"{list(result.reductions)}), which head=v3plus needs for its decoder; use head=aspp_v3 or a model with a "
            f"stride-4 stage ({TIMM_LIST})."
        )
    return result


def pretrained_preprocess(name: str) -> tuple[list[float], list[float]]:
    """The input mean/std (0-1 units, RGB) of ``name``'s pretrained weights, from timm's registry (no download)."""
    cfg = _pretrained_cfg(name)
    mean = getattr(cfg, "mean", None) if cfg is not None else None
    std = getattr(cfg, "std", None) if cfg is not None else None
    if mean is None or std is None:
        return list(IMAGENET_MEAN), list(IMAGENET_STD)
    return [float(v) for v in mean], [float(v) for v in std]


def _pretrained_cfg(name: str) -> Any:
    from timm.models import get_pretrained_cfg

    try:
        return get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - unknown tag
        return None


def weights_location(name: str) -> str:
    """Where timm fetches ``name``'s weights from: the Hugging Face file or the release URL."""
    cfg = _pretrained_cfg(name)
    if cfg is None:
        return "(timm has no pretrained weights for it)"
    if getattr(cfg, "hf_hub_id", None):
        filename = getattr(cfg, "hf_hub_filename", None) or "model.safetensors"
        return f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{filename}"
    return str(getattr(cfg, "url", "") or getattr(cfg, "file", "") or "(unknown)")


def _first_sentence(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else "no message"
    return text.split(". ")[0].rstrip(".")[:200]


def _load_error(name: str, weights_file: str | None, exc: Exception) -> TimmWeightsError:
    timm = import_timm()
    arch = arch_name(name)
    tags = timm.list_pretrained(f"{arch}.*")
    if not tags:
        return TimmWeightsError(
            f"timm has no pretrained weights for backbone.model={name}; train it from scratch with "
            "model.pretrained=false, or pick a model that has them (timm.list_pretrained())."
        )
    source = f"model.weights={weights_file}" if weights_file else "timm's cache"
    url = weights_location(name)
    return TimmWeightsError(
        f"Could not load timm's pretrained weights for backbone.model={name} from {source} "
        f"({type(exc).__name__}: {_first_sentence(exc)}). On a machine with internet "
        f"access download {url} and pass model.weights=/path/to/{url.rsplit('/', 1)[-1]} (timm's key names, "
        "safetensors or .pth), or copy the Hugging Face cache (HF_HOME) here; or train from scratch with "
        "model.pretrained=false."
    )


class TimmBackbone(Backbone):
    """A timm model with ``features_only=True``: ``out`` (deepest) and ``low_level`` (stride 4) features.

    ``pretrained`` loads timm's ImageNet weights for ``model`` (``NAME`` or ``NAME.TAG``)
    through timm's own cache, or from ``weights_file`` (a file with timm's key names,
    safetensors or .pth), before the feature wrapper is put around it, as timm does.
    """

    def __init__(
        self,
        model: str,
        output_stride: int = 16,
        pretrained: bool = False,
        weights_file: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        kwargs = dict(kwargs or {})
        features = probe(model, output_stride, kwargs)
        low = features.low_level_index
        out_indices = (features.out_index,) if low is None else (low, features.out_index)
        extra: dict[str, Any] = {"out_indices": out_indices}
        if pretrained:
            extra["pretrained"] = True
            if weights_file:
                path = Path(weights_file).expanduser()
                if not path.is_file():
                    raise TimmWeightsError(
                        f"model.weights={weights_file!r} does not exist. Point it at timm's weights for "
                        f"{model} ({weights_location(model)}) or set model.pretrained=false."
                    )
                extra["pretrained_cfg_overlay"] = {"file": str(path)}
        try:
            self.body = _create(model, output_stride, features.pass_output_stride, kwargs, **extra)
        except Exception as exc:  # noqa: BLE001 - the architecture built in probe(): this is about weights
            if not pretrained:
                raise TimmModelError(f"backbone.model={model}: timm failed to build it: {exc}") from exc
            raise _load_error(model, weights_file, exc) from exc
        self.model_name = model
        self.channels_last_output = features.channels_last
        self.names = ("out",) if low is None else ("low_level", "out")
        self.feature_info = {"out": features.info(features.out_index)}
        if low is not None:
            self.feature_info["low_level"] = features.info(low)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.body(x)
        if self.channels_last_output:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return dict(zip(self.names, feats, strict=True))


@dataclass
class TimmBackboneConfig:
    """``backbone=timm``: any timm model by name (``NAME`` or ``NAME.TAG``), built with ``features_only``."""

    name: str = "timm"
    model: str = MISSING  # e.g. efficientnet_b0, xception71, convnext_tiny.fb_in22k_ft_in1k
    kwargs: dict[str, Any] = field(default_factory=dict)  # more timm.create_model arguments (drop_path_rate, ...)


def _check(args: dict[str, Any], output_stride: int, needs: tuple[str, ...]) -> None:
    probe(str(args["model"]), output_stride, dict(args.get("kwargs") or {}), low_level="low_level" in needs)


def _build_pretrained(output_stride: int, weights_file: str | None, **args: Any) -> tuple[Backbone, Any]:
    from ..weights.timm_weights import pretrained_timm_backbone

    return pretrained_timm_backbone(str(args["model"]), output_stride, weights_file, args.get("kwargs"))


@register_backbone(
    "timm",
    schema=TimmBackboneConfig,
    preprocess=lambda args: pretrained_preprocess(str(args["model"])),
    build_pretrained=_build_pretrained,
    check=_check,
)
def build_timm(output_stride: int, **args: Any) -> TimmBackbone:
    return TimmBackbone(output_stride=output_stride, pretrained=False, **args)
