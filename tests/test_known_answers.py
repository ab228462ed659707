"""Known answers, computed independently of the code under test: test-time flips, scales and windows written
out by hand; the loss train_step back-propagates (class weights, OHEM) as a hand-written cross-entropy;
DenseCRF against pydensecrf's documented call; a resumed run against an uninterrupted one; metrics
recomputed with numpy from the PNGs deeplab-eval wrote. Each model here is chosen so that the wrong answer
(flip, slide or scales ignored, mining or weights dropped, a resume from iteration 0) differs from the
right one, and each test asserts that difference too. docs/faults.md lists the faults they catch."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from deeplab_cli.cli import evaluate as eval_mod
from deeplab_cli.cli import train as train_mod
from deeplab_cli.config import datasets, models
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.data.synthetic import SyntheticSpec, ensure_synthetic_voc
from deeplab_cli.engine.eval.inference import SlideSpec, predict_probabilities
from deeplab_cli.engine.runtime.checkpoint import atomic_save, load_checkpoint
from deeplab_cli.engine.train import trainer as trainer_mod
from deeplab_cli.engine.train.loop import StepSettings, train_step
from deeplab_cli.engine.train.losses import LossSpec

pytestmark = pytest.mark.usefixtures("one_thread")
IGNORE = 255


class ContextModel(nn.Module):
    """Neither mirror-symmetric nor local: a lop-sided 5x5 kernel, a position ramp, and the image's mean colour
    added to every pixel, so flipping, rescaling or cutting the input into windows each change its output."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, classes, 5, padding=2)
        self.context = nn.Linear(3, classes)
        with torch.no_grad():
            self.conv.weight[..., :2] *= 3.0  # the left columns weigh more than the right ones

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        ramp = torch.linspace(-1, 1, x.shape[-1], device=x.device)
        out = self.conv(x) + self.context(x.mean((2, 3)))[:, :, None, None] + ramp
        return {"out": out[..., ::2, ::2]}  # stride 2: logits are upsampled back, as a network's are


def _up(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _by_hand(model: nn.Module, x: torch.Tensor, scales=(1.0,), flip=False, window=None, stride=None) -> torch.Tensor:
    """DeepLab's test-time augmentation written out: for every scale (bilinear resize) and mirror, the logits
    (of the whole input, or averaged over windows placed every ``stride`` with the last flush to the border)
    upsampled to the input's size, softmaxed, and averaged."""
    size = tuple(x.shape[-2:])
    probs = []
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, size=(round(size[0] * s), round(size[1] * s)), mode="bilinear",
                                              align_corners=False)  # fmt: skip
        for mirror in (False, True) if flip else (False,):
            xi = xs.flip(-1) if mirror else xs
            h, w = xi.shape[-2:]
            if window is None or (h <= window[0] and w <= window[1]):
                logits = _up(model(xi)["out"], size)  # straight to the input's size
            else:
                total, count = None, torch.zeros(1, 1, h, w)
                tops = sorted({min(t, h - window[0]) for t in range(0, h - window[0] + stride[0], stride[0])})
                lefts = sorted({min(v, w - window[1]) for v in range(0, w - window[1] + stride[1], stride[1])})
                for t in tops:
                    for v in lefts:
                        crop = xi[..., t : t + window[0], v : v + window[1]]
                        part = _up(model(crop)["out"], crop.shape[-2:])
                        total = torch.zeros(1, part.shape[1], h, w) if total is None else total
                        total[..., t : t + window[0], v : v + window[1]] += part
                        count[..., t : t + window[0], v : v + window[1]] += 1
                logits = total / count
                logits = logits if (h, w) == size else _up(logits, size)
            probs.append((logits.flip(-1) if mirror else logits).softmax(1))
    return torch.stack(probs).mean(0)


@pytest.mark.parametrize(
    "setting",
    [{"flip": True}, {"scales": (0.5, 1.0, 1.5)}, {"window": (16, 20), "stride": (10, 12)},
     {"scales": (0.75, 1.25), "flip": True, "window": (16, 16), "stride": (8, 8)}],
    ids=["flip", "scales", "slide", "all"],
)  # fmt: skip
def test_flip_scales_and_windows_equal_the_hand_computation(setting: dict) -> None:
    model = ContextModel().eval()
    x = torch.randn(1, 3, 29, 37, generator=torch.Generator().manual_seed(0))
    slide = SlideSpec(setting["window"], setting["stride"]) if "window" in setting else None
    ours = predict_probabilities(model, x, setting.get("scales", (1.0,)), setting.get("flip", False), slide)
    expected = _by_hand(model, x, **setting)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    plain = _by_hand(model, x)
    assert (expected - plain).abs().max() > 1e-2, "the setting must change this model's answer"


