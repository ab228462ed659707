"""Arbitrary image files (one file, a folder or a glob) for ``deeplab-predict``."""

from __future__ import annotations

import glob
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from torchvision import tv_tensors

from .layout import DatasetError
from .palette import IGNORE_INDEX
from .segmentation import displayed_size

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


@dataclass(frozen=True)
class Inputs:
    """The image files ``input=`` names, their output ids, and the folders they come from."""

    files: list[Path]
    ids: list[str]
    folders: list[Path]
    #: sub-folders of a folder input that were not searched (``recursive=false``)
    unsearched: list[Path]
    #: a folder input: nothing may be written inside it (for a file or a glob, only its files' own folders)
    whole_folder: bool = False


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def resolve_inputs(spec: str, recursive: bool = False) -> Inputs:
    """Image files named by ``spec``: a file, a folder (its images, sorted; with ``recursive`` those of its
    sub-folders too, their ids keeping the sub-folder: ``a/x``) or a glob pattern."""
    path = Path(spec).expanduser()
    unsearched: list[Path] = []
    if path.is_file():
        files, ids, folders = [path], unique_ids([path]), [path.parent]
    elif path.is_dir():
        pattern = path.rglob("*") if recursive else path.iterdir()
        files = sorted(
            p for p in pattern if _is_image(p) and not any(q.startswith(".") for q in p.relative_to(path).parts)
        )
        ids = [p.relative_to(path).with_suffix("").as_posix() for p in files] if recursive else unique_ids(files)
        ids = _dedupe(ids) if recursive else ids
        folders = [path]
        if not recursive:
            unsearched = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if _is_image(Path(p)))
        ids, folders = unique_ids(files), sorted({p.parent for p in files})
    if not files:
        hint = (
            f"; it has {len(unsearched)} sub-folder(s) ({', '.join(p.name for p in unsearched[:3])}): pass "
            "recursive=true to search them"
            if unsearched
            else ""
        )
        raise DatasetError(
            f"input={spec!r} matched no image{hint}: give an image file, a folder of images "
            f"({', '.join(IMAGE_SUFFIXES)}) or a quoted glob such as input='photos/**/*.jpg'."
        )
    return Inputs(files, ids, folders, unsearched, path.is_dir())


def unique_ids(files: list[Path]) -> list[str]:
    """Output names: the file stem, with ``_2``, ``_3``... when two inputs share a stem."""
    return _dedupe([f.stem for f in files])


def _dedupe(ids: list[str]) -> list[str]:
    """``x`` twice (x.jpg and x.png in one folder) -> ``x``, ``x_2``."""
    seen: dict[str, int] = {}
    out = []
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
        out.append(i if seen[i] == 1 else f"{i}_{seen[i]}")
    return out


def unreadable(files: list[Path], workers: int = 4) -> dict[Path, str]:
    """The files that cannot be decoded as images, with the decoder's reason (every pixel is read)."""

    def one(path: Path) -> str | None:
        try:
            with Image.open(path) as img:
                img.load()
            return None
        except Exception as exc:  # any decoder error: the file cannot be used
            return f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = list(pool.map(one, files))
    return {f: r for f, r in zip(files, reasons, strict=True) if r is not None}


class ImageFiles(torch.utils.data.Dataset):
    """Images without ground truth, with the interface the evaluation pipeline expects.

    Items are ``(image, target, index)`` where the target ignores every pixel, so the
    same pipeline (TTA, batching, CRF) serves prediction and evaluation.
    """

    def __init__(self, files: list[Path], transforms: Callable[..., Any], ids: list[str] | None = None) -> None:
        self.files = files
        self.ids = ids if ids is not None else unique_ids(files)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, index: int) -> Path:
        return self.files[index]

    def image_size(self, index: int) -> tuple[int, int]:
        with Image.open(self.files[index]) as img:
            width, height = displayed_size(img)
            return height, width

    def load_target(self, index: int) -> Tensor | None:
        return None

    def load_rgb(self, index: int) -> np.ndarray:
        try:
            with Image.open(self.files[index]) as img:
                return np.array(ImageOps.exif_transpose(img).convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise DatasetError(f"cannot read image {self.files[index]}: {exc}") from exc

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        image = tv_tensors.Image(torch.from_numpy(self.load_rgb(index)).permute(2, 0, 1))
        target = tv_tensors.Mask(torch.full(image.shape[-2:], IGNORE_INDEX, dtype=torch.uint8))
        image, target = self.transforms(image, target)
        return image.as_subclass(Tensor), target.as_subclass(Tensor).long(), index
