"""One benchmark run: ours, then the reference, then alternating timing rounds; or the ONNX comparison."""

from __future__ import annotations

import shlex
import tempfile
import time
from contextlib import nullcontext
from typing import Any

import torch

from ...config import datasets, models
from .measure import Inputs, PeakMemory, alternate_rounds, measure, release
from .report import combine, environment
from .settings import Settings, UsageError
from .subjects import (
    REFERENCE_OUTPUT_STRIDE,
    our_config,
    our_loss,
    reference_loss,
    reference_model,
)

# ---------------------------------------------------------------------------------------------- arguments


# ---------------------------------------------------------------------------------------------- models


# ---------------------------------------------------------------------------------------------- measuring


# ---------------------------------------------------------------------------------------------- reporting


# ---------------------------------------------------------------------------------------------- entry point


def run_onnx(settings: Settings, device: torch.device, command: str) -> dict[str, Any]:
    """``mode=onnx``: the preset's deployment graph in ONNX Runtime against PyTorch, CPU, batch 1."""
    from ...deploy import benchmark_onnx
    from ...deploy.exporters import ExportError, require_onnx

    if device.type != "cpu" or settings.precision != "fp32":
        raise UsageError("mode=onnx compares CPU inference in fp32; use device=cpu (or auto) and precision=fp32")
    try:
        require_onnx()
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    import onnxruntime

    cfg = our_config(settings, None)
    datasets.resolve_preprocess(cfg)
    mean, std, bgr = datasets.normalisation(cfg)
    model = models.make_model(cfg, pretrained=False)
    result = benchmark_onnx.measure_onnx(
        model, mean, std, bgr, settings.infer_size, settings.warmup, settings.infer_iters
    )
    result["settings"] = environment(settings, device) | {"onnxruntime": onnxruntime.__version__}
    result["command"] = command
    result["command_full"] = shlex.join(["python", "scripts/benchmark.py", *settings.as_arguments()])
    return result


def run(settings: Settings, device: torch.device, command: str) -> dict[str, Any]:
    """Ours (train, train with data, inference), then free it, then the reference (train, inference)."""
    memory = PeakMemory(device)
    with tempfile.TemporaryDirectory(prefix="deeplab-bench-") if settings.data else nullcontext() as data_root:
        memory.reset()
        cfg = our_config(settings, data_root)
        model = models.make_model(cfg, pretrained=False)
        inputs = Inputs.random(settings, cfg.model.num_classes, device)
        loader, generation_s = None, None
        if settings.data:
            start = time.perf_counter()
            datasets.dataset_root(cfg)  # writes the synthetic set, outside every clock
            generation_s = time.perf_counter() - start
            loader = datasets.make_train_loader(cfg, start_iter=0)
        ours = measure(model, our_loss, inputs, settings, device, loader)
        ours.update(model=settings.model, output_stride=getattr(model, "output_stride", cfg.model.output_stride))
        ours.update(peak_memory_mb=memory.peak_mb(), baseline_memory_mb=memory.baseline_mb)
        del model, loader
        release(device, settings.compile)
    ref = None
    if settings.reference_name is not None:
        memory.reset()
        reference = reference_model(settings.reference_name, cfg.model.num_classes)
        ref = measure(reference, reference_loss, inputs, settings, device)
        ref.update(model=f"torchvision {settings.reference_name}", output_stride=REFERENCE_OUTPUT_STRIDE)
        ref.update(peak_memory_mb=memory.peak_mb(), baseline_memory_mb=memory.baseline_mb)
        ours["train_rounds"], ours["infer_rounds"] = [ours["train_images_per_s"]], [ours["infer_images_per_s"]]
        ref["train_rounds"], ref["infer_rounds"] = [ref["train_images_per_s"]], [ref["infer_images_per_s"]]
        if settings.rounds > 1:  # both models built now: memory was measured above, one model at a time
            mine = models.make_model(cfg, pretrained=False).to(device)
            mine = mine.to(memory_format=torch.channels_last) if settings.channels_last else mine
            reference = reference.to(memory_format=torch.channels_last) if settings.channels_last else reference
            for (o_train, o_infer), (r_train, r_infer) in alternate_rounds(
                mine, reference, inputs, settings, device, settings.rounds - 1
            ):
                ours["train_rounds"].append(o_train)
                ours["infer_rounds"].append(o_infer)
                ref["train_rounds"].append(r_train)
                ref["infer_rounds"].append(r_infer)
    result = combine(ours, ref, memory.kind)
    result["data_generation_s"] = generation_s
    result["settings"] = environment(settings, device)
    result["command"] = command
    result["command_full"] = shlex.join(["python", "scripts/benchmark.py", *settings.as_arguments()])
    return result
