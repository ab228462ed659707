"""Offline tests for ``deeplab_cli.data.prepare.voc``.

Tiny fake VOC/SBD archives are built in a temp dir and served through a fake
``urllib.request.urlopen``, so the full pipeline (download, resume, md5,
extraction, .mat conversion, split lists) runs without a network.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from PIL import Image

from deeplab_cli.data.prepare import download
from deeplab_cli.data.prepare import voc as pv

VOC_TRAIN = ["2007_000032", "2007_000039"]
VOC_VAL = ["2007_000033", "2007_000042"]
SBD_TRAIN = ["2007_000033", "2008_000001"]  # 2007_000033 is also VOC val
SBD_VAL = ["2007_000032", "2008_000002"]  # 2007_000032 is also VOC train
EXPECTED_TRAIN_AUG = ["2007_000032", "2007_000039", "2008_000001", "2008_000002"]
EXPECTED_TRAINVAL_AUG = sorted(EXPECTED_TRAIN_AUG + VOC_VAL)
SHAPE = (6, 8)  # H, W

VOC_URL = "https://example.invalid/voc/VOCtrainval_11-May-2012.tar"
SBD_URL = "https://example.invalid/sbd/benchmark.tgz"


# ------------------------------------------------------------------ fake data


def _jpeg_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", SHAPE[::-1], (seed * 40 % 256, 100, 150)).save(buf, format="JPEG")
    return buf.getvalue()


def _voc_mask(seed: int) -> np.ndarray:
    mask = np.full(SHAPE, seed % 21, dtype=np.uint8)
    mask[0, :] = 255  # VOC's "void" border
    return mask


def _png_bytes(mask: np.ndarray) -> bytes:
    image = Image.frombytes("P", SHAPE[::-1], mask.tobytes())
    image.putpalette(pv.voc_palette())
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _sbd_mat_bytes(seg: np.ndarray) -> bytes:
    """Mimic SBD's ``GTcls`` struct.

    Fields: Boundaries (20x1 cell of sparse), Segmentation, CategoriesPresent.
    """
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = scipy.sparse.csc_matrix(seg == k + 1)
    present = np.unique(seg[seg > 0]).astype(np.uint8).reshape(-1, 1)
    buf = io.BytesIO()
    gtcls = {
        "Boundaries": boundaries,
        "Segmentation": seg,
        "CategoriesPresent": present,
    }
    scipy.io.savemat(buf, {"GTcls": gtcls})
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _split(ids: list[str]) -> bytes:
    return "".join(f"{i}\n" for i in ids).encode()


@dataclass
class FakeData:
    voc_tar: bytes
    sbd_tgz: bytes
    voc_masks: dict[str, np.ndarray]
    sbd_masks: dict[str, np.ndarray]
    mat_bytes: dict[str, bytes] = field(default_factory=dict)


def _build_fake_data() -> FakeData:
    rng = np.random.default_rng(0)
    voc_ids = VOC_TRAIN + VOC_VAL
    voc_masks = {i: _voc_mask(n + 1) for n, i in enumerate(voc_ids)}
    sbd_ids = sorted(set(SBD_TRAIN + SBD_VAL))
    sbd_masks = {i: rng.integers(0, 21, SHAPE, dtype=np.uint8) for i in sbd_ids}
    voc_buf = io.BytesIO()
    with tarfile.open(fileobj=voc_buf, mode="w") as tar:
        base = "VOCdevkit/VOC2012"
        for n, image_id in enumerate(voc_ids):
            _add(tar, f"{base}/JPEGImages/{image_id}.jpg", _jpeg_bytes(n))
            _add(
                tar,
                f"{base}/SegmentationClass/{image_id}.png",
                _png_bytes(voc_masks[image_id]),
            )
        _add(tar, f"{base}/ImageSets/Segmentation/train.txt", _split(VOC_TRAIN))
        _add(tar, f"{base}/ImageSets/Segmentation/val.txt", _split(VOC_VAL))
        _add(tar, f"{base}/ImageSets/Segmentation/trainval.txt", _split(sorted(voc_ids)))
    mat_bytes = {i: _sbd_mat_bytes(sbd_masks[i]) for i in sbd_ids}
    sbd_buf = io.BytesIO()
    with tarfile.open(fileobj=sbd_buf, mode="w:gz") as tar:
        base = "benchmark_RELEASE/dataset"
        for n, image_id in enumerate(sbd_ids):
            _add(tar, f"{base}/cls/{image_id}.mat", mat_bytes[image_id])
            _add(tar, f"{base}/img/{image_id}.jpg", _jpeg_bytes(n + 10))
        _add(tar, f"{base}/train.txt", _split(SBD_TRAIN))
        _add(tar, f"{base}/val.txt", _split(SBD_VAL))
    return FakeData(voc_buf.getvalue(), sbd_buf.getvalue(), voc_masks, sbd_masks, mat_bytes)


@pytest.fixture(scope="module")
def fake() -> FakeData:
    return _build_fake_data()


# ---------------------------------------------------------------- fake server


class FakeResponse(io.BytesIO):
    """Just enough of ``http.client.HTTPResponse`` for the downloader."""

    def __init__(self, body: bytes, status: int) -> None:
        super().__init__(body)
        self.status = status
        self.headers = {"Content-Length": str(len(body))}

    def getcode(self) -> int:
        return self.status


class FakeServer:
    """Replacement for ``urlopen`` that records requests and honours Range headers."""

    def __init__(self, files: dict[str, bytes], honour_range: bool = True) -> None:
        self.files = files
        self.honour_range = honour_range
        self.requests: list[urllib.request.Request] = []

    def __call__(self, request: urllib.request.Request, timeout: float | None = None) -> FakeResponse:
        self.requests.append(request)
        body = self.files[request.full_url]
        range_header = request.get_header("Range")
        if range_header and self.honour_range:
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
            return FakeResponse(body[start:], 206)
        return FakeResponse(body, 200)

    def urls(self) -> list[str]:
        return [r.full_url for r in self.requests]


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, fake: FakeData) -> FakeServer:
    """Point the resource table at fake URLs/md5s and serve them from memory."""
    voc, sbd = pv.RESOURCES["voc"], pv.RESOURCES["sbd"]
    monkeypatch.setitem(pv.RESOURCES, "voc", download.Resource(voc.filename, VOC_URL, _md5(fake.voc_tar)))
    monkeypatch.setitem(pv.RESOURCES, "sbd", download.Resource(sbd.filename, SBD_URL, _md5(fake.sbd_tgz)))
    srv = FakeServer({VOC_URL: fake.voc_tar, SBD_URL: fake.sbd_tgz})
    monkeypatch.setattr(urllib.request, "urlopen", srv)
    return srv


def _resource(data: bytes, name: str = "blob.bin") -> download.Resource:
    return download.Resource(name, f"https://example.invalid/{name}", _md5(data))


# ---------------------------------------------------------------------- tests


def test_voc_palette_matches_voclabelcolormap() -> None:
    palette = pv.voc_palette()
    assert len(palette) == 768
    rgb = [tuple(palette[3 * i : 3 * i + 3]) for i in range(256)]
    assert rgb[0] == (0, 0, 0)
    assert rgb[1] == (128, 0, 0)  # aeroplane
    assert rgb[2] == (0, 128, 0)  # bicycle
    assert rgb[15] == (192, 128, 128)  # person
    assert rgb[20] == (0, 64, 128)  # tvmonitor
    assert rgb[255] == (224, 224, 192)  # void


def test_fake_mat_roundtrips_like_sbd(tmp_path: Path, fake: FakeData) -> None:
    image_id = "2008_000001"
    mat_path = tmp_path / f"{image_id}.mat"
    mat_path.write_bytes(fake.mat_bytes[image_id])
    raw = scipy.io.loadmat(mat_path)["GTcls"]
    assert raw.shape == (1, 1)
    assert set(raw.dtype.names) == {"Boundaries", "Segmentation", "CategoriesPresent"}
    loaded = pv.load_sbd_mask(mat_path)
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, fake.sbd_masks[image_id])


def test_compute_train_aug_excludes_voc_val() -> None:
    got = pv.compute_train_aug(set(VOC_TRAIN), set(VOC_VAL), set(SBD_TRAIN), set(SBD_VAL))
    assert got == EXPECTED_TRAIN_AUG


def test_prepare_builds_aug_dataset(tmp_path: Path, server: FakeServer, fake: FakeData) -> None:
    root = tmp_path / "data"
    assert pv.main(["--root", str(root), "--workers", "2"]) == 0
    voc = root / "VOCdevkit" / "VOC2012"
    splits = voc / "ImageSets" / "Segmentation"
    assert (splits / "train_aug.txt").read_text().split() == EXPECTED_TRAIN_AUG
    assert (splits / "trainval_aug.txt").read_text().split() == EXPECTED_TRAINVAL_AUG
    aug = voc / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.glob("*.png")) == EXPECTED_TRAINVAL_AUG
    for image_id in EXPECTED_TRAINVAL_AUG:
        image = Image.open(aug / f"{image_id}.png")
        assert image.mode == "P"
        assert image.getpalette() == pv.voc_palette()
        # VOC masks take precedence over SBD for ids in both datasets.
        expected = fake.voc_masks.get(image_id, fake.sbd_masks.get(image_id))
        np.testing.assert_array_equal(np.asarray(image), expected)
    for shared in ("2007_000032", "2007_000033"):  # in both VOC and SBD
        assert (aug / f"{shared}.png").read_bytes() == (voc / "SegmentationClass" / f"{shared}.png").read_bytes()
    jpegs = sorted(p.stem for p in (voc / "JPEGImages").glob("*.jpg"))
    assert jpegs == EXPECTED_TRAINVAL_AUG  # SBD-only images were copied in
    assert not (root / "downloads").exists()  # archives deleted by default
    assert server.urls() == [VOC_URL, SBD_URL]


def test_rerun_does_not_download_again(tmp_path: Path, server: FakeServer) -> None:
    root = tmp_path / "data"
    assert pv.main(["--root", str(root), "--keep-archives", "--workers", "1"]) == 0
    assert len(server.requests) == 2
    assert (root / "downloads" / pv.RESOURCES["voc"].filename).is_file()
    assert pv.main(["--root", str(root), "--workers", "1"]) == 0  # markers present
    assert len(server.requests) == 2
    # Archives present with the right md5 are verified, not fetched again.
    downloaded = download.download(pv.RESOURCES["voc"], tmp_path / "dl")
    assert len(server.requests) == 3
    assert download.download(pv.RESOURCES["voc"], tmp_path / "dl") == downloaded
    assert len(server.requests) == 3


def test_skip_sbd_prepares_voc_only(tmp_path: Path, server: FakeServer) -> None:
    root = tmp_path / "data"
    assert pv.main(["--root", str(root), "--skip-sbd"]) == 0
    assert server.urls() == [VOC_URL]
    voc = root / "VOCdevkit" / "VOC2012"
    assert (voc / "SegmentationClass" / "2007_000032.png").is_file()
    assert not (root / "SBD").exists()
    assert not (voc / "SegmentationClassAug").exists()
    assert not (voc / "ImageSets" / "Segmentation" / "train_aug.txt").exists()


def test_wrong_md5_raises_and_deletes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"x" * 1000
    wrong = "0" * 32
    resource = download.Resource("blob.bin", "https://example.invalid/blob.bin", wrong)
    monkeypatch.setattr(urllib.request, "urlopen", FakeServer({resource.url: data}))
    with pytest.raises(download.PrepareError) as info:
        download.download(resource, tmp_path)
    message = str(info.value)
    assert "blob.bin" in message and wrong in message and _md5(data) in message
    assert not (tmp_path / "blob.bin").exists()


def test_network_failure_names_url_and_downloads_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(request: urllib.request.Request, timeout: float | None = None) -> None:
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    root = tmp_path / "data"
    resource = pv.RESOURCES["voc"]
    with pytest.raises(download.PrepareError) as info:
        download.download(resource, root / "downloads")
    message = str(info.value)
    assert resource.url in message
    assert str(root / "downloads" / resource.filename) in message
    assert pv.main(["--root", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and resource.url in err


def test_resume_sends_range_and_appends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytes(range(256)) * 40
    half = len(data) // 2
    resource = _resource(data)
    (tmp_path / "blob.bin.part").write_bytes(data[:half])
    srv = FakeServer({resource.url: data})
    monkeypatch.setattr(urllib.request, "urlopen", srv)
    path = download.download(resource, tmp_path)
    assert [r.get_header("Range") for r in srv.requests] == [f"bytes={half}-"]
    assert download.md5sum(path) == resource.digest
    assert not (tmp_path / "blob.bin.part").exists()


def test_resume_restarts_when_server_ignores_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytes(range(256)) * 40
    resource = _resource(data)
    (tmp_path / "blob.bin.part").write_bytes(data[:100])
    monkeypatch.setattr(urllib.request, "urlopen", FakeServer({resource.url: data}, honour_range=False))
    path = download.download(resource, tmp_path)
    assert path.read_bytes() == data


def test_truncated_response_is_a_network_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"y" * 500

    def short(request: urllib.request.Request, timeout: float | None = None) -> FakeResponse:
        response = FakeResponse(data[:200], 200)
        response.headers = {"Content-Length": str(len(data))}
        return response

    monkeypatch.setattr(urllib.request, "urlopen", short)
    resource = _resource(data)
    with pytest.raises(download.PrepareError, match="Could not download"):
        download.download(resource, tmp_path)
    assert (tmp_path / "blob.bin.part").stat().st_size == 200  # kept for resuming
