"""Every published recipe trains end to end on a CPU with all its options on (2 iterations on a tiny tree),
and ``train.log`` starts with the header and has a progress line every ``trainer.log_interval`` iterations.

The recipes keep every option (deep stem, 512-channel separable head, auxiliary head, crop rule, distortion,
fit size, stepped scales, poly floor, decay on norms and biases); only the sizes shrink (crop, batch, the fit
box, iterations) so that a 2-core machine runs them in seconds, and ImageNet weights are not downloaded.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from clitools import cli
from PIL import Image
from test_dataset_families import cityscapes_tree

from deeplab_cli.cli import evaluate as eval_mod
from deeplab_cli.cli import train as train_mod
from deeplab_cli.config.compose import compose as compose_train

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = [
    "model.pretrained=false", "trainer.max_iters=2", "trainer.val_interval=2", "trainer.log_interval=1",
    "trainer.batch_size=2", "trainer.progress=false", "dataset.num_workers=0", "trainer.num_vis_images=0",
]  # fmt: skip
EVAL = ["eval.num_workers=0", "eval.progress=false", "eval.plots=false"]
PROGRESS = re.compile(
    r"iter (\d+)/(\d+) \| loss ([\d.]+)(?: \(([^)]*)\))? \| lr ([\d.e+-]+) \| data [\d.]+ s \| step [\d.]+ s"
    r" \| [\d.]+ img/s \| eta \d+:\d\d:\d\d \| peak (GPU|RSS) \d+ MiB"
)


def ade20k_tree(root: Path) -> Path:
    """ADEChallengeData2016 with 3 training and 1 validation image (masks 0 = other, 1..150 = classes)."""
    base = root / "ADEChallengeData2016"
    rng = np.random.default_rng(0)
    for split, count in (("training", 3), ("validation", 1)):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        for k in range(count):
            h, w = (30, 42) if k % 2 else (42, 30)  # wide and tall
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(base / f"images/{split}/{k}.jpg")
            mask = rng.integers(0, 151, (h, w), dtype=np.uint8)
            Image.fromarray(mask, mode="L").save(base / f"annotations/{split}/{k}.png")
    return root


RUNS = {
    "deeplabv3plus_resnet101_cityscapes": (
        cityscapes_tree,
        ["dataset.crop_size=32", "dataset.crop_width=48", "dataset.fit_size=[84,60]"],
    ),  # fmt: skip
    "deeplabv3plus_resnet101_ade20k": (ade20k_tree, ["dataset.crop_size=32", "dataset.fit_size=[84,60]"]),
    "deeplabv3plus_xception65_cityscapes": (cityscapes_tree, ["dataset.crop_size=33"]),
}


@pytest.mark.parametrize("recipe", sorted(RUNS))
def test_every_recipe_trains_two_iterations_with_all_its_options(
    recipe: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    make_tree, sizes = RUNS[recipe]
    root = tmp_path / "data"
    make_tree(root)
    cfg = compose_train([f"experiment={recipe}", f"dataset.root={root}", *SMALL, *sizes], tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="deeplab_cli"):
        metrics = train_mod.run_train(cfg)
    assert 0.0 <= metrics["mIoU"] <= 100.0 and metrics["iteration"] == 2
    lines = [PROGRESS.search(r.getMessage()) for r in caplog.records]
    lines = [m for m in lines if m]
    assert [int(m.group(1)) for m in lines] == [1, 2]
    aux = cfg.model.get("aux_head") is not None
    for m in lines:
        terms = dict(t.split(" ") for t in (m.group(4) or "").split(", ") if t)
        if aux:  # the auxiliary head's weighted loss is reported beside the main one, and they add up
            assert set(terms) == {"out", "aux_head"}
            assert float(m.group(3)) == pytest.approx(float(terms["out"]) + float(terms["aux_head"]), abs=2e-4)
        else:
            assert not terms
    assert float(lines[-1].group(5)) == pytest.approx(cfg.optim.min_lr, rel=1e-6, abs=1e-12)  # poly ends on its floor
    # deeplab-eval on the checkpoint evaluates as the run's validation did (at dataset.fit_size where set)
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    for run_dir in ("eval", "eval2"):
        (tmp_path / run_dir).mkdir()
    evaluated = eval_mod.run_eval(compose_train([f"checkpoint={ckpt}", *EVAL], tmp_path / "eval", config_name="eval"))
    assert evaluated["confusion_matrix"] == metrics["confusion_matrix"]
    if cfg.dataset.fit_size is not None:  # and the fit matters: at the stored size the counts differ
        native = [f"checkpoint={ckpt}", "dataset.fit_size=null", *EVAL]
        other = eval_mod.run_eval(compose_train(native, tmp_path / "eval2", config_name="eval"))
        assert other["confusion_matrix"] != metrics["confusion_matrix"]


def test_train_log_starts_with_the_header_and_has_a_line_every_log_interval(tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = cli("deeplab-train", f"hydra.run.dir={run}", "trainer.max_iters=6", "trainer.log_interval=2",
               "trainer.val_interval=6", "trainer.progress=false", "dataset.num_workers=0",
               f"dataset.root={tmp_path / 'synthetic'}", "dataset.synthetic.num_train=8",
               "dataset.synthetic.num_val=2", "trainer.batch_size=2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    messages = [line.split("] - ", 1)[1] for line in (run / "train.log").read_text().splitlines() if "] - " in line]
    assert [m.split(":")[0] for m in messages[:4]] == ["command", "preset", "run dir", "schedule"]
    assert messages[0].startswith("command: deeplab-train hydra.run.dir=")
    assert f"run dir: {run}" in messages
    assert "preset: model=quickstart backbone=vgg16_quickstart head=largefov_quickstart dataset=synthetic" in messages
    built = [m for m in messages if m.split(":")[0] in ("model", "device", "data", "initial weights", "start")]
    assert [m.split(":")[0] for m in built] == ["model", "device", "data", "initial weights", "start"]
    assert "data: synthetic at" in built[2] and "8 training images (train), 2 validation images (val)" in built[2]
    assert re.search(r"parameters [\d,]+ \([\d,]+ trainable\)", built[0])
    first_progress = next(i for i, m in enumerate(messages) if PROGRESS.search(m))
    assert first_progress > messages.index(built[-1]), "the header comes before the first progress line"
    iterations = [int(PROGRESS.search(m).group(1)) for m in messages if PROGRESS.search(m)]
    assert iterations == [2, 4, 6]