# --- the same through deeplab-eval: the settings reach the pipeline ----------------------------------------

TINY = ["backbone.width_mult=0.125", "head.channels=16", "trainer.device=cpu", "dataset.synthetic.num_train=2",
        "dataset.synthetic.num_val=3"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic_voc(root, SyntheticSpec(num_train=2, num_val=3))
    cfg = compose_train([f"dataset.root={root}", *TINY])
    torch.manual_seed(0)
    model = models.make_model(cfg, pretrained=False)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    atomic_save({"format": "deeplab-cli", "version": 1, "model": model.state_dict(),
                 "config": OmegaConf.to_container(cfg, resolve=True)}, path)  # fmt: skip
    return path, root


def _confusion(pred: np.ndarray, target: np.ndarray, classes: int) -> np.ndarray:
    valid = target != IGNORE
    return np.bincount(classes * target[valid].astype(int) + pred[valid], minlength=classes**2).reshape(classes, -1)


def test_eval_options_reach_the_evaluation_and_metrics_match_numpy_on_the_saved_pngs(tiny_checkpoint, tmp_path):
    """``eval.flip``, ``eval.scales`` and ``eval.mode=slide`` through deeplab-eval give the hand computation's
    predictions; the saved PNGs and the masks, counted with numpy, give metrics.json's matrix and mIoU."""
    ckpt, root = tiny_checkpoint
    tta = ["eval.flip=true", "eval.scales=[0.75,1.25]", "eval.mode=slide", "eval.window=[48,48]", "eval.stride=[32,32]"]
    args = [f"checkpoint={ckpt}", "eval.num_workers=0", "eval.progress=false", "eval.plots=false",
            "save_predictions=true", f"eval.cache_dir={tmp_path / 'cache'}", *tta]  # fmt: skip
    metrics = eval_mod.run_eval(compose_train(args, run_dir=tmp_path / "eval", config_name="eval"))

    state = load_checkpoint(ckpt)
    cfg = OmegaConf.create(state["config"])
    model = models.make_model(cfg, pretrained=False).eval()
    model.load_state_dict(state["model"])
    dataset = datasets.make_eval_dataset(cfg)
    classes = cfg.model.num_classes
    matrix, differs = np.zeros((classes, classes), dtype=np.int64), 0
    for i in range(len(dataset)):
        image, _, _ = dataset[i]
        image_id = dataset.ids[i]
        with torch.no_grad():
            expected = _by_hand(model, image[None], (0.75, 1.25), True, (48, 48), (32, 32))[0].argmax(0).numpy()
            plain = _by_hand(model, image[None])[0].argmax(0).numpy()
        saved = np.array(Image.open(tmp_path / "eval" / "predictions" / f"{image_id}.png"))
        assert (saved == expected).mean() > 0.999, image_id  # float rounding may flip a tie
        differs += int((plain != expected).sum())
        mask = np.array(Image.open(root / "VOC2012" / "SegmentationClass" / f"{image_id}.png"))
        matrix += _confusion(saved.astype(int), mask, classes)
    assert differs > 100, "flip + scales + windows must change this model's predictions"
    assert np.array_equal(np.array(metrics["confusion_matrix"]), matrix)
    iou = np.diag(matrix) / np.maximum(matrix.sum(0) + matrix.sum(1) - np.diag(matrix), 1)
    present = (matrix.sum(1) + matrix.sum(0)) > 0
    assert metrics["mIoU"] == pytest.approx(100 * iou[present].mean(), abs=1e-6)
    assert metrics["pixel_accuracy"] == pytest.approx(100 * np.trace(matrix) / matrix.sum(), abs=1e-6)


# --- the loss that train_step back-propagates --------------------------------------------------------------


class PixelNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x)}


def _hand_loss(logits: torch.Tensor, labels: torch.Tensor, weights=None, ohem=None) -> torch.Tensor:
    """Cross-entropy written out: -log softmax of the true class, weighted by the true class's weight, averaged
    with those weights over the kept pixels. OHEM keeps the labelled pixels whose true-class probability is
    below the threshold, or, if fewer than ``min_kept``, the ``min_kept`` least probable ones."""
    logp = logits.log_softmax(1)
    valid = labels != IGNORE
    safe = torch.where(valid, labels, 0)
    nll = -logp.gather(1, safe[:, None])[:, 0]
    w = torch.ones_like(nll) if weights is None else torch.tensor(weights)[safe]
    keep = valid.clone()
    if ohem is not None:
        thresh, min_kept = ohem
        p = logp.detach().exp().gather(1, safe[:, None])[:, 0]
        keep = valid & (p < thresh)
        if int(keep.sum()) < min_kept:
            kth = p[valid].sort().values[min_kept - 1]
            keep = valid & (p <= kth)
    return (nll * w * keep).sum() / (w * keep).sum()


