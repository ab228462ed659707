"""PASCAL VOC-layout segmentation datasets (VOC 2012, the SBD "aug" set, synthetic)."""

from __future__ import annotations

import json
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


class SampleError(DatasetError):
    """One image/mask pair that cannot be used; the message names the file and the problem."""


ON_ERROR = ("raise", "skip")


def skipped_samples(log_file: Path) -> dict[str, Any] | None:
    """The distinct samples a run skipped (the log has one line per encounter), or None if none were."""
    if not log_file.is_file():
        return None
    errors = sorted({json.loads(line)["error"] for line in log_file.read_text().splitlines() if line.strip()})
    return {"count": len(errors), "log": str(log_file), "errors": errors}


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
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise SampleError(
                    f"mask {path} has mode {img.mode}; masks must hold class indices (palette 'P' or greyscale "
                    "'L' PNG), not RGB colours. Run deeplab-check-data for a full report and how to convert."
                )
            return np.array(img, dtype=np.uint8)
    except FileNotFoundError:
        raise SampleError(f"mask {path} does not exist (listed in the split file).") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise SampleError(f"mask {path} cannot be read ({exc}); it is truncated or not a PNG.") from None


def load_image(path: Path) -> np.ndarray:
    """RGB image (H, W, 3) uint8, fully decoded so a truncated file fails here, naming itself."""
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))
    except FileNotFoundError:
        raise SampleError(f"image {path} does not exist (listed in the split file).") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise SampleError(f"image {path} cannot be read ({exc}); it is truncated or not an image.") from None


def check_mask_values(mask: np.ndarray, num_classes: int, path: Path) -> None:
    """Labels outside {0..C-1, 255} would crash CUDA with an unreadable device-side assert."""
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        values = sorted(int(v) for v in np.unique(mask[bad]))[:5]
        raise SampleError(
            f"mask {path} holds label value(s) {values} outside 0..{num_classes - 1} and 255 (ignore); "
            f"fix the mask or set dataset.num_classes (now {num_classes})."
        )


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
        num_classes: int | None = None,
        on_error: str = "raise",
        skip_log: Path | None = None,
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
        self.num_classes = num_classes
        if on_error not in ON_ERROR:
            raise DatasetError(f"dataset.on_error={on_error!r}; choose one of {', '.join(ON_ERROR)}.")
        self.on_error = on_error
        self.skip_log = skip_log
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
        return load_image(self.image_path(index))

    def _load_pair(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Decoded and checked image and mask; any problem is a SampleError naming the file."""
        rgb = self.load_rgb(index)
        image = tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1))
        if self.require_masks or self.mask_path(index).is_file():
            mask_np = load_mask(self.mask_path(index))
            if self.num_classes is not None:
                check_mask_values(mask_np, self.num_classes, self.mask_path(index))
            mask = tv_tensors.Mask(torch.from_numpy(mask_np))
        else:  # images without ground truth (VOC test): every pixel ignored
            mask = tv_tensors.Mask(torch.full(image.shape[-2:], IGNORE_INDEX, dtype=torch.uint8))
        if image.shape[-2:] != mask.shape[-2:]:
            raise SampleError(
                f"mask {self.mask_path(index)} is {tuple(mask.shape)} but image "
                f"{self.image_path(index)} is {tuple(image.shape[-2:])}; they must have the same size."
            )
        return image, mask

    def _skip(self, exc: SampleError) -> None:
        """Record a skipped sample; O_APPEND line writes are atomic, so DataLoader workers can share the file."""
        if self.skip_log is not None:
            line = json.dumps({"split": self.split, "error": str(exc)}) + "\n"
            self.skip_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.skip_log, "a", encoding="utf-8") as f:
                f.write(line)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[Tensor, Tensor, int] | None:
        """``(image, mask, index)``; None for a bad sample under ``on_error="skip"`` (collate drops it)."""
        index, seed = item if isinstance(item, tuple) else (item, None)
        try:
            image, mask = self._load_pair(index)
        except SampleError as exc:
            if self.on_error != "skip":
                raise
            self._skip(exc)
            return None
        if self.transforms is not None:
            if seed is None:
                image, mask = self.transforms(image, mask)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(seed)
                    image, mask = self.transforms(image, mask)
        return image.as_subclass(Tensor), mask.as_subclass(Tensor).long(), index
