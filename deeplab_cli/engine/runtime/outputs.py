"""Writing into a folder the user named without losing anything that was there.

``deeplab-predict output=photos/`` once replaced the photos with masks, and
``output=data/masks/val`` replaced the ground truth. Here a command:

- never writes into a folder its inputs come from, nor into a dataset root
  (:func:`check_output_folder`);
- keeps a manifest of the files it wrote (``.deeplab-outputs.jsonl``, one line per file, so a
  run cut short still knows its own), and replaces a file only if the manifest says it
  wrote it and the file has not changed since (:class:`OutputFolder`).

``overwrite=True`` lifts both rules: the user's word.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ...errors import DeepLabError

MANIFEST = ".deeplab-outputs.jsonl"
_EXAMPLES = 3


class OutputError(DeepLabError):
    """An output folder that would lose or mix files; the message names them and the way out."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def check_output_folder(
    out: Path,
    key: str,
    input_folders: Iterable[Path],
    protected: Iterable[tuple[Path, str]],
    overwrite: bool,
    inside: bool = True,
) -> None:
    """Refuse ``out`` (named by ``key``) inside an input folder or a protected folder, unless ``overwrite``.

    ``protected`` pairs a folder with what it is (``"the dataset root (dataset.root)"``). With
    ``inside=False`` (single files or a glob as input) only the input files' own folders are refused.
    """
    if overwrite:
        return
    target = Path(os.path.realpath(out))
    for folder in input_folders:
        source = Path(os.path.realpath(folder))
        if _inside(target, source) if inside else target == source:
            raise OutputError(
                f"{key}={str(out)!r} is inside the input folder {str(folder)!r}: the outputs would land among (and "
                f"could replace) the files they are made from. Choose a folder outside it, e.g. {key}="
                f"{Path(os.path.realpath(folder)).name}_predictions, or pass overwrite=true if you mean it."
            )
    for folder, what in protected:
        if _inside(target, Path(os.path.realpath(folder))):
            raise OutputError(
                f"{key}={str(out)!r} is inside {what} {str(folder)!r}; no command but deeplab-prepare writes into a "
                "dataset, where new files would change what training and evaluation read. Choose a folder outside "
                "it, or pass overwrite=true if you mean it."
            )


class OutputFolder:
    """A folder a command writes named files into, replacing only what it wrote itself."""

    def __init__(self, folder: Path, key: str, overwrite: bool = False) -> None:
        self.folder = folder
        self.key = key
        self.overwrite = overwrite
        self.manifest = folder / MANIFEST
        self.ours = self._read_manifest()

    def _read_manifest(self) -> dict[str, str]:
        ours: dict[str, str] = {}
        if not self.manifest.is_file():
            return ours
        for line in self.manifest.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
                ours[str(row["file"])] = str(row["sha256"])
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash: its file is not known to be ours
        return ours

    def foreign(self, names: Iterable[str]) -> list[str]:
        """The names that exist and were not written by us (or were changed since)."""
        found = []
        for name in names:
            path = self.folder / name
            if path.exists() and (name not in self.ours or not path.is_file() or _sha256(path) != self.ours[name]):
                found.append(name)
        return found

    def claim(self, names: list[str]) -> None:
        """Check every planned name before anything is written: nothing is replaced half-way."""
        if self.overwrite:
            return
        foreign = self.foreign(names)
        if foreign:
            examples = ", ".join(str(self.folder / n) for n in foreign[:_EXAMPLES])
            raise OutputError(
                f"{self.key}={str(self.folder)!r} already holds {len(foreign)} file(s) this command would replace and "
                f"did not write (or that changed since), e.g. {examples}. Nothing was written. Choose an empty or new "
                f"folder, or pass overwrite=true to replace them."
            )

    def record(self, name: str) -> None:
        """Enter a file written by other means (an exporter writing atomically itself) in the manifest."""
        digest = _sha256(self.folder / name)
        self.ours[name] = digest
        with open(self.manifest, "a", encoding="utf-8") as f:  # one short line: an atomic append
            f.write(json.dumps({"file": name, "sha256": digest}) + "\n")

    def write(self, name: str, save: Callable[[Path], None]) -> Path:
        """``save(tmp_path)`` then an atomic rename onto ``name``, recorded in the manifest."""
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
        save(tmp)
        os.replace(tmp, path)
        self.record(name)
        return path


def write_texts(files: dict[Path, str], key: str, overwrite: bool = False) -> None:
    """Write each ``path: text`` through an :class:`OutputFolder`: all checked first, then written."""
    folders: dict[Path, OutputFolder] = {}
    for path in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        folders.setdefault(path.parent, OutputFolder(path.parent, key, overwrite))
    for folder in folders.values():
        folder.claim([p.name for p in files if p.parent == folder.folder])
    for path, text in files.items():
        folders[path.parent].write(path.name, lambda tmp, text=text: tmp.write_text(text))