@pytest.mark.parametrize(
    ("weights", "ohem"),
    [((0.2, 1.0, 3.0, 0.5), None), (None, (0.05, 40)), (None, (0.3, 10)), ((0.2, 1.0, 3.0, 0.5), (0.05, 40))],
    ids=["class_weights", "ohem_min_kept", "ohem_threshold", "both"],
)  # fmt: skip
def test_train_step_descends_the_hand_written_weighted_and_mined_loss(weights, ohem) -> None:
    gen = torch.Generator().manual_seed(2)
    images, labels = torch.randn(2, 3, 8, 9, generator=gen), torch.randint(0, 4, (2, 8, 9), generator=gen)
    labels[0, :2] = IGNORE
    model = PixelNet()
    reference = copy.deepcopy(model)
    spec = LossSpec(weights, ohem is not None, *(ohem or (0.7, 100_000)))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    step = train_step(model, [(images, labels)], opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
                      torch.device("cpu"), StepSettings("upsample", loss=spec))  # fmt: skip
    hand = _hand_loss(reference(images)["out"], labels, weights, ohem)
    if ohem is not None:  # the case names the rule that decides: the threshold, or the minimum kept
        with torch.no_grad():
            p = reference(images)["out"].softmax(1).gather(1, torch.where(labels == IGNORE, 0, labels)[:, None])[:, 0]
        below, valid = int(((p < ohem[0]) & (labels != IGNORE)).sum()), int((labels != IGNORE).sum())
        assert (below >= ohem[1]) == (ohem[0] == 0.3) and below < valid, (below, valid)
    plain = _hand_loss(reference(images)["out"], labels)
    assert step.loss == pytest.approx(float(hand), rel=1e-5)
    assert abs(float(hand) - float(plain)) > 1e-2, "the weights or the mining must change this loss"
    hand.backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), (q - q.grad).detach(), atol=1e-5, rtol=1e-5, msg=name)


def test_loss_settings_reach_train_step_from_the_config(tmp_path: Path, monkeypatch) -> None:
    """``loss.class_weights`` and ``loss.ohem*`` as deeplab-train passes them to train_step."""
    seen: list[LossSpec | None] = []
    real = trainer_mod.train_step

    def spy(*args, **kwargs):
        seen.append((args[5] if len(args) > 5 else kwargs["settings"]).loss)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_step", spy)
    weights = "[" + ",".join(["1.0"] * 20 + ["2.5"]) + "]"
    overrides = [f"dataset.root={tmp_path / 'data'}", *TINY, "trainer.max_iters=1", "trainer.progress=false",
                 "trainer.batch_size=2",
                 "dataset.num_workers=0", f"loss.class_weights={weights}", "loss.ohem=true", "loss.ohem_thresh=0.6",
                 "loss.ohem_min_kept=77"]  # fmt: skip
    train_mod.run_train(compose_train(overrides, tmp_path / "run"))
    assert seen == [LossSpec((1.0,) * 20 + (2.5,), True, 0.6, 77, aux_head_weight=0.0)]  # no model.aux_head


# --- DenseCRF: the parameters in the places pydensecrf documents -------------------------------------------


