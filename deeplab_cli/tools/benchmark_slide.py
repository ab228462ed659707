"""Peak memory and time of whole-image against sliding-window inference on one large image.

Usage (``key=value`` arguments, every key optional)::

    python scripts/benchmark_slide.py model=deeplabv3plus_mobilenet_v2 output_stride=16 size=2048x1024 \
        window=769 stride=513

Each mode runs in its own process, so one's peak cannot hide the other's: on CPU the
peak is the resident-set high-water mark (``VmHWM``) minus the process's size before the
forward pass (model built, input made); on CUDA it is ``max_memory_allocated``. The
slide prediction is compared with the whole-image one (share of pixels that agree).
Random weights (``model.pretrained=false``): memory and time do not depend on them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import torch

from ..config.compose import compose
from ..engine.eval.inference import SlideSpec, predict_probabilities
from .benchmark.measure import proc_status_mb
from .benchmark.report import cpu_name

DEFAULTS = {"model": "deeplabv3plus_mobilenet_v2", "output_stride": "16", "size": "2048x1024", "window": "769",
            "stride": "513", "classes": "19", "device": "auto", "threads": "0", "out": ""}  # fmt: skip


def _args(argv: list[str]) -> dict[str, str]:
    args = dict(DEFAULTS)
    for word in argv:
        key, sep, value = word.partition("=")
        if not sep or key not in DEFAULTS:
            raise SystemExit(f"error: {word!r}: use key=value with key one of {', '.join(DEFAULTS)}")
        args[key] = value
    return args


def run_one(args: dict[str, str], mode: str, pred_file: str) -> dict[str, float]:
    """One mode in this process: seconds, peak MB over the baseline, and the argmax prediction file."""
    if int(args["threads"]):
        torch.set_num_threads(int(args["threads"]))
    device = torch.device("cuda" if args["device"] == "auto" and torch.cuda.is_available() else
                          ("cpu" if args["device"] == "auto" else args["device"]))  # fmt: skip
    cfg = compose([f"model={args['model']}", "model.pretrained=false", f"model.output_stride={args['output_stride']}",
                   f"dataset.num_classes={args['classes']}"])  # fmt: skip
    from ..config import models

    torch.manual_seed(0)
    model = models.make_model(cfg, pretrained=False).eval().to(device)
    width, height = (int(v) for v in args["size"].split("x"))
    image = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0)).to(device)
    window, stride = int(args["window"]), int(args["stride"])
    slide = SlideSpec((window, window), (stride, stride)) if mode == "slide" else None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) / 2**20
    else:
        with suppress(OSError):  # reset the high-water mark to the current size (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
        base = proc_status_mb("VmRSS") or 0.0
    start = time.perf_counter()
    probs = predict_probabilities(model, image, slide=slide)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = proc_status_mb("VmHWM") or 0.0
    seconds = time.perf_counter() - start
    torch.save(probs.argmax(1).cpu(), pred_file)
    return {"seconds": round(seconds, 3), "peak_mb": round(peak - base, 1), "device": device.type}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("--one-whole", "--one-slide"):  # a child: --one-<mode> <prediction file> key=value...
        print(json.dumps(run_one(_args(argv[2:]), argv[0].removeprefix("--one-"), argv[1])))
        return 0
    args = _args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("whole", "slide"):
            cmd = [
                sys.executable,
                "-m",
                "deeplab_cli.tools.benchmark_slide",
                f"--one-{mode}",
                f"{tmp}/{mode}.pt",
                *argv,
            ]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        whole, slide = (torch.load(f"{tmp}/{m}.pt") for m in results)
    agree = float((whole == slide).float().mean()) * 100
    report = {
        "model": args["model"], "output_stride": int(args["output_stride"]), "size": args["size"],
        "window": int(args["window"]), "stride": int(args["stride"]), "cpu": cpu_name(),
        "threads": int(args["threads"]) or torch.get_num_threads(), **results,
        "memory_ratio": round(results["whole"]["peak_mb"] / max(results["slide"]["peak_mb"], 1e-9), 2),
        "time_ratio": round(results["slide"]["seconds"] / max(results["whole"]["seconds"], 1e-9), 2),
        "pixels_agreeing_pct": round(agree, 2),
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    if args["out"]:
        Path(args["out"]).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
