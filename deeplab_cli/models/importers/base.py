"""Shared pieces of the importers: key-renaming rules, strict loading, errors, preprocessing."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch
from torch import Tensor, nn

from ...errors import CheckpointError
from ...imagenet import IMAGENET_MEAN, IMAGENET_STD

#: How many keys of each kind an error message lists before it only counts them.
SHOWN = 5

StateDict = Mapping[str, Tensor]


class CheckpointLayoutError(CheckpointError):
    """A state dict that fits no known layout, or a known one only in part; lists the keys that differ.

    Importing never loads partially: a missing or unexpected key would silently leave
    random or unused weights in the model, which only shows up as a bad mIoU much later.
    """

    def __init__(self, message: str, missing: Sequence[str] = (), unexpected: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing, self.unexpected = list(missing), list(unexpected)


def _listing(label: str, items: Sequence[str]) -> str:
    more = f", ... (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return f"  {label}: {', '.join(items[:SHOWN])}{more}"


def mismatch_error(
    header: str, missing: Sequence[str], unexpected: Sequence[str], wrong_shape: Sequence[str] = ()
) -> CheckpointLayoutError:
    """The error for a key-set mismatch: a few keys of each kind, then the counts."""
    lines = [header]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if items:
            lines.append(_listing(label, items))
    lines.append(f"  ({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong_shape)} with a wrong shape)")
    return CheckpointLayoutError("\n".join(lines), missing, unexpected)


@dataclass(frozen=True)
class Preprocess:
    """Test-time input normalisation a layout's weights were trained with.

    For an HWC RGB image ``img`` in 0..255: ``((img[..., ::-1] if bgr else img) * scale - mean) / std``,
    then HWC -> CHW. ``mean``/``std`` are in the channel order after the optional flip.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    bgr: bool
    scale: float

    def as_config(self) -> dict[str, Any]:
        """The same normalisation as ``model.preprocess`` (our transforms scale images to 0..1 first)."""
        k = 255.0 * self.scale
        return {"mean": [m / k for m in self.mean], "std": [s / k for s in self.std], "bgr": self.bgr}

    @classmethod
    def from_config(cls, mean: Sequence[float], std: Sequence[float], bgr: bool) -> Preprocess:
        """``model.preprocess`` (0-1 units) as a :class:`Preprocess`."""
        return cls(tuple(mean), tuple(std), bool(bgr), 1 / 255)  # type: ignore[arg-type]

    def __call__(self, image: Tensor) -> Tensor:
        """Normalise an HWC (or NHWC) RGB 0..255 image (tensor or array) into the model's CHW (NCHW) input."""
        x = torch.as_tensor(image).float()
        if self.bgr:
            x = x.flip(-1)
        x = (x * self.scale - x.new_tensor(self.mean)) / x.new_tensor(self.std)
        return x.movedim(-1, -3)


def single_scale() -> dict[str, Any]:
    """The ``scales`` config node of a single-scale model (``configs/scales/single.yaml``)."""
    return {"mode": "single", "factors": [1.0], "fusion": "max", "esup": False}


#: RGB / 255, ImageNet mean/std: torchvision's and VainF's eval transforms (and ours).
IMAGENET_RGB = Preprocess(tuple(IMAGENET_MEAN), tuple(IMAGENET_STD), bgr=False, scale=1 / 255)
#: OpenCV BGR, 0..255, Caffe mean subtraction, no std: kazuto1011's (and DeepLab v2 Caffe's).
CAFFE_BGR = Preprocess((104.008, 116.669, 122.675), (1.0, 1.0, 1.0), bgr=True, scale=1.0)


@dataclass
class Imported:
    """An imported checkpoint: our model with its weights, how to feed it, and how to rebuild it."""

    model: nn.Module
    layout: str
    preprocess: Preprocess
    config_overrides: dict[str, Any]
    notes: list[str] = field(default_factory=list)


@cache
def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    return re.compile("".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>\\d+)" for i, p in enumerate(parts)))


@dataclass(frozen=True)
class Rule:
    """Renames a key prefix in both directions; ``{name}`` fields are integers with ours = foreign + shift."""

    foreign: str
    ours: str
    shift: tuple[tuple[str, int], ...] = ()

    def apply(self, key: str, to_ours: bool) -> str | None:
        src, dst = (self.foreign, self.ours) if to_ours else (self.ours, self.foreign)
        match = _pattern(src).match(key)
        if match is None:
            return None
        sign, shift = (1 if to_ours else -1), dict(self.shift)
        fields = {k: int(v) + sign * shift.get(k, 0) for k, v in match.groupdict().items()}
        return dst.format(**fields) + key[match.end() :]


