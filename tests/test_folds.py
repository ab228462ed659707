"""deeplab-split: stratified, group-aware k-fold lists; training and checking on a fold; the k-fold summary."""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from clitools import CAMVID, VOC_MASKS, cli, needs_shared
from omegaconf import OmegaConf
from PIL import Image

from deeplab_cli.cli.split import run_split
from deeplab_cli.config import datasets
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.data.folds import FoldError, fold_balance, group_images, stratified_folds
from deeplab_cli.errors import DeepLabError
from deeplab_cli.tools.sweep import cross_validation, write_summary

CAMVID_DATASET = ["dataset=camvid", f"dataset.root={CAMVID}", "dataset.image_suffix=.jpg"]
SEQUENCE = "'^[^_]+'"  # CamVid ids are <sequence>_<frame>


def split(tmp: Path, overrides: list[str]) -> tuple[dict, Path]:
    """Run deeplab-split in-process (composed as the console script composes it); the report and out dir."""
    cfg = compose_train(["progress=false", "workers=2", *overrides], config_name="split")
    out = Path(cfg.out) if cfg.out else tmp / "run"
    return run_split(cfg, tmp / "run"), out


def read_lists(out: Path, k: int) -> tuple[list[list[str]], list[list[str]]]:
    def lines(name: str) -> list[str]:
        return (out / name).read_text().splitlines()

    return [lines(f"fold{i}_train.txt") for i in range(k)], [lines(f"fold{i}_val.txt") for i in range(k)]


def assert_partition(train: list[list[str]], val: list[list[str]]) -> set[str]:
    """Every image in exactly one val fold; each fold's train and val disjoint, together the whole set."""
    everything = [line for fold in val for line in fold]
    assert len(everything) == len(set(everything))
    for t, v in zip(train, val, strict=True):
        assert not set(t) & set(v) and set(t) | set(v) == set(everything)
    return set(everything)


# ----------------------------------------------------------------------------- the algorithm


def test_groups_use_the_first_capture_group_else_the_whole_match() -> None:
    ids = ["seqA_001", "seqA_002", "seqB_001", "lonely"]
    assert group_images(ids, "^[^_]+").index.tolist() == [0, 0, 1, 2]
    by_frame = group_images(ids, r"_(\d+)$")
    assert by_frame.index.tolist() == [0, 1, 0, 2] and by_frame.unmatched == 1
    assert by_frame.keys[:2] == ["001", "002"]


