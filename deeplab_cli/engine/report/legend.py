"""A legend under a prediction overlay: a colour swatch and the class name of each class shown.

An overlay without one is a picture no one can read (which colour is "road"?). Only the
classes present in the prediction are listed, in class order, wrapped to the image width.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_PAD = 6


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError):
        return ImageFont.load_default()


def with_legend(picture: np.ndarray, classes: Sequence[int], names: Sequence[str], palette: np.ndarray) -> np.ndarray:
    """``picture`` (H, W, 3) uint8 with a white strip below it naming each of ``classes`` in its colour."""
    height, width = picture.shape[:2]
    size = max(11, min(24, width // 40))
    font = _font(size)
    entries = [(int(c), names[c] if c < len(names) else f"class_{c}") for c in classes]
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    rows: list[list[tuple[int, str, int]]] = [[]]
    x = _PAD
    for cls, name in entries:
        w = size + 4 + int(measure.textlength(name, font=font)) + 2 * _PAD
        if rows[-1] and x + w > width:
            rows.append([])
            x = _PAD
        rows[-1].append((cls, name, x))
        x += w
    line = size + _PAD
    strip = Image.new("RGB", (width, _PAD + line * len(rows)), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for r, row in enumerate(rows):
        y = _PAD + r * line
        for cls, name, x0 in row:
            draw.rectangle(
                [x0, y, x0 + size, y + size - 1], fill=tuple(int(v) for v in palette[cls]), outline=(0, 0, 0)
            )
            draw.text((x0 + size + 4, y - 1), name, fill=(0, 0, 0), font=font)
    return np.concatenate([picture, np.asarray(strip)], axis=0)
