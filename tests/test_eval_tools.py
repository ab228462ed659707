"""Evaluation power tools: TTA, size-mixed batches, probability cache, CRF stage, trimap, export, predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import VOC_SAMPLE, needs_shared
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from deeplab_cli.cli import evaluate as eval_mod
from deeplab_cli.cli import predict as predict_mod
from deeplab_cli.config import checkpoints, models
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.data.palette import voc_palette
from deeplab_cli.data.synthetic import SyntheticSpec, ensure_synthetic_voc
from deeplab_cli.data.transforms import eval_transforms
from deeplab_cli.data.voc import voc_dataset
from deeplab_cli.engine.eval.inference import pad_collate, predict_probabilities, size_sorted_batches
from deeplab_cli.engine.eval.metrics import compute_metrics
from deeplab_cli.engine.eval.pipeline import EvalSettings, run_evaluation
from deeplab_cli.engine.eval.prob_cache import ProbabilityCache
from deeplab_cli.engine.runtime.checkpoint import atomic_save
from deeplab_cli.errors import ConfigError
from deeplab_cli.postprocess.crf import CRFParams

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = [
    "backbone.width_mult=0.125",
    "head.channels=16",
    "trainer.device=cpu",
    "dataset.synthetic.num_train=2",
    "dataset.synthetic.num_val=4",
]

pytestmark = pytest.mark.usefixtures("one_thread")


class PixelModel(nn.Module):
    """A per-pixel (1x1 conv) model: padding neighbours cannot change its output."""

    def __init__(self, num_classes: int = 21) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, num_classes, 1)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"out": self.conv(x)}


class MirrorSymmetric(nn.Module):
    """Convolutions whose kernels equal their own mirror image: f(flip(x)) == flip(f(x))."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv2d(3, 8, 5, padding=2)
        self.b = nn.Conv2d(8, 4, 3, padding=1)
        with torch.no_grad():
            for conv in (self.a, self.b):
                conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.b(torch.relu(self.a(x)))}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic_voc(root, SyntheticSpec(num_train=2, num_val=4))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, synthetic_root) -> Path:
    """An untrained tiny LargeFOV in our checkpoint format (what deeplab-train writes)."""
    cfg = compose_train([f"dataset.root={synthetic_root}", *TINY])
    torch.manual_seed(0)
    model = models.make_model(cfg, pretrained=False)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    config = OmegaConf.to_container(cfg, resolve=True)
    atomic_save({"format": "deeplab-cli", "version": 1, "model": model.state_dict(), "config": config}, path)
    return path


def run_eval(tmp_path: Path, checkpoint: Path, *overrides: str, name: str = "eval") -> dict:
    args = [f"checkpoint={checkpoint}", "eval.num_workers=0", "eval.progress=false", *overrides]
    if not any(a.startswith("eval.cache_dir=") for a in args):
        args.append(f"eval.cache_dir={tmp_path / 'cache'}")
    cfg = compose_train(args, run_dir=tmp_path / name, config_name="eval")
    return eval_mod.run_eval(cfg)


def cli(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, env=env, timeout=600)


# --- test-time augmentation and batching -------------------------------------------------------


def test_flip_of_a_mirror_symmetric_model_changes_nothing() -> None:
    model = MirrorSymmetric().eval()
    image = torch.randn(2, 3, 19, 26)
    plain = predict_probabilities(model, image, flip=False)
    flipped = predict_probabilities(model, image, flip=True)
    torch.testing.assert_close(flipped, plain, atol=1e-6, rtol=0)


def test_flip_averages_the_mirrored_prediction_mirrored_back() -> None:
    model = PixelModel(4).eval()
    with torch.no_grad():
        model.conv.weight.mul_(torch.linspace(-1, 1, 4).view(4, 1, 1, 1))
    image = torch.randn(1, 3, 9, 12) * torch.linspace(0, 3, 12)  # not mirror-symmetric
    x = image.clone()
    expected = (model(x)["out"].softmax(1) + model(x.flip(-1))["out"].softmax(1).flip(-1)) / 2
    torch.testing.assert_close(predict_probabilities(model, image, flip=True), expected)
    # a per-pixel model is flip-equivariant too, so the average equals the plain prediction
    torch.testing.assert_close(predict_probabilities(model, image, flip=False), expected)