def test_a_class_with_k_images_gets_one_per_fold_and_groups_stay_whole() -> None:
    """Iterative stratification places the rarest class first: 5 images of class 2 -> one per fold."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 50, size=(60, 4)) * (rng.random((60, 4)) < 0.6)
    pixels[:, 2] = 0
    pixels[[0, 3, 6, 9, 12], 2] = 30  # in five different groups
    groups = group_images([f"s{i // 3}_{i}" for i in range(60)], "^[^_]+")  # 20 groups of 3
    for seed in range(3):
        fold = stratified_folds(pixels, groups, 5, seed)
        assert np.bincount(fold[pixels[:, 2] > 0], minlength=5).tolist() == [1, 1, 1, 1, 1]
        for g in range(len(groups.keys)):
            assert len(set(fold[groups.index == g])) == 1
        assert np.array_equal(fold, stratified_folds(pixels, groups, 5, seed))  # deterministic per seed
    assert np.bincount(fold).tolist() == [12] * 5


def test_balance_report_matches_a_hand_computation() -> None:
    pixels = np.array([[10, 0], [5, 5], [0, 10], [10, 10]])
    fold = np.array([0, 0, 1, 1])
    report = fold_balance(pixels, fold, 2, ["a", "b"])
    # fold 0: a in 2 of 3 images with a (share 2/3 vs half the images: 1/6); pixels a 15 of 20
    assert report["folds"][0]["classes"]["a"] == {"images": 2, "image_share": 2 / 3, "pixel_share": 0.75}
    whole_a = 25 / 50
    assert report["max_deviation"]["pixel_share"] == pytest.approx(0.75 - whole_a)
    assert report["max_deviation"]["image_share"] == pytest.approx(2 / 3 - 1 / 2)


@pytest.mark.parametrize(
    ("k", "ids", "pattern", "message"),
    [
        (5, ["a", "b", "c"], None, r"k=5 is larger than the number of images \(3\)"),
        (3, ["s1_1", "s1_2", "s2_1", "s2_2"], "^[^_]+", r"k=3 is larger than the number of groups \(2\)"),
        (2, ["a_1", "b_1"], "^zzz", r"group='\^zzz' matches none of the 2 image ids"),
        (2, ["a_1", "b_1"], "([", r"group='\(\[' is not a valid regular expression"),
        (1, ["a", "b"], None, r"k=1 must be a whole number of folds, at least 2"),
    ],
)
def test_impossible_requests_fail_in_one_line(k: int, ids: list[str], pattern: str | None, message: str) -> None:
    with pytest.raises(FoldError, match=message) as info:
        groups = group_images(ids, pattern)
        stratified_folds(np.ones((len(ids), 2), dtype=np.int64), groups, k)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------ the real data


@needs_shared(VOC_MASKS)
def test_voc_2913_masks_five_folds_deviate_a_third_of_random_or_less(tmp_path: Path) -> None:
    """Acceptance: largest per-class deviation of image-count share and pixel share <= 1/3 of a random k-fold."""
    masks = ["dataset=folder", f"dataset.root={VOC_MASKS}", "dataset.num_classes=21", "dataset.name=voc_masks",
             "dataset.image_dir=SegmentationClass", "dataset.mask_dir=SegmentationClass",
             "dataset.image_suffix=.png", "dataset.train_split=trainval"]  # fmt: skip
    info, out = split(tmp_path, [*masks, "k=5", f"out={tmp_path / 'folds'}"])
    train, val = read_lists(out, 5)
    assert len(assert_partition(train, val)) == 2913
    assert sorted(len(v) for v in val) == [582, 582, 583, 583, 583]
    ours, theirs = info["stratified"]["max_deviation"], info["random"]["max_deviation"]
    for key in ("image_share", "pixel_share"):
        assert ours[key] <= theirs[key] / 3, (key, ours, theirs)
    assert json.loads((out / "folds.json").read_text())["ratio_to_random"] == info["ratio_to_random"]
    # recompute the pixel-share deviation from the lists and the masks themselves
    counts = {}
    for line in [line for fold in val for line in fold]:
        stem = line.split()[0]
        mask = np.array(Image.open(VOC_MASKS / "SegmentationClass" / f"{stem}.png"))
        counts[stem] = np.bincount(mask.ravel(), minlength=256)[:21]
    whole = sum(counts.values())
    whole = whole / whole.sum()
    worst = max(np.abs((s := sum(counts[line.split()[0]] for line in fold)) / s.sum() - whole).max() for fold in val)
    assert worst == pytest.approx(ours["pixel_share"], rel=1e-9)


@needs_shared(CAMVID)
def test_camvid_train_and_val_grouped_by_sequence(tmp_path: Path) -> None:
    """Acceptance: no sequence split across folds; every image in one val fold; train/val disjoint and covering."""
    info, out = split(
        tmp_path, [*CAMVID_DATASET, "splits=[train,val]", "k=3", f"group={SEQUENCE}", f"out={tmp_path}/f"]
    )
    train, val = read_lists(out, 3)
    everything = assert_partition(train, val)
    assert len(everything) == 367 + 101
    assert {line.split()[1] for line in everything} == {"train", "val"}
    sequences = [{line.split()[0].split("_")[0] for line in fold} for fold in val]
    assert sorted(map(sorted, sequences)) == [["0001TP"], ["0006R0"], ["0016E5"]]
    assert info["groups"] == 3 and info["stratified"]["groups"] == [sorted(s) for s in sequences]
    for line in everything:  # the second word is the split whose folders hold the image
        stem, source = line.split()
        assert (CAMVID / source / f"{stem}.jpg").is_file()


@needs_shared(CAMVID)
def test_training_on_a_fold_reads_its_lists_from_both_folders(tmp_path: Path) -> None:
    from deeplab_cli.config.datasets import validate_dataset
    from deeplab_cli.config.preflight import check_before_training

    _, out = split(tmp_path, [*CAMVID_DATASET, "splits=[train,val]", "k=3", f"group={SEQUENCE}", f"out={tmp_path}/f"])
    train, val = read_lists(out, 3)
    fold = next(i for i in range(3) if any(line.endswith(" val") for line in train[i]))
    cfg = compose_train([*CAMVID_DATASET, f"dataset.folds={out}", f"dataset.fold={fold}", "dataset.num_workers=0"])
    validate_dataset(cfg)
    assert check_before_training(cfg, tmp_path / "run").skipped == []
    loader = datasets.make_train_loader(cfg, 0)
    ds = loader.dataset
    assert ds.ids == [line.split()[0] for line in train[fold]]
    paths = {ds.image_path(i).parent.name for i in range(len(ds))}
    assert paths == {"train", "val"}  # images found in the split folder their line names
    assert {ds.mask_path(i).parent.name for i in range(len(ds))} == {"trainannot", "valannot"}
    evaluation = datasets.make_eval_dataset(cfg)
    assert evaluation.ids == [line.split()[0] for line in val[fold]]
    image, mask, _ = evaluation[0]
    assert image.shape[-2:] == mask.shape == (360, 480)


@needs_shared(CAMVID)
def test_fold_keys_fail_in_one_line(tmp_path: Path) -> None:
    from deeplab_cli.config.datasets import validate_dataset

    _, out = split(tmp_path, [*CAMVID_DATASET, "splits=[train,val]", "k=3", f"group={SEQUENCE}", f"out={tmp_path}/f"])
    cases = [
        ([*CAMVID_DATASET, f"dataset.folds={out}", "dataset.fold=3"], r"dataset.fold=3 is out of range: .* k=3 folds"),
        ([*CAMVID_DATASET, "dataset.fold=0"], r"dataset.fold=0 needs dataset.folds=DIR"),
        ([*CAMVID_DATASET, f"dataset.folds={tmp_path}/nowhere", "dataset.fold=0"], r"nowhere' does not exist"),
        ([f"dataset.folds={out}", "dataset.fold=0"], r"made for dataset camvid \(11 classes\), not dataset=synthetic"),
    ]
    for overrides, message in cases:
        with pytest.raises(DeepLabError, match=message) as info:
            validate_dataset(compose_train(overrides))
        assert "\n" not in str(info.value)
    with pytest.raises(FoldError, match=r"already holds the lists of an earlier deeplab-split .* overwrite=true"):
        split(tmp_path, [*CAMVID_DATASET, "k=3", f"out={out}"])
    before = (out / "fold0_val.txt").read_text()
    split(tmp_path, [*CAMVID_DATASET, "k=3", f"out={out}", "overwrite=true"])  # train split only now
    assert (out / "fold0_val.txt").read_text() != before


def test_the_same_id_in_two_pooled_splits_and_a_bad_fold_line_are_named(tmp_path: Path) -> None:
    """Users' folders often number each split from 0: pooled, the ids clash, and the lists could not tell them apart."""
    from test_dataset_families import GENERIC, generic_tree

    root = generic_tree(tmp_path / "mine")
    (root / "images" / "val" / "d.jpg").rename(root / "images" / "val" / "a.jpg")
    (root / "masks" / "val" / "d.png").rename(root / "masks" / "val" / "a.png")
    mine = [*GENERIC, f"dataset.root={root}", "dataset.ignore_values=[9]"]
    with pytest.raises(FoldError, match=r"image id 'a' is in split 'train' and in split 'val'; .* \(rename one copy\)"):
        split(tmp_path, [*mine, "splits=[train,val]", "k=2", f"out={tmp_path}/f"])
    assert not (tmp_path / "f").exists()
    _, out = split(tmp_path, [*mine, "k=3", f"out={tmp_path}/g"])
    (out / "fold0_val.txt").write_text((out / "fold0_val.txt").read_text() + "only_a_stem\n")
    from deeplab_cli.data.check import check_split
    from deeplab_cli.data.labels import LabelMapping
    from deeplab_cli.data.layout import Layout

    layout = Layout(root, "images/{split}", "masks/{split}", ".jpg", ".png", None, out)
    problems = check_split(layout, "fold0_val", LabelMapping(3, ignore_values=(9,)), deep=False).problems
    assert [p.kind for p in problems] == ["bad_line"] and "line 2 is 'only_a_stem'" in problems[0].reason


