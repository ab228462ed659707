"""Your own data without surprises (issue 29): the scenarios a new user hit, each with the answer they now get.

A flat ``images/`` + ``masks/`` folder gets a holdout split instead of validating on its training files;
0/255 binary masks are refused with the exact ``label_map`` line instead of "mIoU 100"; JPEG masks,
grey masks saved as RGB, EXIF-rotated photos and size mismatches are found before the first step; a run
that skipped most of its samples fails; the results say how many classes the score is over.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from clitools import cli, tree_digest
from omegaconf import open_dict
from PIL import Image

from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.config.datasets import dataset_layout, make_eval_dataset, palette
from deeplab_cli.config.preflight import check_before_training, check_skipped
from deeplab_cli.data.check import DataCheckError, check_split
from deeplab_cli.data.holdout import Holdout, split_holdout
from deeplab_cli.data.labels import LabelMapping
from deeplab_cli.data.layout import DatasetError
from deeplab_cli.data.segmentation import SampleError, load_image, load_mask
from deeplab_cli.engine.eval.metrics import compute_metrics
from deeplab_cli.engine.report.logger import format_table
from deeplab_cli.errors import ConfigError

#: A tiny quick-start run on a user's folder (the checks under test run before any of it).
TINY = ["trainer.max_iters=2", "trainer.val_interval=2", "trainer.batch_size=2", "trainer.progress=false",
        "dataset.num_workers=0", "dataset.crop_size=32", "backbone.width_mult=0.125", "head.channels=16"]  # fmt: skip


def make_flat(
    root: Path, n: int = 20, classes: int = 3, binary: bool = False, size: tuple[int, int] = (40, 56)
) -> Path:
    """``root/images/*.jpg`` + ``root/masks/*.png``: a rectangle of one class per image on class 0 (or 0/255)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    h, w = size
    for i in range(n):
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        cls = 1 + i % (classes - 1)
        mask[5:25, 10:40] = 255 if binary else cls
        image[mask > 0] = (40 * cls, 200, 90)
        Image.fromarray(image).save(root / "images" / f"img_{i:03d}.jpg", quality=95)
        Image.fromarray(mask).save(root / "masks" / f"img_{i:03d}.png")
    return root


def flat_cfg(root: Path, *extra: str):
    return compose_train([
        "dataset=folder", f"dataset.root={root}", "dataset.num_classes=3", *TINY, *extra
    ])  # fmt: skip


# --- a flat folder: a holdout split, never train = val ---------------------------------------------------


def test_flat_folder_gets_a_disjoint_deterministic_stratified_holdout(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat")
    cfg = flat_cfg(root)  # the preset's images/{split} folders do not exist: the flat folder is found
    layout = dataset_layout(cfg.dataset, ["train", "val"])
    train, val = layout.listing("train").stems, layout.listing("val").stems
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(p.stem for p in (root / "images").iterdir())
    assert len(val) == 4  # 0.2 of 20
    # stratified: each class is on both sides (10 images of class 1, 10 of class 2)
    cls = {f"img_{i:03d}": 1 + i % 2 for i in range(20)}
    assert {cls[s] for s in val} == {1, 2} and {cls[s] for s in train} == {1, 2}
    again = dataset_layout(flat_cfg(root, "dataset.holdout_seed=0").dataset, ["train", "val"])
    assert again.listing("val").stems == val  # deterministic
    other = dataset_layout(flat_cfg(root, "dataset.holdout_seed=3").dataset, ["train", "val"])
    assert other.listing("val").stems != val  # the seed matters
    # the explicit flat form gives the same split
    explicit = flat_cfg(root, "dataset.image_dir=images", "dataset.mask_dir=masks")
    assert dataset_layout(explicit.dataset, ["train", "val"]).listing("val").stems == val


def test_holdout_keeps_groups_whole_and_rounds_the_fraction() -> None:
    stems = [f"seq{g}_{i}" for g in range(6) for i in range(5)]
    pixels = np.ones((30, 2), dtype=np.int64)
    train, val = split_holdout(stems, pixels, Holdout(0.2, 0, r"^[^_]+"))
    assert {s.split("_")[0] for s in train}.isdisjoint({s.split("_")[0] for s in val})
    assert len(val) in (5, 10)  # whole groups of 5; k = 5 over 6 groups
    _, val_third = split_holdout(stems, pixels, Holdout(0.3, 0))
    assert len(val_third) == 10  # 0.3 -> 1/3


def test_train_equal_to_val_is_refused_with_the_count_and_examples(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat")
    cfg = flat_cfg(root, "dataset.image_dir=images", "dataset.mask_dir=masks", "dataset.holdout=null")
    with pytest.raises(DataCheckError) as err:
        check_before_training(cfg, tmp_path / "run")
    message = str(err.value)
    assert "share 20 image file(s)" in message and "img_000.jpg" in message
    assert "dataset.allow_overlap=true" in message and "dataset.holdout" in message
    with open_dict(cfg):
        cfg.dataset.allow_overlap = True
    check_before_training(cfg, tmp_path / "run2")  # the user's word


def test_overlapping_split_lists_are_refused(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat")
    (root / "lists").mkdir()
    (root / "lists" / "train.txt").write_text("".join(f"img_{i:03d}\n" for i in range(0, 15)))
    (root / "lists" / "val.txt").write_text("".join(f"img_{i:03d}\n" for i in range(12, 20)))
    cfg = flat_cfg(root, "dataset.image_dir=images", "dataset.mask_dir=masks", 'dataset.split_list="lists/{split}.txt"')
    with pytest.raises(DataCheckError, match="share 3 image file"):
        check_before_training(cfg, tmp_path / "run")


def test_flat_folder_run_records_the_holdout_and_leaves_the_folder_alone(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat")
    before = tree_digest(root)
    run = tmp_path / "run"
    proc = cli("deeplab-train", "dataset=folder", f"dataset.root={root}", "dataset.num_classes=3", *TINY,
               f"hydra.run.dir={run}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((run / "holdout.json").read_text())
    assert record["counts"] == {"train": 16, "val": 4}
    assert not set(record["splits"]["train"]) & set(record["splits"]["val"])
    assert "16 training images (train), 4 validation images (val)" in (run / "train.log").read_text()
    assert json.loads((run / "metrics.json").read_text())["num_images"] == 4
    assert tree_digest(root) == before
    # eval of its checkpoint scores the same 4 images; a changed folder is refused, not silently re-cut
    proc = cli("deeplab-eval", f"checkpoint={run}/checkpoints/last.pt", f"hydra.run.dir={tmp_path}/eval")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_images"] == 4
    for name in ("images/img_000.jpg", "masks/img_000.png"):
        dest = root / name.replace("img_000", "zz_new")
        shutil.copy(root / name, dest)
    proc = cli("deeplab-eval", f"checkpoint={run}/checkpoints/last.pt", f"hydra.run.dir={tmp_path}/eval2")
    assert proc.returncode == 1 and "is not the one" in proc.stderr and "dataset.holdout=null" in proc.stderr


# --- 0/255 masks and classes that are never labelled -----------------------------------------------------


def test_binary_255_masks_are_refused_with_the_label_map_line(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat", binary=True)
    cfg = flat_cfg(root, "dataset.num_classes=2")
    with pytest.raises(DataCheckError) as err:
        check_before_training(cfg, tmp_path / "run")
    assert "class(es) 1 (class_1) have no labelled pixel" in str(err.value)
    assert "'dataset.label_map={0: 0, 255: 1}'" in str(err.value)
    assert json.loads((tmp_path / "run" / "data_problems.json").read_text())[0]["kind"] == "absent_class"
    fixed = flat_cfg(root, "dataset.num_classes=2", "dataset.label_map={0: 0, 255: 1}")
    check_before_training(fixed, tmp_path / "run2")  # the line it gives works
    mask = load_mask(root / "masks" / "img_000.png", LabelMapping.from_options(2, {0: 0, 255: 1}))
    assert int((mask == 1).sum()) == 20 * 30  # the foreground is class 1, counted by hand


def test_check_data_reports_an_absent_class_as_a_problem(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat", binary=True)
    proc = cli("deeplab-check-data", "dataset=folder", f"dataset.root={root}", "dataset.num_classes=2",
               "progress=false", f"hydra.run.dir={tmp_path}/check")  # fmt: skip
    assert proc.returncode == 1, proc.stdout
    assert "absent_class:" in proc.stdout and "no problems found" not in proc.stdout
    assert "dataset.label_map={0: 0, 255: 1}" in proc.stdout


def test_an_absent_class_is_a_warning_when_allowed(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat", binary=True)
    cfg = flat_cfg(root, "dataset.num_classes=2", "dataset.allow_absent_classes=true")
    assert check_before_training(cfg, tmp_path / "run").sizes == {"train": 16, "val": 4}


# --- masks and photos as they come -----------------------------------------------------------------------


def test_jpeg_masks_are_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "m.jpg"
    Image.fromarray(np.full((8, 8), 2, np.uint8)).save(path)
    with pytest.raises(SampleError, match="Masks must be PNG"):
        load_mask(path, LabelMapping(3))
    root = make_flat(tmp_path / "flat")
    for p in (root / "masks").glob("*.png"):
        Image.open(p).save(p.with_suffix(".jpg"), quality=90)
        p.unlink()
    cfg = flat_cfg(root, "dataset.mask_suffix=.jpg", "dataset.allow_absent_classes=true")
    with pytest.raises(DataCheckError, match="jpeg_mask: .*Masks must be PNG"):
        check_before_training(cfg, tmp_path / "run")


def test_grey_masks_saved_as_rgb_are_index_masks(tmp_path: Path) -> None:
    values = np.array([[0, 1], [2, 255]], np.uint8)
    path = tmp_path / "m.png"
    Image.fromarray(np.stack([values] * 3, -1)).save(path)
    assert Image.open(path).mode == "RGB"
    np.testing.assert_array_equal(load_mask(path, LabelMapping(3)), values)
    coloured = np.stack([values, values, values + 1], -1)
    Image.fromarray(coloured).save(path)
    with pytest.raises(SampleError, match="stores colours"):
        load_mask(path, LabelMapping(3))


def _exif_rotated(path: Path, pixels: np.ndarray) -> None:
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(path, exif=exif, quality=95)


def test_exif_rotated_photos_are_read_as_shown_and_checked_so(tmp_path: Path) -> None:
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:, :5] = 255  # a white band on the left of the stored pixels
    _exif_rotated(tmp_path / "a.jpg", stored)
    shown = load_image(tmp_path / "a.jpg")
    assert shown.shape == (30, 20, 3)  # turned, as viewers show it
    assert shown[:5].mean() > 200 and shown[-5:].mean() < 50  # the band is now at the top
    root = make_flat(tmp_path / "flat")
    _exif_rotated(root / "images" / "img_000.jpg", np.zeros((40, 56, 3), np.uint8))  # mask is 56 wide, 40 high
    labels = LabelMapping(3)
    flat = flat_cfg(root, "dataset.image_dir=images", "dataset.mask_dir=masks", "dataset.holdout=null")
    layout = dataset_layout(flat.dataset, ["train"])
    problems = check_split(layout, "train", labels, decode_images=False).problems
    assert [p.kind for p in problems] == ["size_mismatch"]
    assert "EXIF orientation (6)" in problems[0].reason


def test_size_mismatch_stops_a_run_before_its_first_step(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat")
    Image.fromarray(np.zeros((41, 56), np.uint8)).save(root / "masks" / "img_007.png")
    proc = cli("deeplab-train", "dataset=folder", f"dataset.root={root}", "dataset.num_classes=3", *TINY,
               f"hydra.run.dir={tmp_path}/run")  # fmt: skip
    assert proc.returncode == 1
    assert "size_mismatch" in proc.stderr and "img_007.png" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


# --- runs that skip, and scores over too few classes -------------------------------------------------------


def test_a_split_mostly_skipped_fails_before_training(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat")
    for p in sorted((root / "images").glob("*.jpg"))[:15]:
        p.write_bytes(b"not an image")
    cfg = flat_cfg(root, "dataset.on_error=skip", "dataset.allow_absent_classes=true")
    with pytest.raises(DataCheckError, match=r"would be skipped .* more than dataset.max_skipped=0.1"):
        check_before_training(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "data_problems.json").is_file()


def test_every_sample_skipped_exits_non_zero(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat")
    for p in (root / "images").glob("*.jpg"):
        p.write_bytes(b"not an image")
    proc = cli("deeplab-train", "dataset=folder", f"dataset.root={root}", "dataset.num_classes=3", *TINY,
               "dataset.on_error=skip", f"hydra.run.dir={tmp_path}/run")  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "would be skipped" in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_skipped_share_after_a_run_is_checked(tmp_path: Path) -> None:
    log = tmp_path / "skipped_samples.jsonl"
    log.write_text("".join(json.dumps({"split": "train", "error": f"image {i} bad"}) + "\n" for i in range(3)) * 2)
    check_skipped(log, {"train": 30}, 0.1)  # 3 distinct of 30: at the limit
    with pytest.raises(DataCheckError, match="3 of the 20 samples of split 'train' were skipped"):
        check_skipped(log, {"train": 20}, 0.1)


def test_results_say_how_many_classes_were_present() -> None:
    import torch

    one_class = torch.tensor([[50, 0], [0, 0]])
    metrics = compute_metrics(one_class, ["background", "road"])
    assert metrics["classes_present"] == 1 and metrics["mIoU"] == 100.0
    table = format_table(metrics)
    assert "classes present in the ground truth: 1 of 2" in table and "WARNING" in table
    two = compute_metrics(torch.tensor([[5, 1], [2, 7]]), ["a", "b"])
    assert two["classes_present"] == 2 and "WARNING" not in format_table(two)


def test_a_checkpoints_class_count_is_named_in_the_mismatch_message(tmp_path: Path) -> None:
    from deeplab_cli.config.checks import validate

    cfg = compose_train(["dataset=voc", "model.num_classes=11", "dataset.root=/nonexistent"])
    with pytest.raises(ConfigError, match="dataset.num_classes=11"):
        validate(cfg)


def test_generic_datasets_get_distinct_colours_with_class_0_not_black(tmp_path: Path) -> None:
    cfg = flat_cfg(make_flat(tmp_path / "flat"), "dataset.num_classes=11")
    colours = palette(cfg)[:11]
    assert tuple(colours[0]) != (0, 0, 0)
    assert len({tuple(c) for c in colours}) == 11
    voc = compose_train(["dataset=voc", "dataset.root=/nonexistent"])
    assert tuple(palette(voc)[0]) == (0, 0, 0) and tuple(palette(voc)[1]) == (128, 0, 0)  # VOC's own


def test_zero_validation_images_is_an_error_not_a_score(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat")
    cfg = flat_cfg(root, "dataset.on_error=skip")
    dataset = make_eval_dataset(cfg)
    assert len(dataset) == 4
    for stem in dataset.ids:
        (root / "images" / f"{stem}.jpg").write_bytes(b"broken")
    assert all(dataset[i] is None for i in range(len(dataset)))  # every one skipped: validate_model refuses


# The done-when of issue 29 (real CamVid frames in a flat folder, the pretrained Lite0 preset, a holdout with
# zero overlap, the data untouched) is tests/test_guide_own_data.py: the guide's commands reproduce it.


def test_masks_named_with_a_suffix_get_the_suffix_line(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat")
    for p in (root / "masks").glob("*.png"):
        p.rename(p.with_name(f"{p.stem}_mask.png"))
    with pytest.raises(DataCheckError, match=r"img_\d+_mask.png is there: set dataset.mask_suffix=_mask.png"):
        check_before_training(flat_cfg(root), tmp_path / "run")
    check_before_training(flat_cfg(root, "dataset.mask_suffix=_mask.png"), tmp_path / "run2")  # the line works


def test_a_flat_folder_of_png_photos_gets_the_suffix_line(tmp_path: Path) -> None:
    root = make_flat(tmp_path / "flat")
    for p in (root / "images").glob("*.jpg"):
        Image.open(p).save(p.with_suffix(".png"))
        p.unlink()
    with pytest.raises(DatasetError, match=r"end in \.png, not dataset.image_suffix='.jpg'; add dataset.image_suffix="):
        dataset_layout(flat_cfg(root).dataset, ["train", "val"])
    layout = dataset_layout(flat_cfg(root, "dataset.image_suffix=.png").dataset, ["train", "val"])
    assert len(layout.listing("val").stems) == 4
