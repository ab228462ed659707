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
from pathlib import Path

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from ..config.compose import compose
from ..engine.runtime.outputs import write_texts
from ..errors import DeepLabError
from ..tools.flops import DEFAULT_INPUT, SummaryUsageError, parse_input, report, summarize
from ._hydra import one_line

USAGE = "usage: deeplab-summary [OVERRIDE ...] [input=513 | input=HxW] [out=FILE.json [overwrite=true]] [--json]"


def split_args(args: list[str]) -> tuple[list[str], tuple[int, int], str | None, bool]:
    """``(hydra overrides, input size, out file, json)`` from the command line (``overwrite=`` read by main)."""
    overrides, size, out, as_json = [], (DEFAULT_INPUT, DEFAULT_INPUT), None, False
    for arg in args:
        if arg == "--json":
            as_json = True
        elif arg in ("overwrite=true", "overwrite=false"):
            continue
        elif arg.startswith("input="):
            size = parse_input(arg.split("=", 1)[1])
        elif arg.startswith("out="):
            out = arg.split("=", 1)[1]
            if not out:
                raise SummaryUsageError("out= needs a file name, e.g. out=summary.json.")
        else:
            overrides.append(arg)
    return overrides, size, out, as_json


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
        try:  # a file of that name that deeplab-summary did not write is kept
            write_texts({Path(out): json.dumps(record, indent=2) + "\n"}, "out", "overwrite=true" in args)
        except DeepLabError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