def rename(rules: Sequence[Rule], key: str, to_ours: bool) -> str | None:
    """The first rule's rename of ``key``, or None when no rule applies."""
    for rule in rules:
        renamed = rule.apply(key, to_ours)
        if renamed is not None:
            return renamed
    return None


def identity_rules(*prefixes: str) -> tuple[Rule, ...]:
    return tuple(Rule(p, p) for p in prefixes)


def meta_build(build: Callable[[], nn.Module]) -> nn.Module:
    """Build on the meta device: no memory and no random init, since every tensor is replaced on load."""
    with torch.device("meta"):
        return build()


def load_renamed(
    model: nn.Module,
    state: StateDict,
    rules: Sequence[Rule],
    header: str,
    ignored: Sequence[str] = (),
    convert: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None,
) -> nn.Module:
    """Load ``state`` (foreign key names) into a meta-built ``model``, strictly, copying the tensors.

    Keys under ``ignored`` prefixes are dropped on purpose; ``num_batches_tracked`` may be
    absent (it does nothing in eval mode; Caffe conversions lack it) and is set to 0.
    Any other difference raises :class:`CheckpointLayoutError` with the file's key names.
    ``convert`` rewrites values (under our names) whose layout differs beyond the name.
    """
    expected = model.state_dict()
    mapped: dict[str, Tensor] = {}
    unexpected, wrong_shape = [], []
    for key, value in state.items():
        if key.startswith(tuple(ignored)):
            continue
        ours = rename(rules, key, to_ours=True)
        if ours is None or ours not in expected:
            unexpected.append(key)
        elif tuple(value.shape) != tuple(expected[ours].shape):
            wrong_shape.append(f"{key} {list(value.shape)} (expected {list(expected[ours].shape)})")
        else:
            mapped[ours] = value.detach().to(dtype=expected[ours].dtype, copy=True)
    missing = []
    for ours, ref in expected.items():
        if ours in mapped:
            continue
        if ours.endswith("num_batches_tracked"):
            mapped[ours] = torch.zeros((), dtype=ref.dtype)
        else:
            missing.append(rename(rules, ours, to_ours=False) or ours)
    if missing or unexpected or wrong_shape:
        raise mismatch_error(header, missing, unexpected, wrong_shape)
    model.load_state_dict(convert(mapped) if convert else mapped, strict=True, assign=True)
    return model


@dataclass(frozen=True)
class Layout:
    """How one foreign checkpoint layout maps onto our architecture."""

    name: str
    rules: tuple[Rule, ...]
    #: Foreign key of the final classifier weight; its first dimension is the class count.
    classifier_key: str
    #: ``(num_classes, output_stride) -> DeepLab`` laid out and computing as the foreign model.
    build: Callable[[int, int], nn.Module]
    #: ``(num_classes, output_stride) -> {"model": ..., "backbone": ..., "head": ..., "scales": ...}`` overrides.
    config: Callable[[int, int], dict[str, Any]]
    preprocess: Preprocess
    #: Output strides the weights can run at; the first is the one they were trained with.
    output_strides: tuple[int, ...]
    #: False when the file cannot tell the output stride (it is then assumed to be ``output_strides[0]``).
    stride_in_file: bool = True
    ignored: tuple[str, ...] = ()
    convert: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None
    wrap: Callable[[nn.Module], nn.Module] | None = None
    notes: tuple[str, ...] = ()

    def expected_keys(self, num_classes: int = 21) -> list[str]:
        """The foreign keys this layout has at its own output stride (computed from our model's keys)."""
        model = meta_build(lambda: self.build(num_classes, self.output_strides[0]))
        return [rename(self.rules, key, to_ours=False) or key for key in model.state_dict()]

    def load(self, state: StateDict, num_classes: int, output_stride: int) -> tuple[nn.Module, list[str]]:
        """Our model (in eval mode) with ``state`` loaded strictly, and notes on what the import changed or dropped."""
        model = meta_build(lambda: self.build(num_classes, output_stride))
        header = f"checkpoint looks like {self.name} but its keys do not match that layout exactly:"
        load_renamed(model, state, self.rules, header, self.ignored, self.convert)
        notes = list(self.notes)
        dropped = [key for key in state if key.startswith(self.ignored)]
        if dropped:
            notes.append(f"dropped {len(dropped)} entries under {', '.join(self.ignored)} (not part of our model)")
        if not any(key.endswith("num_batches_tracked") for key in state):
            notes.append("the file has no BN num_batches_tracked entries; set to 0 (unused in eval mode)")
        return (self.wrap(model) if self.wrap else model).eval(), notes
