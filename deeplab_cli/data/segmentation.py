"""The one segmentation dataset: a :class:`Layout` (where files are) plus a :class:`LabelMapping`
(what mask values mean). VOC, Cityscapes, ADE20K, CamVid and users' own data are
configurations of it; per-family modules only add names, palettes, prepare and export code."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .labels import LabelError, LabelMapping, mapping_error
from .layout import DatasetError, Layout
from .palette import IGNORE_INDEX

ON_ERROR = ("raise", "skip")


class SampleError(DatasetError):
    """One image/mask pair that cannot be used; the message names the file and the problem."""


def skipped_samples(log_file: Path) -> dict[str, Any] | None:
    """The distinct samples a run skipped (the log has one line per encounter), or None if none were."""
    if not log_file.is_file():
        return None
    errors = sorted({json.loads(line)["error"] for line in log_file.read_text().splitlines() if line.strip()})
    return {"count": len(errors), "log": str(log_file), "errors": errors}


#: Formats whose compression changes pixel values: a mask stored so holds values no one drew.
LOSSY_FORMATS = ("JPEG", "MPO", "WEBP")


def lossy_mask_reason(fmt: str | None) -> str:
    """Why a JPEG (or other lossy) mask cannot be used, and how to fix it."""
    return (
        f"is a {fmt} file: lossy compression changes the values near every edge (a mask of classes 0..3 comes back "
        "with 12, 13, 14 ...), so no label mapping can recover them. Masks must be PNG (palette 'P' or greyscale "
        "'L'): export them again as PNG from the annotation tool, not converted from the JPEG"
    )


def equal_channels(rgb: np.ndarray) -> bool:
    """Whether an (H, W, 3+) image is grey stored as RGB: every pixel's R, G and B are the same."""
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def read_raw_mask(path: Path, colours: bool) -> np.ndarray:
    """The stored values of a mask: (H, W) uint8 from a palette/greyscale PNG, (H, W, 3) with ``colours``.

    An RGB mask whose three channels are equal is a greyscale index mask saved as RGB
    (many image editors do that): its one channel is the class index.
    """
    try:
        with Image.open(path) as img:
            if img.format in LOSSY_FORMATS:
                raise SampleError(f"mask {path} {lossy_mask_reason(img.format)}.")
            if colours:
                return np.array(img.convert("RGB"))
            if img.mode in ("RGB", "RGBA"):
                rgb = np.array(img)
                if equal_channels(rgb):
                    return np.ascontiguousarray(rgb[..., 0])
                raise SampleError(
                    f"mask {path} has mode {img.mode}: it stores colours, not class indices. Set dataset.color_map "
                    "to the colour of each class (\"R,G,B\": class), or convert the masks to palette ('P') or "
                    "greyscale ('L') PNGs; deeplab-check-data reports every such file."
                )
            if img.mode not in ("P", "L"):
                raise SampleError(
                    f"mask {path} has mode {img.mode}; masks must be palette ('P') or greyscale ('L') PNGs of "
                    "8-bit values. Run deeplab-check-data for a full report."
                )
            return np.array(img, dtype=np.uint8)
    except FileNotFoundError:
        raise SampleError(f"mask {path} does not exist; add it or remove its image from the split.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise SampleError(f"mask {path} cannot be read ({exc}); it is truncated or not a PNG.") from None


def load_mask(path: Path, labels: LabelMapping) -> np.ndarray:
    """Class indices (H, W) uint8 with 255 = ignore, after the dataset's label mapping."""
    raw = read_raw_mask(path, labels.uses_colours)
    try:
        return labels.apply(raw)
    except LabelError as exc:
        raise SampleError(mapping_error(path, exc)) from None


def load_image(path: Path) -> np.ndarray:
    """RGB image (H, W, 3) uint8 as viewers show it (EXIF orientation applied), fully decoded so a
    truncated file fails here, naming itself."""
    try:
        with Image.open(path) as img:
            return np.array(ImageOps.exif_transpose(img).convert("RGB"))
    except FileNotFoundError:
        raise SampleError(f"image {path} does not exist (listed in the split).") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise SampleError(f"image {path} cannot be read ({exc}); it is truncated or not an image.") from None


#: EXIF orientations that turn the picture by 90 degrees (width and height swap).
_TRANSPOSING = (5, 6, 7, 8)


def exif_orientation(img: Image.Image) -> int:
    """The EXIF orientation tag (1 = as stored), read from the header only."""
    try:
        return int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # a malformed EXIF block: the pixels are read as stored
        return 1


def displayed_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as :func:`load_image` returns the image: swapped for a 90-degree EXIF orientation."""
    w, h = img.size
    return (h, w) if exif_orientation(img) in _TRANSPOSING else (w, h)


class SegmentationDataset(Dataset):
    """Image/mask pairs of one split of a :class:`Layout`, masks mapped to class indices.

    Items are ``(image, mask, index)``; ``index`` lets evaluation find the sample's
    stem (``ids``) and the raw RGB image (for CRF and visualisation) without carrying
    strings through the DataLoader. An item may also be requested as ``(index, seed)``:
    the random transforms are then seeded per sample, which makes a resumed run see
    exactly the augmentations an uninterrupted one would.
    """

    def __init__(
        self,
        layout: Layout,
        split: str,
        labels: LabelMapping,
        transforms: Callable[..., Any] | None = None,
        subset: int | None = None,
        require_masks: bool = True,
        on_error: str = "raise",
        skip_log: Path | None = None,
    ) -> None:
        self.layout = layout
        self.split = split
        listing = layout.listing(split)
        if not listing.stems:
            kind, path, reason = listing.problems[0]
            raise DatasetError(f"{path}: {reason.rstrip('.')}.")
        self.ids = listing.stems
        if subset is not None:
            if subset < 1:
                raise DatasetError(f"dataset.subset={subset} must be a positive number of images (or null for all).")
            self.ids = self.ids[:subset]
        self.source = listing.source  # the list file or the scanned folder, for messages
        self.image_dir = layout.image_folder(split)
        self.mask_dirs = [layout.mask_folder(s) for s in layout.source_splits(split)]
        self.labels = labels
        self.num_classes = labels.num_classes
        self.require_masks = require_masks
        if on_error not in ON_ERROR:
            raise DatasetError(f"dataset.on_error={on_error!r}; choose one of {', '.join(ON_ERROR)}.")
        self.on_error = on_error
        self.skip_log = skip_log
        missing = [d for d in self.mask_dirs if not d.is_dir()]
        if require_masks and missing:
            raise DatasetError(
                f"mask folder {missing[0]} does not exist (dataset.mask_dir={layout.mask_dir!r}); set "
                "dataset.mask_dir to the folder of masks. For dataset=voc_aug run 'deeplab-prepare voc' "
                "to build SegmentationClassAug/ from SBD."
            )
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.layout.image_path(self.split, self.ids[index])

    def mask_path(self, index: int) -> Path:
        return self.layout.mask_path(self.split, self.ids[index])

    def has_masks(self) -> bool:
        """Whether every listed image has a mask (test splits usually have none)."""
        return all(self.mask_path(i).is_file() for i in range(len(self)))

    def image_size(self, index: int) -> tuple[int, int]:
        """(H, W) from the file header, without decoding the image (for size-sorted batches)."""
        with Image.open(self.image_path(index)) as img:
            width, height = displayed_size(img)
            return height, width

    def load_target(self, index: int) -> Tensor | None:
        """The class-index mask as a (H, W) int64 tensor, or None when masks are optional and absent."""
        path = self.mask_path(index)
        if not self.require_masks and not path.is_file():
            return None
        return torch.from_numpy(load_mask(path, self.labels)).long()

    def load_rgb(self, index: int) -> np.ndarray:
        """The raw RGB image (H, W, 3) uint8, as CRF and the TensorBoard panels need it."""
        return load_image(self.image_path(index))

    def _load_pair(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """Decoded and checked image and mask; any problem is a SampleError naming the file."""
        rgb = self.load_rgb(index)
        image = tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1))
        if self.require_masks or self.mask_path(index).is_file():
            mask = tv_tensors.Mask(torch.from_numpy(load_mask(self.mask_path(index), self.labels)))
        else:  # images without ground truth (a test split): every pixel ignored
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
