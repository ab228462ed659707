"""``deeplab-summary``: parameters and multiply-adds (torch's flop counter) of every model as it is configured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from clitools import MODEL_PRESETS, cli

from deeplab_cli.cli.summary import main
from deeplab_cli.tools.flops import parse_input

pytestmark = pytest.mark.usefixtures("one_thread")


def _summary(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "s.json"
    assert main([*args, f"out={out}"]) == 0
    return json.loads(out.read_text())


def test_deeplabv3plus_resnet101_at_513(tmp_path: Path) -> None:
    """The issue's numbers: 59,344,309 parameters, 92.8 G multiply-adds at OS 16 (v3+ paper, Table 3: 101.28 B
    for TF's ResNet-101 "beta", whose three-conv stem alone adds 7.14 G; see README)."""
    r = _summary(tmp_path, "model=deeplabv3plus_resnet101", "input=513")
    assert r["params"] == 59_344_309 and r["params_backbone"] + r["params_head"] == r["params"]
    assert r["gmacs"] == pytest.approx(92.82, abs=0.01)
    assert r["gmacs_backbone"] + r["gmacs_head"] == pytest.approx(r["gmacs"])
    assert (r["output_stride"], r["input"], r["head"]) == (16, [513, 513], "v3plus")
    os8 = _summary(tmp_path, "model=deeplabv3plus_resnet101", "model.output_stride=8")
    assert os8["params"] == r["params"] and os8["gmacs"] == pytest.approx(267.92, abs=0.01)
    v3 = _summary(tmp_path, "model=deeplabv3_resnet101")
    assert v3["gmacs"] == pytest.approx(71.70, abs=0.01)  # without the decoder: 21.1 G less


def test_backbone_count_matches_torchvision_resnet50(tmp_path: Path) -> None:
    """torchvision's ResNet-50 is 4.09 G multiply-adds at 224x224; without its fc (2.05 M): 4.087 G."""
    r = _summary(tmp_path, "model=deeplabv3_resnet50", "model.output_stride=32", "input=224")
    assert r["gmacs_backbone"] == pytest.approx(4.0889 - 0.002048, abs=0.001)


def test_multi_scale_counts_every_scale(tmp_path: Path) -> None:
    single = _summary(tmp_path, "model=deeplabv2_resnet101")
    msc = _summary(tmp_path, "model=deeplabv2_resnet101_msc")
    assert msc["params"] == single["params"]
    assert msc["gmacs_backbone"] == pytest.approx(single["gmacs_backbone"] * (1 + 0.75**2 + 0.5**2), rel=0.03)


def test_every_preset_and_a_timm_backbone(tmp_path: Path) -> None:
    for preset in MODEL_PRESETS:
        r = _summary(tmp_path, f"model={preset}", "input=129")
        assert r["params"] > 1e6 and r["gmacs"] > 0 and r["model"] == preset, preset
    r = _summary(tmp_path, "backbone=timm", "backbone.model=efficientnet_b0", "head=v3plus", "model.output_stride=16")
    assert r["backbone"] == "timm (efficientnet_b0)" and r["params_backbone"] == 3_595_388


def test_text_and_json_output(capsys) -> None:
    assert main(["model=deeplabv3plus_mobilenet_v2", "input=257x129"]) == 0
    text = capsys.readouterr().out
    assert "parameters      5,816,053 (backbone 1,811,712, head 4,004,341)" in text and "1x3x257x129" in text
    assert main(["model=deeplabv3plus_mobilenet_v2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == 5_816_053


def test_bad_arguments_fail_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="input='0' must be a size"):
        parse_input("0")
    assert parse_input("1025x2049") == (1025, 2049)
    for args, code, needle in (
        (["input=abc"], 2, "input='abc' must be a size"),
        (["model=nope"], 1, "model/nope"),
        (["backbone=timm", "backbone.model=dpn68"], 1, "dpn68 cannot run at model.output_stride=8"),
    ):
        proc = cli("deeplab-summary", *args, cwd=tmp_path)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == code and len(lines) == 1 and needle in lines[0], proc.stderr


def _macs_by_formula(model, size: tuple[int, int]) -> dict[str, int]:
    """Multiply-adds of every Conv2d/Linear from the formula, with the shapes seen in a real forward pass:
    out_h x out_w x out_ch x (in_ch / groups) x kh x kw for a convolution, in x out for a linear layer.
    Independent of torch's flop counter, which deeplab-summary uses."""
    import torch
    from torch import nn

    macs: dict[str, int] = {}

    def hook(name: str):
        def record(module, _inputs, out) -> None:
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                n = out.shape[-2] * out.shape[-1] * module.out_channels * module.in_channels // module.groups * kh * kw
            else:
                n = out.numel() // module.out_features * module.in_features * module.out_features
            macs[name] = macs.get(name, 0) + n

        return record

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            module.register_forward_hook(hook(name))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, *size))
    return macs


@pytest.mark.parametrize(("preset", "size"), [("quickstart", (64, 80)), ("deeplabv3plus_mobilenet_v2", (65, 97))])
def test_multiply_adds_equal_the_per_layer_formula(preset: str, size: tuple[int, int]) -> None:
    """deeplab-summary's totals, and its backbone/head split, against the convolution formula summed over the
    layers of the real model (a v1 LargeFOV, and a v3+ with depthwise convolutions and a decoder)."""
    import torch

    from deeplab_cli.config import models
    from deeplab_cli.config.compose import compose as compose_train
    from deeplab_cli.tools.flops import measure

    cfg = compose_train([f"model={preset}", "model.pretrained=false"])
    torch.manual_seed(0)
    model = models.make_model(cfg, pretrained=False)
    per_layer = _macs_by_formula(model, size)
    with torch.device("meta"):
        meta = models.build_model(models.model_spec(cfg)).eval()
    r = measure(meta, size)
    assert r["gmacs"] * 1e9 == pytest.approx(sum(per_layer.values()), rel=1e-9)
    backbone = sum(n for name, n in per_layer.items() if "backbone" in name.split("."))
    assert r["gmacs_backbone"] * 1e9 == pytest.approx(backbone, rel=1e-9) and 0 < backbone < sum(per_layer.values())
