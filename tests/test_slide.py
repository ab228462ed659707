"""``eval.mode=slide``: overlapping windows whose logits are averaged; equal to whole-image eval when a
window covers the image, composing with test-time scales, flips, the CRF and the probability cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deeplab_cli.cli import evaluate as eval_mod
from deeplab_cli.cli import train as train_mod
from deeplab_cli.config import evaluation
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.data.synthetic import SyntheticSpec, ensure_synthetic_voc
from deeplab_cli.engine.eval.inference import SlideSpec, predict_probabilities, window_starts
from deeplab_cli.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")
EVAL = ["eval.num_workers=0", "eval.progress=false", "eval.plots=false", "save_predictions=true"]


class PixelModel(nn.Module):
    """Per-pixel logits at full resolution: any window sees exactly what the whole image gives there."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x)}


def test_window_starts_cover_the_length_and_end_at_the_border() -> None:
    assert window_starts(100, 100, 50) == [0]
    assert window_starts(80, 100, 50) == [0]
    assert window_starts(250, 100, 60) == [0, 60, 120, 150]
    for length, window, stride in [(1024, 769, 513), (2048, 769, 513), (37, 8, 5)]:
        starts = window_starts(length, window, stride)
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s : s + window] = True
        assert covered.all() and starts[-1] + window == length and starts[0] == 0


def test_slide_averages_windows_to_the_whole_image_result() -> None:
    torch.manual_seed(0)
    model = PixelModel().eval()
    images = torch.randn(2, 3, 37, 53)
    whole = predict_probabilities(model, images)
    slide = predict_probabilities(model, images, slide=SlideSpec((16, 20), (7, 9)))
    torch.testing.assert_close(slide, whole, atol=1e-6, rtol=1e-5)
    multi = predict_probabilities(model, images, (0.75, 1.0), True, SlideSpec((16, 20), (7, 9)))
    torch.testing.assert_close(multi, predict_probabilities(model, images, (0.75, 1.0), True), atol=1e-6, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic_voc(root, SyntheticSpec(num_train=2, num_val=3, min_size=70, max_size=90))
    run = tmp_path_factory.mktemp("run")
    cfg = compose_train(
        [f"dataset.root={root}", "dataset.synthetic.num_train=2", "dataset.synthetic.num_val=3",
         "dataset.synthetic.min_size=70", "dataset.synthetic.max_size=90", "trainer.max_iters=2",
         "trainer.batch_size=2", "trainer.progress=false"],
        run,
    )  # fmt: skip
    train_mod.run_train(cfg)
    return run / "checkpoints" / "last.pt", root


def _eval(ckpt: Path, run: Path, *overrides: str) -> dict:
    metrics = eval_mod.run_eval(compose_train([f"checkpoint={ckpt}", *EVAL, *overrides], run, config_name="eval"))
    preds = {p.name: np.array(Image.open(p)) for p in sorted((run / "predictions").glob("*.png"))}
    return {"metrics": metrics, "preds": preds}


def test_a_window_covering_the_image_equals_whole_image_eval(tiny_ckpt, tmp_path: Path) -> None:
    ckpt, _ = tiny_ckpt
    whole = _eval(ckpt, tmp_path / "whole")
    slide = _eval(ckpt, tmp_path / "slide", "eval.mode=slide", "eval.window=[96,96]", "eval.stride=[64,64]")
    assert slide["metrics"]["confusion_matrix"] == whole["metrics"]["confusion_matrix"]
    assert all(np.array_equal(slide["preds"][k], whole["preds"][k]) for k in whole["preds"])
    assert slide["metrics"]["test_time"]["mode"] == "slide" and slide["metrics"]["test_time"]["window"] == [96, 96]


def test_small_windows_compose_with_tta_crf_and_the_cache(tiny_ckpt, tmp_path: Path) -> None:
    pytest.importorskip("pydensecrf.densecrf")
    ckpt, _ = tiny_ckpt
    cache = f"eval.cache_dir={tmp_path / 'cache'}"
    args = ["eval.mode=slide", "eval.window=[40]", "eval.stride=[24]", "eval.scales=[0.75,1.0]", "eval.flip=true",
            "crf=deeplabv1_largefov", "crf.workers=0", "eval.cache=true", cache]  # fmt: skip
    first = _eval(ckpt, tmp_path / "a", *args)["metrics"]
    again = _eval(ckpt, tmp_path / "b", *args)["metrics"]
    assert first["probabilities"]["network_images"] == 3 and again["probabilities"]["cached_images"] == 3
    assert again["confusion_matrix"] == first["confusion_matrix"] and "mIoU_crf" in first
    whole = _eval(ckpt, tmp_path / "c", *[a for a in args if not a.startswith("eval.mode")])["metrics"]
    assert whole["probabilities"]["network_images"] == 3, "whole-image probabilities are cached apart from slide's"
    json.dumps(first)


def test_bad_slide_settings_are_config_errors() -> None:
    cfg = compose_train(["eval.mode=slide", "eval.window=[64,64]", "eval.stride=[80,80]"], config_name="eval")
    with pytest.raises(ConfigError, match=r"eval.stride=\[80, 80\] is larger than eval.window"):
        evaluation.eval_settings(cfg.eval, cfg.crf, 21)
    cfg = compose_train(["eval.mode=tiles"], config_name="eval")
    with pytest.raises(ConfigError, match="eval.mode='tiles'; choose one of whole, slide"):
        evaluation.eval_settings(cfg.eval, cfg.crf, 21)
