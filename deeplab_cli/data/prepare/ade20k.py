"""ADE20K (the SceneParsing benchmark's ADEChallengeData2016): download and unpack.

Layout produced under ``--root`` (default ``data``)::

    downloads/ADEChallengeData2016.zip          (deleted unless --keep-archives)
    ADEChallengeData2016/images/{training,validation}/ADE_*.jpg
    ADEChallengeData2016/annotations/{training,validation}/ADE_*.png   (0 = other, 1..150 = classes)
    ADEChallengeData2016/images/testing/ADE_test_*.jpg                (with --test: release_test.zip, no masks)

The download resumes after an interruption and is checked against the sha1 the
benchmark's users publish; an archive saved by hand into ``downloads/`` is only
verified. Class names, palette and ``reduce_zero_label`` are in
``configs/dataset/ade20k.yaml``.

The benchmark's test images (``release_test.zip``) have no public masks: predictions
for them are what its server scores. ``--test`` puts them where ``dataset=ade20k``'s
``test_split`` (``testing``) reads them, so ``deeplab-eval eval.export=labels`` writes
predictions of the test images, never of the validation ones. No checksum of that
archive is published; the zip's own CRCs are checked while it is unpacked.
"""

from __future__ import annotations

import argparse
import zipfile
from pathlib import Path

from .archives import MARKER_SUFFIX, extract_zip
from .download import PrepareError, Resource, download, run_prepare

RESOURCE = Resource(
    "ADEChallengeData2016.zip",
    "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
    "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7",
    "sha1",
)
TEST_RESOURCE = Resource("release_test.zip", "http://data.csail.mit.edu/places/ADEchallenge/release_test.zip", None)
TOP = "ADEChallengeData2016"
SPLIT_SIZES = {"training": 20210, "validation": 2000}
TEST_SPLIT = "testing"  # images/testing/: the preset's test_split, images only


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


def prepare_test(root: Path, keep_archives: bool = False, resource: Resource = TEST_RESOURCE) -> int:
    """Download ``release_test.zip`` and put its images under ``images/testing``; how many there are."""
    root = Path(root)
    downloads = root / "downloads"
    out = root / TOP / "images" / TEST_SPLIT
    marker = root / f".{TOP}_test{MARKER_SUFFIX}"
    if not marker.exists():
        archive = download(resource, downloads)
        out.mkdir(parents=True, exist_ok=True)
        try:
            with zipfile.ZipFile(archive) as zf:
                members = [m for m in zf.infolist() if m.filename.lower().endswith(".jpg") and not m.is_dir()]
                for member in members:  # flat: the archive's own folder (release_test/testing/) is not kept
                    (out / Path(member.filename).name).write_bytes(zf.read(member))  # CRC-checked read
        except (zipfile.BadZipFile, OSError) as exc:
            raise PrepareError(f"{archive} is not a readable zip ({exc}); delete it and re-run.") from exc
        if not members:
            raise PrepareError(f"{archive} holds no .jpg images; it is not ADE20K's release_test.zip.")
        marker.write_text("ok\n")
    count = sum(1 for _ in out.glob("*.jpg"))
    if not keep_archives:
        (downloads / resource.filename).unlink(missing_ok=True)
        if downloads.is_dir() and not any(downloads.iterdir()):
            downloads.rmdir()
    print(f"  {TEST_SPLIT:<12} {count} images, no masks ({out})")
    print(f"Predict them for the server with: deeplab-eval checkpoint=<run>/checkpoints/best.pt eval.export=labels "
          f"dataset.root={root}")  # fmt: skip
    return count


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Download and unpack ADE20K (ADEChallengeData2016).")
    parser.add_argument("--root", type=Path, default=Path("data"), help="data folder (default: data)")
    parser.add_argument("--keep-archives", action="store_true", help="keep the zip after success")
    parser.add_argument(
        "--test", action="store_true", help="also the test images (release_test.zip, no masks) for eval.export=labels"
    )
    args = parser.parse_args(argv)

    def both() -> None:
        prepare(args.root, args.keep_archives)
        if args.test:
            prepare_test(args.root, args.keep_archives)

    return run_prepare(both)
