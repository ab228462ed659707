"""ADE20K (the SceneParsing benchmark's ADEChallengeData2016): download and unpack.

Layout produced under ``--root`` (default ``data``)::

    downloads/ADEChallengeData2016.zip          (deleted unless --keep-archives)
    ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_*.png   (0 = other, 1..150 = classes)

The download resumes after an interruption and is checked against the sha1 the
benchmark's users publish; an archive saved by hand into ``downloads/`` is only
verified. Class names, palette and ``reduce_zero_label`` are in
``configs/dataset/ade20k.yaml``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .archives import MARKER_SUFFIX, extract_zip
from .prepare_voc import PrepareError, run_prepare, Resource, download

RESOURCE = Resource(
    "ADEChallengeData2016.zip",
    "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
    "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7",
    "sha1",
)
TOP = "ADEChallengeData2016"
SPLIT_SIZES = {"training": 20210, "validation": 2000}


def count_split(tree: Path, split: str) -> tuple[int, int]:
    """(images, annotations) of one split."""
    return (
        sum(1 for _ in (tree / "images" / split).glob("*.jpg")),
        sum(1 for _ in (tree / "annotations" / split).glob("*.png")),
    )


def prepare(root: Path, keep_archives: bool = False, resource: Resource = RESOURCE) -> dict[str, int]:
    """Download, verify and unpack ADE20K under ``root``; the image count of each split."""
    root = Path(root)
    downloads = root / "downloads"
    tree = root / TOP
    marker = root / f".{TOP}{MARKER_SUFFIX}"  # a re-run after success needs neither network nor archive
    if not marker.exists():
        archive = download(resource, downloads)
        extract_zip(archive, root)
        marker.write_text("ok\n")
    stats: dict[str, int] = {}
    for split, expected in SPLIT_SIZES.items():
        images, masks = count_split(tree, split)
        if images == 0 or images != masks:
            raise PrepareError(
                f"{tree / 'images' / split} holds {images} images and {tree / 'annotations' / split} {masks} masks; "
                f"the archive is not ADEChallengeData2016.zip (expected {expected} of each). Delete {tree} and re-run."
            )
        stats[split] = images
    if not keep_archives:
        (downloads / resource.filename).unlink(missing_ok=True)
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()
    print(f"Prepared {tree}")
    for split, n in stats.items():
        print(f"  {split:<12} {n} images (the benchmark has {SPLIT_SIZES[split]})")
    print(f"Train with: deeplab-train dataset=ade20k dataset.root={root}")
    return stats


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Download and unpack ADE20K (ADEChallengeData2016).")
    parser.add_argument("--root", type=Path, default=Path("data"), help="data folder (default: data)")
    parser.add_argument("--keep-archives", action="store_true", help="keep the zip after success")
    args = parser.parse_args(argv)
    return run_prepare(lambda: prepare(args.root, args.keep_archives))
