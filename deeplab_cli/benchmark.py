"""Training and inference throughput of one of our presets against torchvision's DeepLab v3.

Usage (``key=value`` arguments, every key optional)::

    python scripts/benchmark.py model=deeplabv3_resnet101 crop=129 batch=2 out=F.json

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

import ctypes
import gc
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from omegaconf import DictConfig
from torch import Tensor, nn

from . import factory
from ._paths import config_dir
from .data.palette import IGNORE_INDEX
from .engine.losses import total_loss
from .errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
REFERENCES = ("auto", "deeplabv3_resnet101", "deeplabv3_resnet50", "none")
REFERENCE_OUTPUT_STRIDE = 8  # torchvision dilates layer3 and layer4
DATA_SCALE_RANGE = (0.5, 2.0)  # the v3/v3+ VOC recipe's random scale
LR, MOMENTUM = 1e-3, 0.9
Loss = Callable[[Mapping[str, Any], Tensor], Tensor]


class UsageError(Exception):
    """A bad argument; ``main`` prints it on one line and exits with status 2."""


# ---------------------------------------------------------------------------------------------- arguments


def model_presets() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))


def _choice(*values: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in values:
            raise ValueError
        return text

    return parse


def _int(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError
        return value

    return parse


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    return lambda text: None if text.lower() in ("null", "none") else parse(text)


def _bool(text: str) -> bool:
    return {"true": True, "false": False}[text.lower()]


def _size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    if min(width, height) < 1:
        raise ValueError
    return width, height


def _path(text: str) -> str:
    if not text:
        raise ValueError
    return text


@dataclass(frozen=True)
class Option:
    default: str
    allowed: str
    parse: Callable[[str], Any]


MODES = ("train", "onnx")

OPTIONS: dict[str, Option] = {
    "mode": Option("train", "train (ours vs torchvision) | onnx (ONNX Runtime vs PyTorch, CPU)", _choice(*MODES)),
    "model": Option("deeplabv3_resnet101", "a preset of configs/model", lambda t: _choice(*model_presets())(t)),
    "crop": Option("513", "an integer >= 8", _int(8)),
    "batch": Option("16", "an integer >= 2 (BatchNorm in training needs two samples)", _int(2)),
    "precision": Option("fp32", "|".join(PRECISIONS), _choice(*PRECISIONS)),
    "channels_last": Option("false", "true|false", _bool),
    "compile": Option("false", "true|false", _bool),
    "device": Option("auto", "|".join(DEVICES), _choice(*DEVICES)),
    "warmup": Option("3", "an integer >= 0", _int(0)),
    "iters": Option("10", "an integer >= 1", _int(1)),
    "infer_iters": Option("5", "an integer >= 1", _int(1)),
    "infer_size": Option("500x375", "WIDTHxHEIGHT, e.g. 500x375 (a VOC image)", _size),
    "output_stride": Option("null", "null|8|16|32", _optional(lambda t: int(_choice("8", "16", "32")(t)))),
    "reference": Option("auto", "|".join(REFERENCES), _choice(*REFERENCES)),
    "data": Option("true", "true|false", _bool),
    "workers": Option("2", "an integer >= 0", _int(0)),
    "out": Option("null", "null or a path ending in .json", _optional(_path)),
    "threads": Option("null", "null or an integer >= 1", _optional(_int(1))),
    "rounds": Option("5", "an integer >= 1 (ours and the reference timed in turn, this many times each)", _int(1)),
}


@dataclass(frozen=True)
class Settings:
    mode: str
    model: str
    crop: int
    batch: int
    precision: str
    channels_last: bool
    compile: bool
    device: str
    warmup: int
    iters: int
    infer_iters: int
    infer_size: tuple[int, int]
    output_stride: int | None
    reference: str
    data: bool
    workers: int
    out: str | None
    threads: int | None
    rounds: int

    @property
    def reference_name(self) -> str | None:
        """``reference=auto``: the torchvision model with our preset's backbone depth."""
        if self.reference == "none":
            return None
        if self.reference == "auto":
            return "deeplabv3_resnet50" if "resnet50" in self.model else "deeplabv3_resnet101"
        return self.reference

    def as_arguments(self) -> list[str]:
        """Every setting as ``key=value``: the command that reproduces this run."""
        shown = {"infer_size": "{}x{}".format(*self.infer_size)}
        items = ((f.name, shown.get(f.name, getattr(self, f.name))) for f in fields(self))
        return [f"{k}={'null' if v is None else str(v).lower() if isinstance(v, bool) else v}" for k, v in items]


