"""Cityscapes: unpack the zips a user downloaded (the site needs a login) and check the result.

Layout produced under ``--root`` (default ``data``)::

    cityscapes/leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    cityscapes/gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png  (+ color, instanceIds, polygons)

``dataset=cityscapes`` maps the 34 labelIds to the 19 train ids with the table in
``configs/dataset/cityscapes.yaml`` (cityscapesScripts' ``labels.py``); no conversion
step is needed. ``deeplab-eval ... eval.export=labels`` writes predictions back as
labelIds for the benchmark server.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .archives import MARKER_SUFFIX, extract_zip
from .download import PrepareError, run_prepare

ZIPS = {"leftImg8bit": "leftImg8bit_trainvaltest.zip", "gtFine": "gtFine_trainvaltest.zip"}
SPLIT_SIZES = {"train": 2975, "val": 500, "test": 1525}
DOWNLOAD_PAGE = "https://www.cityscapes-dataset.com/downloads/"


def _find_zips(zips: Path) -> dict[str, Path]:
    found = {top: zips / name for top, name in ZIPS.items()}
    missing = [p.name for p in found.values() if not p.is_file()]
    if missing:
        raise PrepareError(
            f"{', '.join(missing)} not found in {zips}. Log in at {DOWNLOAD_PAGE}, download packages "
            f"{', '.join(ZIPS.values())} (packageID 3 and 1) into one folder and pass it as --zips."
        )
    return found


def count_split(tree: Path, split: str) -> tuple[int, int]:
    """(images, labelIds masks) of one split."""
    return (
        sum(1 for _ in (tree / "leftImg8bit" / split).glob("*/*_leftImg8bit.png")),
        sum(1 for _ in (tree / "gtFine" / split).glob("*/*_gtFine_labelIds.png")),
    )


def prepare(zips: Path, root: Path) -> dict[str, int]:
    """Unpack both zips into ``root/cityscapes`` (once each) and count the images of every split."""
    tree = Path(root) / "cityscapes"
    for top, archive in _find_zips(Path(zips)).items():
        marker = tree / f".{top}{MARKER_SUFFIX}"
        if marker.exists():
            print(f"{archive.name}: already extracted into {tree}, skipping")
            continue
        tops = extract_zip(archive, tree)
        if top not in tops:
            raise PrepareError(f"{archive} has no {top}/ folder (it holds {', '.join(tops)}); is it the right zip?")
        marker.write_text("ok\n")
    stats: dict[str, int] = {}
    for split, expected in SPLIT_SIZES.items():
        images, masks = count_split(tree, split)
        if images != masks:
            raise PrepareError(
                f"split {split}: {images} images but {masks} labelIds masks under {tree}; delete {tree} and re-run."
            )
        stats[split] = images
        note = "" if images == expected else f" (the official split has {expected})"
        print(f"  {split:<6} {images} images{note}")
    print(f"Prepared {tree}\nTrain with: deeplab-train dataset=cityscapes dataset.root={tree}")
    return stats


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Unpack the Cityscapes zips you downloaded and check them.")
    parser.add_argument("--zips", type=Path, required=True, help="folder holding " + " and ".join(ZIPS.values()))
    parser.add_argument("--root", type=Path, default=Path("data"), help="data folder (default: data)")
    args = parser.parse_args(argv)
    return run_prepare(lambda: prepare(args.zips, args.root))
