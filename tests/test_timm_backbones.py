"""``backbone=timm``: any timm model at output stride 8/16/32 under every head, its weights and its refusals."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from clitools import BIN, REPO, cli
from safetensors.torch import save_file

from deeplab_cli.config import models
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.models.backbones.timm_encoder import (
    TimmBackbone,
    TimmModelError,
    TimmWeightsError,
    probe,
    supported_strides,
)
from deeplab_cli.models.builder import ModelSpec, build_model

pytestmark = pytest.mark.usefixtures("one_thread")

#: One small member of each timm CNN family (39 families): all run DeepLab v3+ at output stride 16.
DILATABLE = [
    "resnet18", "resnet26d", "resnext26ts", "seresnext26d_32x4d", "resnest14d", "res2net50_14w_8s", "skresnet18",
    "nf_resnet26", "resnetv2_50", "resnet50_gn", "eca_resnet33ts", "gcresnet33ts", "lambda_resnet26t",
    "regnetx_002", "regnety_002", "regnetz_b16", "efficientnet_b0", "efficientnetv2_rw_t", "tf_efficientnet_lite0",
    "mobilenetv2_050", "mobilenetv3_small_050", "mobilenetv4_conv_small", "mnasnet_small", "fbnetc_100",
    "spnasnet_100", "mixnet_s", "tinynet_e", "hardcorenas_a", "lcnet_050", "rexnet_100", "convnext_atto",
    "convnextv2_atto", "inception_next_atto", "xception41", "cspresnet50", "cspdarknet53", "darknet17", "gernet_s",
    "repvgg_a0", "mobileone_s0", "nfnet_l0",
]  # fmt: skip
#: Families timm builds only at their native stride 32 (no dilation): DeepLab runs them at output stride 32.
STRIDE_32_ONLY = [
    "dpn68", "hrnet_w18_small", "densenet121", "dla34", "vovnet39a", "ghostnet_050", "legacy_seresnet18",
    "hgnetv2_b0", "edgenext_xx_small", "poolformer_s12", "fastvit_t8", "starnet_s050", "tresnet_m",
]  # fmt: skip


def _v3plus(name: str, output_stride: int, **kw) -> torch.nn.Module:
    return build_model(ModelSpec("timm", "v3plus", 5, output_stride, {"model": name}, {}), **kw).eval()


def _strides(model: torch.nn.Module, size: int = 64) -> dict[str, int]:
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, size, size))
    return {k: size // v.shape[-1] for k, v in feats.items()}


@pytest.mark.parametrize("name", DILATABLE)
def test_v3plus_at_output_stride_16_for_every_dilatable_family(name: str) -> None:
    model = _v3plus(name, 16)
    info = model.backbone.feature_info
    assert (info["out"].stride, info["low_level"].stride) == (16, 4)
    assert _strides(model) == {"low_level": 4, "out": 16}
    with torch.no_grad():
        feats = model.backbone(torch.zeros(1, 3, 64, 64))
    assert feats["out"].shape[1] == info["out"].channels and feats["low_level"].shape[1] == info["low_level"].channels
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64))["out"].shape == (2, 5, 16, 16)


@pytest.mark.parametrize("name", STRIDE_32_ONLY)
def test_families_without_dilation_run_at_32_and_are_refused_at_16(name: str) -> None:
    assert supported_strides(name) == (32,)
    with torch.no_grad():
        assert _v3plus(name, 32)(torch.zeros(1, 3, 64, 64))["out"].shape == (1, 5, 16, 16)
    refused = rf"^backbone.model={name} cannot run at model.output_stride=16: .*=32 only"
    with pytest.raises(TimmModelError, match=refused):
        probe(name, 16)


def test_more_than_thirty_families_are_covered() -> None:
    assert len(DILATABLE) + len(STRIDE_32_ONLY) >= 30 and not set(DILATABLE) & set(STRIDE_32_ONLY)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_stride_is_the_deepest_features_stride(output_stride: int) -> None:
    model = _v3plus("efficientnet_b0", output_stride)
    assert _strides(model) == {"low_level": 4, "out": output_stride}
    assert model.backbone.feature_info["out"].stride == output_stride == model.output_stride


@pytest.mark.parametrize(
    ("head", "scales"),
    [
        ("largefov", {}),
        ("aspp_v2", {}),
        ("aspp_v3", {}),
        ("v3plus", {}),
        ("v3plus", {"mode": "msc", "factors": [1.0, 0.75]}),
        ("largefov", {"mode": "attention", "factors": [1.0, 0.5]}),
    ],
)
def test_every_head_and_multiscale_mode(head: str, scales: dict) -> None:
    model = build_model(ModelSpec("timm", head, 3, 16, {"model": "resnet18"}, {}, scales)).train()
    out = model(torch.randn(2, 3, 64, 64))
    stride = 4 if head == "v3plus" else 16
    assert out["out"].shape == (2, 3, 64 // stride, 64 // stride)
    out["out"].mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "backbone.body.conv1" in n)


def test_channels_last_features_are_permuted() -> None:
    model = _v3plus("mambaout_femto", 32)  # timm returns its features NHWC
    assert model.backbone.channels_last_output
    assert _strides(model) == {"low_level": 4, "out": 32}
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64))["out"].shape == (1, 5, 16, 16)


def test_refusals_name_the_model_and_what_it_supports() -> None:
    with pytest.raises(TimmModelError, match="dpn68 cannot run at model.output_stride=8: it runs at .*=32 only"):
        probe("dpn68", 8)
    with pytest.raises(TimmModelError, match=r"vit_small_patch16_224 has no stride-4 feature .*\[16, 16, 16\].*v3plus"):
        probe("vit_small_patch16_224", 16, low_level=True)
    with pytest.raises(TimmModelError, match=r"not a timm model\. Did you mean efficientnet_b7"):
        probe("efficientnet_b7x", 16)
    with pytest.raises(TimmModelError, match="needs the model's name: add backbone.model=NAME"):
        probe("???", 16)
    with pytest.raises(TimmModelError, match="no weights tagged 'nope' for efficientnet_b0; choose one of"):
        probe("efficientnet_b0.nope", 16)


def test_refusal_comes_before_anything_is_built_or_read(tmp_path: Path) -> None:
    """One ``Error:`` line from the CLI; no run directory contents, no generated data."""
    proc = cli(
        "deeplab-train", "backbone=timm", "backbone.model=dpn68", "model.output_stride=8",
        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: backbone.model=dpn68 cannot run"), proc.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_gives_timms_own_features(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(0)
    reference = timm.create_model("efficientnet_b0", pretrained=False).eval()
    path = tmp_path / f"model{suffix}"
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    ours = TimmBackbone("efficientnet_b0", 32, pretrained=True, weights_file=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = reference.forward_intermediates(x, indices=[1, 4], intermediates_only=True)
        got = ours(x)
    torch.testing.assert_close(got["low_level"], expected[0])
    torch.testing.assert_close(got["out"], expected[1])
    fresh = TimmBackbone("efficientnet_b0", 32).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(x)["out"], expected[1])


def test_weights_file_through_the_config(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    cfg = compose_train(
        ["backbone=timm", "backbone.model=resnet18", "head=v3plus", "model.pretrained=true", f"model.weights={path}"]
    )
    model = models.make_model(cfg)
    torch.testing.assert_close(model.backbone.body.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.backbone.body.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_missing_weights_file_says_what_to_download(tmp_path: Path) -> None:
    with pytest.raises(TimmWeightsError, match=r"model.weights='/nope.pth' does not exist.*efficientnet_b0.ra_in1k"):
        TimmBackbone("efficientnet_b0", 16, pretrained=True, weights_file="/nope.pth")


def test_offline_pretrained_names_the_file_to_download(tmp_path: Path) -> None:
    """No network (HF_HUB_OFFLINE=1 fails as a closed network does, only at once): one line with the URL."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [str(BIN / "deeplab-train"), "backbone=timm", "backbone.model=efficientnet_b0", "model.pretrained=true",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, proc.stderr
    url = "https://huggingface.co/timm/efficientnet_b0.ra_in1k/resolve/main/model.safetensors"
    assert url in lines[0] and "model.weights=/path/to/model.safetensors" in lines[0]
    assert "model.pretrained=false" in lines[0] and "Traceback" not in proc.stderr


