"""Parameters and multiply-adds of a model as ``deeplab-train`` builds it (``deeplab-summary``, sweep summaries).

The model is built on PyTorch's meta device (shapes only: no memory, no weights) and run
once under ``torch.utils.flop_counter.FlopCounterMode``, which counts the multiply-adds of
convolutions and matrix products (2 FLOPs each), the convention of the DeepLab v3+ paper's
Table 3; normalisation, activations, pooling and resizing are not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..config import checks, models
from ..errors import DeepLabError

DEFAULT_INPUT = 513  # the DeepLab papers' VOC crop, at which their Table 3 counts Multiply-Adds


def parse_input(text: str) -> tuple[int, int]:
    """``513`` or ``HxW`` (height x width) in pixels."""
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise SummaryUsageError(f"input={text!r} must be a size in pixels, e.g. input=513 or input=1025x2049 (HxW).")
    return size  # type: ignore[return-value]


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    """``model.backbone`` / ``model.head`` of a DeepLab, looking through multi-scale wrappers."""
    for path, module in model.named_modules():
        if path.split(".")[-1] == name:
            return module
    return None


def _count(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def _flops_of(counts: Mapping[str, Mapping[Any, int]], name: str) -> int:
    """FLOPs counted inside modules called ``name`` (``backbone``, ``head``) at any depth, each counted once.

    FlopCounterMode charges a call to every module on the stack, so only the outermost
    paths through a ``name`` segment are summed; a head whose parts are called one by
    one (attention to scale calls ``features`` and ``classify``) still adds up.
    """
    paths = [p for p in counts if name in p.split(".")]
    outer = [p for p in paths if not any(p.startswith(q + ".") for q in paths if q != p)]
    return sum(sum(counts[p].values()) for p in outer)


def measure(model: nn.Module, size: tuple[int, int]) -> dict[str, Any]:
    """Parameters and multiply-adds (G) of ``model`` (meta-built, eval mode) on one ``size`` image."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.empty(1, 3, *size, device="meta"))
    counts = counter.get_flop_counts()
    total = counter.get_total_flops()
    return {
        "params": _count(model),
        "params_backbone": _count(_submodule(model, "backbone")),
        "params_head": _count(_submodule(model, "head")),
        "gmacs": total / 2e9,
        "gmacs_backbone": _flops_of(counts, "backbone") / 2e9,
        "gmacs_head": _flops_of(counts, "head") / 2e9,
    }


def summarize(cfg: DictConfig, size: tuple[int, int]) -> dict[str, Any]:
    """The summary record of the model ``cfg`` describes, at input ``size`` (H, W)."""
    checks.validate(cfg)
    spec = models.model_spec(cfg)
    with torch.device("meta"):
        model = models.build_model(spec).eval()
    backbone = spec.backbone + (f" ({spec.backbone_args['model']})" if spec.backbone == "timm" else "")
    return {
        "model": cfg.model.name,
        "backbone": backbone,
        "head": spec.head,
        "output_stride": spec.output_stride,
        "scales": spec.scales.get("mode", "single"),
        "num_classes": spec.num_classes,
        "input": list(size),
        **measure(model, size),
    }


def report(r: Mapping[str, Any]) -> str:
    return "\n".join(
        [
            f"model           {r['model']}: backbone {r['backbone']}, head {r['head']}, output stride "
            f"{r['output_stride']}, scales {r['scales']}, {r['num_classes']} classes",
            f"input           1x3x{r['input'][0]}x{r['input'][1]}",
            f"parameters      {r['params']:,} (backbone {r['params_backbone']:,}, head {r['params_head']:,})",
            f"multiply-adds   {r['gmacs']:.2f} G (backbone {r['gmacs_backbone']:.2f} G, head {r['gmacs_head']:.2f} G)",
        ]
    )


class SummaryUsageError(DeepLabError):
    """A bad ``input=`` or ``out=`` argument."""
