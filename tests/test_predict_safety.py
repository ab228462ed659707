"""``deeplab-predict`` never loses a user's file (issue 29), and its pictures can be read.

It once replaced the input photos (``output=`` the input folder) and the ground-truth masks
(``output=`` a dataset's mask folder). Now: no writing into an input folder or a dataset root,
no replacing a file it did not write (a manifest of its own), one unreadable file named before
anything is written (or skipped and listed), sub-folders on request, a legend on every overlay
and the palette beside the masks.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import cli, tree_digest
from omegaconf import OmegaConf
from PIL import Image
from test_own_data import TINY, make_flat

from deeplab_cli.config import models
from deeplab_cli.config.compose import compose
from deeplab_cli.data.palette import distinct_colormap
from deeplab_cli.engine.report.legend import with_legend
from deeplab_cli.engine.runtime.checkpoint import atomic_save
from deeplab_cli.engine.runtime.outputs import MANIFEST, OutputError, OutputFolder, check_output_folder

NAMES = ["sky", "road", "car"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A flat dataset, a folder of PNG photos, and a 3-class checkpoint trained (not at all) on the dataset."""
    base = tmp_path_factory.mktemp("predict")
    data = make_flat(base / "data")
    photos = base / "photos"
    photos.mkdir()
    for src in sorted((data / "images").glob("*.jpg"))[:3]:
        Image.open(src).save(photos / f"{src.stem}.png")
    (photos / "sub").mkdir()
    Image.open(src).save(photos / "sub" / "deep.png")
    cfg = compose(["dataset=folder", f"dataset.root={data}", "dataset.num_classes=3",
                   f"dataset.class_names=[{','.join(NAMES)}]", *TINY])  # fmt: skip
    torch.manual_seed(0)
    model = models.make_model(cfg, pretrained=False)
    ckpt = base / "model.pt"
    atomic_save({"format": "deeplab-cli", "version": 1, "model": model.state_dict(),
                 "config": OmegaConf.to_container(cfg, resolve=True)}, ckpt)  # fmt: skip
    return {"base": base, "data": data, "photos": photos, "ckpt": ckpt}


_RUNS = itertools.count()


def predict(ws: dict[str, Path], *args: str):
    return cli("deeplab-predict", f"checkpoint={ws['ckpt']}", f"hydra.run.dir={ws['base']}/runs/{next(_RUNS)}", *args)


def test_output_into_the_input_folder_is_refused_and_nothing_changes(workspace) -> None:
    before = tree_digest(workspace["photos"])
    proc = predict(workspace, f"input={workspace['photos']}", f"output={workspace['photos']}")
    assert proc.returncode == 1
    assert "is inside the input folder" in proc.stderr and "overwrite=true" in proc.stderr
    assert tree_digest(workspace["photos"]) == before


def test_output_into_a_dataset_root_is_refused(workspace) -> None:
    before = tree_digest(workspace["data"])
    proc = predict(workspace, f"input={workspace['data']}/images", f"output={workspace['data']}/masks")
    assert proc.returncode == 1
    assert "inside the dataset root (dataset.root)" in proc.stderr or "inside the input folder" in proc.stderr
    proc = predict(workspace, f"input={workspace['photos']}", f"output={workspace['data']}/masks")
    assert proc.returncode == 1 and "inside the dataset root (dataset.root)" in proc.stderr
    assert tree_digest(workspace["data"]) == before


