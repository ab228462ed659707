"""Checkpoints: atomic writes, weights-only loading with a small allowlist, and readable mismatch errors.

A crash, pre-emption or full disk mid-write must never cost the user ``last.pt``: files
are written to a temporary sibling, flushed, fsynced and renamed over the old one.
Loading uses ``weights_only=True`` so a checkpoint can never run code; the only extra
types allowed are the numpy scalars and dtypes that published checkpoints carry
(``best_pred``, ``epoch``). Everything else is refused with the offending names.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import CheckpointError, DeepLabError  # noqa: F401 - CheckpointError: raised and re-exported here

FORMAT_VERSION = 1

#: How many keys of each kind a mismatch error lists before it only counts them.
_SHOWN = 5

#: numpy dtypes whose scalars (and dtype objects) may appear in a checkpoint.
_PLAIN_DTYPES = (
    "float16", "float32", "float64",
    "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64",
    "bool",
)  # fmt: skip

#: What a checkpoint may hold besides tensors and containers; lists what it is allowed and why.
_ALLOWED_TEXT = (
    "Only tensors, containers (dict, list, tuple, OrderedDict), numbers, strings and numpy scalars are loaded"
)


class OutputDirError(DeepLabError):
    """An output folder (the run directory) that cannot be created or written to."""


def _numpy_scalar() -> Any:
    """``numpy``'s scalar reconstructor: ``numpy._core`` since numpy 2, ``numpy.core`` before."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


def _safe_globals() -> list[Any]:
    # Both module paths: a file pickled under numpy 1.x names numpy.core, under 2.x numpy._core.
    scalar = _numpy_scalar()
    aliases = [(scalar, f"{module}.multiarray.scalar") for module in ("numpy._core", "numpy.core")]
    return [*aliases, np.dtype, *(type(np.dtype(name)) for name in _PLAIN_DTYPES)]


#: The globals ``load_checkpoint`` allows on top of torch's weights-only defaults.
SAFE_GLOBALS: list[Any] = _safe_globals()

_SAFE_NAMES = frozenset(g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in SAFE_GLOBALS)


def _errno_text(exc: OSError) -> str:
    """``No space left on device [ENOSPC]``: the OS reason, with the symbolic code for searching."""
    code = errno.errorcode.get(exc.errno or -1)
    return f"{exc.strerror or exc}" + (f" [{code}]" if code else "")


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: torch's zip writer wraps a failed ``write`` in a RuntimeError."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _blocking_file(folder: Path) -> Path | None:
    """The nearest existing ancestor of ``folder`` that is a file: why a folder cannot be created."""
    for parent in (folder, *folder.parents):
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _where(exc: OSError, folder: Path) -> str:
    blocker = _blocking_file(folder) if exc.errno == errno.ENOTDIR else None
    return f"; {blocker} is a file, not a folder" if blocker is not None else ""


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename.

    An OSError (full disk, read-only or unwritable folder) becomes a :class:`CheckpointError`
    naming the path and the reason; the temporary file is removed and a previous file at
    ``path`` is left as it was. Interrupts propagate unchanged after the same cleanup.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except BaseException as exc:
        if tmp is not None:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
        os_error = _os_error_in(exc) if isinstance(exc, Exception) else None
        if os_error is None:
            raise
        raise _write_error(path, os_error) from exc
    _fsync_dir(path.parent)