def test_split_of_the_synthetic_set_is_checked_by_check_data(tmp_path: Path) -> None:
    """deeplab-check-data on dataset.fold=i checks that fold's lists; a broken line is reported."""
    root = tmp_path / "synth"
    small = [f"dataset.root={root}", "dataset.synthetic.num_train=9", "dataset.synthetic.num_val=3"]
    _, out = split(tmp_path, [*small, "k=3", f"out={tmp_path}/f", "seed=1"])
    proc = cli("deeplab-check-data", *small, f"dataset.folds={out}", "dataset.fold=1", "progress=false",
               f"hydra.run.dir={tmp_path}/check")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"fold1_train\s+6\b", proc.stdout) and re.search(r"fold1_val\s+3\b", proc.stdout)
    with open(out / "fold1_val.txt", "a") as f:
        f.write("missing_image train\n")
    proc = cli("deeplab-check-data", *small, f"dataset.folds={out}", "dataset.fold=1", "progress=false",
               f"hydra.run.dir={tmp_path}/check2")  # fmt: skip
    assert proc.returncode == 1 and "missing_image" in proc.stdout and "fold1_val.txt (line 4)" in proc.stdout


# ------------------------------------------------------------------------ the k-fold sweep


def _job(sweep: Path, num: int, overrides: list[str], miou: float, per_class: dict) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / "metrics.json").write_text(json.dumps({"mIoU": miou, "per_class_iou": per_class}))


