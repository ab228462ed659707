"""Layouts other than VOC's, end to end: Cityscapes (labelIds -> train ids, export back), ADE20K
(reduce_zero_label), and a generic folder tree (scan pairing, colour masks, the errors users meet)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from clitools import CAMVID, needs_shared, require_shared, tree_digest
from PIL import Image

from deeplab_cli.cli import check_data
from deeplab_cli.cli import evaluate as eval_mod
from deeplab_cli.cli import train as train_mod
from deeplab_cli.config import checks, datasets
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.data.check import check_split
from deeplab_cli.data.labels import LabelMapping
from deeplab_cli.data.layout import DatasetError, Layout
from deeplab_cli.data.segmentation import SampleError, SegmentationDataset
from deeplab_cli.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

#: cityscapesScripts ``labels.py``: the trainId of labelIds 0..33 (255 = ignored), written out independently.
CITYSCAPES_TRAIN_ID = [255] * 7 + [0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5, 255, 6, 7, 8, 9, 10, 11, 12, 13,
                                   14, 15, 255, 255, 16, 17, 18]  # fmt: skip
RAW_VALUES = [*range(34), 255]  # every labelId, and -1 (license plate) as stored in a uint8 PNG
H, W = 30, 42
QUICK = ["dataset.num_workers=0", "trainer.max_iters=1", "trainer.batch_size=2", "trainer.progress=false"]
EVAL = ["eval.num_workers=0", "eval.progress=false", "eval.plots=false"]


def _image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8))


def _cycle_mask(values: list[int], shift: int) -> np.ndarray:
    """Every value of ``values`` in turn, row-major, starting at ``shift``: known counts per value."""
    return np.array(values, dtype=np.uint8)[(np.arange(H * W) + shift) % len(values)].reshape(H, W)


def cityscapes_tree(root: Path) -> dict[str, list[np.ndarray]]:
    """leftImg8bit/ + gtFine/ of two train cities and one val city, one or two frames each."""
    frames = {"train": [("aachen", 0), ("aachen", 1), ("bremen", 0)], "val": [("frankfurt", 0)]}
    masks: dict[str, list[np.ndarray]] = {}
    for split, items in frames.items():
        for n, (city, frame) in enumerate(items):
            stem = f"{city}_{frame:06d}_000019"
            for sub in (f"leftImg8bit/{split}/{city}", f"gtFine/{split}/{city}"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            _image(n).save(root / f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png")
            mask = _cycle_mask(RAW_VALUES, 7 * n)
            Image.fromarray(mask, mode="L").save(root / f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png")
            (root / f"gtFine/{split}/{city}/{stem}_gtFine_color.png").write_bytes(b"not read")
            masks.setdefault(split, []).append(mask)
    return masks


def _expected_train_id_counts(masks: list[np.ndarray]) -> tuple[list[int], int]:
    table = np.array(CITYSCAPES_TRAIN_ID + [255] * (256 - 34), dtype=np.int64)
    table[255] = 255
    counts = np.zeros(19, dtype=np.int64)
    ignored = 0
    for mask in masks:
        mapped = table[mask]
        counts += np.bincount(mapped[mapped < 19], minlength=19)
        ignored += int((mapped == 255).sum())
    return counts.tolist(), ignored


def _check_report(overrides: list[str], run: Path) -> dict:
    problems = check_data.run_check(compose_train(overrides, run, config_name="check_data"), run)
    assert problems == [], problems
    return json.loads((run / "report.json").read_text())


def test_cityscapes_counts_train_eval_and_labelids_export_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "cityscapes"
    masks = cityscapes_tree(root)
    before = tree_digest(root)
    ds = ["dataset=cityscapes", f"dataset.root={root}"]
    report = _check_report(ds, tmp_path / "check")
    assert report["checked"] == {"train": 3, "val": 1}
    names = report["class_names"]
    assert names[0] == "road" and names[18] == "bicycle"
    for split in ("train", "val"):
        counts, ignored = _expected_train_id_counts(masks[split])
        assert [report["labels"][split]["pixels"][n] for n in names] == counts
        assert report["labels"][split]["ignored_pixels"] == ignored
        images = [
            sum(bool((np.array(CITYSCAPES_TRAIN_ID)[m[m < 34]] == c).any()) for m in masks[split]) for c in range(19)
        ]
        assert [report["labels"][split]["images"][n] for n in names] == images

    train_mod.run_train(compose_train([*ds, "dataset.crop_size=24", *QUICK], tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    run = tmp_path / "eval"
    args = [f"checkpoint={ckpt}", "eval.split=val", "save_predictions=true", "eval.export=labels", *EVAL]
    metrics = eval_mod.run_eval(compose_train(args, run, config_name="eval"))
    counts, _ = _expected_train_id_counts(masks["val"])
    assert np.array(metrics["confusion_matrix"]).sum(axis=1).tolist() == counts
    stem = "frankfurt/frankfurt_000000_000019"
    exported = np.array(Image.open(run / "results" / f"{stem}_gtFine_labelIds.png"))
    predicted = np.array(Image.open(run / "predictions" / f"{stem}.png"))
    assert set(np.unique(exported).tolist()) <= {i for i, t in enumerate(CITYSCAPES_TRAIN_ID) if t != 255}
    cityscapes = datasets.label_mapping(compose_train(ds).dataset)
    assert np.array_equal(cityscapes.apply(exported), predicted)  # labelIds -> train ids gives the prediction back
    assert metrics["export"]["format"] == "labels" and Path(metrics["export"]["archive"]).is_file()
    assert tree_digest(root) == before


def test_cityscapes_trainids_variant_reads_converted_masks(tmp_path: Path) -> None:
    root = tmp_path / "cityscapes"
    masks = cityscapes_tree(root)
    table = np.array(CITYSCAPES_TRAIN_ID + [255] * (256 - 34), dtype=np.uint8)
    for path in root.glob("gtFine/*/*/*_gtFine_labelIds.png"):
        train_ids = table[np.array(Image.open(path))]
        Image.fromarray(train_ids, mode="L").save(str(path).replace("_labelIds", "_labelTrainIds"))
    report = _check_report(["dataset=cityscapes_trainids", f"dataset.root={root}"], tmp_path / "check")
    counts, ignored = _expected_train_id_counts(masks["train"])
    assert list(report["labels"]["train"]["pixels"].values()) == counts
    assert report["labels"]["train"]["ignored_pixels"] == ignored


def ade_tree(root: Path) -> dict[str, list[np.ndarray]]:
    masks: dict[str, list[np.ndarray]] = {}
    for split, n_images in (("training", 2), ("validation", 1)):
        for sub in ("images", "annotations"):
            (root / "ADEChallengeData2016" / sub / split).mkdir(parents=True)
        for n in range(n_images):
            stem = f"ADE_{split[:5]}_{n:08d}"
            _image(n).save(root / "ADEChallengeData2016" / "images" / split / f"{stem}.jpg")
            mask = _cycle_mask(list(range(151)), 11 * n)
            Image.fromarray(mask, mode="L").save(root / "ADEChallengeData2016" / "annotations" / split / f"{stem}.png")
            masks.setdefault(split, []).append(mask)
    return masks


def test_ade20k_zero_is_ignored_and_k_becomes_k_minus_1(tmp_path: Path) -> None:
    masks = ade_tree(tmp_path)  # dataset.root is the folder holding ADEChallengeData2016/
    ds = ["dataset=ade20k", f"dataset.root={tmp_path}"]
    report = _check_report(ds, tmp_path / "check")
    assert report["checked"] == {"training": 2, "validation": 1}
    for split in ("training", "validation"):
        raw = sum(np.bincount(m.ravel(), minlength=151) for m in masks[split])
        assert list(report["labels"][split]["pixels"].values()) == raw[1:].tolist()
        assert report["labels"][split]["ignored_pixels"] == int(raw[0])
    assert report["class_names"][0] == "wall" and len(report["class_names"]) == 150

    train_mod.run_train(compose_train([*ds, "dataset.crop_size=24", *QUICK], tmp_path / "run"))
    args = [f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.pt'}", *EVAL]
    (tmp_path / "eval").mkdir()
    metrics = eval_mod.run_eval(compose_train(args, tmp_path / "eval", config_name="eval"))
    raw = np.bincount(masks["validation"][0].ravel(), minlength=151)
    assert np.array(metrics["confusion_matrix"]).sum(axis=1).tolist() == raw[1:].tolist()


def test_ade20k_export_predicts_the_test_images_not_the_validation_ones(tmp_path: Path) -> None:
    """Defect 6 of issue 22: ``eval.export=labels`` used the preset's ``test_split``, which was ADE20K's
    validation split, so users uploaded validation predictions. The test images now have a layout
    (``images/testing``, no masks; ``deeplab-prepare ade20k --test``), the export reads it, and a checkpoint
    trained with the old preset is migrated."""
    ade_tree(tmp_path)
    ds = ["dataset=ade20k", f"dataset.root={tmp_path}"]
    train_mod.run_train(compose_train([*ds, "dataset.crop_size=24", *QUICK], tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    args = [f"checkpoint={ckpt}", "eval.export=labels", *EVAL]
    (tmp_path / "missing").mkdir()
    with pytest.raises(DatasetError, match=r"images/testing.*deeplab-prepare ade20k --test"):
        eval_mod.run_eval(compose_train(args, tmp_path / "missing", config_name="eval"))
    testing = tmp_path / "ADEChallengeData2016" / "images" / "testing"
    testing.mkdir()
    for n, stem in enumerate(["ADE_test_00000001", "ADE_test_00000002"]):
        _image(10 + n).resize((W + 6 * n, H)).save(testing / f"{stem}.jpg")
    for name, checkpoint in (("new", ckpt), ("old", _with_old_ade20k_test_split(ckpt, tmp_path / "old.pt"))):
        run = tmp_path / f"export_{name}"
        run.mkdir()
        metrics = eval_mod.run_eval(compose_train([f"checkpoint={checkpoint}", *args[1:]], run, config_name="eval"))
        written = sorted(p.name for p in (run / "results").rglob("*.png"))
        assert written == ["ADE_test_00000001.png", "ADE_test_00000002.png"], (name, written)
        assert metrics["num_images"] == 2 and "mIoU" not in metrics
        second = np.array(Image.open(run / "results" / "ADE_test_00000002.png"))
        assert second.shape == (H, W + 6) and second.min() >= 1 and second.max() <= 150  # the server's 1..150


def _with_old_ade20k_test_split(ckpt: Path, out: Path) -> Path:
    """A copy of ``ckpt`` whose stored config names ``validation`` the test split, as the old preset did."""
    import torch

    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    state["config"]["dataset"]["test_split"] = "validation"
    torch.save(state, out)
    return out


# --- a generic tree: images/<split>/ + masks/<split>/, no split lists --------------------------------------


def generic_tree(root: Path, colours: bool = False) -> Path:
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], dtype=np.uint8)
    for split, names in (("train", ["a", "sub/b", "c"]), ("val", ["d"])):
        for n, name in enumerate(names):
            img = root / "images" / split / f"{name}.jpg"
            msk = root / "masks" / split / f"{name}.png"
            img.parent.mkdir(parents=True, exist_ok=True)
            msk.parent.mkdir(parents=True, exist_ok=True)
            _image(n).save(img)
            mask = _cycle_mask([0, 1, 2, 9], n)  # 9: a raw "void" value
            if colours:
                rgb = palette[np.minimum(mask, 2)]
                rgb[mask == 9] = (255, 255, 255)
                Image.fromarray(rgb).save(msk)
            else:
                Image.fromarray(mask, mode="L").save(msk)
    return root


GENERIC = ["dataset=folder", "dataset.num_classes=3", "dataset.name=mine"]


def test_generic_tree_pairs_by_relative_stem_and_ignores_values(tmp_path: Path) -> None:
    root = generic_tree(tmp_path / "mine")
    layout = Layout(root, "images/{split}", "masks/{split}", ".jpg", ".png", None)
    ds = SegmentationDataset(layout, "train", LabelMapping(3, ignore_values=(9,)))
    assert ds.ids == ["a", "c", "sub/b"]
    _, mask, _ = ds[2]
    assert set(mask.unique().tolist()) == {0, 1, 2, 255}
    report = _check_report([*GENERIC, f"dataset.root={root}", "dataset.ignore_values=[9]"], tmp_path / "check")
    assert report["labels"]["train"]["ignored_pixels"] == 3 * H * W // 4


def test_colour_masks_with_color_map(tmp_path: Path) -> None:
    root = generic_tree(tmp_path / "mine", colours=True)
    colour_map = "dataset.color_map=[[0,0,0,0],[255,0,0,1],[0,255,0,2],[255,255,255,255]]"
    report = _check_report([*GENERIC, f"dataset.root={root}", colour_map], tmp_path / "check")
    assert list(report["labels"]["val"]["pixels"].values()) == [H * W // 4] * 3
    cfg = compose_train([*GENERIC, f"dataset.root={root}", colour_map])
    assert datasets.palette(cfg)[1].tolist() == [255, 0, 0]  # the palette defaults to the mask colours
    # a colour the map does not list: one line naming the file and the colour
    short = "dataset.color_map=[[0,0,0],[255,0,0],[0,255,0]]"  # index = class
    cfg = compose_train([*GENERIC, f"dataset.root={root}", short])
    with pytest.raises(
        SampleError, match=r"mask .*d\.png has .* colour\(s\) missing from dataset\.color_map, e\.g\. \(255, 255, 255\)"
    ):
        datasets.make_eval_dataset(cfg)[0]


def test_unmapped_raw_value_names_the_file_and_the_fix(tmp_path: Path) -> None:
    root = generic_tree(tmp_path / "mine")
    cfg = compose_train([*GENERIC, f"dataset.root={root}"])
    with pytest.raises(SampleError) as info:
        datasets.make_eval_dataset(cfg)[0]
    message = str(info.value)
    assert "d.png" in message and "value(s) 9 " in message and "dataset.ignore_values" in message


def test_image_without_mask_and_suffix_matching_nothing(tmp_path: Path) -> None:
    root = generic_tree(tmp_path / "mine")
    (root / "masks" / "train" / "sub" / "b.png").unlink()
    layout = Layout(root, "images/{split}", "masks/{split}", ".jpg", ".png", None)
    [problem] = check_split(layout, "train", LabelMapping(3, ignore_values=(9,))).problems
    assert problem.kind == "missing_mask" and problem.path.endswith("masks/train/sub/b.png")
    assert "has no mask of the same stem" in problem.reason and "images/train/sub/b.jpg" in problem.reason
    cfg = compose_train([*GENERIC, f"dataset.root={root}", "dataset.ignore_values=[9]", *QUICK], tmp_path / "run")
    with pytest.raises(DatasetError, match="has no mask of the same stem"):
        train_mod.run_train(cfg)
    png = Layout(root, "images/{split}", "masks/{split}", ".png", ".png", None)
    [problem] = check_split(png, "train", LabelMapping(3)).problems
    assert problem.kind == "no_images" and "dataset.image_suffix='.png'" in problem.reason
    assert "suffixes found: .jpg" in problem.reason and "dataset.image_suffix=.jpg" in problem.reason


def test_label_mapping_rules() -> None:
    raw = np.array([[0, 1, 2, 255]], dtype=np.uint8)
    assert LabelMapping(3).apply(raw).tolist() == [[0, 1, 2, 255]]
    assert LabelMapping(3, reduce_zero_label=True).apply(raw).tolist() == [[255, 0, 1, 255]]
    assert LabelMapping(3, label_map={2: 0, 1: 1}).apply(raw).tolist() == [[255, 1, 0, 255]]
    assert LabelMapping(3, label_map={2: 0}).inverse()[:3].tolist() == [2, 255, 255]
    assert LabelMapping(150, reduce_zero_label=True).inverse()[[0, 149, 255]].tolist() == [1, 150, 255]
    with pytest.raises(ConfigError, match="both remap"):
        LabelMapping(3, label_map={1: 0}, reduce_zero_label=True)
    with pytest.raises(ConfigError, match="maps 40 -> 7"):
        LabelMapping(3, label_map={40: 7})


def test_binary_0_255_masks_keep_their_foreground_with_an_explicit_label_map(tmp_path: Path) -> None:
    """Defect 1 of issue 22: ``label_map={0: 0, 255: 1}`` once turned every 255 into "ignore" after the map,
    so 0/255 masks trained with no foreground at all and no error. Counted by hand: the mask is 0 in the left
    third of the columns and 255 elsewhere."""
    root = tmp_path / "binary"
    fg_cols = W - W // 3
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        for n, name in enumerate(names):
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split).mkdir(parents=True, exist_ok=True)
            _image(n).save(root / "images" / split / f"{name}.jpg")
            mask = np.zeros((H, W), dtype=np.uint8)
            mask[:, W // 3 :] = 255
            Image.fromarray(mask, mode="L").save(root / "masks" / split / f"{name}.png")
    binary = ["dataset=folder", "dataset.num_classes=2", "dataset.name=binary", f"dataset.root={root}",
              "dataset.label_map={0: 0, 255: 1}"]  # fmt: skip
    labels = datasets.label_mapping(compose_train(binary).dataset)
    assert labels.lut()[[0, 1, 255]].tolist() == [0, 255, 1]  # unlisted 1 is ignored, listed 255 is class 1
    layout = Layout(root, "images/{split}", "masks/{split}", ".jpg", ".png", None)
    _, mask, _ = SegmentationDataset(layout, "train", labels)[0]
    assert int((mask == 1).sum()) == H * fg_cols and int((mask == 255).sum()) == 0
    report = _check_report(binary, tmp_path / "check")
    assert list(report["labels"]["train"]["pixels"].values()) == [2 * H * (W // 3), 2 * H * fg_cols]
    assert report["labels"]["train"]["ignored_pixels"] == 0
    # the rest of the rule is unchanged: without an entry for 255 it is ignored, an out-of-range class is an error
    assert LabelMapping(2, label_map={0: 0, 1: 1}).lut()[255] == 255
    with pytest.raises(ConfigError, match="maps 255 -> 2"):
        LabelMapping(2, label_map={0: 0, 255: 2})
    with pytest.raises(ConfigError, match="ignore_values ignores it"):
        LabelMapping(2, label_map={0: 0, 255: 1}, ignore_values=(255,))


# --- real CamVid frames (../shared/data/camvid: SegNet layout, JPEG images) ---------------------------------


def camvid_copy(dest: Path, per_split: int = 3) -> Path:
    require_shared(CAMVID)
    import shutil

    for split in ("train", "val"):
        names = sorted(p.stem for p in (CAMVID / split).glob("*.jpg"))[:per_split]
        for sub, suffix in ((split, ".jpg"), (f"{split}annot", ".png")):
            (dest / sub).mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.copy(CAMVID / sub / f"{name}{suffix}", dest / sub / f"{name}{suffix}")
    return dest


@needs_shared(CAMVID)
def test_camvid_frames_check_train_eval_and_predict_in_the_camvid_palette(tmp_path: Path) -> None:
    from deeplab_cli.cli import predict as predict_mod

    root = camvid_copy(tmp_path / "camvid")
    # 3 frames do not hold every class: allowed here, as the test is about the layout and the palette
    ds = ["dataset=camvid", f"dataset.root={root}", "dataset.image_suffix=.jpg", "dataset.allow_absent_classes=true"]
    report = _check_report(ds, tmp_path / "check")
    assert report["checked"] == {"train": 3, "val": 3} and report["total"] == 0
    raw = sum(np.bincount(np.array(Image.open(p)).ravel(), minlength=12) for p in sorted((root / "valannot").glob("*")))
    assert list(report["labels"]["val"]["pixels"].values()) == raw[:11].tolist()
    assert report["labels"]["val"]["ignored_pixels"] == int(raw[11])
    train_mod.run_train(compose_train([*ds, "dataset.crop_size=64", *QUICK], tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    out = tmp_path / "pred"
    args = [f"checkpoint={ckpt}", f"input={root / 'val'}", f"output={out}", "eval.num_workers=0", "eval.progress=false"]
    predict_mod.run_predict(compose_train(args, tmp_path / "predict_run", config_name="predict"))
    png = Image.open(sorted(out.glob("*.png"))[0])
    assert png.mode == "P" and png.size == (480, 360)
    segnet = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
              [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]]  # fmt: skip
    assert np.array(png.getpalette()[:33]).reshape(11, 3).tolist() == segnet


def test_checkpoints_from_before_layouts_read_as_voc() -> None:
    from deeplab_cli.config.migrate import migrate_stored_config

    assert migrate_stored_config({"dataset": {"name": "voc", "root": "data"}})["dataset"]["family"] == "voc"
    assert migrate_stored_config({"dataset": {"name": "x", "family": "generic"}})["dataset"]["family"] == "generic"
    cfg = compose_train(["dataset=voc"])
    assert (cfg.dataset.image_dir, cfg.dataset.split_list) == ("JPEGImages", "ImageSets/Segmentation/{split}.txt")


def test_bad_dataset_keys_name_the_key_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dataset.class_names lists 2 names but dataset.num_classes=11"):
        checks.validate(compose_train(["dataset=camvid", "dataset.class_names=[a,b]"]))
    with pytest.raises(ConfigError, match=r"dataset.palette must list one \[R, G, B\] .* including \[1, 2\]"):
        checks.validate(compose_train(["dataset=folder", "dataset.palette=[[0,0,0],[1,2]]"]))
    with pytest.raises(ConfigError, match=r"dataset.color_map\[1\]: \[1, 2\] is not a colour"):
        checks.validate(compose_train(["dataset=folder", "dataset.color_map=[[0,0,0],[1,2]]"]))
    with pytest.raises(DatasetError, match="dataset.family='nope' is unknown; choose one of voc, cityscapes"):
        datasets.make_eval_dataset(compose_train(["dataset=folder", "dataset.family=nope"]))
    with pytest.raises(DatasetError, match=r"dataset.root='.*absent' does not exist\. To get the data, .*SegNet"):
        datasets.make_eval_dataset(compose_train(["dataset=camvid", f"dataset.root={tmp_path / 'absent'}"]))
