"""``deeplab-benchmark mode=onnx``: ONNX Runtime against PyTorch, CPU inference of one preset.

Both run the same computation: :class:`~.wrapper.DeployModel` (uint8 image in,
preprocessing, network, upsampling to the image, logits out) in PyTorch, and the
ONNX file ``deeplab-export`` would write for it, in ONNX Runtime's CPU provider with as
many intra-op threads as PyTorch uses. The image is one VOC-sized uint8 image at batch
1, the deployment case; the outputs are compared before anything is timed.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .exporters import export_onnx, onnx_runner
from .wrapper import DeployModel

OPSET = 18


def time_runs(run: Callable[[], Any], warmup: int, iters: int) -> tuple[float, float]:
    """(images/s, seconds) of ``iters`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    start = time.perf_counter()
    for _ in range(iters):
        run()
    elapsed = time.perf_counter() - start
    return iters / elapsed, elapsed


def measure_onnx(
    model: nn.Module, mean: list[float], std: list[float], bgr: bool, size: tuple[int, int], warmup: int, iters: int
) -> dict[str, Any]:
    """Export ``model`` (dynamic size) to a temporary file, check it, time both runtimes on one image."""
    width, height = size
    deploy = DeployModel(model.float().eval(), mean, std, bgr).eval()
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 3, height, width), dtype=np.uint8))
    with tempfile.TemporaryDirectory(prefix="deeplab-bench-onnx-") as tmp:
        path = Path(tmp) / "model.onnx"
        start = time.perf_counter()
        export_onnx(deploy, torch.cat([image, image]), path, OPSET, True, {})
        export_s = time.perf_counter() - start
        size_mb = path.stat().st_size / 1e6
        session = onnx_runner(path, threads=torch.get_num_threads())
        array = image.numpy()
        with torch.inference_mode():
            expected = deploy(image).numpy()
            got = session(array)
            max_diff = float(np.abs(got - expected).max())
            max_output = float(np.abs(expected).max())
            agreement = float((got.argmax(1) == expected.argmax(1)).mean())
            torch_ips, torch_s = time_runs(lambda: deploy(image), warmup, iters)
        ort_ips, ort_s = time_runs(lambda: session(array), warmup, iters)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "onnx_mb": size_mb,
        "export_s": export_s,
        "max_abs_diff": max_diff,
        "max_abs_output": max_output,
        "label_agreement": agreement,
        "pytorch_images_per_s": torch_ips,
        "pytorch_s": torch_s,
        "onnxruntime_images_per_s": ort_ips,
        "onnxruntime_s": ort_s,
        "ratio": ort_ips / torch_ips,
        "opset": OPSET,
    }


def report_text(r: Mapping[str, Any]) -> str:
    s = r["settings"]
    width, height = s["infer_size"]
    rows = [
        f"CPU inference on {s['cpu']} ({s['threads']} threads, batch 1, {width}x{height} uint8 image, "
        f"preprocessing and upsampling in both; torch {s['torch']}, onnxruntime {s['onnxruntime']}, "
        f"ONNX opset {r['opset']}, {s['infer_iters']} timed runs after {s['warmup']}).",
        "",
        "| model | params | runtime | img/s | ms/img |",
        "|---|---:|---|---:|---:|",
        f"| {s['model']} | {r['params']:,} | PyTorch (eager) | {r['pytorch_images_per_s']:.2f} | "
        f"{1000 / r['pytorch_images_per_s']:.0f} |",
        f"| {s['model']} | {r['params']:,} | ONNX Runtime (CPU) | {r['onnxruntime_images_per_s']:.2f} | "
        f"{1000 / r['onnxruntime_images_per_s']:.0f} |",
        f"| ratio (ONNX Runtime / PyTorch) | | | {r['ratio']:.3f} | |",
        "",
        f"ONNX file {r['onnx_mb']:.1f} MB, exported in {r['export_s']:.1f} s; max |diff| {r['max_abs_diff']:.2g} "
        f"(largest |logit| {r['max_abs_output']:.3g}), "
        f"label agreement {100 * r['label_agreement']:.4f}% on the timed image.",
        "",
        f"Command: `{r['command']}`",
    ]
    return "\n".join(rows)
