"""deeplab-benchmark (deeplab_cli.tools.benchmark) on tiny settings: record, ratios, errors, data path."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.models.segmentation import deeplabv3_resnet50

from deeplab_cli.cli.benchmark import main
from deeplab_cli.config import models
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.tools.benchmark import subjects
from deeplab_cli.tools.benchmark.settings import OPTIONS, parse_args

TINY = ["crop=33", "batch=2", "warmup=0", "iters=1", "infer_iters=1", "infer_size=64x48", "threads=1", "rounds=1"]
REQUIRED = (
    "ours_train_images_per_s", "reference_train_images_per_s", "train_ratio", "ours_train_with_data_images_per_s",
    "ours_infer_images_per_s", "reference_infer_images_per_s", "infer_ratio", "ours_peak_memory_mb",
    "reference_peak_memory_mb", "memory_kind", "ours_params", "reference_params", "ours_output_stride",
    "reference_output_stride", "settings",
)  # fmt: skip
#: sum(p.numel()) of ours (deeplab-train model=deeplabv3_resnet50) and of torchvision's
#: deeplabv3_resnet50(aux_loss=False, num_classes=21): the same layers, so the same count.
R50_PARAMS = 39_638_869


def _run(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "F.json"
    code = main([*TINY, *args, f"out={out}"])
    return code, json.loads(out.read_text()) if code == 0 else {}


@pytest.fixture(scope="module")
def r50(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One run of ours vs torchvision at ResNet-50, without the data pipeline."""
    tmp = tmp_path_factory.mktemp("bench")
    code, record = _run(tmp, "model=deeplabv3_resnet50", "data=false", "rounds=3")
    assert code == 0
    return tmp, record


def test_record_has_every_key_and_ratios_are_quotients(r50: tuple[Path, dict[str, Any]]) -> None:
    tmp, r = r50
    assert not [key for key in REQUIRED if key not in r]
    for kind in ("train", "infer"):  # three alternating rounds: the ratio is the median of the per-round quotients
        ours, ref = r[f"ours_{kind}_rounds"], r[f"reference_{kind}_rounds"]
        quotients = [o / q for o, q in zip(ours, ref, strict=True)]
        assert len(quotients) == 3 and r[f"{kind}_ratio_spread"]["rounds"] == pytest.approx(quotients)
        assert r[f"{kind}_ratio"] == pytest.approx(sorted(quotients)[1])
        assert (r[f"{kind}_ratio_spread"]["min"], r[f"{kind}_ratio_spread"]["max"]) == (min(quotients), max(quotients))
        assert r[f"ours_{kind}_images_per_s"] == pytest.approx(sorted(ours)[1])
    assert min(r["ours_train_images_per_s"], r["reference_train_images_per_s"], r["ours_infer_images_per_s"]) > 0
    assert r["ours_train_with_data_images_per_s"] is None  # data=false
    assert (r["ours_output_stride"], r["reference_output_stride"]) == (16, 8)
    assert r["settings"]["reference_resolved"] == "deeplabv3_resnet50"  # reference=auto follows the backbone
    assert r["settings"]["infer_size"] == [64, 48] and r["settings"]["torch"] == torch.__version__
    assert r["memory_kind"] in ("cpu_process_peak_rss", "cuda_max_memory_allocated", "unavailable")
    table = (tmp / "F.md").read_text()
    assert "| ours: deeplabv3_resnet50 | 16 | 39,638,869 |" in table and "ratio (ours / reference)" in table


def test_params_are_the_models_counts(r50: tuple[Path, dict[str, Any]]) -> None:
    cfg = compose_train(["model=deeplabv3_resnet50", "model.pretrained=false"])
    ours = sum(p.numel() for p in models.make_model(cfg, pretrained=False).parameters())
    ref_model = deeplabv3_resnet50(weights=None, weights_backbone=None, aux_loss=False, num_classes=21)
    reference = sum(p.numel() for p in ref_model.parameters())
    assert (r50[1]["ours_params"], r50[1]["reference_params"]) == (ours, reference) == (R50_PARAMS, R50_PARAMS)


def test_defaults_are_the_documented_ones() -> None:
    s = parse_args([])
    assert s.mode == "train"
    assert (s.model, s.crop, s.batch, s.precision, s.device) == ("deeplabv3_resnet101", 513, 16, "fp32", "auto")
    assert (s.warmup, s.iters, s.infer_iters, s.infer_size) == (3, 10, 5, (500, 375))
    assert (s.output_stride, s.reference_name, s.data, s.workers) == (None, "deeplabv3_resnet101", True, 2)
    assert s.out is None and s.threads is None and s.rounds == 5
    assert not s.channels_last and not s.compile


