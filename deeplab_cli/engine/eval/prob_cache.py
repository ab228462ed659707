"""A disk cache of the network's per-image class probabilities, for CRF parameter sweeps.

A DenseCRF grid search (the papers tuned 3 parameters on 100 val images) changes
nothing upstream of the CRF, so the network runs once and each further job only
pays for the CRF. Entries are float16 probabilities at image resolution (what the
CRF needs) plus the network's own argmax, so the network-only mIoU stays exact.
The directory name is a digest of everything that determines the probabilities:
checkpoint contents, architecture, preprocessing, split and test-time settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

#: Bump when the stored format or the inference code changes what is stored.
CACHE_VERSION = 1


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's contents (a retrained checkpoint at the same path is a new key)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ProbabilityCache:
    """One directory of ``<image id>.npz`` files (``probs`` float16 (C, H, W), ``pred`` uint8 (H, W))."""

    def __init__(self, root: str | Path, key: Mapping[str, Any]) -> None:
        text = json.dumps({"cache_version": CACHE_VERSION, **key}, sort_keys=True, default=str)
        self.key = json.loads(text)
        self.dir = Path(root).expanduser() / hashlib.sha256(text.encode()).hexdigest()[:24]

    def path(self, image_id: str) -> Path:
        return self.dir / f"{image_id}.npz"

    def has(self, image_id: str) -> bool:
        return self.path(image_id).is_file()

    def load(self, image_id: str) -> tuple[np.ndarray, np.ndarray] | None:
        """``(probs, pred)``, or None when the entry is missing or unreadable (it is then recomputed)."""
        try:
            with np.load(self.path(image_id)) as entry:
                return entry["probs"], entry["pred"]
        except (OSError, ValueError, KeyError, EOFError):
            return None

    def save(self, image_id: str, probs: np.ndarray, pred: np.ndarray) -> None:
        """Atomic per entry (temporary file + rename): parallel or interrupted jobs never see half a file."""
        self.dir.mkdir(parents=True, exist_ok=True)
        key_file = self.dir / "key.json"
        if not key_file.is_file():
            _atomic_write(key_file, lambda f: f.write(json.dumps(self.key, indent=2).encode()))
        path = self.path(image_id)
        path.parent.mkdir(parents=True, exist_ok=True)  # stems may hold sub-folders (Cityscapes' city/name)
        _atomic_write(
            path,
            lambda f: np.savez(f, probs=probs.astype(np.float16), pred=pred.astype(np.uint8)),
        )


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
