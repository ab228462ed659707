"""Check a dataset and report every problem in one pass, with per-class label statistics.

Training stops at the first bad file, often hours in; this module lists all of
them up front (missing, truncated or mis-sized files, masks whose values or
colours the label mapping does not cover) so a user fixes the data once.
``deep=False`` is the cheap check the trainer runs before it starts: split lists
and file existence only. ``deep=True`` decodes everything and also counts, per
class, the pixels and the images that contain it (after label mapping): what
class weights and stratified splits are computed from.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .labels import LabelError, LabelMapping, colour_key, colour_lookup, colour_text
from .layout import DatasetError, Layout
from .palette import voc_colormap
from .segmentation import LOSSY_FORMATS, displayed_size, equal_channels, exif_orientation, lossy_mask_reason

#: Every kind of problem, in the order the summary lists them.
KINDS = (
    "missing_list",
    "empty_list",
    "duplicate_id",
    "bad_line",
    "missing_dir",
    "no_images",
    "missing_image",
    "missing_mask",
    "unreadable_image",
    "unreadable_mask",
    "jpeg_mask",
    "rgb_mask",
    "bad_mask_mode",
    "unknown_colour",
    "size_mismatch",
    "bad_mask_values",
    "overlap",
    "absent_class",
)

_MAX_VALUES = 5  # offending values / unknown colours named per message
_MAX_LISTED = 10  # problems quoted in a DataCheckError

#: (stem, image path, mask path) of a listed pair; a path is None when the file does not exist.
_Item = tuple[str, Path | None, Path | None]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the dataset: ``kind`` (one of ``KINDS``), the file, and what to do."""

    kind: str
    path: str
    reason: str


class DataCheckError(DatasetError):
    """The cheap pre-training check found problems; the message names the files."""


@dataclass
class LabelStats:
    """Per class: pixels and images containing it, after label mapping; the last pixel entry is "ignored"."""

    num_classes: int
    pixels: np.ndarray = field(init=False)
    images: np.ndarray = field(init=False)
    #: per class: the labelled pixels of the images that contain it (median-frequency weights need it)
    present_pixels: np.ndarray = field(init=False)
    masks: int = 0

    def __post_init__(self) -> None:
        self.pixels = np.zeros(self.num_classes + 1, dtype=np.int64)
        self.images = np.zeros(self.num_classes, dtype=np.int64)
        self.present_pixels = np.zeros(self.num_classes, dtype=np.int64)

    def add(self, counts: np.ndarray) -> None:
        """Counts of one mask, as :meth:`LabelMapping.counts` gives them."""
        present = counts[: self.num_classes] > 0
        self.pixels += counts
        self.images += present
        self.present_pixels += present * counts[: self.num_classes].sum()
        self.masks += 1

    def as_dict(self, names: list[str]) -> dict[str, object]:
        return {
            "masks": self.masks,
            "pixels": {n: int(v) for n, v in zip(names, self.pixels[:-1], strict=True)},
            "ignored_pixels": int(self.pixels[-1]),
            "images": {n: int(v) for n, v in zip(names, self.images, strict=True)},
        }


@dataclass
class SplitCheck:
    """What :func:`check_split` found: the problems, how many samples the split has, and label statistics."""

    problems: list[Problem]
    count: int
    stats: LabelStats | None = None
    #: with ``stats``: the stems in listing order and their labelled pixels per class, (images, classes)
    stems: list[str] | None = None
    per_image: np.ndarray | None = None


def rgb_to_index(rgb: np.ndarray) -> np.ndarray:
    """Class indices (H, W) uint8 of a mask drawn in VOC palette colours (H, W, 3 or 4; alpha ignored).

    The inverse of colourising with ``voc_colormap()``: (0, 0, 0) -> 0, (128, 0, 0) -> 1,
    ..., (224, 224, 192) -> 255. Any other colour raises ValueError naming a few of them.
    """
    if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    palette_keys = colour_key(voc_colormap())
    order = np.argsort(palette_keys)
    pos, known, keys = colour_lookup(palette_keys[order], rgb)
    if not known.all():
        unknown = np.unique(keys[~known])[:_MAX_VALUES]
        named = ", ".join(colour_text(int(k)) for k in unknown)
        raise ValueError(f"{int((~known).sum())} pixels have colours that are not VOC palette colours, e.g. {named}")
    return order[pos].astype(np.uint8)