@pytest.mark.parametrize("preset", ["deeplabv1_largefov", "deeplabv3_resnet50", "deeplabv3plus_mobilenet_v2"])
def test_multiscale_tta_on_odd_image_sizes(preset: str) -> None:
    cfg = compose_train([f"model={preset}", "model.pretrained=false"])
    if "width_mult" in cfg.backbone:
        cfg.backbone.width_mult = 0.125
    torch.manual_seed(0)
    model = models.make_model(cfg, pretrained=False).eval()
    image = torch.randn(1, 3, 37, 53)
    probs = predict_probabilities(model, image, scales=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75), flip=True)
    assert probs.shape == (1, 21, 37, 53)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 37, 53))
    single = predict_probabilities(model, image)
    assert not torch.allclose(probs, single)


def test_size_sorted_batches_and_padding() -> None:
    sizes = [(50, 40), (30, 20), (50, 40), (31, 20)]
    assert size_sorted_batches(sizes, 1) == [[0], [1], [2], [3]]
    assert size_sorted_batches(sizes, 2) == [[1, 3], [0, 2]]
    samples = [
        (torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.long), 7),
        (torch.ones(3, 6, 3), torch.ones(6, 3, dtype=torch.long), 9),
    ]
    images, targets, indices, hw = pad_collate(samples)
    assert images.shape == (2, 3, 6, 5) and targets.shape == (2, 6, 5)
    assert indices.tolist() == [7, 9] and hw.tolist() == [[4, 5], [6, 3]]
    assert images[0, :, 4:].abs().sum() == 0 and (targets[0, 4:] == 255).all() and (targets[1, :, 3:] == 255).all()


def test_batches_of_different_sizes_equal_one_image_at_a_time(synthetic_root: Path) -> None:
    dataset = voc_dataset(synthetic_root, "val", transforms=eval_transforms())
    assert len({dataset.image_size(i) for i in range(len(dataset))}) > 1, "the test needs mixed sizes"
    model = PixelModel()
    seen: dict[int, tuple] = {}

    def hook(index, pred, target, stage):
        seen.setdefault(index, (pred.shape, target.shape))

    one = run_evaluation(model, dataset, torch.device("cpu"), EvalSettings(21, batch_size=1))
    many = run_evaluation(model, dataset, torch.device("cpu"), EvalSettings(21, batch_size=3), on_prediction=hook)
    assert torch.equal(one.network.matrix, many.network.matrix)
    for index, (pred_shape, target_shape) in seen.items():
        assert pred_shape == target_shape == dataset.image_size(index)
    assert sorted(seen) == list(range(len(dataset)))


# --- CRF stage and probability cache -----------------------------------------------------------


def test_crf_output_differs_from_the_network_and_is_scored(synthetic_root: Path) -> None:
    dataset = voc_dataset(synthetic_root, "val", transforms=eval_transforms())
    preds: dict[str, dict[int, torch.Tensor]] = {"network": {}, "crf": {}}
    settings = EvalSettings(21, crf=CRFParams(), crf_workers=2, trimap=(3,))
    result = run_evaluation(
        PixelModel(), dataset, torch.device("cpu"), settings, on_prediction=lambda i, p, t, s: preds[s].update({i: p})
    )
    assert sorted(preds["crf"]) == sorted(preds["network"]) == list(range(len(dataset)))
    assert any(not torch.equal(preds["crf"][i], preds["network"][i]) for i in preds["crf"])
    assert result.crf is not None and int(result.crf.matrix.sum()) == int(result.network.matrix.sum())
    assert result.trimap_crf is not None and result.trimap_network is not None


def test_cache_serves_a_second_run_without_the_network(synthetic_root: Path, tmp_path: Path) -> None:
    dataset = voc_dataset(synthetic_root, "val", transforms=eval_transforms())
    cache = ProbabilityCache(tmp_path, {"checkpoint": "abc"})
    model = PixelModel()
    settings = EvalSettings(21, crf=CRFParams(), crf_workers=0)
    first = run_evaluation(model, dataset, torch.device("cpu"), settings, cache=cache)
    assert (first.network_images, first.cached_images) == (len(dataset), 0)
    calls = model.calls
    second = run_evaluation(model, dataset, torch.device("cpu"), settings, cache=cache)
    assert model.calls == calls, "the network ran although every image was cached"
    assert (second.network_images, second.cached_images) == (0, len(dataset))
    assert torch.equal(first.network.matrix, second.network.matrix)
    assert torch.equal(first.crf.matrix, second.crf.matrix)
    # a damaged entry is recomputed, the others still come from the cache
    cache.path(dataset.ids[1]).write_bytes(b"truncated")
    third = run_evaluation(model, dataset, torch.device("cpu"), settings, cache=cache)
    assert (third.network_images, third.cached_images) == (1, len(dataset) - 1)
    assert torch.equal(first.network.matrix, third.network.matrix)