def atomic_link(src: str | Path, dst: str | Path) -> None:
    """Make ``dst`` the same checkpoint as ``src`` without writing it twice: a hard link (a copy where
    the file system has none), under a temporary name renamed over ``dst``.

    ``best.pt`` saved at the iteration ``last.pt`` was just saved is the same bytes; a later
    ``atomic_save`` of ``last.pt`` renames a new file over it, so the link keeps the old one.
    """
    src, dst = Path(src), Path(dst)
    tmp = dst.parent / f".{dst.name}.{os.getpid()}.link.tmp"
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:  # no hard links here (some network or FAT file systems): copy
            shutil.copyfile(src, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
    except OSError as exc:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise _write_error(dst, exc) from exc
    _fsync_dir(dst.parent)


def _write_error(path: Path, exc: OSError) -> CheckpointError:
    if path.is_file():
        previous, then = f"The previous checkpoint at {path} is intact.", "then resume with resume=true"
    else:
        previous, then = f"Nothing was written at {path} (there was no previous checkpoint there).", "then run again"
    return CheckpointError(
        f"could not write checkpoint {path}: {_errno_text(exc)}{_where(exc, path.parent)}. {previous} "
        f"Free some disk space or make the folder writable, or choose another hydra.run.dir=..., {then}."
    )


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable; filesystems that cannot fsync a folder are tolerated."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise CheckpointError(
                f"a checkpoint was written in {folder} but the folder could not be synced to disk "
                f"({_errno_text(exc)}); a crash now could lose it. Check the disk, or choose another hydra.run.dir=..."
            ) from exc
    finally:
        os.close(dir_fd)


