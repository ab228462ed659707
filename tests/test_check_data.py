"""``deeplab-check-data`` on a copy of the real VOC sample with one of each problem planted in it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clitools import VOC_SAMPLE, needs_shared, require_shared
from PIL import Image

from deeplab_cli.data.check import (
    DataCheckError,
    Problem,
    check_command,
    check_split,
    format_report,
    require_clean,
    rgb_to_index,
    summarize,
)
from deeplab_cli.data.labels import LabelMapping
from deeplab_cli.data.layout import Layout
from deeplab_cli.data.palette import voc_colormap, voc_palette

SAMPLE = VOC_SAMPLE / "VOC2012"
REPO = Path(__file__).resolve().parents[1]
TRAIN_IDS = ["2011_000003", "2011_000006", "2011_000025", "2011_003066"]


def copy_sample(dest: Path) -> Path:
    require_shared(SAMPLE)
    voc = dest / "VOC2012"
    shutil.copytree(SAMPLE, voc)
    return voc


def save_mask(path: Path, mask: np.ndarray) -> None:
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(voc_palette())
    img.save(path)


def plant_problems(voc: Path) -> dict[tuple[str, str], str]:
    """Break the copy; (kind, path) -> a text its reason must contain."""
    jpg, png, lists = voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("\n".join([*TRAIN_IDS, "2099_000001", "2011_000003"]) + "\n")
    shutil.copy(png / "2011_003066.png", png / "2099_000001.png")  # a mask without its image
    (png / "2011_000006.png").unlink()
    data = (jpg / "2011_000025.jpg").read_bytes()
    (jpg / "2011_000025.jpg").write_bytes(data[: len(data) // 2])
    mask = np.array(Image.open(png / "2007_000033.png"))
    save_mask(png / "2007_000033.png", mask[:-20])
    mask = np.array(Image.open(png / "2007_000042.png"))
    mask[:10, :10] = 42
    save_mask(png / "2007_000042.png", mask)
    mask = np.array(Image.open(png / "2007_000061.png"))
    Image.fromarray(voc_colormap()[mask]).save(png / "2007_000061.png")
    (lists / "empty.txt").write_text("\n")
    return {
        ("duplicate_id", str(lists / "train.txt")): "2011_000003 is listed 2 times (lines 1, 6)",
        ("missing_image", str(jpg / "2099_000001.jpg")): "train.txt",
        ("missing_mask", str(png / "2011_000006.png")): "train.txt",
        ("unreadable_image", str(jpg / "2011_000025.jpg")): "truncated",
        ("size_mismatch", str(png / "2007_000033.png")): "the mask is 500x346 but the image",
        ("bad_mask_values", str(png / "2007_000042.png")): "value(s) 42 that are neither a class nor ignored",
        ("rgb_mask", str(png / "2007_000061.png")): "rgb_to_index",
    }


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> tuple[Path, dict[tuple[str, str], str]]:
    voc = copy_sample(tmp_path_factory.mktemp("broken"))
    return voc, plant_problems(voc)


def check_args(root: Path, run_dir: Path) -> list[str]:
    # the 4 training images of the VOC sample hold 8 of the 21 classes: not a problem the tests plant
    return ["dataset=voc", f"dataset.root={root}", "splits=[train,val]", "progress=false", f"hydra.run.dir={run_dir}",
            "dataset.allow_absent_classes=true"]  # fmt: skip


@pytest.fixture(scope="module")
def cli_broken(tmp_path_factory, broken) -> tuple[int, str, str, Path]:
    """The checker on the broken copy, run as users run it: (exit status, stdout, stderr, run dir)."""
    run_dir = tmp_path_factory.mktemp("runs") / "broken"
    cmd = [sys.executable, "-m", "deeplab_cli.cli.check_data", *check_args(broken[0].parent, run_dir)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr, run_dir


def test_cli_reports_every_problem_with_its_file(cli_broken, broken) -> None:
    code, out, err, _ = cli_broken
    assert code == 1, err[-3000:]
    _, expected = broken
    lines = out.splitlines()
    for (kind, path), text in expected.items():
        hits = [line for line in lines if line.startswith(f"{kind}: {path}: ")]
        assert len(hits) == 1, f"{kind} {path} not reported once:\n{out}"
        assert text in hits[0], hits[0]
    assert len([line for line in lines if re.match(r"^[a-z_]+: /", line)]) == len(expected), out
    for kind in {kind for kind, _ in expected}:
        assert re.search(rf"^{kind}\s+1$", out, re.M), out
    assert re.search(r"^total\s+7$", out, re.M), out
    assert re.search(r"^train\s+5$", out, re.M) and re.search(r"^val\s+8$", out, re.M), out


def test_cli_writes_report_json(cli_broken, broken) -> None:
    _, expected = broken
    report = json.loads((cli_broken[3] / "report.json").read_text())
    assert report["total"] == 7
    assert report["counts"] == {kind: 1 for kind, _ in expected}
    assert report["checked"] == {"train": 5, "val": 8}
    assert {(p["kind"], p["path"]) for p in report["problems"]} == set(expected)
    assert all(p["reason"] for p in report["problems"])


@needs_shared(SAMPLE)
def test_clean_copy_exits_0(tmp_path, monkeypatch, capsys) -> None:
    """The entry point in-process (a second interpreter would pay the torch import again)."""
    from deeplab_cli.cli import check_data

    clean = copy_sample(tmp_path)
    quiet = ["hydra/job_logging=none", "hydra/hydra_logging=none"]  # leave pytest's logging alone
    monkeypatch.setattr(sys, "argv", ["deeplab-check-data", *check_args(clean.parent, tmp_path / "run"), *quiet])
    check_data.main()  # returns: exit status 0
    assert "no problems found" in capsys.readouterr().out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["total"] == 0 and report["problems"] == [] and report["checked"] == {"train": 4, "val": 8}


@needs_shared(SAMPLE)
def test_rgb_to_index_round_trip() -> None:
    mask = np.array(Image.open(SAMPLE / "SegmentationClass" / "2007_000033.png"))
    assert set(np.unique(mask)) >= {0, 255}
    rgb = voc_colormap()[mask]
    index = rgb_to_index(rgb)
    assert index.dtype == np.uint8 and np.array_equal(index, mask)
    rgba = np.concatenate([rgb, np.full(mask.shape + (1,), 255, np.uint8)], axis=-1)
    assert np.array_equal(rgb_to_index(rgba), mask)
    assert rgb_to_index(np.array([[[224, 224, 192]]], np.uint8))[0, 0] == 255
    rgb[0, 0] = (1, 2, 3)
    with pytest.raises(ValueError, match=r"\(1, 2, 3\)"):
        rgb_to_index(rgb)


def test_cheap_check_finds_lists_and_missing_files_only(broken) -> None:
    voc, expected = broken
    cheap = check_split(Layout(voc), "train", LabelMapping(21), deep=False).problems
    assert {(p.kind, p.path) for p in cheap} == {
        k for k in expected if k[0] in ("duplicate_id", "missing_image", "missing_mask")
    }
    assert check_split(Layout(voc), "val", LabelMapping(21), deep=False).problems == []


def test_deep_check_single_thread(broken) -> None:
    voc, expected = broken
    problems = check_split(Layout(voc), "val", LabelMapping(21), workers=1).problems
    assert summarize(problems) == {"rgb_mask": 1, "size_mismatch": 1, "bad_mask_values": 1}
    assert {(p.kind, p.path) for p in problems} <= set(expected)


def test_empty_and_missing_split_lists(broken) -> None:
    voc, _ = broken
    lists = voc / "ImageSets" / "Segmentation"
    empty = check_split(Layout(voc), "empty", LabelMapping(21)).problems
    assert empty == [Problem("empty_list", str(lists / "empty.txt"), empty[0].reason)]
    missing = check_split(Layout(voc), "nope", LabelMapping(21)).problems
    assert [p.kind for p in missing] == ["missing_list"] and missing[0].path == str(lists / "nope.txt")
    assert "empty, train, trainval, val" in missing[0].reason
    report = format_report(empty + missing, {"empty": 0, "nope": 0})
    assert f"empty_list: {lists / 'empty.txt'}: " in report and "no problems found" not in report
    assert "no problems found" in format_report([], {"train": 4})


def test_rgb_mask_with_foreign_colours(tmp_path) -> None:
    voc = tmp_path / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    Image.new("RGB", (8, 6), (10, 20, 30)).save(voc / "JPEGImages" / "a.jpg")
    Image.new("RGB", (8, 6), (1, 2, 3)).save(voc / "SegmentationClass" / "a.png")
    (voc / "ImageSets" / "Segmentation" / "x.txt").write_text("a\n")
    [problem] = check_split(Layout(voc), "x", LabelMapping(21)).problems
    assert problem.kind == "rgb_mask" and "(1, 2, 3)" in problem.reason and "class indices" in problem.reason


def test_require_clean_names_files_and_command(broken) -> None:
    voc, expected = broken
    require_clean([], "train", "unused")
    cheap = check_split(Layout(voc), "train", LabelMapping(21), deep=False).problems
    command = check_command("voc", voc.parent, ["train"])
    with pytest.raises(DataCheckError) as info:
        require_clean(cheap, "train", command)
    message = str(info.value)
    assert "deeplab-check-data dataset=voc" in message and "3 problem(s)" in message
    for kind, path in expected:
        if kind in ("duplicate_id", "missing_image", "missing_mask"):
            assert path in message
    many = [Problem("missing_image", f"/x/{i}.jpg", "gone") for i in range(13)]
    with pytest.raises(DataCheckError, match=r"and 3 more"):
        require_clean(many, "train", command)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["dataset.split=val"], "val"),
        (["dataset.split=[train,val]"], ["train", "val"]),
        (["splits=[val]"], ["val"]),
        (["splits=[val]", "dataset.split=val"], "val"),  # the same split named twice: fine
    ],
)
def test_dataset_split_is_an_alias_of_splits(overrides: list[str], expected) -> None:
    from deeplab_cli.config.compose import compose as compose_train
    from deeplab_cli.config.datasets import requested_splits

    cfg = compose_train(overrides, config_name="check_data")
    assert requested_splits(cfg) == expected


def test_splits_and_dataset_split_that_disagree_is_an_error() -> None:
    from deeplab_cli.config.compose import compose as compose_train
    from deeplab_cli.config.datasets import requested_splits
    from deeplab_cli.errors import ConfigError

    cfg = compose_train(["splits=[train]", "dataset.split=val"], config_name="check_data")
    with pytest.raises(ConfigError, match=r"splits=\['train'\] and dataset.split=val disagree; give one of them"):
        requested_splits(cfg)