def test_summary_pools_folds_per_setting_with_sample_std(tmp_path: Path) -> None:
    for num, (lr, fold, miou, b) in enumerate([(1, 0, 40.0, 10.0), (1, 1, 44.0, None), (1, 2, 45.0, 20.0),
                                               (2, 0, 50.0, 5.0), (2, 1, 52.0, 7.0)]):  # fmt: skip
        _job(tmp_path, num, [f"optim.lr={lr}", f"dataset.fold={fold}"], miou, {"a": miou + 1, "b": b})
    _job(tmp_path, 9, ["optim.lr=3", "dataset.fold=0"], 1.0, {"a": 1.0, "b": 1.0})  # one fold: not pooled
    write_summary(tmp_path)
    pooled = {p["setting"]: p for p in json.loads((tmp_path / "summary.json").read_text())["cross_validation"]}
    assert sorted(pooled) == ["optim.lr=1", "optim.lr=2"]
    one = pooled["optim.lr=1"]
    assert one["folds"] == [0, 1, 2]
    assert one["mIoU"]["mean"] == pytest.approx(43.0) and one["mIoU"]["std"] == pytest.approx(
        statistics.stdev([40, 44, 45])
    )
    assert one["per_class_iou"]["b"] == {"mean": 15.0, "std": pytest.approx(statistics.stdev([10, 20])), "folds": 2}
    table = (tmp_path / "summary.md").read_text()
    assert "| **mIoU %** | **51.00 ± 1.41** | **43.00 ± 2.65** |" in table


@pytest.mark.slow
def test_three_fold_sweep_end_to_end_summary_recomputed_from_metrics(tmp_path: Path) -> None:
    """deeplab-split then deeplab-train -m dataset.fold=0,1,2: the summary's mean ± std is the runs' own."""
    root = tmp_path / "synth"
    small = [f"dataset.root={root}", "dataset.synthetic.num_train=12", "dataset.synthetic.num_val=3"]
    proc = cli("deeplab-split", *small, "k=3", "out=folds", "progress=false", "hydra.run.dir=split_run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 folds of 12 images" in proc.stdout
    proc = cli("deeplab-train", "-m", *small, "dataset.folds=folds", "dataset.fold=0,1,2", "model=quickstart",
               "trainer=quickstart", "trainer.max_iters=2", "trainer.batch_size=2", "trainer.progress=false",
               "hydra.sweep.dir=sweep", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = {}
    for job in sorted((tmp_path / "sweep").glob("[0-9]*")):
        fold = OmegaConf.load(job / ".hydra" / "config.yaml").dataset.fold
        metrics[fold] = json.loads((job / "metrics.json").read_text())
        assert metrics[fold]["num_images"] == 4  # fold <fold>'s val list, not the synthetic val split
    assert sorted(metrics) == [0, 1, 2]
    pooled = json.loads((tmp_path / "sweep" / "summary.json").read_text())["cross_validation"]
    assert len(pooled) == 1 and pooled[0]["folds"] == [0, 1, 2]
    values = [m["mIoU"] for m in metrics.values()]
    assert pooled[0]["mIoU"]["mean"] == pytest.approx(statistics.fmean(values))
    assert pooled[0]["mIoU"]["std"] == pytest.approx(statistics.stdev(values))
    for name, stat in pooled[0]["per_class_iou"].items():
        present = [m["per_class_iou"][name] for m in metrics.values() if m["per_class_iou"][name] is not None]
        if len(present) > 1:
            assert stat["mean"] == pytest.approx(statistics.fmean(present))
    table = (tmp_path / "sweep" / "summary.md").read_text()
    assert f"**{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}**" in table
    assert not (root / "VOC2012" / "ImageSets" / "Segmentation" / "fold0_train.txt").exists()
    shutil.rmtree(tmp_path / "sweep")


def test_cross_validation_ignores_sweeps_without_folds() -> None:
    jobs = [{"overrides": ["optim.lr=1"], "setting": "optim.lr=1", "mIoU": 1.0, "per_class_iou": {}, "job": "0"}]
    assert cross_validation(jobs) == []
