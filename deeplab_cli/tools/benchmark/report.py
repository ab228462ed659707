"""The benchmark's record: ours and the reference side by side, their ratios, the machine, a Markdown table."""

from __future__ import annotations

import platform
import statistics
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torchvision

from .measure import LR, MOMENTUM, spread
from .settings import Settings
from .subjects import DATA_SCALE_RANGE


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def combine(ours: dict[str, Any], ref: dict[str, Any] | None, memory_kind: str) -> dict[str, Any]:
    """The flat JSON record: ``ours_*``, ``reference_*`` and the ours/reference ratios."""
    ref = ref or {}
    shared = (
        "model",
        "output_stride",
        "params",
        "train_images_per_s",
        "train_s",
        "infer_images_per_s",
        "infer_s",
        "peak_memory_mb",
        "baseline_memory_mb",
    )
    out: dict[str, Any] = {
        f"ours_{k}": ours.get(k) for k in (*shared, "train_with_data_images_per_s", "train_with_data_s")
    }
    out.update({f"reference_{k}": ref.get(k) for k in shared})
    out["train_ratio"] = _ratio(ours["train_images_per_s"], ref.get("train_images_per_s"))
    out["infer_ratio"] = _ratio(ours["infer_images_per_s"], ref.get("infer_images_per_s"))
    for kind in ("train", "infer"):  # the per-round ratios; the headline ratio is their median
        out[f"ours_{kind}_rounds"], out[f"reference_{kind}_rounds"] = (
            ours.get(f"{kind}_rounds"),
            ref.get(f"{kind}_rounds"),
        )
        ratios = [o / r for o, r in zip(ours.get(f"{kind}_rounds", []), ref.get(f"{kind}_rounds", []), strict=True)]
        out[f"{kind}_ratio_spread"] = spread(ratios) if ratios else None
        if ratios:
            out[f"{kind}_ratio"] = out[f"{kind}_ratio_spread"]["median"]
            out[f"ours_{kind}_images_per_s"] = statistics.median(ours[f"{kind}_rounds"])
            out[f"reference_{kind}_images_per_s"] = statistics.median(ref[f"{kind}_rounds"])
    out["params_ratio"] = _ratio(ours["params"], ref.get("params"))
    out["memory_ratio"] = _ratio(ours["peak_memory_mb"], ref.get("peak_memory_mb"))
    out["memory_kind"] = memory_kind
    return out


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def markdown_table(r: Mapping[str, Any]) -> str:
    header = "| model | output stride | params | train img/s | train+data img/s | infer img/s | peak MB |"
    rows = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for who in ("ours", "reference"):
        name = r[f"{who}_model"] or "none"
        cells = [f"{who}: {name}", _cell(r[f"{who}_output_stride"]), _cell(r[f"{who}_params"])]
        cells += [_cell(r[f"{who}_train_images_per_s"]), _cell(r.get(f"{who}_train_with_data_images_per_s"))]
        cells += [_cell(r[f"{who}_infer_images_per_s"]), _cell(r[f"{who}_peak_memory_mb"], 0)]
        rows.append("| " + " | ".join(cells) + " |")
    ratio = ["ratio (ours / reference)", "-", _cell(r["params_ratio"], 3), _cell(r["train_ratio"], 3), "-"]
    ratio += [_cell(r["infer_ratio"], 3), _cell(r["memory_ratio"], 3)]
    rows.append("| " + " | ".join(ratio) + " |")
    for kind in ("train", "infer"):
        sp = r.get(f"{kind}_ratio_spread")
        if sp:
            iqr = f", IQR {sp['iqr'][0]:.3f}-{sp['iqr'][1]:.3f}" if sp["iqr"] else ""
            rows.append(
                f"\n{kind} ratio over {len(sp['rounds'])} alternating rounds: median {sp['median']:.3f} "
                f"(min {sp['min']:.3f}, max {sp['max']:.3f}{iqr}); rounds: "
                + ", ".join(f"{v:.3f}" for v in sp["rounds"])
            )
    return "\n".join(rows)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(settings: Settings, device: torch.device) -> dict[str, Any]:
    """``settings``: every argument plus what the numbers depend on."""
    env = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}
    env.update(
        reference_resolved=settings.reference_name,
        device_name=str(device),
        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        cpu=cpu_name(),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        torchvision=torchvision.__version__,
        python=platform.python_version(),
        optimizer=f"SGD(lr={LR}, momentum={MOMENTUM})",
        data_scale_range=list(DATA_SCALE_RANGE) if settings.data else None,
    )
    return env


def report_text(result: Mapping[str, Any]) -> str:
    s = result["settings"]
    lines = [
        f"Throughput on {s['gpu'] or s['cpu']} ({s['device_name']}, {s['threads']} threads, {s['precision']}, "
        f"crop {s['crop']}, batch {s['batch']}, inference at {s['infer_size'][0]}x{s['infer_size'][1]}, "
        f"torch {s['torch']}, torchvision {s['torchvision']}); peak memory: {result['memory_kind']}.",
        "",
        markdown_table(result),
        "",
        f"Command: `{result['command']}`",
        f"Full settings: `{result['command_full']}`",
    ]
    return "\n".join(lines)