@pytest.mark.parametrize(
    ("arg", "named"),
    [
        ("foo=1", ["'foo'", *OPTIONS]),
        ("precision=fp64", ["precision='fp64'", "fp32|bf16|fp16"]),
        ("batch=1", ["batch='1'", ">= 2"]),
        ("output_stride=4", ["output_stride='4'", "null|8|16|32"]),
        ("model=nope", ["model='nope'", "deeplabv3_resnet101"]),
        ("crop", ["'crop'", "key=value"]),
        ("mode=tensorrt", ["mode='tensorrt'", "train", "onnx"]),
        ("rounds=0", ["rounds='0'", "an integer >= 1"]),
    ],
)
def test_bad_argument_exits_2_naming_the_key(arg: str, named: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([arg]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(word in err for word in named)


def test_rounds_alternate_ours_and_the_reference(monkeypatch, tmp_path: Path) -> None:
    """After the first round, each round times ours then the reference, so a drift of the machine's speed
    lands on both; the spread of the per-round ratios says how much one ratio can be trusted."""
    import deeplab_cli.tools.benchmark.measure as bench

    order: list[str] = []
    speeds = iter([4.0, 2.0, 3.0, 3.0, 2.0, 4.0])  # ours, reference, ours, reference, ...: drifting rates

    def fake_round(model, loss, inputs, settings, device):
        order.append("ours" if loss is subjects.our_loss else "reference")
        value = next(speeds)
        return value, value

    monkeypatch.setattr(bench, "time_round", fake_round)
    code, r = _run(tmp_path, "model=deeplabv3_resnet50", "data=false", "rounds=4")
    assert code == 0 and order == ["ours", "reference"] * 3
    assert r["train_ratio_spread"]["rounds"][1:] == [2.0, 1.0, 0.5]
    assert (
        r["train_ratio_spread"]["iqr"] is not None
        and "train ratio over 4 alternating rounds" in (tmp_path / "F.md").read_text()
    )


def test_fp16_on_cpu_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["device=cpu", "precision=fp16"]) == 2
    assert "precision=fp16" in capsys.readouterr().err


def test_data_pipeline_on_a_tiny_synthetic_set(tmp_path: Path) -> None:
    """``data=true``: ours also trains through the real loader; ``reference=none`` leaves no ratios."""
    code, r = _run(tmp_path, "model=deeplabv3plus_mobilenet_v2", "output_stride=8", "reference=none", "workers=1")
    assert code == 0
    assert r["ours_train_with_data_images_per_s"] > 0 and r["data_generation_s"] is not None
    assert r["ours_output_stride"] == 8
    assert r["reference_train_images_per_s"] is None and r["train_ratio"] is None and r["infer_ratio"] is None


ONNX_TINY = ["mode=onnx", "model=quickstart", "warmup=0", "infer_iters=2", "infer_size=64x48", "threads=1"]


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="the export extra is not installed")
def test_onnx_mode_times_onnx_runtime_against_the_same_graph_in_pytorch(tmp_path: Path) -> None:
    out = tmp_path / "onnx.json"
    assert main([*ONNX_TINY, f"out={out}"]) == 0
    r = json.loads(out.read_text())
    assert r["ratio"] == pytest.approx(r["onnxruntime_images_per_s"] / r["pytorch_images_per_s"])
    assert min(r["onnxruntime_images_per_s"], r["pytorch_images_per_s"]) > 0
    assert r["pytorch_images_per_s"] == pytest.approx(2 / r["pytorch_s"])  # infer_iters timed runs
    assert r["max_abs_diff"] < 1e-4 < r["max_abs_output"] and r["label_agreement"] >= 0.9999  # compared before timing
    cfg = compose_train(["model=quickstart", "model.pretrained=false"])
    assert r["params"] == sum(p.numel() for p in models.make_model(cfg, pretrained=False).parameters())
    assert r["settings"]["infer_size"] == [64, 48] and r["settings"]["onnxruntime"]
    table = out.with_suffix(".md").read_text()
    assert "| quickstart |" in table and "ONNX Runtime (CPU)" in table and "ratio (ONNX Runtime / PyTorch)" in table


def test_onnx_mode_refuses_gpu_precisions_and_a_missing_runtime(capsys, monkeypatch) -> None:
    assert main([*ONNX_TINY, "precision=bf16"]) == 2
    assert "mode=onnx compares CPU inference in fp32" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    assert main(ONNX_TINY) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "onnxruntime not installed" in err and '".[export]"' in err
