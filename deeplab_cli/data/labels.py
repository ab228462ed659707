"""From the values stored in a mask file to class indices: ``label_map``, ``reduce_zero_label``, colours.

Datasets store labels their own way: VOC as class indices with 255 for "void",
Cityscapes as 34 raw ``labelIds`` of which 19 are trained, ADE20K with 0 for
"other" and classes 1..150, CamVid's SegNet files with 11 for void, and many
users' masks as RGB colours. One :class:`LabelMapping` turns each into class
indices ``0..C-1`` plus :data:`IGNORE_INDEX`, the same way for training,
evaluation, check-data's statistics and class weights, so the numbers agree.
A raw value the mapping does not account for is an error naming the file,
never a silent wrong label (a CUDA device-side assert at best).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .palette import IGNORE_INDEX

_INVALID = -1
_MAX_SHOWN = 5

Colour = tuple[int, int, int]


class LabelError(ValueError):
    """A mask holds values or colours the mapping does not account for; the message says which and how to fix."""


def colour_key(rgb: np.ndarray) -> np.ndarray:
    """One uint32 per colour (R << 16 | G << 8 | B), for fast lookups of (..., 3) uint8 arrays."""
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def colour_lookup(sorted_keys: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each pixel of ``rgb`` (..., 3+): its position in ``sorted_keys`` (colour keys, ascending),
    whether its colour is there at all, and the pixel's own key (for naming unknown colours)."""
    keys = colour_key(rgb[..., :3])
    pos = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
    return pos, sorted_keys[pos] == keys, keys


def colour_text(key: int) -> str:
    """``(R, G, B)`` of a :func:`colour_key`."""
    return f"({(key >> 16) & 255}, {(key >> 8) & 255}, {key & 255})"


def parse_colour(value: Any, where: str) -> Colour:
    """``[R, G, B]`` or ``"R,G,B"`` as a tuple of three 0..255 ints."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        colour = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        colour = ()
    if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
        raise ConfigError(f"{where}: {value!r} is not a colour; write it as [R, G, B] with values 0..255.")
    return colour  # type: ignore[return-value]


def parse_color_map(value: Any, num_classes: int) -> dict[Colour, int] | None:
    """``dataset.color_map`` in one of three forms (several colours may share a class; class 255 ignores
    a colour):

    - ``[[R, G, B], ...]``: one colour per class, the index is the class;
    - ``[[R, G, B, class], ...]``: explicit classes (the form a command line can write);
    - ``{"R,G,B": class, ...}``: the same as a YAML mapping.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        pairs = [(parse_colour(k, f"dataset.color_map key {k!r}"), v) for k, v in value.items()]
    else:
        pairs = []
        for i, entry in enumerate(value):
            explicit = not isinstance(entry, str) and len(entry) == 4
            colour = parse_colour(list(entry)[:3] if explicit else entry, f"dataset.color_map[{i}]")
            pairs.append((colour, entry[3] if explicit else i))
    mapping: dict[Colour, int] = {}
    for colour, cls in pairs:
        if not isinstance(cls, int) or not (0 <= cls < num_classes or cls == IGNORE_INDEX):
            raise ConfigError(
                f"dataset.color_map maps {list(colour)} to {cls!r}; a class must be 0..{num_classes - 1} "
                f"or {IGNORE_INDEX} (ignore)."
            )
        mapping[colour] = cls
    if not mapping:
        raise ConfigError("dataset.color_map is empty; list one [R, G, B] per class, or set it to null.")
    return mapping


