"""A deterministic synthetic dataset written in the PASCAL VOC directory layout.

New users have no dataset, yet should see the whole loop (loader, transforms, loss,
metrics, CRF) run on exactly the code paths VOC uses. So this module writes JPEG
images, palette PNG masks (classes 0-20, a 255 band along object boundaries as in
VOC's annotations) and ``ImageSets/Segmentation`` lists. Each class has its own
colour and texture, which keeps the task learnable by a small model in minutes on
a CPU while still needing spatial context at the boundaries.
"""

from __future__ import annotations

import colorsys
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .layout import DatasetError
from .palette import IGNORE_INDEX, voc_palette

GENERATOR_VERSION = 2
MARKER = ".synthetic.json"


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the generated set; a change regenerates it."""

    num_train: int = 300
    num_val: int = 60
    min_size: int = 64
    max_size: int = 96
    num_classes: int = 21
    boundary: int = 1
    seed: int = 0


def class_colours(num_classes: int) -> np.ndarray:
    """Saturated colours for the object classes 1..C-1: evenly spaced hues at two brightness levels."""
    n = num_classes - 1
    n_hues = (n + 1) // 2
    hues = [(i % n_hues) / n_hues for i in range(n)]
    values = [1.0 if i < n_hues else 0.5 for i in range(n)]
    rgb = [colorsys.hsv_to_rgb(h, 0.9, v) for h, v in zip(hues, values, strict=True)]
    return (np.array(rgb) * 255).astype(np.float32)


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random ellipse, rectangle or triangle covering a good part of the image."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    ry, rx = rng.uniform(0.15, 0.4) * h, rng.uniform(0.15, 0.4) * w
    kind = rng.integers(3)
    if kind == 0:
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    if kind == 1:
        return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
    return (yy >= cy - ry) & (np.abs(xx - cx) <= (yy - (cy - ry)) * rx / (2 * ry))


def _boundary_band(label: np.ndarray, width: int) -> np.ndarray:
    """Pixels within ``width`` of a change of class (VOC marks these 255)."""
    band = np.zeros(label.shape, dtype=bool)
    for _ in range(width):
        edge = np.zeros_like(band)
        edge[1:, :] |= label[1:, :] != label[:-1, :]
        edge[:-1, :] |= label[1:, :] != label[:-1, :]
        edge[:, 1:] |= label[:, 1:] != label[:, :-1]
        edge[:, :-1] |= label[:, 1:] != label[:, :-1]
        band |= edge
        label = np.where(band, -1, label)
    return band


def make_sample(rng: np.random.Generator, spec: SyntheticSpec, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB uint8 image, uint8 label) pair."""
    h, w = (int(v) for v in rng.integers(spec.min_size, spec.max_size + 1, size=2))
    label = np.zeros((h, w), dtype=np.int16)
    for cls in rng.choice(np.arange(1, spec.num_classes), size=rng.integers(1, 4), replace=False):
        label[_shape_mask(rng, h, w)] = cls
    grey = rng.uniform(60, 200)
    image = np.full((h, w, 3), grey, dtype=np.float32)
    image += rng.normal(0, 4, size=(h, w, 1)) + rng.normal(0, 3, size=(h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    for cls in np.unique(label)[1:]:
        m = label == cls
        stripes = 8.0 * np.sin((xx if cls % 2 else yy) * (0.5 + 0.1 * (cls % 5)))
        colour = colours[cls - 1] * rng.uniform(0.92, 1.05)
        image[m] = colour + stripes[m, None] + rng.normal(0, 6, size=(int(m.sum()), 3))
    label = label.astype(np.uint8)
    label[_boundary_band(label.astype(np.int16), spec.boundary)] = IGNORE_INDEX
    return np.clip(image, 0, 255).astype(np.uint8), label


class SyntheticRootError(DatasetError):
    """``dataset.root`` holds files the generator did not write; it never writes there."""


def _marker(voc: Path) -> dict | None:
    """The generator's marker (its spec, and whether it finished), or None if it did not write ``voc``."""
    try:
        marker = json.loads((voc / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and "version" in marker else None


def _contents(folder: Path, shown: int = 3) -> str:
    """``N entries (a, b, c, ...)``: what a folder holds, for the refusal message."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    more = ", ..." if len(names) > shown else ""
    return f"{len(names)} entries ({', '.join(names[:shown])}{more})"


def check_generator_root(root: str | Path) -> Path:
    """The ``VOC2012`` folder the generator may write: new, empty, or written by the generator before.

    Anything else is someone's data: a VOC tree, a folder of photos. The generator
    refuses it, naming the folder and what it found, so that a ``dataset.root=``
    override on a run whose dataset is ``synthetic`` can never overwrite real files.
    """
    root = Path(root).expanduser()
    voc = root / "VOC2012"
    if _marker(voc) is not None:
        return voc
    if root.exists() and not root.is_dir():
        raise SyntheticRootError(
            f"dataset.root={str(root)!r} is a file, not a folder; the synthetic set needs a folder."
        )
    if not root.exists() or not any(root.iterdir()):
        return voc
    found = f"{voc} holds {_contents(voc)}" if voc.is_dir() else f"{root} holds {_contents(root)}"
    raise SyntheticRootError(
        f"dataset.root={str(root)!r} is not a folder the synthetic-data generator created ({found}, and no "
        f"{MARKER} marker), so nothing was written there. The dataset of this run is 'synthetic' (the default, "
        "or the checkpoint's). To use the data in that folder, select its dataset too, e.g. dataset=voc "
        f"dataset.root={root}; to generate the synthetic set, point dataset.root at a new or empty folder."
    )


def ensure_synthetic_voc(root: str | Path, spec: SyntheticSpec = SyntheticSpec()) -> Path:
    """Write the set under ``root/VOC2012`` unless an identical one is already there.

    Returns the ``VOC2012`` directory. Written files are deterministic for a given
    spec, so two runs (or two ranks) see byte-identical data. Only a new or empty
    ``root``, or one the generator wrote before (its marker file, written first), is
    ever written to; see :func:`check_generator_root`.
    """
    voc = check_generator_root(root)
    wanted = {"version": GENERATOR_VERSION, **asdict(spec)}
    if _marker(voc) == wanted:
        return voc
    voc.mkdir(parents=True, exist_ok=True)
    (voc / MARKER).write_text(json.dumps({**wanted, "complete": False}))  # ours from the first file on
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    colours = class_colours(spec.num_classes)
    palette = voc_palette()
    ids: dict[str, list[str]] = {"train": [], "val": []}
    for split, count in (("train", spec.num_train), ("val", spec.num_val)):
        for i in range(count):
            image, label = make_sample(rng, spec, colours)
            image_id = f"synthetic_{split}_{i:05d}"
            Image.fromarray(image).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=95)
            mask = Image.fromarray(label, mode="P")
            mask.putpalette(palette)
            mask.save(voc / "SegmentationClass" / f"{image_id}.png")
            ids[split].append(image_id)
    lists = voc / "ImageSets" / "Segmentation"
    for split, names in (*ids.items(), ("trainval", ids["train"] + ids["val"])):
        (lists / f"{split}.txt").write_text("\n".join(names) + "\n")
    (voc / MARKER).write_text(json.dumps(wanted))
    return voc
