"""The benchmark's ``key=value`` arguments: each key's default, what it allows and how it is parsed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch

from ..._paths import config_dir

PRECISIONS = ("fp32", "bf16", "fp16")


DEVICES = ("auto", "cpu", "cuda")


REFERENCES = ("auto", "deeplabv3_resnet101", "deeplabv3_resnet50", "none")


class UsageError(Exception):
    """A bad argument; ``main`` prints it on one line and exits with status 2."""


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
    "overwrite": Option("false", "true|false (replace out= files deeplab-benchmark did not write)", _bool),
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
    overwrite: bool
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
