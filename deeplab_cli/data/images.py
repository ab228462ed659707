"""Arbitrary image files (one file, a folder or a glob) for ``deeplab-predict``."""

from __future__ import annotations

import glob
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torchvision import tv_tensors

from .layout import DatasetError
from .palette import IGNORE_INDEX

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def resolve_inputs(spec: str) -> list[Path]:
    """Image files named by ``spec``: a file, a folder (its images, sorted) or a glob pattern."""
    path = Path(spec).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        raise DatasetError(
            f"input={spec!r} matched no image: give an image file, a folder of images "
            f"({', '.join(IMAGE_SUFFIXES)}) or a quoted glob such as input='photos/**/*.jpg'."
        )
    return files


def unique_ids(files: list[Path]) -> list[str]:
    """Output names: the file stem, with ``_2``, ``_3``... when two inputs share a stem."""
    seen: dict[str, int] = {}
    ids = []
    for f in files:
        count = seen.get(f.stem, 0) + 1
        seen[f.stem] = count
        ids.append(f.stem if count == 1 else f"{f.stem}_{count}")
    return ids


class ImageFiles(torch.utils.data.Dataset):
    """Images without ground truth, with the interface the evaluation pipeline expects.

    Items are ``(image, target, index)`` where the target ignores every pixel, so the
    same pipeline (TTA, batching, CRF) serves prediction and evaluation.
    """

    def __init__(self, files: list[Path], transforms: Callable[..., Any]) -> None:
        self.files = files
        self.ids = unique_ids(files)
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, index: int) -> Path:
        return self.files[index]

    def image_size(self, index: int) -> tuple[int, int]:
        with Image.open(self.files[index]) as img:
            return img.height, img.width

    def load_target(self, index: int) -> Tensor | None:
        return None

    def load_rgb(self, index: int) -> np.ndarray:
        try:
            with Image.open(self.files[index]) as img:
                return np.array(img.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise DatasetError(f"cannot read image {self.files[index]}: {exc}") from exc

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, int]:
        image = tv_tensors.Image(torch.from_numpy(self.load_rgb(index)).permute(2, 0, 1))
        target = tv_tensors.Mask(torch.full(image.shape[-2:], IGNORE_INDEX, dtype=torch.uint8))
        image, target = self.transforms(image, target)
        return image.as_subclass(Tensor), target.as_subclass(Tensor).long(), index
