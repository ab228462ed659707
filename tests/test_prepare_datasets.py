"""The prepare commands of ADE20K and Cityscapes, offline: archives the tests write, a fetch that fails."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplab_cli.data.prepare import ade20k, cityscapes
from deeplab_cli.data.prepare.download import PrepareError, Resource


def _png(mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 6) if mode == "L" else (4, 6, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _zip(path: Path, files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def _ade_files() -> dict[str, bytes]:
    files = {}
    for split, n in (("training", 3), ("validation", 2)):
        for i in range(n):
            files[f"ADEChallengeData2016/images/{split}/ADE_{split}_{i:08d}.jpg"] = b"jpeg"
            files[f"ADEChallengeData2016/annotations/{split}/ADE_{split}_{i:08d}.png"] = _png()
    return files


def test_ade20k_archive_in_downloads_is_verified_and_unpacked(tmp_path: Path) -> None:
    data = _zip(tmp_path / "downloads" / ade20k.RESOURCE.filename, _ade_files())
    resource = Resource(
        ade20k.RESOURCE.filename, "https://example.invalid/x.zip", hashlib.sha1(data).hexdigest(), "sha1"
    )
    assert ade20k.prepare(tmp_path, resource=resource) == {"training": 3, "validation": 2}
    assert not (tmp_path / "downloads").exists(), "the archive is removed after success"
    assert ade20k.prepare(tmp_path, resource=resource) == {"training": 3, "validation": 2}  # re-run: no archive needed


def test_ade20k_wrong_checksum_deletes_the_file(tmp_path: Path) -> None:
    _zip(tmp_path / "downloads" / ade20k.RESOURCE.filename, _ade_files())
    resource = Resource(ade20k.RESOURCE.filename, "https://example.invalid/x.zip", "0" * 40, "sha1")
    with pytest.raises(PrepareError, match="expected sha1 0000"):
        ade20k.prepare(tmp_path, resource=resource)
    assert not (tmp_path / "downloads" / ade20k.RESOURCE.filename).exists()


def test_ade20k_unreachable_server_says_where_to_put_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert ade20k.main(["--root", str(tmp_path)]) == 1
    with pytest.raises(PrepareError) as info:
        ade20k.prepare(tmp_path)
    message = str(info.value)
    assert ade20k.RESOURCE.url in message and str(tmp_path / "downloads" / ade20k.RESOURCE.filename) in message


def test_ade20k_test_images_go_where_the_test_split_reads_them(tmp_path: Path) -> None:
    """``deeplab-prepare ade20k --test``: release_test.zip's images, flat under images/testing (no masks)."""
    files = {f"release_test/testing/ADE_test_{i:08d}.jpg": b"jpeg%d" % i for i in (1, 2, 3)}
    _zip(tmp_path / "downloads" / "release_test.zip", {**files, "release_test/list.txt": b"x"})
    resource = ade20k.Resource("release_test.zip", "https://example.invalid/release_test.zip", None)
    assert ade20k.prepare_test(tmp_path, resource=resource) == 3
    testing = tmp_path / "ADEChallengeData2016" / "images" / "testing"
    assert sorted(p.name for p in testing.iterdir()) == [f"ADE_test_{i:08d}.jpg" for i in (1, 2, 3)]
    assert (testing / "ADE_test_00000002.jpg").read_bytes() == b"jpeg2"
    assert not (tmp_path / "downloads").exists()
    assert ade20k.prepare_test(tmp_path, resource=resource) == 3  # re-run: no archive needed
    (tmp_path / "other").mkdir()
    _zip(tmp_path / "other" / "downloads" / "release_test.zip", {"readme.txt": b"x"})
    with pytest.raises(PrepareError, match="holds no .jpg images"):
        ade20k.prepare_test(tmp_path / "other", resource=resource)


def _cityscapes_zips(folder: Path) -> None:
    left, fine = {"license.txt": b"x"}, {"license.txt": b"x"}
    for split, city in (("train", "aachen"), ("val", "frankfurt"), ("test", "berlin")):
        stem = f"{city}_000000_000019"
        left[f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"] = _png("RGB")
        fine[f"gtFine/{split}/{city}/{stem}_gtFine_labelIds.png"] = _png()
        fine[f"gtFine/{split}/{city}/{stem}_gtFine_color.png"] = _png("RGB")
    _zip(folder / "leftImg8bit_trainvaltest.zip", left)
    _zip(folder / "gtFine_trainvaltest.zip", fine)


def test_cityscapes_zips_are_unpacked_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _cityscapes_zips(tmp_path / "zips")
    assert cityscapes.main(["--zips", str(tmp_path / "zips"), "--root", str(tmp_path / "data")]) == 0
    tree = tmp_path / "data" / "cityscapes"
    assert (tree / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000019_gtFine_labelIds.png").is_file()
    assert cityscapes.prepare(tmp_path / "zips", tmp_path / "data") == {"train": 1, "val": 1, "test": 1}
    assert "already extracted" in capsys.readouterr().out


def test_cityscapes_missing_zip_names_the_download_page(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match="gtFine_trainvaltest.zip.*cityscapes-dataset.com"):
        cityscapes.prepare(tmp_path, tmp_path / "data")


def test_damaged_zip_is_reported(tmp_path: Path) -> None:
    _cityscapes_zips(tmp_path / "zips")
    zip_path = tmp_path / "zips" / "gtFine_trainvaltest.zip"
    zip_path.write_bytes(zip_path.read_bytes()[:200])
    with pytest.raises(PrepareError, match="damaged or incomplete"):
        cityscapes.prepare(tmp_path / "zips", tmp_path / "data")
