"""deeplab-export: ONNX and torch.export files that compute what PyTorch computes, at any image size."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import VOC_SAMPLE, cli, needs_shared
from omegaconf import OmegaConf
from PIL import Image

from deeplab_cli.cli import predict
from deeplab_cli.cli.export import run_export
from deeplab_cli.config import datasets, models
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.deploy.exporters import ExportError, onnx_runner, program_runner, read_metadata
from deeplab_cli.deploy.wrapper import DeployModel
from deeplab_cli.engine.runtime.checkpoint import atomic_save
from deeplab_cli.errors import DeepLabError

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnxscript") is not None
needs_ort = pytest.mark.skipif(not HAS_ORT, reason="the export extra (onnx, onnxscript, onnxruntime) is not installed")
VOC_IMAGES = VOC_SAMPLE / "VOC2012" / "JPEGImages"
#: a narrow VGG with the v3+ head: ASPP's image-pooling branch and the decoder are in the graph
TINY_V3PLUS = ["model=quickstart", "head=v3plus", "head.channels=16", "head.low_level_out=8"]


def _checkpoint(folder: Path, overrides: list[str], seed: int = 0) -> Path:
    cfg = compose_train(overrides)
    datasets.resolve_preprocess(cfg)
    torch.manual_seed(seed)
    model = models.make_model(cfg, pretrained=False)
    path = folder / "model.pt"
    atomic_save({"format": "deeplab-cli", "version": 1, "model": model.state_dict(),
                 "config": OmegaConf.to_container(cfg, resolve=True)}, path)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt"), TINY_V3PLUS)


def export(tmp_path: Path, checkpoint: Path, *overrides: str) -> dict:
    cfg = compose_train([f"checkpoint={checkpoint}", *overrides], run_dir=tmp_path / "run", config_name="export")
    return run_export(cfg)


@needs_ort
@needs_shared(VOC_IMAGES)
def test_onnx_export_matches_pytorch_on_the_real_voc_images(tmp_path: Path, checkpoint: Path) -> None:
    """One dynamic-size file for the 12 real VOC images (several sizes, portrait and landscape)."""
    report = export(tmp_path, checkpoint, f"verify.input={VOC_IMAGES}", f"out={tmp_path / 'm.onnx'}")
    verify = report["verify"]
    sizes = {tuple(r["size"]) for r in verify["images"]}
    assert len(verify["images"]) == 12 + 1 and len(sizes) >= 3  # + a batch of two
    assert verify["max_abs_diff"] < 1e-3 and verify["agreement"] >= 0.9999
    meta = read_metadata(tmp_path / "m.onnx")
    assert meta["classes"][:2] == ["background", "aeroplane"] and len(meta["palette"]) == 21
    assert meta["preprocess"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "bgr": False,
                                  "in_graph": True}  # fmt: skip
    assert meta["source_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    # independently: ONNX Runtime on a raw uint8 image against the network run the way deeplab-predict runs it
    rgb = np.array(Image.open(VOC_IMAGES / "2007_000033.jpg").convert("RGB"))
    got = onnx_runner(tmp_path / "m.onnx")(rgb.transpose(2, 0, 1)[None].copy())
    cfg = compose_train([*TINY_V3PLUS])
    model = models.make_model(cfg, pretrained=False).eval()
    model.load_state_dict(torch.load(checkpoint, weights_only=False)["model"])
    x = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - torch.tensor(meta["preprocess"]["mean"])[:, None, None]
    x = x / torch.tensor(meta["preprocess"]["std"])[:, None, None]
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(model(x[None])["out"], size=rgb.shape[:2], mode="bilinear")
    assert got.shape == (1, 21, *rgb.shape[:2])
    assert np.abs(got - logits.numpy()).max() < 1e-3
    assert json.loads((tmp_path / "run" / "export.json").read_text())["verify"] == verify
    # deeplab-predict on the file writes the masks deeplab-predict writes with the checkpoint
    masks = {}
    for name, source in (("ckpt", checkpoint), ("onnx", tmp_path / "m.onnx")):
        overrides = [f"checkpoint={source}", f"input={VOC_IMAGES}", f"output={tmp_path / name}", "eval.num_workers=0"]
        predict.run_predict(compose_train(overrides, run_dir=tmp_path / f"p_{name}", config_name="predict"))
        masks[name] = {p.name: np.array(Image.open(p)) for p in sorted((tmp_path / name).glob("*.png"))}
    assert len(masks["onnx"]) == 12 and masks["onnx"].keys() == masks["ckpt"].keys()
    same = sum(int((masks["onnx"][k] == masks["ckpt"][k]).sum()) for k in masks["ckpt"])
    assert same / sum(m.size for m in masks["ckpt"].values()) >= 0.9999
    assert (tmp_path / "onnx" / "2007_000033_overlay.jpg").is_file()


def test_torch_export_labels_without_preprocessing(tmp_path: Path, checkpoint: Path) -> None:
    report = export(tmp_path, checkpoint, "format=torch_export", "output=labels", "include_preprocess=false")
    path = Path(report["file"])
    assert path.suffix == ".pt2" and report["verify"]["agreement"] == 1.0
    run = program_runner(path)
    x = torch.randn(2, 3, 50, 70).numpy()
    assert run(x).shape == (2, 50, 70)
    assert read_metadata(path)["preprocess"]["in_graph"] is False and read_metadata(path)["output"] == "labels"
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(image)
    with pytest.raises(ExportError, match=r"exported with include_preprocess=false: it expects normalised tensors"):
        predict.run_predict(compose_train([f"checkpoint={path}", f"input={image}"], run_dir=tmp_path / "p",
                                          config_name="predict"))  # fmt: skip
    with pytest.raises(ExportError, match=r"eval.scales/eval.flip and crf= need the checkpoint"):
        predict.run_predict(compose_train([f"checkpoint={path}", f"input={image}", "eval.flip=true"],
                                          run_dir=tmp_path / "p2", config_name="predict"))  # fmt: skip


@needs_ort
def test_an_export_that_computes_something_else_is_deleted(tmp_path: Path, checkpoint: Path, monkeypatch) -> None:
    import deeplab_cli.cli.export as export_mod

    def wrong(path: Path):
        run = onnx_runner(path)
        return lambda x: run(x) + 0.01  # what a silently broken exporter would give

    monkeypatch.setattr(export_mod, "onnx_runner", wrong)
    with pytest.raises(ExportError, match=r"computes something else than PyTorch .* max \|diff\| 0.01 .* deleted"):
        export(tmp_path, checkpoint, f"out={tmp_path / 'bad.onnx'}")
    assert not (tmp_path / "bad.onnx").exists()


@needs_ort
@pytest.mark.parametrize("scales", ["msc", "attention"])
def test_multi_scale_models_export_too(tmp_path: Path, scales: str) -> None:
    """MSC (max over scales) and attention to scale run in the graph: their resizes follow the input size."""
    ckpt = _checkpoint(tmp_path, ["model=quickstart", f"scales={scales}", "scales.factors=[1.0,0.5]"])
    report = export(tmp_path, ckpt, "verify.sizes=[[97,131],[64,80]]")
    assert report["verify"]["max_abs_diff"] < 1e-3 and report["verify"]["agreement"] >= 0.9999
    assert len(report["verify"]["images"]) == 3  # two sizes and a batch of two


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["opset=12"], r"opset=12 is not supported: .* choose opset=18\.\.23"),
        (["format=tflite"], r"format='tflite'; choose one of onnx, torch_export"),
        (["output=scores"], r"output='scores'; choose one of logits, probabilities, labels"),
        (["format=torch_export", "out=model.onnx"], r"must end in \.pt2 for format=torch_export"),
    ],
)
def test_bad_options_fail_in_one_line(tmp_path: Path, checkpoint: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(DeepLabError, match=message) as info:
        export(tmp_path, checkpoint, *overrides)
    assert "\n" not in str(info.value)


def test_a_file_that_is_not_a_checkpoint_and_missing_onnx_runtime(tmp_path: Path, monkeypatch) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    proc = cli("deeplab-export", f"checkpoint={text}", "format=torch_export", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode == 1 and str(text) in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ExportError, match=r"onnxruntime not installed: .* pip install -e \"\.\[export\]\""):
        export(tmp_path, text)


def test_deploy_model_preprocesses_as_the_eval_transforms_do() -> None:
    """uint8 in -> /255, BGR flip, (x - mean) / std: the same tensor eval_transforms give the network."""
    from deeplab_cli.data.transforms import eval_transforms

    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mean, std = [0.4, 0.45, 0.5], [0.2, 0.25, 0.3]
    for bgr in (False, True):
        deploy = DeployModel(torch.nn.Identity(), mean, std, bgr)
        expected = eval_transforms(mean, std, bgr)(Image.fromarray(rgb))
        got = deploy.preprocess(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0]
        assert torch.allclose(got, expected, atol=1e-6)


def test_the_allowed_difference_grows_with_the_output_scale() -> None:
    """atol + rtol * max |output|: an offset atol alone refuses passes on logits in the hundreds."""
    from deeplab_cli.deploy.verify import compare, generated_images, summary, tolerance

    class Large(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"out": x[:, :2] * 100}

    deploy = DeployModel(Large(), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).eval()
    images = generated_images([[20, 30]])
    results = compare(deploy, lambda x: deploy(torch.from_numpy(x)).numpy() + 0.01, images)
    worst, scale, agreement = summary(results)
    assert worst == pytest.approx(0.01, rel=1e-3) and 100 < scale < 300 and agreement == 1.0
    assert worst > 1e-3 and worst <= tolerance(1e-3, 1e-4, scale)
    assert tolerance(1e-3, 1e-4, 0.0) == 1e-3