def check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` and write a probe file, so an unwritable output fails before any work is done."""
    folder = Path(folder).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(b"deeplab-cli write probe\n")
                f.flush()
                os.fsync(f.fileno())
        finally:
            Path(probe).unlink(missing_ok=True)
    except OSError as exc:
        raise OutputDirError(
            f"cannot write to {what} {folder}: {_errno_text(exc)}{_where(exc, folder)}. "
            f"Choose a writable hydra.run.dir=... (a folder you can create files in, with free space)."
        ) from exc


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with weights-only unpickling and :data:`SAFE_GLOBALS`; clear errors for bad files."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} could not be read: it is a directory, not a file. "
            f"Pass the checkpoint file itself, e.g. checkpoint={path / 'checkpoints' / 'last.pt'}"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass checkpoint=/path/to/last.pt")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} could not be read: it is empty (0 bytes), probably left by an interrupted "
            "copy, download or save. Copy or download it again, or use another checkpoint."
        )
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for bad files
        raise _read_error(path, exc) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, not a dict of tensors")
    return obj


def _unsafe_globals(path: Path, exc: BaseException) -> list[str]:
    """The globals outside the allowlist that made ``torch.load`` refuse ``path`` (empty: not refused)."""
    if not isinstance(exc, pickle.UnpicklingError):
        return []
    names: list[str] = []
    with suppress(Exception), torch.serialization.safe_globals(SAFE_GLOBALS):
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    names = [n for n in names if n not in _SAFE_NAMES]
    if not names:  # legacy (non-zip) files cannot be scanned; torch names the first one it met
        names = re.findall(r"GLOBAL ([\w.]+)", str(exc))
    return list(dict.fromkeys(names))


def _short_reason(exc: Exception) -> str:
    """The first useful line of torch's message, without its advice (which suggests ``weights_only=False``)."""
    text = str(exc).split(". This is an internal")[0]
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    elif text.startswith("Weights only load failed"):
        text = ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def _read_error(path: Path, exc: Exception) -> CheckpointError:
    """Refusal for files that would run code; otherwise what kind of unreadable the file is."""
    refused = _unsafe_globals(path, exc)
    if refused:
        return CheckpointError(
            f"checkpoint {path} was refused: its pickle asks for {', '.join(refused)}, and loading it "
            "would import and call that, which could run arbitrary code. "
            f"{_ALLOWED_TEXT}. If you trust its source, re-save just its weights with "
            "torch.save(model.state_dict(), 'weights.pt') where it was made, and pass that file."
        )
    os_error = _os_error_in(exc)
    if os_error is not None and os_error.errno in (errno.EACCES, errno.EPERM, errno.EIO):
        return CheckpointError(f"checkpoint {path} could not be read: {_errno_text(os_error)}")
    reason = _short_reason(exc)
    head = b""
    with suppress(OSError), path.open("rb") as f:
        head = f.read(32)
    if head.startswith((b"PK\x03\x04", b"\x80\x02\x8a\x0a")):  # torch.save's zip / legacy magic number
        kind = "it is truncated or corrupt"
        hint = "Copy or download it again; if training wrote it, use best.pt or an older copy"
    elif head.startswith(b"version https://git-lfs"):
        kind, hint = "it is a Git LFS pointer, not the weights", "Run git lfs pull in its repository"
    elif head.lstrip().startswith(b"<"):
        kind, hint = "it looks like an HTML page (a failed download?)", "Download the file again"
    else:
        kind = "it is not a PyTorch checkpoint (not a file written by torch.save)"
        hint = "Pass a .pt/.pth file written by torch.save"
    return CheckpointError(f"checkpoint {path} could not be read: {kind} ({reason}). {hint}.")


def _shape(value: Any) -> str:
    return str(list(value.shape)) if isinstance(value, Tensor) else f"a {type(value).__name__}, not a tensor"


def _listing(label: str, items: Sequence[str]) -> str:
    more = f", ... (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return f"  {label}: {', '.join(items[:_SHOWN])}{more}"


def _class_hint(model: torch.nn.Module, state_dict: Mapping[str, Any], wrong: list[str]) -> str | None:
    """``the checkpoint has N classes, the config M``: the classifier conv differs only in out-channels."""
    expected = model.state_dict()
    convs = [k for k in wrong if expected[k].dim() == 4 and isinstance(state_dict[k], Tensor)]
    convs = [k for k in convs if state_dict[k].dim() == 4 and state_dict[k].shape[1:] == expected[k].shape[1:]]
    if not convs:
        return None
    n_model = getattr(model, "num_classes", None)
    matching = [k for k in convs if expected[k].shape[0] == n_model]
    last_conv = [k for k in expected if expected[k].dim() == 4][-1]
    key = matching[-1] if matching else last_conv if last_conv in convs else None
    if key is None:
        return None
    n, m = state_dict[key].shape[0], expected[key].shape[0]
    return (
        f"  the checkpoint has {n} classes, the config {m}: set model.num_classes={n} / dataset.num_classes={n} "
        f"(and a dataset with {n} classes), or start from a {m}-class checkpoint"
    )


def load_weights(model: torch.nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Strict ``load_state_dict`` whose error lists the differing keys and shapes instead of torch's wall of text.

    Everything is checked before anything is copied, so a failed call leaves ``model`` as it was.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        k
        for k, v in state_dict.items()
        if k in expected and (not isinstance(v, Tensor) or tuple(v.shape) != tuple(expected[k].shape))
    ]
    if missing or unexpected or wrong:
        lines = [f"{source} does not fit the model its config describes; nothing was loaded:"]
        hint = _class_hint(model, state_dict, wrong)
        if hint:
            lines.append(hint)
        shapes = [f"{k}: checkpoint {_shape(state_dict[k])} vs model {list(expected[k].shape)}" for k in wrong]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape differs", shapes)):
            if items:
                lines.append(_listing(label, items))
        lines.append(f"  ({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} with a different shape)")
        raise CheckpointError("\n".join(lines))
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied; shapes and keys were checked
        raise CheckpointError(f"{source} could not be loaded into the model: {str(exc).splitlines()[0]}") from exc


def load_matching(model: torch.nn.Module, state_dict: Mapping[str, Tensor], source: str) -> list[str]:
    """Copy every tensor of ``state_dict`` whose name and shape fit ``model``; the names left out.

    For a new label set: only tensors whose shape differs (the classifiers) are left
    as ``model`` has them. A missing or unexpected name means another architecture,
    which is refused as :func:`load_weights` refuses it, before anything is copied.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        lines = [f"{source} is another architecture than the model its config describes; nothing was loaded:"]
        for label, items in (("missing", missing), ("unexpected", unexpected)):
            if items:
                lines.append(_listing(label, items))
        raise CheckpointError("\n".join(lines))
    skipped = [k for k, v in state_dict.items() if tuple(v.shape) != tuple(expected[k].shape)]
    fitting = {k: v for k, v in state_dict.items() if k not in skipped}
    model.load_state_dict({**expected, **fitting}, strict=True)
    return skipped


def rng_state() -> dict[str, Any]:
    """The RNGs a training step draws from (dropout; augmentation is seeded per sample)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
