"""Check a VOC-layout dataset and report every problem in one pass.

Training stops at the first bad file, often hours in; this module lists all of
them up front (missing, truncated or mis-sized files, RGB masks, labels out of
range) so a user fixes the data once. ``deep=False`` is the cheap check the
trainer runs before it starts: split lists and file existence only.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .palette import IGNORE_INDEX, voc_colormap
from .voc import DatasetError

#: Every kind of problem, in the order the summary lists them.
KINDS = (
    "missing_list",
    "empty_list",
    "duplicate_id",
    "missing_dir",
    "missing_image",
    "missing_mask",
    "unreadable_image",
    "unreadable_mask",
    "rgb_mask",
    "bad_mask_mode",
    "size_mismatch",
    "bad_mask_values",
)

_MAX_VALUES = 5  # offending values / unknown colours named per message
_MAX_LISTED = 10  # problems quoted in a DataCheckError

#: (id, image path, mask path) of a listed pair; a path is None when the file does not exist.
_Item = tuple[str, Path | None, Path | None]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the dataset: ``kind`` (one of ``KINDS``), the file, and what to do."""

    kind: str
    path: str
    reason: str


class DataCheckError(DatasetError):
    """The cheap pre-training check found problems; the message names the files."""


def _colour_keys(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def rgb_to_index(rgb: np.ndarray) -> np.ndarray:
    """Class indices (H, W) uint8 of a mask drawn in VOC palette colours (H, W, 3 or 4; alpha ignored).

    The inverse of colourising with ``voc_colormap()``: (0, 0, 0) -> 0, (128, 0, 0) -> 1,
    ..., (224, 224, 192) -> 255. Any other colour raises ValueError naming a few of them.
    """
    if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    palette_keys = _colour_keys(voc_colormap())
    order = np.argsort(palette_keys)
    sorted_keys = palette_keys[order]
    keys = _colour_keys(rgb[..., :3])
    pos = np.clip(np.searchsorted(sorted_keys, keys), 0, len(sorted_keys) - 1)
    known = sorted_keys[pos] == keys
    if not known.all():
        unknown = np.unique(keys[~known])[:_MAX_VALUES]
        named = ", ".join(str(((int(k) >> 16) & 255, (int(k) >> 8) & 255, int(k) & 255)) for k in unknown)
        raise ValueError(f"{int((~known).sum())} pixels have colours that are not VOC palette colours, e.g. {named}")
    return order[pos].astype(np.uint8)


def _list_path(voc_dir: Path, split: str) -> Path:
    return voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt"


def _read_list(path: Path) -> list[tuple[int, str]]:
    """(line number, id) of every non-blank line."""
    lines = path.read_text().splitlines()
    return [(n, line.split()[0]) for n, line in enumerate(lines, start=1) if line.strip()]


def _list_problems(voc_dir: Path, split: str) -> tuple[dict[str, list[int]], list[Problem]]:
    """The line numbers of each id of the split list (first-seen order) and the list's own problems."""
    path = _list_path(voc_dir, split)
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        reason = (
            f"split {split!r} has no list file; available splits: {', '.join(available) or 'none'}. "
            "Set dataset.train_split/dataset.val_split (or splits=[...]) to one of them"
            + (", or run 'python scripts/prepare_voc.py' to write the _aug lists." if split.endswith("_aug") else ".")
        )
        return {}, [Problem("missing_list", str(path), reason)]
    entries = _read_list(path)
    if not entries:
        return {}, [Problem("empty_list", str(path), "the split list is empty; it must list one image id per line")]
    lines_of: dict[str, list[int]] = defaultdict(list)
    for number, image_id in entries:
        lines_of[image_id].append(number)
    problems = [
        Problem(
            "duplicate_id",
            str(path),
            f"id {image_id} is listed {len(lines)} times (lines {', '.join(map(str, lines))}); keep one line",
        )
        for image_id, lines in lines_of.items()
        if len(lines) > 1
    ]
    return lines_of, problems


def _file_names(folder: Path) -> set[str] | None:
    """Names in ``folder`` (one directory read instead of a stat per id), None when it is missing."""
    try:
        return set(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return None


_MISSING_DIR = {
    "image": "the image folder does not exist; point dataset.root at the folder holding VOC2012/",
    "mask": (
        "the mask folder does not exist; set dataset.mask_dir to the folder of class-index PNGs "
        "(for dataset=voc_aug run 'python scripts/prepare_voc.py' to build SegmentationClassAug/)"
    ),
}


def _folders(voc_dir: Path, mask_dir: str) -> dict[str, tuple[Path, str]]:
    """What -> (folder, file suffix) of the files each id needs."""
    return {"image": (voc_dir / "JPEGImages", ".jpg"), "mask": (voc_dir / mask_dir, ".png")}


def _existence(
    voc_dir: Path, split: str, ids: dict[str, list[int]], mask_dir: str
) -> tuple[dict[str, set[str]], list[Problem]]:
    """The file names present per folder (missing folders left out), and the missing files and folders.

    Names are compared as strings against one directory read: no stat and no Path per id.
    """
    list_name = _list_path(voc_dir, split).name
    present: dict[str, set[str]] = {}
    problems: list[Problem] = []
    for what, (folder, suffix) in _folders(voc_dir, mask_dir).items():
        names = _file_names(folder)
        if names is None:
            reason = _MISSING_DIR[what]
            problems.append(Problem("missing_dir", str(folder), reason))
            continue
        present[what] = names
        prefix = f"{folder}{os.sep}"
        problems += [
            Problem(
                f"missing_{what}",
                f"{prefix}{image_id}{suffix}",
                f"listed in {list_name} (line {lines[0]}) but the {what} does not exist; "
                "add the file or remove the id from the list",
            )
            for image_id, lines in ids.items()
            if f"{image_id}{suffix}" not in names
        ]
    return present, problems


def _items(voc_dir: Path, ids: Iterable[str], mask_dir: str, present: dict[str, set[str]]) -> list[_Item]:
    """(id, image path, mask path) per id, None for a file that does not exist."""
    folders = _folders(voc_dir, mask_dir)
    items: list[_Item] = []
    for image_id in ids:
        paths = [
            folder / f"{image_id}{suffix}" if f"{image_id}{suffix}" in present.get(what, ()) else None
            for what, (folder, suffix) in folders.items()
        ]
        items.append((image_id, paths[0], paths[1]))
    return items


def _check_image(path: Path) -> tuple[tuple[int, int] | None, list[Problem]]:
    """(width, height) of a fully decoded image; truncated and corrupt files fail ``load()``."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.size, []
    except Exception as exc:  # any decoder error: the file cannot be used
        reason = f"the image cannot be decoded ({type(exc).__name__}: {exc}); re-download or remove it from the list"
        return None, [Problem("unreadable_image", str(path), reason)]


def _rgb_reason(rgb: np.ndarray) -> str:
    try:
        rgb_to_index(rgb)
    except ValueError as exc:
        return (
            f"the mask is stored as RGB colours that are not all VOC palette colours ({exc}); masks must be "
            "palette ('P') or greyscale ('L') PNGs whose pixel values are class indices"
        )
    return (
        "the mask is stored as RGB colours (VOC palette colours) instead of class indices; convert it to a palette "
        "PNG: m = Image.fromarray(deeplab_cli.data.check.rgb_to_index(np.array(Image.open(p).convert('RGB')))); "
        "m.putpalette(deeplab_cli.data.palette.voc_palette()); m.save(p)"
    )


def _mask_values(mask: np.ndarray, num_classes: int) -> list[int]:
    """Values outside {0..num_classes-1, 255}."""
    counts = np.bincount(mask.ravel(), minlength=256)
    allowed = np.zeros(256, dtype=bool)
    allowed[:num_classes] = True
    allowed[IGNORE_INDEX] = True
    return np.flatnonzero((counts > 0) & ~allowed).tolist()


def _check_mask(path: Path, num_classes: int) -> tuple[tuple[int, int] | None, list[Problem]]:
    """(width, height) of a decodable mask, with its mode and value problems."""
    try:
        with Image.open(path) as img:
            mode, size = img.mode, img.size
            pixels = np.array(img.convert("RGB") if mode in ("RGB", "RGBA") else img)
    except Exception as exc:  # any decoder error: the file cannot be used
        reason = f"the mask cannot be decoded ({type(exc).__name__}: {exc}); regenerate it or remove it from the list"
        return None, [Problem("unreadable_mask", str(path), reason)]
    if mode in ("RGB", "RGBA"):
        return size, [Problem("rgb_mask", str(path), _rgb_reason(pixels))]
    if mode not in ("P", "L"):
        reason = f"the mask has mode {mode!r}; save it as a palette ('P') or greyscale ('L') PNG of class indices"
        return size, [Problem("bad_mask_mode", str(path), reason)]
    bad = _mask_values(pixels, num_classes)
    if not bad:
        return size, []
    shown = ", ".join(map(str, bad[:_MAX_VALUES])) + (", ..." if len(bad) > _MAX_VALUES else "")
    reason = (
        f"the mask holds values {shown} outside 0..{num_classes - 1} and {IGNORE_INDEX} (ignore); "
        "fix the labels or set dataset.num_classes"
    )
    return size, [Problem("bad_mask_values", str(path), reason)]


def _check_pair(item: _Item, num_classes: int) -> list[Problem]:
    """Decode one listed image/mask pair (whichever exist) and compare their sizes."""
    _, image_path, mask_path = item
    image_size, problems = _check_image(image_path) if image_path else (None, [])
    mask_size, mask_problems = _check_mask(mask_path, num_classes) if mask_path else (None, [])
    problems += mask_problems
    if image_size and mask_size and image_size != mask_size:
        problems.append(
            Problem(
                "size_mismatch",
                str(mask_path),
                f"the mask is {mask_size[0]}x{mask_size[1]} but the image {image_path} is "
                f"{image_size[0]}x{image_size[1]} (width x height); they must have the same size",
            )
        )
    return problems


def check_split(
    voc_dir: Path,
    split: str,
    mask_dir: str,
    num_classes: int,
    *,
    deep: bool = True,
    progress: bool = False,
    workers: int = 8,
) -> list[Problem]:
    """Every problem of ``ImageSets/Segmentation/<split>.txt`` and the files it lists.

    ``deep=False`` checks the list and that the files exist (one directory read per
    folder, so it costs milliseconds for thousands of ids); ``deep=True`` also decodes
    every image and mask, in ``workers`` threads (PIL releases the GIL while decoding).
    """
    voc_dir = Path(voc_dir)
    ids, problems = _list_problems(voc_dir, split)
    if not ids:
        return problems
    present, missing = _existence(voc_dir, split, ids, mask_dir)
    problems += missing
    if not deep:
        return problems
    items = _items(voc_dir, ids, mask_dir, present)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda item: _check_pair(item, num_classes), items)
        for found in tqdm(results, total=len(items), desc=f"checking {split}", unit="img", disable=not progress):
            problems += found
    return problems


def count_ids(voc_dir: Path, split: str) -> int:
    """The number of distinct ids a split lists (0 when the list is missing)."""
    path = _list_path(Path(voc_dir), split)
    return len({image_id for _, image_id in _read_list(path)}) if path.is_file() else 0


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
