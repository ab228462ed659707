"""Where a dataset keeps its images and masks: folders per split, suffixes, an optional split list.

One description covers the layouts users bring (after mmsegmentation's
``BaseSegDataset``): VOC (one image folder, ``ImageSets/Segmentation/<split>.txt``
lists ids), Cityscapes (``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` paired
with ``gtFine/<split>/<city>/<name>_gtFine_labelIds.png``), ADE20K
(``images/training`` + ``annotations/training``), CamVid's SegNet files (``train/`` +
``trainannot/``) and any ``images/`` + ``masks/`` tree. A sample is named by its
*stem*: its path relative to the image folder without the image suffix, with
``/`` between sub-folders (``aachen/aachen_000000_000019``). ``{split}`` in a folder
or list path stands for the split's name.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeepLabError


class DatasetError(DeepLabError):
    """A dataset that cannot be used as configured; the message says how to fix it."""


#: The split names of a ``deeplab-split`` folder: ``fold<i>_train`` and ``fold<i>_val``.
FOLD_SPLIT = re.compile(r"fold(\d+)_(train|val)")


@dataclass(frozen=True)
class Listing:
    """The stems of one split and where they came from, with what is wrong with the listing itself.

    ``lines`` maps each stem to the lines of the split list naming it (empty for a
    folder scan); ``problems`` holds ``(kind, path, reason)`` of the listing.
    """

    stems: list[str]
    source: Path
    lines: dict[str, list[int]]
    problems: list[tuple[str, str, str]]


@dataclass(frozen=True)
class Layout:
    """Folders and suffixes of one dataset; ``split_list`` None means "every image under image_dir"."""

    root: Path
    image_dir: str = "JPEGImages"
    mask_dir: str = "SegmentationClass"
    image_suffix: str = ".jpg"
    mask_suffix: str = ".png"
    split_list: str | None = "ImageSets/Segmentation/{split}.txt"
    #: a ``deeplab-split`` folder: its ``fold<i>_train``/``fold<i>_val`` lists are splits too, whose
    #: lines name each image's stem and the split whose folders hold it
    folds: Path | None = None
    #: splits cut from one folder (a holdout, see ``data/holdout.py``): split name -> its stems
    assigned: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def is_flat(self) -> bool:
        """One folder for every split and no split lists: train and val would be the same files."""
        return "{split}" not in self.image_dir and self.split_list is None and self.folds is None

    def image_folder(self, split: str) -> Path:
        return self.root / self.image_dir.format(split=split)

    def mask_folder(self, split: str) -> Path:
        return self.root / self.mask_dir.format(split=split)

    def list_path(self, split: str) -> Path | None:
        if self.is_fold(split):
            return self.folds / f"{split}.txt"  # type: ignore[operator]
        return self.root / self.split_list.format(split=split) if self.split_list else None

    def is_fold(self, split: str) -> bool:
        return self.folds is not None and FOLD_SPLIT.fullmatch(split) is not None

    def source(self, split: str, stem: str) -> str:
        """The split whose folders hold ``stem``: ``split`` itself, or what a fold list says."""
        if not self.is_fold(split):
            return split
        return _fold_sources(self.folds / f"{split}.txt")[stem]  # type: ignore[operator]

    def source_splits(self, split: str) -> list[str]:
        """The splits whose folders the images of ``split`` come from (several for a fold)."""
        if not self.is_fold(split):
            return [split]
        path = self.folds / f"{split}.txt"  # type: ignore[operator]
        return list(dict.fromkeys(_fold_sources(path).values())) if path.is_file() else []

    def image_path(self, split: str, stem: str) -> Path:
        return self.image_folder(self.source(split, stem)) / f"{stem}{self.image_suffix}"

    def mask_path(self, split: str, stem: str) -> Path:
        return self.mask_folder(self.source(split, stem)) / f"{stem}{self.mask_suffix}"

    def listing(self, split: str) -> Listing:
        """The split's stems: from its list file (a fold list for a fold), else from a scan of its image folder."""
        if self.is_fold(split):
            return _read_fold_list(self.folds / f"{split}.txt", split)  # type: ignore[operator]
        for name, stems in self.assigned:
            if name == split:
                return Listing(list(stems), self.image_folder(split), {}, [])
        path = self.list_path(split)
        if path is not None:
            return _read_list(path, split)
        return self.scan(split)

    def scan(self, split: str) -> Listing:
        """Every ``*<image_suffix>`` file under the split's image folder (sub-folders included), sorted."""
        folder = self.image_folder(split)
        if not folder.is_dir():
            reason = (
                f"the image folder of split {split!r} does not exist (dataset.image_dir={self.image_dir!r} under "
                f"dataset.root={str(self.root)!r}); set dataset.root/dataset.image_dir, or the split name"
            )
            return Listing([], folder, {}, [("missing_dir", str(folder), reason)])
        stems = sorted(_scan(folder, self.image_suffix))
        if not stems:
            found = sorted({Path(n).suffix for _, _, names in os.walk(folder) for n in names})[:8]
            reason = (
                f"no file ends with dataset.image_suffix={self.image_suffix!r} (suffixes found: "
                f"{', '.join(found) or 'none'}); set dataset.image_suffix to the images' ending, e.g. "
                f"dataset.image_suffix={found[0] if found else '.jpg'}"
            )
            return Listing([], folder, {}, [("no_images", str(folder), reason)])
        return Listing(stems, folder, {}, [])


