"""``deeplab-summary``: parameters and multiply-adds of a model as ``deeplab-train`` would build it.

Usage::

    deeplab-summary model=deeplabv3plus_resnet101 input=513 [model.output_stride=8] [--json] [out=F.json]

Every argument but ``input=``, ``out=`` and ``--json`` is a ``deeplab-train`` override
(``model=``, ``backbone=timm backbone.model=...``, ``head.channels=...``). The model is
built on PyTorch's meta device (shapes only: no memory, no weights, seconds even for
Xception-71 at 513x513) and run once under ``torch.utils.flop_counter.FlopCounterMode``,
which counts the multiply-adds of convolutions and matrix products (2 FLOPs each),
the convention of the DeepLab v3+ paper's Table 3; normalisation, activations,
pooling and resizing are not counted. Multi-scale models count every scale.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import factory
from .benchmark import compose
from .entry import one_line
from .errors import DeepLabError

DEFAULT_INPUT = 513  # the DeepLab papers' VOC crop, at which their Table 3 counts Multiply-Adds
USAGE = "usage: deeplab-summary [OVERRIDE ...] [input=513 | input=HxW] [out=FILE.json] [--json]"


class SummaryUsageError(DeepLabError):
    """A bad ``input=`` or ``out=`` argument."""


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


def split_args(args: list[str]) -> tuple[list[str], tuple[int, int], str | None, bool]:
    """``(hydra overrides, input size, out file, json)`` from the command line."""
    overrides, size, out, as_json = [], (DEFAULT_INPUT, DEFAULT_INPUT), None, False
    for arg in args:
        if arg == "--json":
            as_json = True
        elif arg.startswith("input="):
            size = parse_input(arg.split("=", 1)[1])
        elif arg.startswith("out="):
            out = arg.split("=", 1)[1]
            if not out:
                raise SummaryUsageError("out= needs a file name, e.g. out=summary.json.")
        else:
            overrides.append(arg)
    return overrides, size, out, as_json


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
    factory.validate(cfg)
    spec = factory.model_spec(cfg)
    with torch.device("meta"):
        model = factory.build_model(spec).eval()
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


def main(argv: list[str] | None = None) -> int:
    """0 on success; 1 with one ``Error:`` line on a bad model or config; 2 on a bad argument."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in args):
        print(__doc__)
        return 0
    try:
        overrides, size, out, as_json = split_args(args)
    except SummaryUsageError as exc:
        print(f"Error: {exc} {USAGE}", file=sys.stderr)
        return 2
    try:
        record = summarize(compose(overrides), size)
    except (HydraException, OmegaConfBaseException) as exc:
        print(f"Error: {one_line(exc)}", file=sys.stderr)
        return 1
    except DeepLabError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(record, indent=2) if as_json else report(record))
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
