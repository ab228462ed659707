"""PASCAL VOC-layout segmentation datasets (VOC 2012, the SBD "aug" set, synthetic)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from ..errors import DeepLabError
from .palette import IGNORE_INDEX


class DatasetError(DeepLabError):
    """A dataset that cannot be used as configured; the message says how to fix it."""


def resolve_voc_dir(root: str | Path) -> Path:
    """Accept ``root`` as the VOC2012 folder itself or any parent of it.

    Users point ``dataset.root`` at whatever they downloaded: ``VOC2012``,
    ``VOCdevkit`` or the folder holding ``VOCdevkit``.
    """
    root = Path(root).expanduser()
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise DatasetError(
        f"dataset.root={str(root)!r} holds no PASCAL VOC tree (looked for JPEGImages/ in {root}, "
        f"{root / 'VOC2012'} and {root / 'VOCdevkit' / 'VOC2012'}). Run "
        f"'python scripts/prepare_voc.py --root {root}' to download and prepare VOC 2012 + SBD, "
        "or set dataset.root to the folder that contains VOC2012/."
    )


def read_split(voc_dir: Path, split: str) -> list[str]:
    """Image ids of ``ImageSets/Segmentation/<split>.txt``."""
    path = voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        hint = (
            "Run 'python scripts/prepare_voc.py' to write train_aug.txt."
            if split.endswith("_aug")
            else f"Available splits: {', '.join(available) or 'none'}."
        )
        raise DatasetError(f"split list {path} does not exist (dataset.split={split!r}). {hint}")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DatasetError(f"split list {path} is empty: it must list one image id per line.")
    return ids


def load_mask(path: Path) -> np.ndarray:
    """Class-index mask (H, W) uint8 from a palette or greyscale PNG."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise DatasetError(
                f"mask {path} has mode {img.mode}; masks must hold class indices "
                "(palette 'P' or greyscale 'L' PNG), not RGB colours."
            )
        return np.array(img, dtype=np.uint8)


class VOCSegmentation(Dataset):
    """Image/mask pairs listed in ``ImageSets/Segmentation/<split>.txt``.

    Items are ``(image, mask, index)``; ``index`` lets evaluation find the image
    id and the raw RGB image (for CRF and visualisation) without carrying strings
    through the DataLoader. An item may also be requested as ``(index, seed)``:
    the random transforms are then seeded per sample, which makes a resumed run
    see exactly the augmentations an uninterrupted one would.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        mask_dir: str = "SegmentationClass",
        transforms: Callable[..., Any] | None = None,
        subset: int | None = None,
        require_masks: bool = True,
    ) -> None:
        self.voc_dir = resolve_voc_dir(root)
        self.split = split
        self.ids = read_split(self.voc_dir, split)
        if subset is not None:
            if subset < 1:
                raise DatasetError(f"dataset.subset={subset} must be a positive number of images (or null for all).")
            self.ids = self.ids[:subset]
        self.image_dir = self.voc_dir / "JPEGImages"
        self.mask_dir = self.voc_dir / mask_dir
        self.require_masks = require_masks
        if require_masks and not self.mask_dir.is_dir():
            raise DatasetError(
                f"mask folder {self.mask_dir} does not exist. For dataset=voc_aug run "
                "'python scripts/prepare_voc.py' to build SegmentationClassAug/ from SBD."
            )
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / f"{self.ids[index]}.jpg"

    def mask_path(self, index: int) -> Path:
        return self.mask_dir / f"{self.ids[index]}.png"

    def has_masks(self) -> bool:
        """Whether every listed image has a mask (the VOC test split has none)."""
        return all(self.mask_path(i).is_file() for i in range(len(self)))

    def image_size(self, index: int) -> tuple[int, int]:
        """(H, W) from the file header, without decoding the image (for size-sorted batches)."""
        with Image.open(self.image_path(index)) as img:
            return img.height, img.width

    def load_target(self, index: int) -> Tensor | None:
        """The class-index mask as a (H, W) int64 tensor, or None when masks are optional and absent."""
        path = self.mask_path(index)
        if not self.require_masks and not path.is_file():
            return None
        return torch.from_numpy(load_mask(path)).long()

    def load_rgb(self, index: int) -> np.ndarray:
        """The raw RGB image (H, W, 3) uint8, as CRF and the TensorBoard panels need it."""
        with Image.open(self.image_path(index)) as img:
            return np.array(img.convert("RGB"))

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Tensor, Tensor, int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image = tv_tensors.Image(torch.from_numpy(self.load_rgb(index)).permute(2, 0, 1))
        if self.require_masks or self.mask_path(index).is_file():
            mask = tv_tensors.Mask(torch.from_numpy(load_mask(self.mask_path(index))))
        else:  # images without ground truth (VOC test): every pixel ignored
            mask = tv_tensors.Mask(torch.full(image.shape[-2:], IGNORE_INDEX, dtype=torch.uint8))
        if image.shape[-2:] != mask.shape[-2:]:
            raise DatasetError(
                f"mask {self.mask_path(index)} is {tuple(mask.shape)} but image "
                f"{self.image_path(index)} is {tuple(image.shape[-2:])}; they must have the same size."
            )
        if self.transforms is not None:
            if seed is None:
                image, mask = self.transforms(image, mask)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    image, mask = self.transforms(image, mask)
        return image.as_subclass(Tensor), mask.as_subclass(Tensor).long(), index