def test_cache_key_covers_checkpoint_and_test_time_settings(tmp_path: Path) -> None:
    a = ProbabilityCache(tmp_path, {"checkpoint": "1", "test_time": {"flip": False}})
    assert a.dir == ProbabilityCache(tmp_path, {"test_time": {"flip": False}, "checkpoint": "1"}).dir
    assert a.dir != ProbabilityCache(tmp_path, {"checkpoint": "2", "test_time": {"flip": False}}).dir
    assert a.dir != ProbabilityCache(tmp_path, {"checkpoint": "1", "test_time": {"flip": True}}).dir


def test_eval_with_crf_reports_both_mious_and_settings(tmp_path: Path, checkpoint: Path) -> None:
    m = run_eval(tmp_path, checkpoint, "crf=deeplabv1_largefov", "crf.workers=2", "crf.bi_w=5")
    assert m["crf"] == {
        "name": "deeplabv1_largefov",
        "iterations": 10,
        "bi_w": 5.0,
        "bi_xy_std": 121.0,
        "bi_rgb_std": 5.0,
        "pos_w": 3.0,
        "pos_xy_std": 3.0,
        "workers": 2,
    }
    assert m["mIoU"] == m["mIoU_crf"] and m["network"]["mIoU"] == m["mIoU_network"]
    assert m["probabilities"]["network_images"] == 4 and m["probabilities"]["cache"]
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["mIoU_crf"] == m["mIoU_crf"]
    # eval.cache=auto: the next CRF setting reuses the stored probabilities
    again = run_eval(tmp_path, checkpoint, "crf=deeplabv1_largefov", "crf.workers=0", "crf.bi_w=3", name="again")
    assert again["probabilities"] == {**m["probabilities"], "network_images": 0, "cached_images": 4}
    assert again["mIoU_network"] == m["mIoU_network"]