def _file_names(folder: Path) -> set[str] | None:
    """Names in ``folder`` (one directory read instead of a stat per id), None when it is missing."""
    try:
        return set(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return None


def _suffix_hint(base: str, names: set[str] | None) -> str | None:
    """The ending of a file named ``<base><ending>`` in ``names`` (``_mask.png``, ``_label.png``), if one is there."""
    for name in sorted(names or ()):
        if name.startswith(base) and len(name) > len(base) and name[len(base)] in "._-":
            return name[len(base):]
    return None


def _missing_dir_reason(what: str, layout: Layout) -> str:
    if what == "image":
        return (
            f"the image folder does not exist (dataset.image_dir={layout.image_dir!r}); point dataset.root at the "
            "folder holding the dataset, or set dataset.image_dir"
        )
    return (
        f"the mask folder does not exist (dataset.mask_dir={layout.mask_dir!r}); set dataset.mask_dir to the "
        "folder of masks (for dataset=voc_aug run 'deeplab-prepare voc' to build SegmentationClassAug/)"
    )


def _existence(
    layout: Layout, split: str, stems: dict[str, list[int]], source: Path, scanned: bool
) -> tuple[list[_Item], list[Problem]]:
    """(stem, image, mask) per stem, None for a missing file, and the missing files and folders.

    Names are compared as strings against one directory read per folder: no stat per id.
    """
    problems: list[Problem] = []
    kinds = {"image": (layout.image_folder, layout.image_path), "mask": (layout.mask_folder, layout.mask_path)}
    listings: dict[Path, set[str] | None] = {}
    paths: dict[str, dict[str, Path | None]] = {"image": {}, "mask": {}}
    for what, (folder_of, path_of) in kinds.items():
        missing_sources = set()
        for origin in layout.source_splits(split):  # one folder per split; a fold draws on several
            if not folder_of(origin).is_dir():
                problems.append(Problem("missing_dir", str(folder_of(origin)), _missing_dir_reason(what, layout)))
                missing_sources.add(origin)
        for stem, lines in stems.items():
            if layout.source(split, stem) in missing_sources:
                paths[what][stem] = None
                continue
            path = path_of(split, stem)
            if path.parent not in listings:
                listings[path.parent] = _file_names(path.parent)
            names = listings[path.parent]
            if names is not None and path.name in names:
                paths[what][stem] = path
                continue
            paths[what][stem] = None
            if scanned:
                where = f"image {layout.image_path(split, stem)} has no mask of the same stem"
                fix = f"add {path}, or set dataset.mask_dir/dataset.mask_suffix (now {layout.mask_suffix!r})"
                base = path.name[: len(path.name) - len(layout.mask_suffix)]
                suffix = _suffix_hint(base, names)
                if what == "mask" and suffix is not None:
                    fix = f"{base}{suffix} is there: set dataset.mask_suffix={suffix}"
                problems.append(Problem(f"missing_{what}", str(path), f"{where}; {fix}"))
            else:
                problems.append(
                    Problem(
                        f"missing_{what}",
                        str(path),
                        f"listed in {source.name} (line {lines[0]}) but the {what} does not exist; "
                        "add the file or remove the id from the list",
                    )
                )
    items = [(stem, paths["image"][stem], paths["mask"][stem]) for stem in stems]
    return items, problems


def _check_image(path: Path, decode: bool = True) -> tuple[tuple[int, int] | None, int, list[Problem]]:
    """(width, height) as displayed (EXIF orientation applied) and the EXIF orientation of an image.

    ``decode`` reads every pixel, so truncated and corrupt files fail ``load()``; without
    it only the header is read (the fast pass before training).
    """
    try:
        with Image.open(path) as img:
            if decode:
                img.load()
            return displayed_size(img), exif_orientation(img), []
    except Exception as exc:  # any decoder error: the file cannot be used
        reason = f"the image cannot be decoded ({type(exc).__name__}: {exc}); re-download or remove it from the list"
        return None, 1, [Problem("unreadable_image", str(path), reason)]


def _rgb_reason(rgb: np.ndarray) -> str:
    try:
        rgb_to_index(rgb)
    except ValueError as exc:
        return (
            f"the mask stores RGB colours, not class indices ({exc}); set dataset.color_map to each class's colour "
            "(\"R,G,B\": class, 255 to ignore a colour), or convert the masks to palette ('P') or greyscale ('L') "
            "PNGs whose values are class indices"
        )
    return (
        "the mask is stored as RGB colours (VOC palette colours) instead of class indices; set "
        "dataset.color_map to the VOC colours, or convert it to a palette PNG: m = Image.fromarray("
        "deeplab_cli.data.check.rgb_to_index(np.array(Image.open(p).convert('RGB')))); "
        "m.putpalette(deeplab_cli.data.palette.voc_palette()); m.save(p)"
    )


def _check_mask(path: Path, labels: LabelMapping) -> tuple[tuple[int, int] | None, np.ndarray | None, list[Problem]]:
    """(width, height) of a decodable mask, its per-class counts when it maps cleanly, and its problems."""
    try:
        with Image.open(path) as img:
            mode, size, fmt = img.mode, img.size, img.format
            colours = labels.uses_colours or mode in ("RGB", "RGBA")
            pixels = np.array(img.convert("RGB") if colours else img)
    except Exception as exc:  # any decoder error: the file cannot be used
        reason = f"the mask cannot be decoded ({type(exc).__name__}: {exc}); regenerate it or remove it from the list"
        return None, None, [Problem("unreadable_mask", str(path), reason)]
    if fmt in LOSSY_FORMATS:
        return size, None, [Problem("jpeg_mask", str(path), f"the mask {lossy_mask_reason(fmt)}")]
    if not labels.uses_colours:
        if mode in ("RGB", "RGBA"):
            if not equal_channels(pixels):
                return size, None, [Problem("rgb_mask", str(path), _rgb_reason(pixels))]
            pixels = np.ascontiguousarray(pixels[..., 0])  # grey index values saved as RGB: accepted
        elif mode not in ("P", "L"):
            reason = f"the mask has mode {mode!r}; save it as a palette ('P') or greyscale ('L') PNG of class indices"
            return size, None, [Problem("bad_mask_mode", str(path), reason)]
    try:
        mapped = labels.apply(pixels)
    except LabelError as exc:
        kind = "unknown_colour" if labels.uses_colours else "bad_mask_values"
        return size, None, [Problem(kind, str(path), f"the mask {exc}")]
    return size, labels.counts(mapped), []


def _size_problem(
    image_path: Path, mask_path: Path, image: tuple[int, int], mask: tuple[int, int], turn: int
) -> Problem:
    reason = f"the mask is {mask[0]}x{mask[1]} but the image {image_path} is {image[0]}x{image[1]} (width x height)"
    if turn != 1 and mask == image[::-1]:
        reason += (
            f" as viewers show it: its EXIF orientation ({turn}) turns it by 90 degrees, and the images are read "
            "turned. The mask matches the unturned pixels: draw the mask on the turned image, or save the image "
            "without its EXIF orientation (e.g. PIL.ImageOps.exif_transpose, then save)"
        )
    else:
        reason += "; they must have the same size"
    return Problem("size_mismatch", str(mask_path), reason)


def _check_pair(item: _Item, labels: LabelMapping, decode: bool = True) -> tuple[list[Problem], np.ndarray | None]:
    """One image/mask pair (whichever exist): image decoded (or its header), mask decoded and mapped,
    sizes compared; the mask's class counts."""
    _, image_path, mask_path = item
    image_size, turn, problems = _check_image(image_path, decode) if image_path else (None, 1, [])
    mask_size, counts, mask_problems = _check_mask(mask_path, labels) if mask_path else (None, None, [])
    problems += mask_problems
    if image_size and mask_size and image_size != mask_size:
        problems.append(_size_problem(image_path, mask_path, image_size, mask_size, turn))  # type: ignore[arg-type]
    return problems, counts


def check_split(
    layout: Layout,
    split: str,
    labels: LabelMapping,
    *,
    deep: bool = True,
    decode_images: bool = True,
    progress: bool = False,
    workers: int = 8,
) -> SplitCheck:
    """Every problem of one split (its list or folder scan, and its files), with label statistics when deep.

    ``deep=False`` checks the listing and that the files exist (one directory read per
    folder, so it costs milliseconds for thousands of ids); ``deep=True`` also decodes
    every mask and every image (only the image headers with ``decode_images=False``: the
    pass before training), in ``workers`` threads (PIL releases the GIL while decoding).
    ``per_image`` then holds each stem's labelled pixels per class (zeros for a bad mask).
    """
    listing = layout.listing(split)
    problems = [Problem(*p) for p in listing.problems]
    if not listing.stems:
        return SplitCheck(problems, 0)
    stems = listing.lines or {s: [] for s in listing.stems}
    items, missing = _existence(layout, split, stems, listing.source, scanned=not listing.lines)
    problems += missing
    if not deep:
        return SplitCheck(problems, len(stems))
    stats = LabelStats(labels.num_classes)
    per_image = np.zeros((len(items), labels.num_classes), dtype=np.int64)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda item: _check_pair(item, labels, decode_images), items)
        for row, (found, counts) in enumerate(
            tqdm(results, total=len(items), desc=f"checking {split}", unit="img", disable=not progress)
        ):
            problems += found
            if counts is not None:
                stats.add(counts)
                per_image[row] = counts[:-1]
    return SplitCheck(problems, len(stems), stats, [stem for stem, _, _ in items], per_image)


