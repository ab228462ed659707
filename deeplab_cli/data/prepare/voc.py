"""Download and prepare PASCAL VOC 2012 + SBD ("VOC aug") for DeepLab training.

DeepLab is trained on the 10,582-image ``train_aug`` split, which merges the
official VOC 2012 segmentation masks with the extra annotations of the
Semantic Boundaries Dataset (SBD). SBD ships MATLAB ``.mat`` files, so they
are converted here to VOC-style palette PNGs, letting one loader read both.

Layout produced under ``--root`` (default ``data``)::

    downloads/                               archives (deleted unless --keep-archives)
    VOCdevkit/VOC2012/JPEGImages/            VOC images (+ SBD images VOC lacks)
    VOCdevkit/VOC2012/SegmentationClass/     official VOC masks
    VOCdevkit/VOC2012/SegmentationClassAug/  VOC masks + converted SBD masks
    VOCdevkit/VOC2012/ImageSets/Segmentation/  VOC lists + train_aug, trainval_aug
    SBD/benchmark_RELEASE/dataset/{cls,img,train.txt,val.txt}

Every step is idempotent: finished downloads are verified rather than fetched
again, interrupted downloads resume, and extraction is skipped once its
``.extracted`` marker exists, so the script can simply be re-run after a failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image
from tqdm import tqdm

from ..palette import voc_palette  # noqa: F401 - re-exported for callers of this module
from .download import PrepareError, Resource, download, extract, run_prepare

MARKER = ".extracted"
STANDARD_TRAIN_AUG_SIZE = 10_582


RESOURCES: dict[str, Resource] = {
    "voc": Resource(
        filename="VOCtrainval_11-May-2012.tar",
        url=("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"),
        digest="6cd6e144f989b92b3379bac3b3de84fd",
    ),
    "sbd": Resource(
        filename="benchmark.tgz",
        url=("http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz"),
        digest="82b4d87ceb2ed10f6038a1cba92111cb",
    ),
}


@dataclass(frozen=True)
class Layout:
    """All paths derived from ``--root``, so every step agrees on where things live."""

    root: Path

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def voc(self) -> Path:
        return self.root / "VOCdevkit" / "VOC2012"

    @property
    def sbd_root(self) -> Path:
        return self.root / "SBD"

    @property
    def sbd(self) -> Path:
        return self.sbd_root / "benchmark_RELEASE" / "dataset"

    @property
    def splits(self) -> Path:
        return self.voc / "ImageSets" / "Segmentation"

    @property
    def aug_masks(self) -> Path:
        return self.voc / "SegmentationClassAug"


# --------------------------------------------------------------------------- palette


# -------------------------------------------------------------------------- download


# -------------------------------------------------------------------------- extract


def _targets(key: str, layout: Layout) -> tuple[Path, Path, Path, tuple[str, ...]]:
    """Return (extract into, expected top dir, marker, required subdirs) for a key."""
    if key == "voc":
        required = ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation")
        return layout.root, layout.voc, layout.voc / MARKER, required
    return layout.sbd_root, layout.sbd, layout.sbd_root / MARKER, ("cls", "img")


def ensure_extracted(key: str, layout: Layout) -> None:
    """Download and extract one resource (``"voc"`` or ``"sbd"``) unless already done.

    The marker is checked first so a re-run needs neither the network nor the
    (possibly deleted) archive.
    """
    dest, top, marker, required = _targets(key, layout)
    if marker.exists():
        print(f"{key}: already extracted ({marker.parent}), skipping download")
        return
    archive = download(RESOURCES[key], layout.downloads)
    extract(archive, dest)
    missing = [name for name in required if not (top / name).is_dir()]
    if missing:
        raise PrepareError(
            f"{archive.name} did not contain the expected folders {missing} under {top}; is it the right archive?"
        )
    marker.write_text("ok\n")


# -------------------------------------------------------------------------- convert


def load_sbd_mask(mat_path: Path) -> np.ndarray:
    """Read the HxW class-index array from an SBD ``cls/<id>.mat`` file.

    SBD stores a MATLAB struct ``GTcls``; loadmat turns it into a (1, 1) record
    array whose ``Segmentation`` field holds the mask.
    """
    seg = np.asarray(scipy.io.loadmat(mat_path)["GTcls"]["Segmentation"][0, 0])
    if seg.ndim != 2 or seg.size == 0 or seg.min() < 0 or seg.max() > 255:
        raise ValueError(f"unexpected Segmentation array {seg.shape} {seg.dtype}")
    return seg.astype(np.uint8)


def save_palette_png(mask: np.ndarray, path: Path) -> None:
    """Write ``mask`` as a VOC palette PNG atomically, so re-runs can trust any PNG."""
    height, width = mask.shape
    image = Image.frombytes("P", (width, height), np.ascontiguousarray(mask).tobytes())
    image.putpalette(voc_palette())
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


def _convert_job(job: tuple[str, str]) -> None:
    """Worker entry point (top level so it pickles for the process pool)."""
    mat_path, png_path = job
    try:
        save_palette_png(load_sbd_mask(Path(mat_path)), Path(png_path))
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise PrepareError(f"Could not convert {mat_path}: {exc}") from None


def convert_sbd_masks(cls_dir: Path, out_dir: Path, workers: int | None = None) -> int:
    """Convert every SBD ``.mat`` whose PNG is not in ``out_dir`` yet; return the count.

    Existing PNGs (official VOC masks copied first, or earlier runs) are kept,
    which gives VOC precedence and makes an interrupted conversion resumable.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        (str(mat), str(out_dir / f"{mat.stem}.png"))
        for mat in sorted(cls_dir.glob("*.mat"))
        if not (out_dir / f"{mat.stem}.png").exists()
    ]
    with tqdm(total=len(jobs), desc="convert SBD masks", unit=" masks") as bar:
        if workers == 1 or len(jobs) < 2:
            for job in jobs:
                _convert_job(job)
                bar.update()
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(_convert_job, jobs, chunksize=32):
                    bar.update()
    return len(jobs)