def test_files_it_did_not_write_are_never_replaced(workspace, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "img_000.png").write_bytes(b"the user's own file")
    proc = predict(workspace, f"input={workspace['photos']}", f"output={out}")
    assert proc.returncode == 1 and "did not write" in proc.stderr and "Nothing was written" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["img_000.png"]
    assert (out / "img_000.png").read_bytes() == b"the user's own file"
    proc = predict(workspace, f"input={workspace['photos']}", f"output={out}", "overwrite=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert Image.open(out / "img_000.png").mode == "P"


def test_its_own_outputs_are_replaced_on_a_second_run_and_have_a_legend_and_palette(workspace, tmp_path) -> None:
    out = tmp_path / "out"
    photos = workspace["photos"]
    before = tree_digest(photos)
    for _ in range(2):  # the second run replaces only what the first wrote
        proc = predict(workspace, f"input={photos}", f"output={out}")
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert tree_digest(photos) == before
    manifest = [json.loads(line) for line in (out / MANIFEST).read_text().splitlines()]
    assert {row["file"] for row in manifest} >= {"img_000.png", "img_000_overlay.jpg", "palette.json"}
    palette = json.loads((out / "palette.json").read_text())["classes"]
    assert [c["name"] for c in palette] == NAMES and palette[0]["rgb"] != [0, 0, 0]
    mask = Image.open(out / "img_000.png")
    assert mask.getpalette()[:3] == palette[0]["rgb"]  # the PNG carries the same colours
    overlay = Image.open(out / "img_000_overlay.jpg")
    photo = Image.open(photos / "img_000.png")
    assert overlay.width == photo.width and overlay.height > photo.height  # the legend strip below
    # a changed output of ours is the user's now
    (out / "img_001.png").write_bytes(b"edited by hand")
    proc = predict(workspace, f"input={photos}", f"output={out}")
    assert proc.returncode == 1 and "img_001.png" in proc.stderr


def test_recursive_and_unreadable_inputs(workspace, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in workspace["photos"].glob("*.png"):
        (photos / p.name).write_bytes(p.read_bytes())
    (photos / "sub").mkdir()
    (photos / "sub" / "deep.png").write_bytes((workspace["photos"] / "sub" / "deep.png").read_bytes())
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    proc = predict(workspace, f"input={photos}", f"output={tmp_path}/a")
    assert proc.returncode == 1 and "broken.jpg" in proc.stderr and "on_error=skip" in proc.stderr
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").glob("*.png"))
    proc = predict(workspace, f"input={photos}", f"output={tmp_path}/b", "on_error=skip", "recursive=true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "b" / "sub" / "deep.png").is_file() and (tmp_path / "b" / "img_000.png").is_file()
    skipped = next((workspace["base"] / "runs").glob("*/skipped_inputs.txt")).read_text()
    assert "broken.jpg" in skipped


def test_output_folder_rules_in_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "masks").mkdir(parents=True)
    with pytest.raises(OutputError, match="input folder"):
        check_output_folder(data / "masks" / "x", "output", [data / "masks"], [], False)
    with pytest.raises(OutputError, match="the dataset root"):
        check_output_folder(data / "masks", "output", [tmp_path / "photos"], [(data, "the dataset root")], False)
    check_output_folder(data / "masks", "output", [data / "masks"], [(data, "the dataset root")], True)
    folder = OutputFolder(tmp_path / "out", "output")
    (tmp_path / "out").mkdir()
    folder.write("a.txt", lambda p: p.write_text("ours"))
    folder.claim(["a.txt", "b.txt"])  # ours, and new
    (tmp_path / "out" / "c.txt").write_text("theirs")
    with pytest.raises(OutputError, match="1 file"):
        OutputFolder(tmp_path / "out", "output").claim(["a.txt", "c.txt"])


def test_legend_names_each_class_shown_in_its_colour() -> None:
    picture = np.zeros((60, 200, 3), np.uint8)
    pal = distinct_colormap()
    out = with_legend(picture, [0, 2], NAMES, pal)
    assert out.shape[0] > 60 and out.shape[1] == 200
    strip = out[60:].reshape(-1, 3)
    for cls in (0, 2):
        assert (strip == pal[cls]).all(1).any(), f"swatch of class {cls} missing"
    assert not (strip == pal[1]).all(1).any()  # class 1 is not shown


def test_export_never_replaces_a_file_it_did_not_write(workspace, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    out.write_bytes(b"someone's model")
    args = [f"checkpoint={workspace['ckpt']}", f"out={out}", "verify.sizes=[[40,56]]"]
    proc = cli("deeplab-export", *args, f"hydra.run.dir={tmp_path}/e1")
    assert proc.returncode == 1 and "did not write" in proc.stderr
    assert out.read_bytes() == b"someone's model"
    out.unlink()
    for run in ("e2", "e3"):  # its own file is replaced by a second export
        proc = cli("deeplab-export", *args, f"hydra.run.dir={tmp_path}/{run}")
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_summary_keeps_an_out_file_it_did_not_write(tmp_path: Path, capsys) -> None:
    from deeplab_cli.cli.summary import main

    out = tmp_path / "summary.json"
    out.write_text("my notes")
    args = ["backbone.width_mult=0.125", "head.channels=16", "input=64", f"out={out}"]
    assert main(args) == 1 and "did not write" in capsys.readouterr().err
    assert out.read_text() == "my notes"
    assert main([*args, "overwrite=true"]) == 0 and "gmacs" in json.loads(out.read_text())
    assert main(args) == 0  # now it is its own file
