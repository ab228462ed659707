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


#: Kelly's colours of maximum contrast (Kelly 1965, "Twenty-two colors of maximum contrast"), without
#: white and black: class 0 is a colour too, since for most datasets it is a class like the others.
_KELLY = (
    (243, 195, 0), (135, 86, 146), (243, 132, 0), (161, 202, 241), (190, 0, 50), (194, 178, 128),
    (132, 132, 130), (0, 136, 86), (230, 143, 172), (0, 103, 165), (249, 147, 121), (96, 78, 151),
    (246, 166, 0), (179, 68, 108), (220, 211, 0), (136, 45, 23), (141, 182, 0), (101, 69, 34),
    (226, 88, 34), (43, 61, 38),
)  # fmt: skip


def distinct_colormap(n: int = 256) -> np.ndarray:
    """(n, 3) uint8 colours for datasets without a palette of their own: Kelly's 20, then hues spread by
    the golden ratio at alternating brightness; index 255 (ignore) keeps VOC's (224, 224, 192)."""
    import colorsys

    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        if i < len(_KELLY):
            cmap[i] = _KELLY[i]
        else:
            h = (i * 0.618033988749895) % 1.0
            r, g, b = colorsys.hsv_to_rgb(h, 0.65 + 0.35 * (i % 2), 0.95 - 0.3 * (i % 3 == 0))
            cmap[i] = (round(255 * r), round(255 * g), round(255 * b))
    if n > IGNORE_INDEX:
        cmap[IGNORE_INDEX] = voc_colormap()[IGNORE_INDEX]
    return cmap