def copy_voc_masks(voc_masks: Path, out_dir: Path) -> int:
    """Copy official VOC masks as-is (overwriting): they win over SBD for shared ids."""
    out_dir.mkdir(parents=True, exist_ok=True)
    count = 0
    for png in sorted(voc_masks.glob("*.png")):
        shutil.copyfile(png, out_dir / png.name)
        count += 1
    return count


def copy_missing_images(sbd_images: Path, voc_images: Path) -> int:
    """Copy SBD images VOC 2012 lacks, so every ``train_aug`` id has a JPEG."""
    count = 0
    for jpg in sorted(sbd_images.glob("*.jpg")):
        target = voc_images / jpg.name
        if not target.exists():
            shutil.copyfile(jpg, target)
            count += 1
    return count


# --------------------------------------------------------------------------- splits


def read_ids(path: Path) -> set[str]:
    """Read a split list (one image id per line)."""
    if not path.is_file():
        raise PrepareError(f"Missing split list {path}; the extracted data looks incomplete.")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def write_ids(path: Path, ids: list[str]) -> None:
    """Write one id per line, the same format as the official VOC lists."""
    path.write_text("".join(f"{image_id}\n" for image_id in ids))


def compute_train_aug(voc_train: set[str], voc_val: set[str], sbd_train: set[str], sbd_val: set[str]) -> list[str]:
    """Return the standard ``train_aug`` ids: all annotated ids except VOC val.

    VOC val must stay unseen because it is the evaluation set; SBD's own val
    split is fair game for training.
    """
    return sorted((voc_train | sbd_train | sbd_val) - voc_val)