def test_no_timm_import_for_other_backbones() -> None:
    code = (
        "import sys; from deeplab_cli.config import models; from deeplab_cli.cli import train; "
        "from deeplab_cli.models import registry; registry.backbones(); assert 'timm' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_backbone_list_tool(tmp_path: Path) -> None:
    """``deeplab-backbones``: per model and output stride, works or why not; what the README's list is made of."""
    from deeplab_cli.cli.backbones import main

    out = tmp_path / "list.md"
    assert main(["efficientnet_b0", "dpn68", "vit_small_patch16_224", "input=128", f"out={out}"]) == 0
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[1:] for line in out.read_text().splitlines()[7:]}
    assert rows["efficientnet_b0"] == ["yes", "yes", "yes", "yes", "320", "24 |"]
    assert rows["dpn68"][:4] == ["no: cannot dilate", "no: cannot dilate", "yes", "yes"]
    assert rows["vit_small_patch16_224"][0] == "no: its deepest feature has stride 16"
    assert rows["vit_small_patch16_224"][1].startswith("fails on 128x128: Input height (128) doesn't match")
    assert "Of 3 timm architectures, **1 run at output stride 8, 1 at 16 and 2 at 32**" in out.read_text()


@pytest.mark.parametrize(
    ("arg", "says"),
    [("input=abc", "input='abc' must be a whole number"), ("input=8", "input='8' must be a whole number"),
     ("inptu=256", "unknown option 'inptu'")],
)  # fmt: skip
def test_backbone_list_bad_option_is_one_line_not_a_traceback(arg: str, says: str) -> None:
    """Defect 5 of issue 22: ``deeplab-backbones input=abc`` printed a ValueError traceback."""
    done = subprocess.run([sys.executable, "-m", "deeplab_cli.cli.backbones", arg], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_readme_quotes_the_committed_list() -> None:
    listed = (REPO / "docs" / "timm_backbones.md").read_text()
    counts = re.search(
        r"Of (\d+) timm architectures, \*\*(\d+) run at output stride 8, (\d+) at 16 and (\d+) at 32", listed
    )
    assert counts is not None
    total, os8, os16, os32 = (int(c) for c in counts.groups())
    assert total == len(listed.splitlines()) - 8 and total >= 1000
    readme = (REPO / "README.md").read_text()
    assert f"{total:,} architectures: **{os8} run at output stride 8, {os16} at 16 and {os32}" in readme
    assert f"timm {timm.__version__}" in listed  # remake the list when the pinned timm changes