@dataclass(frozen=True)
class LabelMapping:
    """How raw mask values become class indices.

    - ``label_map``: raw value -> class; every unlisted raw value is ignored
      (Cityscapes' labelIds -> train ids).
    - ``reduce_zero_label``: raw 0 -> ignore, k -> k-1 (ADE20K's "other" class 0).
    - otherwise raw ``0..C-1`` are the classes.
    - ``ignore_values``: further raw values to ignore (CamVid's void 11). Raw 255 is ignored too,
      unless ``label_map`` lists it: 0/255 binary masks with ``{0: 0, 255: 1}`` keep their foreground.
    - ``color_map``: masks are RGB; each listed colour -> class (or ignore).
    A raw value or colour none of these covers is a :class:`LabelError`.
    """

    num_classes: int
    label_map: Mapping[int, int] | None = None
    reduce_zero_label: bool = False
    ignore_values: tuple[int, ...] = ()
    color_map: Mapping[Colour, int] | None = None
    _lut: np.ndarray = field(init=False, repr=False, compare=False)
    _lut8: np.ndarray = field(init=False, repr=False, compare=False)
    _colour_keys: np.ndarray | None = field(init=False, repr=False, compare=False, default=None)
    _colour_classes: np.ndarray | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        c = self.num_classes
        if not 1 <= c <= IGNORE_INDEX:
            raise ConfigError(f"dataset.num_classes={c} must lie in 1..{IGNORE_INDEX}.")
        if self.label_map is not None and self.reduce_zero_label:
            raise ConfigError(
                "dataset.label_map and dataset.reduce_zero_label=true both remap the raw values; give the "
                "whole mapping in label_map (raw value -> class) and set reduce_zero_label=false."
            )
        for v in self.ignore_values:
            if not 0 <= v <= 255:
                raise ConfigError(f"dataset.ignore_values holds {v}; mask values are 0..255.")
        lut = np.full(256, _INVALID, dtype=np.int16)
        if self.label_map is not None:
            lut[:] = IGNORE_INDEX  # unlisted raw values are ignored
            for raw, cls in self.label_map.items():
                if not 0 <= int(raw) <= 255 or not (0 <= int(cls) < c or int(cls) == IGNORE_INDEX):
                    raise ConfigError(
                        f"dataset.label_map maps {raw} -> {cls}; raw values are 0..255 and classes "
                        f"0..{c - 1} or {IGNORE_INDEX} (ignore)."
                    )
                lut[int(raw)] = int(cls)
        elif self.reduce_zero_label:
            lut[0] = IGNORE_INDEX
            top = min(c, 254)
            lut[1 : top + 1] = np.arange(top)
        else:
            lut[:c] = np.arange(c)
        mapped = {int(raw) for raw in self.label_map or {}}
        if IGNORE_INDEX not in mapped:  # an explicit label_map entry for 255 is the user's word: honour it
            lut[IGNORE_INDEX] = IGNORE_INDEX
        for v in self.ignore_values:
            if v in mapped and int(lut[v]) != IGNORE_INDEX:
                raise ConfigError(
                    f"dataset.label_map maps raw {v} -> {int(lut[v])} and dataset.ignore_values ignores it; "
                    f"remove {v} from one of the two."
                )
            lut[v] = IGNORE_INDEX
        object.__setattr__(self, "_lut", lut)
        object.__setattr__(self, "_lut8", lut.astype(np.uint8))  # applied per mask: built once
        if self.color_map is not None:
            table = {int(colour_key(np.array(c, dtype=np.uint8))): cls for c, cls in self.color_map.items()}
            order = sorted(table)
            object.__setattr__(self, "_colour_keys", np.array(order, dtype=np.uint32))
            object.__setattr__(self, "_colour_classes", np.array([table[k] for k in order], dtype=np.uint8))

    @classmethod
    def from_options(
        cls,
        num_classes: int,
        label_map: Mapping[Any, Any] | None = None,
        reduce_zero_label: bool = False,
        ignore_values: Sequence[int] | None = None,
        color_map: Any = None,
    ) -> LabelMapping:
        """From config values (``label_map`` keys may arrive as strings from YAML or the command line)."""
        mapping = None
        if label_map is not None:
            try:
                mapping = {int(k): int(v) for k, v in label_map.items()}
            except (TypeError, ValueError):
                raise ConfigError(
                    f"dataset.label_map={dict(label_map)!r} must map raw values to classes, e.g. {{7: 0, 8: 1}}."
                ) from None
        return cls(
            num_classes,
            mapping,
            bool(reduce_zero_label),
            tuple(int(v) for v in ignore_values or ()),
            parse_color_map(color_map, num_classes),
        )

    @property
    def is_identity(self) -> bool:
        """Raw values are class indices already (VOC): nothing to translate."""
        return self.label_map is None and not self.reduce_zero_label and not self.ignore_values

    @property
    def uses_colours(self) -> bool:
        return self.color_map is not None

    def lut(self) -> np.ndarray:
        """(256,) int16: the class (or 255) of each raw value, -1 where the raw value is not accounted for."""
        return self._lut.copy()

    def describe_allowed(self) -> str:
        """Which raw values are accepted, for error messages."""
        if self.label_map is not None:
            return "every value (label_map ignores the unlisted ones)"
        first = 1 if self.reduce_zero_label else 0
        last = min(self.num_classes, 254) if self.reduce_zero_label else self.num_classes - 1
        ignored = sorted(({0} if self.reduce_zero_label else set()) | set(self.ignore_values) | {IGNORE_INDEX})
        return f"{first}..{last} (classes) and {', '.join(map(str, ignored))} (ignored)"

    def fix_hint(self) -> str:
        if self.reduce_zero_label:
            return "fix the mask, or set dataset.num_classes, dataset.label_map or dataset.ignore_values"
        return (
            "fix the mask, or map the values with dataset.label_map={raw: class, ...}, ignore them with "
            "dataset.ignore_values=[...], or set dataset.num_classes"
        )

    def invalid_values(self, raw: np.ndarray) -> list[int]:
        """The raw values in ``raw`` (uint8) that are neither mapped nor ignored."""
        present = np.bincount(raw.ravel(), minlength=256) > 0
        return np.flatnonzero(present & (self._lut < 0)).tolist()

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Class indices (H, W) uint8 of a raw (H, W) uint8 mask, or of an (H, W, 3) RGB one with ``color_map``.

        Raises :class:`LabelError` for values or colours the mapping does not cover.
        """
        if self.color_map is not None:
            return self._apply_colours(raw)
        bad = self.invalid_values(raw)
        if bad:
            shown = ", ".join(map(str, bad[:_MAX_SHOWN])) + (", ..." if len(bad) > _MAX_SHOWN else "")
            raise LabelError(
                f"holds value(s) {shown} that are neither a class nor ignored (allowed: {self.describe_allowed()}); "
                f"{self.fix_hint()}"
            )
        if self.is_identity:
            return raw.astype(np.uint8, copy=False)
        return self._lut8[raw]

    def _apply_colours(self, rgb: np.ndarray) -> np.ndarray:
        if rgb.ndim != 3 or rgb.shape[-1] < 3:
            raise LabelError(
                "is not an RGB image, but dataset.color_map says masks are colours; set dataset.color_map=null "
                "for class-index masks"
            )
        assert self._colour_keys is not None and self._colour_classes is not None
        pos, known, keys = colour_lookup(self._colour_keys, rgb)
        if not known.all():
            unknown = np.unique(keys[~known])
            shown = ", ".join(colour_text(int(k)) for k in unknown[:_MAX_SHOWN])
            raise LabelError(
                f"has {int((~known).sum())} pixels in {len(unknown)} colour(s) missing from dataset.color_map, "
                f'e.g. {shown}; add each colour to dataset.color_map ("R,G,B": class, or 255 to ignore it)'
            )
        return self._colour_classes[pos]

    def inverse(self) -> np.ndarray:
        """(256,) uint8: a raw value for each class (the smallest that maps to it), 255 -> 255.

        What a results server expects back: Cityscapes' labelIds from train ids,
        ADE20K's 1..150 from 0..149.
        """
        inv = np.full(256, IGNORE_INDEX, dtype=np.uint8)
        for raw in range(255, -1, -1):
            cls = int(self._lut[raw])
            if 0 <= cls < self.num_classes:
                inv[cls] = raw
        return inv

    def counts(self, mask: np.ndarray) -> np.ndarray:
        """(C + 1,) int64 pixel counts of a mapped mask: one per class, then the ignored pixels."""
        hist = np.bincount(mask.ravel(), minlength=256)
        return np.concatenate([hist[: self.num_classes], [hist[self.num_classes :].sum()]]).astype(np.int64)


def mapping_error(path: Path | str, exc: LabelError) -> str:
    """The one-paragraph message for a mask the mapping rejects."""
    return f"mask {path} {exc}."