def _scan(folder: Path, suffix: str) -> list[str]:
    """Relative stems of the files ending in ``suffix`` under ``folder``; hidden entries are skipped."""
    stems = []
    base = len(str(folder)) + 1
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = dirpath[base:].replace(os.sep, "/")
        for name in filenames:
            if name.endswith(suffix) and not name.startswith("."):
                stem = name[: len(name) - len(suffix)]
                stems.append(f"{rel}/{stem}" if rel else stem)
    return stems


def _read_list(path: Path, split: str) -> Listing:
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        reason = (
            f"split {split!r} has no list file; available splits: {', '.join(available) or 'none'}. "
            "Set dataset.train_split/dataset.val_split (or splits=[...]) to one of them"
            + (", or run 'deeplab-prepare voc' to write the _aug lists." if split.endswith("_aug") else ".")
        )
        return Listing([], path, {}, [("missing_list", str(path), reason)])
    lines_of: dict[str, list[int]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            lines_of.setdefault(line.split()[0], []).append(number)
    if not lines_of:
        return Listing(
            [], path, {}, [("empty_list", str(path), "the split list is empty; it must list one stem per line")]
        )
    problems = [
        (
            "duplicate_id",
            str(path),
            f"id {stem} is listed {len(lines)} times (lines {', '.join(map(str, lines))}); keep one line",
        )
        for stem, lines in lines_of.items()
        if len(lines) > 1
    ]
    return Listing(list(lines_of), path, lines_of, problems)


def _fold_lines(path: Path) -> list[tuple[int, list[str]]]:
    return [(n, line.split()) for n, line in enumerate(path.read_text().splitlines(), start=1) if line.strip()]


@functools.lru_cache(maxsize=64)
def _fold_sources_cached(path: str, mtime_ns: int) -> dict[str, str]:
    return {words[0]: words[1] for _, words in _fold_lines(Path(path)) if len(words) >= 2}


def _fold_sources(path: Path) -> dict[str, str]:
    """stem -> source split of a fold list, read once per version of the file."""
    return _fold_sources_cached(str(path), path.stat().st_mtime_ns)


def _read_fold_list(path: Path, split: str) -> Listing:
    """A ``deeplab-split`` list: one ``<stem> <source split>`` per line."""
    if not path.is_file():
        folder = path.parent
        made = sorted(p.stem for p in folder.glob("fold*_*.txt")) if folder.is_dir() else []
        reason = (
            f"split {split!r} has no fold list in dataset.folds={str(folder)!r} (it holds: {', '.join(made) or 'none'})"
            "; run deeplab-split with out= this folder, or set dataset.folds to the folder deeplab-split wrote"
        )
        return Listing([], path, {}, [("missing_list", str(path), reason)])
    lines_of: dict[str, list[int]] = {}
    problems = []
    for number, words in _fold_lines(path):
        if len(words) != 2:
            reason = (
                f"line {number} is {' '.join(words)!r}; a fold list line is '<stem> <split>' "
                "(rewrite it with deeplab-split)"
            )
            problems.append(("bad_line", str(path), reason))
            continue
        lines_of.setdefault(words[0], []).append(number)
    if not lines_of:
        return Listing([], path, {}, problems or [("empty_list", str(path), "the fold list is empty")])
    problems += [
        ("duplicate_id", str(path), f"id {stem} is listed {len(lines)} times (lines {', '.join(map(str, lines))})")
        for stem, lines in lines_of.items()
        if len(lines) > 1
    ]
    return Listing(list(lines_of), path, lines_of, problems)