def summarize(problems: Iterable[Problem]) -> dict[str, int]:
    """Problems per kind, in ``KINDS`` order (unknown kinds last)."""
    counts = Counter(p.kind for p in problems)
    order = [k for k in KINDS if k in counts] + sorted(set(counts) - set(KINDS))
    return {kind: counts[kind] for kind in order}


def _table(header: tuple[str, str], rows: list[tuple[str, int]]) -> list[str]:
    width = max(len(header[0]), *(len(name) for name, _ in rows))
    num_width = max(len(header[1]), *(len(str(n)) for _, n in rows))
    lines = [f"{header[0]:<{width}}  {header[1]:>{num_width}}", f"{'-' * width}  {'-' * num_width}"]
    return lines + [f"{name:<{width}}  {n:>{num_width}}" for name, n in rows]


def format_report(problems: list[Problem], checked: dict[str, int]) -> str:
    """One ``kind: path: reason`` line per problem, then counts per kind and ids checked per split."""
    lines = [f"{p.kind}: {p.path}: {p.reason}" for p in problems]
    if problems:
        counts = summarize(problems)
        lines += ["", *_table(("problem", "count"), [*counts.items(), ("total", len(problems))])]
    else:
        lines.append("no problems found")
    if checked:
        lines += ["", *_table(("split", "ids checked"), list(checked.items()))]
    return "\n".join(lines)


def check_command(dataset: str, root: str | Path, splits: Iterable[str]) -> str:
    """The ``deeplab-check-data`` command line that gives the full report for these splits."""
    return f"deeplab-check-data dataset={dataset} dataset.root={root} splits=[{','.join(splits)}]"


def require_clean(problems: list[Problem], split: str, hint_command: str) -> None:
    """Raise DataCheckError naming the files when the (cheap) check of ``split`` found problems."""
    if not problems:
        return
    listed = "; ".join(f"{p.kind}: {p.path}: {p.reason}" for p in problems[:_MAX_LISTED])
    more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
    raise DataCheckError(
        f"the dataset check of split {split!r} found {len(problems)} problem(s): {listed}{more}. "
        f"Fix these files or the split list, and run '{hint_command}' for a full report "
        "(it also decodes every image and mask)."
    )
