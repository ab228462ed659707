"""Training and inference throughput of one of our presets against torchvision's DeepLab v3.

Usage (``key=value`` arguments, every key optional)::

    deeplab-benchmark model=deeplabv3_resnet101 crop=129 batch=2 out=F.json

Both models are measured in this process on the same random input with the same settings, ours
first; ours is freed before the reference is built, so neither sees the other's memory. The machine's
speed drifts (other processes, frequency, caches), and a single ours-then-reference pair carries that
drift into the ratio; so after that first round (which also measures memory and the data path), both
models are timed again in alternating rounds (ours, reference, ours, reference, ...), and the ratios
reported are the median over ``rounds`` per-round ratios, with their minimum and maximum. Training
throughput excludes data loading (tensors made on the device beforehand); ``data=true`` adds one
measurement of ours through the real DataLoader on a synthetic set with VOC-sized images. Numbers
depend on the machine and on whatever else runs on it: compare ratios from one run, not runs.

``mode=onnx`` measures deployment instead: the preset exported to ONNX (as ``deeplab-export``
writes it) in ONNX Runtime against the same graph in PyTorch, CPU inference at batch 1 of an
``infer_size`` image (``deploy/benchmark_onnx.py``); the training keys are then unused.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import torch

from ..engine.runtime.outputs import write_texts
from ..errors import ConfigError, DeepLabError
from ..tools.benchmark.report import report_text
from ..tools.benchmark.run import run, run_onnx
from ..tools.benchmark.settings import OPTIONS, UsageError, parse_args, resolve_device


def main(argv: list[str] | None = None) -> int:
    """``key=value`` arguments (see ``OPTIONS``); 0 on success, 2 on a bad argument."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help", "help") for a in args):
        print(__doc__)
        print("Keys (default; allowed):")
        for key, option in OPTIONS.items():
            print(f"  {key}={option.default}  ({option.allowed})")
        return 0
    if argv is None and Path(sys.argv[0]).name == "deeplab-benchmark":  # the console script, as the user typed it
        command = shlex.join(["deeplab-benchmark", *args])
    else:
        command = shlex.join(sys.orig_argv if argv is None else ["python", "scripts/benchmark.py", *args])
    threads = torch.get_num_threads()
    try:
        settings = parse_args(args)
        device = resolve_device(settings)
        if settings.threads is not None:
            torch.set_num_threads(settings.threads)
        result = (run_onnx if settings.mode == "onnx" else run)(settings, device, command)
    except UsageError as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"benchmark: {exc}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
    if settings.mode == "onnx":
        from ..deploy.benchmark_onnx import report_text as onnx_text

        text = onnx_text(result)
    else:
        text = report_text(result)
    print(text)
    if settings.out is not None:
        path = Path(settings.out)
        files = {path: json.dumps(result, indent=2) + "\n", path.with_suffix(".md"): text + "\n"}
        try:  # files of those names that deeplab-benchmark did not write are kept
            write_texts(files, "out", settings.overwrite)
        except DeepLabError as exc:
            print(f"benchmark: {exc}", file=sys.stderr)
            return 1
        print(f"Wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