def test_crf_without_pydensecrf_fails_before_loading(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ConfigError, match=r"pip install.*\[crf\]"):
        run_eval(tmp_path, tmp_path / "does-not-exist.pt", "crf=deeplabv2_vgg16")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("eval.scales=[0.5,0]", "eval.scales"),
        ("eval.export=voc2007", "eval.export"),
        ("eval.cache=sometimes", "eval.cache"),
        ("eval.trimap=[0,4]", "eval.trimap"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("crf.workers=-1", "crf.workers"),
    ],
)
def test_bad_eval_options_name_the_key(tmp_path: Path, checkpoint: Path, override: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        run_eval(tmp_path, checkpoint, override, "crf=deeplabv2_vgg16")


def test_crf_sweep_runs_the_network_once_and_writes_a_summary(tmp_path: Path, checkpoint: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = cli(
        "deeplab-eval",
        "-m",
        f"checkpoint={checkpoint}",
        "crf=deeplabv2_resnet101",
        "crf.bi_w=2,4,30",
        "crf.workers=1",
        "dataset.subset=3",
        "eval.num_workers=0",
        "eval.progress=false",
        "eval.plots=false",
        f"eval.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(3)]
    assert [j["probabilities"]["network_images"] for j in jobs] == [3, 0, 0]
    assert [j["probabilities"]["cached_images"] for j in jobs] == [0, 3, 3]
    assert all(j["num_images"] == 3 for j in jobs)
    summary = json.loads((sweep / "summary.json").read_text())["jobs"]
    assert sorted(r["setting"] for r in summary) == ["crf.bi_w=2", "crf.bi_w=30", "crf.bi_w=4"]
    assert [r["mIoU"] for r in summary] == sorted((j["mIoU"] for j in jobs), reverse=True)
    table = (sweep / "summary.md").read_text()
    assert "| 1 | `" + summary[0]["setting"] + "`" in table and "network mIoU" in table


# --- trimap, pictures, output stride -----------------------------------------------------------


def test_trimap_wide_band_equals_plain_miou_and_pictures_are_written(tmp_path: Path, checkpoint: Path) -> None:
    m = run_eval(tmp_path, checkpoint, "eval.trimap=[1,2,100000]")
    assert set(m["trimap_miou"]) == {"1", "2", "100000"}
    assert m["trimap_miou"]["100000"] == pytest.approx(m["mIoU"], abs=1e-9)
    matrix = torch.tensor(m["confusion_matrix"])
    assert compute_metrics(matrix, list(m["per_class_iou"]))["mIoU"] == pytest.approx(m["mIoU"])
    plots = tmp_path / "eval" / "plots"
    for name in ("confusion_matrix", "per_class_iou", "trimap"):
        assert Image.open(plots / f"{name}.png").size[0] > 300
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "eval" / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert {"plots/confusion_matrix", "plots/per_class_iou", "plots/trimap"} <= set(acc.Tags()["images"])


def test_eval_at_output_stride_8_of_a_model_trained_at_16(tmp_path: Path, synthetic_root: Path) -> None:
    cfg = compose_train([f"dataset.root={synthetic_root}", "model=deeplabv3_resnet50", "model.output_stride=16"])
    torch.manual_seed(0)
    model = models.make_model(cfg, pretrained=False)
    path = tmp_path / "os16.pt"
    config = OmegaConf.to_container(cfg, resolve=True)
    atomic_save({"format": "deeplab-cli", "version": 1, "model": model.state_dict(), "config": config}, path)
    eval_cfg = compose_train([f"checkpoint={path}", "model.output_stride=8"], config_name="eval")
    rebuilt, train_cfg = checkpoints.load_for_eval(eval_cfg, [f"checkpoint={path}", "model.output_stride=8"])
    assert train_cfg.model.output_stride == 8
    x = torch.randn(1, 3, 64, 64)
    assert rebuilt.eval()(x)["out"].shape[-1] == 8 and model.eval()(x)["out"].shape[-1] == 4


# --- VOC server export and deeplab-predict -----------------------------------------------------


def test_voc_test_export_writes_server_layout(tmp_path: Path, checkpoint: Path, synthetic_root: Path) -> None:
    voc = synthetic_root / "VOC2012" if (synthetic_root / "VOC2012").is_dir() else synthetic_root
    ids = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:3]
    test_root = tmp_path / "voc_test" / "VOC2012"
    (test_root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (test_root / "JPEGImages").mkdir()
    for i in ids:
        (test_root / "JPEGImages" / f"{i}.jpg").write_bytes((voc / "JPEGImages" / f"{i}.jpg").read_bytes())
    (test_root / "ImageSets" / "Segmentation" / "test.txt").write_text("\n".join(ids) + "\n")
    m = run_eval(tmp_path, checkpoint, "eval.export=voc_test", "dataset=voc", f"dataset.root={test_root.parent}")
    assert "mIoU" not in m and m["split"] == "test" and m["num_images"] == 3
    out = tmp_path / "eval" / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    for i in ids:
        png = Image.open(out / f"{i}.png")
        assert png.mode == "P" and png.size == Image.open(test_root / "JPEGImages" / f"{i}.jpg").size
    with tarfile.open(m["export"]["archive"]) as tar:
        names = set(tar.getnames())
    assert {f"results/VOC2012/Segmentation/comp6_test_cls/{i}.png" for i in ids} <= names


@needs_shared(VOC_SAMPLE)
def test_predict_on_a_folder_of_real_voc_images(tmp_path: Path, checkpoint: Path) -> None:
    images = VOC_SAMPLE / "VOC2012" / "JPEGImages"
    out = tmp_path / "masks"
    proc = cli(
        "deeplab-predict",
        f"checkpoint={checkpoint}",
        f"input={images}",
        f"output={out}",
        "eval.num_workers=0",
        "eval.batch_size=4",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jpgs = sorted(images.glob("*.jpg"))
    assert len(jpgs) == 12
    for jpg in jpgs:
        mask = Image.open(out / f"{jpg.stem}.png")
        assert mask.mode == "P" and mask.getpalette()[:63] == voc_palette()[:63]
        assert mask.size == Image.open(jpg).size
        overlay = Image.open(out / f"{jpg.stem}_overlay.jpg")
        assert overlay.width == mask.width and overlay.height > mask.height  # the image, then its legend
    assert len(list(out.glob("*.png"))) == 12


@needs_shared(VOC_SAMPLE)
def test_predict_with_crf_and_tta_on_a_glob(tmp_path: Path, checkpoint: Path) -> None:
    images = VOC_SAMPLE / "VOC2012" / "JPEGImages"
    first = sorted(images.glob("*.jpg"))[:2]
    cfg = compose_train(
        [
            f"checkpoint={checkpoint}",
            f"input={images}/{first[0].name[:4]}*.jpg",
            f"output={tmp_path / 'out'}",
            "crf=deeplabv2_vgg16",
            "crf.workers=2",
            "eval.scales=[0.75,1.0]",
            "eval.flip=true",
            "eval.num_workers=0",
            "eval.progress=false",
        ],
        run_dir=tmp_path / "run",
        config_name="predict",
    )
    result = predict_mod.run_predict(cfg)
    written = sorted((tmp_path / "out").glob("*.png"))
    assert result["num_images"] == len(written) >= 1
    for png in written:
        assert np.array(Image.open(png)).shape == np.array(Image.open(images / f"{png.stem}.jpg")).shape[:2]


def test_predict_input_that_matches_nothing_is_explained(tmp_path: Path, checkpoint: Path) -> None:
    proc = cli("deeplab-predict", f"checkpoint={checkpoint}", f"input={tmp_path}/*.jpg", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 1
    assert "matched no image" in proc.stderr and str(tmp_path) in proc.stderr


@needs_shared(VOC_SAMPLE)
def test_crf_and_trimap_on_the_real_voc_sample(tmp_path: Path, checkpoint: Path) -> None:
    m = run_eval(
        tmp_path,
        checkpoint,
        "dataset=voc",
        f"dataset.root={VOC_SAMPLE}",
        "dataset.subset=3",
        "crf=deeplabv2_vgg16",
        "crf.workers=2",
        "eval.trimap=[2,4,8,16,32,100000]",
        "save_predictions=true",
    )
    assert m["num_images"] == 3 and m["split"] == "val"
    assert set(m["trimap_miou"]) == set(m["trimap_miou_network"]) == {"2", "4", "8", "16", "32", "100000"}
    assert m["trimap_miou"]["100000"] == pytest.approx(m["mIoU_crf"], abs=1e-9)
    assert m["trimap_miou_network"]["100000"] == pytest.approx(m["mIoU_network"], abs=1e-9)
    assert m["confusion_matrix"] != m["network"]["confusion_matrix"], "CRF changed no pixel"
    for png in (tmp_path / "eval" / "predictions").glob("*.png"):
        assert Image.open(png).size == Image.open(VOC_SAMPLE / "VOC2012" / "JPEGImages" / f"{png.stem}.jpg").size


def test_optuna_sweep_gets_the_crf_miou_back(tmp_path: Path, checkpoint: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="install the optuna extra")
    sweep = tmp_path / "optuna"
    proc = cli(
        "deeplab-eval",
        "-m",
        "+sweep=crf_optuna",
        f"checkpoint={checkpoint}",
        "hydra.sweeper.n_trials=2",
        "crf.workers=0",
        "dataset.subset=2",
        "eval.num_workers=0",
        f"eval.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = (sweep / "optimization_results.yaml").read_text()
    jobs = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert all(j["crf"]["name"] == "deeplabv2_resnet101" and j["num_images"] == 2 for j in jobs)
    assert f"best_value: {max(j['mIoU'] for j in jobs)}" in best
    assert [j["probabilities"]["network_images"] for j in jobs] == [2, 0]
    assert len(json.loads((sweep / "summary.json").read_text())["jobs"]) == 2


@pytest.mark.parametrize(
    "override, needle",
    [("overlay_alpha=1.5", "overlay_alpha=1.5 must lie in [0, 1]"), ("output=OUTPUT_UNDER_FILE", "cannot be created")],
)
def test_predict_bad_options_are_explained(tmp_path: Path, checkpoint: Path, override: str, needle: str) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    image = tmp_path / "img.png"
    Image.new("RGB", (20, 16)).save(image)
    override = override.replace("OUTPUT_UNDER_FILE", str(blocker / "out"))
    cfg = compose_train(
        [f"checkpoint={checkpoint}", f"input={image}", override, "eval.num_workers=0"],
        run_dir=tmp_path / "run",
        config_name="predict",
    )
    with pytest.raises(ConfigError) as info:
        predict_mod.run_predict(cfg)
    assert needle in str(info.value)
    if "output" in override:
        assert str(blocker / "out") in str(info.value) and "writable folder" in str(info.value)
