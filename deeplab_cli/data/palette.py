"""The PASCAL VOC colour palette and class names, shared by data, metrics and export."""

from __future__ import annotations

import numpy as np

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

IGNORE_INDEX = 255


def voc_colormap(n: int = 256) -> np.ndarray:
    """VOC's ``VOClabelcolormap``: bit-interleaved colours, index 255 -> (224, 224, 192)."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def voc_palette() -> list[int]:
    """The palette as the flat 768-int list ``PIL.Image.putpalette`` expects."""
    return voc_colormap().reshape(-1).tolist()
