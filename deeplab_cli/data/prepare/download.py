"""Downloads with resume and checksums, and one-line preparation errors: shared by every `deeplab-prepare` family."""

from __future__ import annotations

import hashlib
import http.client
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..palette import voc_palette  # noqa: F401 - re-exported for callers of this module

CHUNK_SIZE = 1 << 20


TIMEOUT_S = 60.0


USER_AGENT = "deeplab-cli-prepare-voc/1.0"


class PrepareError(RuntimeError):
    """A preparation step failed; the message tells the user what to do next."""


@dataclass(frozen=True)
class Resource:
    """One archive to download; kept in a table so tests can swap URL and checksum."""

    filename: str
    url: str
    digest: str | None  # None: no checksum is published (ADE20K's release_test.zip)
    algorithm: str = "md5"  # any hashlib name: ADE20K's published checksum is a sha1


def md5sum(path: Path, chunk_size: int = CHUNK_SIZE, algorithm: str = "md5") -> str:
    """Hash ``path`` in chunks so multi-GB archives never sit in memory."""
    digest = hashlib.new(algorithm)
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str, algorithm: str = "md5") -> None:
    """Delete ``path`` and raise if its checksum differs, so a re-run fetches it cleanly."""
    actual = md5sum(path, algorithm=algorithm)
    if actual != expected.lower():
        path.unlink(missing_ok=True)
        raise PrepareError(
            f"Checksum mismatch for {path.name} ({path}): expected {algorithm} {expected}, "
            f"got {actual}. The corrupt file was deleted; re-run to download it again."
        )


def download(resource: Resource, downloads: Path) -> Path:
    """Fetch ``resource`` into ``downloads`` (resuming any ``.part``) and verify it.

    A file already present is only verified, never fetched again, which also
    lets users drop in an archive they downloaded by hand.
    """
    downloads.mkdir(parents=True, exist_ok=True)
    target = downloads / resource.filename
    if not target.exists():
        part = target.with_name(target.name + ".part")
        _fetch(resource.url, part, target)
        part.replace(target)
    if resource.digest is not None:
        verify_md5(target, resource.digest, resource.algorithm)
    return target


def _fetch(url: str, part: Path, target: Path) -> None:
    """Stream ``url`` into ``part``, continuing from its current size if possible."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            status = getattr(response, "status", None) or response.getcode()
            if offset and status != 206:
                offset = 0  # the server ignored Range and sent the whole file
            _stream(response, part, offset, desc=target.name)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return  # nothing left to send: the .part is complete; md5 decides
        raise _network_error(url, target, exc) from exc
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise _network_error(url, target, exc) from exc


def _stream(response: http.client.HTTPResponse, part: Path, offset: int, desc: str) -> None:
    """Append the body to ``part`` (rewrite it if ``offset`` is 0), showing progress."""
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length and length.isdigit() else None
    with (
        part.open("ab" if offset else "wb") as fh,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=desc,
        ) as bar,
    ):
        while chunk := response.read(CHUNK_SIZE):
            fh.write(chunk)
            bar.update(len(chunk))
    if total is not None and part.stat().st_size < total:
        raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")


def _network_error(url: str, target: Path, exc: BaseException) -> PrepareError:
    """Build the one-paragraph message that tells the user how to recover by hand."""
    return PrepareError(
        f"Could not download {url} ({exc}). Check your network connection and re-run; "
        f"an interrupted download resumes where it stopped. If the server stays "
        f"unreachable, download the file by hand (browser, wget, a mirror) and save it "
        f"as {target} (i.e. into {target.parent}/), then re-run this script: it will "
        f"verify the md5 and continue without downloading."
    )


def extract(archive: Path, dest: Path) -> None:
    """Unpack ``archive`` into ``dest`` with tarfile's ``data`` filter.

    The filter rejects absolute paths, ``..`` and unsafe links, so a malicious
    or corrupt archive cannot write outside ``dest``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            members = tqdm(tar, desc=f"extract {archive.name}", unit=" files")
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise PrepareError(
            f"Could not extract {archive}: {exc}. Delete the archive and re-run to download it again."
        ) from exc


def run_prepare(action: Callable[[], object]) -> int:
    """Run a prepare step as a command: its error as one ``error:`` line (exit 1), Ctrl-C as "re-run" (130)."""
    try:
        action()
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0