def test_dense_crf_passes_each_parameter_where_pydensecrf_documents_it() -> None:
    densecrf = pytest.importorskip(
        "pydensecrf.densecrf", reason="DenseCRF tests need pydensecrf (pip install pydensecrf2)"
    )
    from deeplab_cli.postprocess.crf import CRFParams, dense_crf

    rng = np.random.default_rng(0)
    image = np.zeros((24, 32, 3), dtype=np.uint8)
    image[:, 16:] = 200
    image[8:14, 4:10] = (60, 120, 200)
    image = np.clip(image.astype(int) + rng.integers(-6, 7, image.shape), 0, 255).astype(np.uint8)
    probs = rng.dirichlet(np.ones(3), size=(24, 32)).transpose(2, 0, 1).astype(np.float32)
    params = CRFParams(iterations=5, bi_w=8.0, bi_xy_std=30.0, bi_rgb_std=4.0, pos_w=2.0, pos_xy_std=1.5)

    def direct(p: CRFParams) -> np.ndarray:
        crf = densecrf.DenseCRF2D(32, 24, 3)
        crf.setUnaryEnergy(np.ascontiguousarray(-np.log(np.clip(probs, 1e-5, 1.0)).reshape(3, -1)))
        crf.addPairwiseGaussian(sxy=p.pos_xy_std, compat=p.pos_w)  # DeepLab's w2, theta_gamma
        crf.addPairwiseBilateral(sxy=p.bi_xy_std, srgb=p.bi_rgb_std, rgbim=image.copy(), compat=p.bi_w)  # w1, theta
        return np.asarray(crf.inference(p.iterations)).reshape(3, 24, 32).argmax(0)

    ours = dense_crf(probs, image, params)
    assert np.array_equal(ours, direct(params))
    swapped = CRFParams(5, 8.0, bi_xy_std=4.0, bi_rgb_std=30.0, pos_w=2.0, pos_xy_std=1.5)
    assert (direct(swapped) != ours).sum() > 20, "swapping the bilateral stds must change this answer"


# --- resume: the same weights as a run that was never interrupted ------------------------------------------

RESUME = ["trainer.max_iters=6", "trainer.val_interval=6", "trainer.checkpoint_interval=2", "trainer.batch_size=2",
          "trainer.progress=false", "dataset.num_workers=0", "dataset.synthetic.num_train=8",
          "dataset.synthetic.num_val=2", "backbone.width_mult=0.125", "head.channels=16", "head.dropout=0.0",
          "optim=sgd", "optim.lr=0.01"]  # fmt: skip


KILL_AT_STEP_5 = """
import os, signal, sys
from deeplab_cli.cli import train
from deeplab_cli.engine.train import trainer
real, calls = trainer.train_step, []
def step(*args, **kwargs):
    calls.append(1)
    if len(calls) == 5:
        os.kill(os.getpid(), signal.SIGKILL)  # no handler, no finally: as the OOM killer or a lost node does
    return real(*args, **kwargs)
trainer.train_step = step
sys.argv = ["deeplab-train", *sys.argv[1:]]
train.main()
"""


def test_a_killed_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path: Path, monkeypatch):
    """SIGKILLed during iteration 5 (last.pt holds iteration 4), resumed, it takes exactly iterations 5 and 6 and
    ends where a run that was never stopped ends: same data order, LR schedule and SGD momentum."""
    import os
    import signal
    import subprocess
    import sys

    data = f"dataset.root={tmp_path / 'data'}"
    train_mod.run_train(compose_train([data, *RESUME], tmp_path / "straight"))
    real, calls = trainer_mod.train_step, []
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP_5, data, *RESUME, f"hydra.run.dir={tmp_path / 'resumed'}"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"},  # one thread, as here: same sums
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    at_4 = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert at_4["iteration"] == 4
    calls.clear()
    monkeypatch.setattr(trainer_mod, "train_step", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    train_mod.run_train(compose_train([data, *RESUME, "resume=true"], tmp_path / "resumed"))
    assert len(calls) == 2, f"the resumed run took {len(calls)} steps, not iterations 5 and 6"
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert a["iteration"] == b["iteration"] == 6
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    moved = sum(float((b["model"][k].float() - v.float()).abs().sum()) for k, v in at_4["model"].items())
    assert moved > 1e-4, "iterations 5 and 6 must move the weights"


# --- the quick start learns: the README's number, measured -------------------------------------------------


@pytest.mark.slow
def test_the_quick_start_reaches_the_readmes_miou(tmp_path: Path) -> None:
    """The README's first command, as is (model=quickstart, 800 iterations on the synthetic set): a training
    step that never updates the weights scores about 5% here (chance over 21 classes); the README says 77.5%."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    stated = float(re.search(r"final validation \*\*mIoU ([\d.]+)%\*\*", readme).group(1))
    metrics = train_mod.run_train(compose_train([f"dataset.root={tmp_path / 'synthetic'}"], tmp_path / "run"))
    assert metrics["mIoU"] >= 70.0
    # the README's figure is the command's (2 threads, Intel Xeon); sums in another order give other figures: a
    # worker's single thread 76.46 there, 79.37 on a 2-core AMD EPYC (README): within 2 points of the stated one
    assert abs(metrics["mIoU"] - stated) <= 2.0, f"measured {metrics['mIoU']:.2f}, the README says {stated}"