def write_aug_lists(layout: Layout) -> dict[str, int]:
    """Write ``train_aug.txt``/``trainval_aug.txt`` once every listed id is usable."""
    voc_train = read_ids(layout.splits / "train.txt")
    voc_val = read_ids(layout.splits / "val.txt")
    sbd_train = read_ids(layout.sbd / "train.txt")
    sbd_val = read_ids(layout.sbd / "val.txt")
    train_aug = compute_train_aug(voc_train, voc_val, sbd_train, sbd_val)
    trainval_aug = sorted(set(train_aug) | voc_val)
    missing = [
        image_id
        for image_id in trainval_aug
        if not (layout.aug_masks / f"{image_id}.png").is_file()
        or not (layout.voc / "JPEGImages" / f"{image_id}.jpg").is_file()
    ]
    if missing:
        raise PrepareError(
            f"{len(missing)} listed ids have no image or mask (e.g. {missing[:5]}); "
            f"the extracted data looks incomplete. Delete {layout.root} and re-run."
        )
    write_ids(layout.splits / "train_aug.txt", train_aug)
    write_ids(layout.splits / "trainval_aug.txt", trainval_aug)
    return {
        "voc_train": len(voc_train),
        "voc_val": len(voc_val),
        "sbd_train": len(sbd_train),
        "sbd_val": len(sbd_val),
        "train_aug": len(train_aug),
        "trainval_aug": len(trainval_aug),
    }


# ----------------------------------------------------------------------------- main


def build_aug(layout: Layout, workers: int | None = None) -> dict[str, int]:
    """Merge SBD into the VOC tree: masks, missing images and the aug split lists."""
    stats = {"voc_masks_copied": copy_voc_masks(layout.voc / "SegmentationClass", layout.aug_masks)}
    stats["sbd_masks_converted"] = convert_sbd_masks(layout.sbd / "cls", layout.aug_masks, workers)
    stats["sbd_images_copied"] = copy_missing_images(layout.sbd / "img", layout.voc / "JPEGImages")
    stats.update(write_aug_lists(layout))
    return stats


def prepare(
    root: Path,
    *,
    skip_sbd: bool = False,
    keep_archives: bool = False,
    workers: int | None = None,
) -> dict[str, int]:
    """Run the whole pipeline and return the summary counts it prints."""
    layout = Layout(Path(root))
    keys = ("voc",) if skip_sbd else ("voc", "sbd")
    for key in keys:
        ensure_extracted(key, layout)
    if skip_sbd:
        stats = {
            "voc_train": len(read_ids(layout.splits / "train.txt")),
            "voc_val": len(read_ids(layout.splits / "val.txt")),
        }
    else:
        stats = build_aug(layout, workers)
    if not keep_archives:
        _remove_archives(layout, keys)
    _print_summary(layout, stats)
    return stats


def _remove_archives(layout: Layout, keys: tuple[str, ...]) -> None:
    """Free the disk space of the archives once everything they fed is in place."""
    for key in keys:
        (layout.downloads / RESOURCES[key].filename).unlink(missing_ok=True)
    if layout.downloads.is_dir() and not any(layout.downloads.iterdir()):
        layout.downloads.rmdir()


def _print_summary(layout: Layout, stats: dict[str, int]) -> None:
    """Print counts so users can sanity-check against the well-known numbers."""
    print(f"Prepared {layout.voc}")
    for name, value in stats.items():
        print(f"  {name:<20} {value}")
    if "train_aug" in stats:
        print(f"  train_aug.txt has {stats['train_aug']} ids (the standard VOC+SBD set has {STANDARD_TRAIN_AUG_SIZE})")


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Download PASCAL VOC 2012 and SBD and build the train_aug split."
    )
    parser.add_argument("--root", type=Path, default=Path("data"), help="data folder (default: data)")
    parser.add_argument("--skip-sbd", action="store_true", help="prepare VOC 2012 only")
    parser.add_argument(
        "--keep-archives",
        action="store_true",
        help="keep downloaded archives after success",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes for SBD conversion (default: all CPUs)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    args = parse_args(argv, prog)
    return run_prepare(
        lambda: prepare(args.root, skip_sbd=args.skip_sbd, keep_archives=args.keep_archives, workers=args.workers)
    )


if __name__ == "__main__":
    raise SystemExit(main())