def parse_args(argv: list[str]) -> Settings:
    """``key=value`` arguments over the defaults; an unknown key or a bad value raises UsageError."""
    given: dict[str, str] = {}
    keys = ", ".join(OPTIONS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise UsageError(f"argument {arg!r} is not key=value; allowed keys: {keys}")
        if key not in OPTIONS:
            raise UsageError(f"unknown key {key!r}; allowed keys: {keys}")
        given[key] = value
    values: dict[str, Any] = {}
    for key, option in OPTIONS.items():
        text = given.get(key, option.default)
        try:
            values[key] = option.parse(text)
        except (ValueError, KeyError):
            allowed = ", ".join(model_presets()) if key == "model" else option.allowed
            raise UsageError(f"{key}={text!r} is invalid; allowed: {allowed}") from None
    return Settings(**values)


def resolve_device(settings: Settings) -> torch.device:
    """The device to run on; CUDA-only requests on a machine without CUDA raise UsageError."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device=cuda but CUDA is not available; allowed here: device=auto|cpu")
    device = torch.device("cuda" if settings.device != "cpu" and torch.cuda.is_available() else "cpu")
    if settings.precision == "fp16" and device.type != "cuda":
        raise UsageError("precision=fp16 needs CUDA (the device is cpu); allowed on cpu: precision=fp32|bf16")
    return device


# ---------------------------------------------------------------------------------------------- models


def compose(overrides: list[str]) -> DictConfig:
    """The training config as ``deeplab-train`` composes it (tests/hydra_compose.py, minus the runtime)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from .config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def our_config(settings: Settings, data_root: str | None) -> DictConfig:
    """The preset without the quickstart experiment; with ``data_root`` a VOC-sized synthetic set there."""
    overrides = [f"model={settings.model}", "model.pretrained=false"]
    if settings.output_stride is not None:
        overrides.append(f"model.output_stride={settings.output_stride}")
    if data_root is not None:
        width, height = settings.infer_size
        lo, hi = DATA_SCALE_RANGE
        overrides += [
            f"dataset.root={data_root}",
            f"dataset.crop_size={settings.crop}",
            f"dataset.num_workers={settings.workers}",
            f"dataset.scale_range=[{lo},{hi}]",
            f"dataset.synthetic.num_train={2 * settings.batch}",
            "dataset.synthetic.num_val=1",
            f"dataset.synthetic.min_size={min(width, height)}",
            f"dataset.synthetic.max_size={max(width, height)}",
            f"trainer.batch_size={settings.batch}",
            f"trainer.max_iters={settings.warmup + settings.iters}",
        ]
    return compose(overrides)


def reference_model(name: str, num_classes: int) -> nn.Module:
    builder = getattr(torchvision.models.segmentation, name)
    return builder(weights=None, weights_backbone=None, aux_loss=False, num_classes=num_classes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _upsampled(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear logits at ``size``; torchvision's models already return them there."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _our_loss(outputs: Mapping[str, Any], labels: Tensor) -> Tensor:
    return total_loss(outputs, labels, "upsample")


def _reference_loss(outputs: Mapping[str, Any], labels: Tensor) -> Tensor:
    return F.cross_entropy(_upsampled(outputs["out"], tuple(labels.shape[-2:])), labels, ignore_index=IGNORE_INDEX)


# ---------------------------------------------------------------------------------------------- measuring


class PeakMemory:
    """Peak memory of one model's measurement: CUDA's allocator peak, or the process's peak RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_process_peak_rss"
        self.baseline_mb: float | None = None

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return
        try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            self.baseline_mb = _proc_status_mb("VmRSS")
        except OSError:
            self.kind, self.baseline_mb = "unavailable", None

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return _proc_status_mb("VmHWM") if self.kind != "unavailable" else None


def _proc_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(settings: Settings, device: torch.device) -> AbstractContextManager[Any]:
    if settings.precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if settings.precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _to_device(x: Tensor, device: torch.device, channels_last: bool = False) -> Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def make_train_step(
    model: nn.Module, runner: nn.Module, loss: Loss, settings: Settings, device: torch.device
) -> Callable[[Tensor, Tensor], None]:
    """One SGD step (momentum 0.9, lr 1e-3) of ``runner`` (``model``, compiled or not); fp16 scales the loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")

    def step(images: Tensor, labels: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(settings, device):
            value = loss(runner(images), labels)
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def time_train(
    step: Callable[[Tensor, Tensor], None],
    batches: Iterator[tuple[Tensor, Tensor] | None],
    settings: Settings,
    device: torch.device,
) -> tuple[float, float]:
    """(images/s, seconds) over ``iters`` steps after ``warmup``; fetching a batch is inside the clock."""
    images_seen, start = 0, time.perf_counter()
    for i in range(settings.warmup + settings.iters):
        if i == settings.warmup:
            _sync(device)
            images_seen, start = 0, time.perf_counter()
        batch = next(batches)
        if batch is None:  # a batch of only skipped samples (dataset.on_error=skip)
            continue
        step(*batch)
        images_seen += batch[0].shape[0]
    _sync(device)
    elapsed = time.perf_counter() - start
    return images_seen / elapsed, elapsed


def time_infer(runner: nn.Module, image: Tensor, settings: Settings, device: torch.device) -> tuple[float, float]:
    """(images/s, seconds) at batch 1, logits upsampled to the image, after ``warmup`` passes."""
    runner.eval()
    size = tuple(image.shape[-2:])
    with torch.inference_mode(), _autocast(settings, device):
        for i in range(settings.warmup + settings.infer_iters):
            if i == settings.warmup:
                _sync(device)
                start = time.perf_counter()
            _upsampled(runner(image)["out"], size)
        _sync(device)
    elapsed = time.perf_counter() - start
    return settings.infer_iters / elapsed, elapsed


@dataclass
class Inputs:
    """The tensors both models see, made once on the device before any clock starts."""

    images: Tensor
    labels: Tensor
    image: Tensor

    @classmethod
    def random(cls, settings: Settings, num_classes: int, device: torch.device) -> Inputs:
        g = torch.Generator().manual_seed(0)
        b, c = settings.batch, settings.crop
        width, height = settings.infer_size
        return cls(
            _to_device(torch.randn(b, 3, c, c, generator=g), device, settings.channels_last),
            _to_device(torch.randint(0, num_classes, (b, c, c), generator=g), device),
            _to_device(torch.randn(1, 3, height, width, generator=g), device, settings.channels_last),
        )

    def repeat(self) -> Iterator[tuple[Tensor, Tensor]]:
        while True:
            yield self.images, self.labels


def _loader_batches(loader: Any, settings: Settings, device: torch.device) -> Iterator[tuple[Tensor, Tensor] | None]:
    """The real loader's batches moved to the device (inside the clock, as training does)."""
    for batch in loader:
        if batch is None:
            yield None
            continue
        images, labels, _ = batch
        yield _to_device(images, device, settings.channels_last), _to_device(labels, device)


def measure(
    model: nn.Module, loss: Loss, inputs: Inputs, settings: Settings, device: torch.device, loader: Any = None
) -> dict[str, Any]:
    """Train (random tensors; then the real loader if given) and inference throughput of one model."""
    model = model.to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    runner = torch.compile(model) if settings.compile else model
    runner.train()
    step = make_train_step(model, runner, loss, settings, device)
    result: dict[str, Any] = {"params": count_params(model)}
    result["train_images_per_s"], result["train_s"] = time_train(step, inputs.repeat(), settings, device)
    result["train_with_data_images_per_s"] = result["train_with_data_s"] = None
    if loader is not None:
        batches = _loader_batches(loader, settings, device)
        result["train_with_data_images_per_s"], result["train_with_data_s"] = time_train(
            step, batches, settings, device
        )
        batches.close()  # shuts the loader's workers down
    result["infer_images_per_s"], result["infer_s"] = time_infer(runner, inputs.image, settings, device)
    del step, runner, model
    return result


def time_round(
    model: nn.Module, loss: Loss, inputs: Inputs, settings: Settings, device: torch.device
) -> tuple[float, float]:
    """(train images/s, inference images/s) of one more round: the timing of :func:`measure`, nothing else."""
    runner = torch.compile(model) if settings.compile else model
    runner.train()
    train, _ = time_train(make_train_step(model, runner, loss, settings, device), inputs.repeat(), settings, device)
    infer, _ = time_infer(runner, inputs.image, settings, device)
    return train, infer


def alternate_rounds(
    ours: nn.Module, reference: nn.Module, inputs: Inputs, settings: Settings, device: torch.device, rounds: int
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """``rounds`` x (ours, reference), timed in turn so that a drift of the machine touches both alike."""
    out = []
    for _ in range(rounds):
        mine = time_round(ours, _our_loss, inputs, settings, device)
        theirs = time_round(reference, _reference_loss, inputs, settings, device)
        out.append((mine, theirs))
    return out


def spread(values: list[float]) -> dict[str, float | list[float] | None]:
    """Median, min, max and interquartile range of per-round ratios (IQR needs 4 rounds or more)."""
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) >= 4 else None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "iqr": [q[0], q[2]] if q else None,
        "rounds": values,
    }


def release(device: torch.device, compiled: bool) -> None:
    """Give the first model's memory back before the second is built."""
    if compiled:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif sys.platform.startswith("linux"):
        with suppress(OSError, AttributeError):  # glibc keeps freed arenas; return them for a low RSS baseline
            ctypes.CDLL("libc.so.6").malloc_trim(0)


# ---------------------------------------------------------------------------------------------- reporting


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


def _cpu_name() -> str:
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
        cpu=_cpu_name(),
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


# ---------------------------------------------------------------------------------------------- entry point


def run_onnx(settings: Settings, device: torch.device, command: str) -> dict[str, Any]:
    """``mode=onnx``: the preset's deployment graph in ONNX Runtime against PyTorch, CPU, batch 1."""
    from .deploy import benchmark_onnx
    from .deploy.exporters import ExportError, require_onnx

    if device.type != "cpu" or settings.precision != "fp32":
        raise UsageError("mode=onnx compares CPU inference in fp32; use device=cpu (or auto) and precision=fp32")
    try:
        require_onnx()
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    import onnxruntime

    cfg = our_config(settings, None)
    factory.resolve_preprocess(cfg)
    mean, std, bgr = factory.normalisation(cfg)
    model = factory.make_model(cfg, pretrained=False)
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
        model = factory.make_model(cfg, pretrained=False)
        inputs = Inputs.random(settings, cfg.model.num_classes, device)
        loader, generation_s = None, None
        if settings.data:
            start = time.perf_counter()
            factory.dataset_root(cfg)  # writes the synthetic set, outside every clock
            generation_s = time.perf_counter() - start
            loader = factory.make_train_loader(cfg, start_iter=0)
        ours = measure(model, _our_loss, inputs, settings, device, loader)
        ours.update(model=settings.model, output_stride=getattr(model, "output_stride", cfg.model.output_stride))
        ours.update(peak_memory_mb=memory.peak_mb(), baseline_memory_mb=memory.baseline_mb)
        del model, loader
        release(device, settings.compile)
    ref = None
    if settings.reference_name is not None:
        memory.reset()
        reference = reference_model(settings.reference_name, cfg.model.num_classes)
        ref = measure(reference, _reference_loss, inputs, settings, device)
        ref.update(model=f"torchvision {settings.reference_name}", output_stride=REFERENCE_OUTPUT_STRIDE)
        ref.update(peak_memory_mb=memory.peak_mb(), baseline_memory_mb=memory.baseline_mb)
        ours["train_rounds"], ours["infer_rounds"] = [ours["train_images_per_s"]], [ours["infer_images_per_s"]]
        ref["train_rounds"], ref["infer_rounds"] = [ref["train_images_per_s"]], [ref["infer_images_per_s"]]
        if settings.rounds > 1:  # both models built now: memory was measured above, one model at a time
            mine = factory.make_model(cfg, pretrained=False).to(device)
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
        from .deploy.benchmark_onnx import report_text as onnx_text

        text = onnx_text(result)
    else:
        text = report_text(result)
    print(text)
    if settings.out is not None:
        path = Path(settings.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        path.with_suffix(".md").write_text(text + "\n")
        print(f"Wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
