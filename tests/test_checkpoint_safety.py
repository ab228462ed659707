"""Checkpoints that would run code are refused; bad files, mismatched weights and full disks give clear errors."""

from __future__ import annotations

import builtins
import errno
import io
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from deeplab_cli.engine.runtime import checkpoint
from deeplab_cli.engine.runtime.checkpoint import (
    SAFE_GLOBALS,
    CheckpointError,
    OutputDirError,
    atomic_save,
    check_writable,
    load_checkpoint,
    load_weights,
)
from deeplab_cli.errors import DeepLabError

BIN = Path(sys.executable).parent


# --- payloads that would touch a marker file if unpickled without weights_only ------------------------------


class RunsCommand:
    """``__reduce__`` -> ``os.system("touch marker")``: the classic malicious pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class RunsEval:
    """``__reduce__`` -> ``builtins.eval(...)`` of code that creates the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.eval, (f"__import__('pathlib').Path({str(self.marker)!r}).touch()",))


class ArbitraryClass:
    """A plain pickled instance: unpickling imports the class and runs its ``__setstate__``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __setstate__(self, state: dict[str, Any]) -> None:
        Path(state["marker"]).touch()
        self.__dict__.update(state)


#: payload class, a global the refusal must name (any one of them).
PAYLOADS = {
    "os.system": (RunsCommand, ("os.system", "posix.system", "nt.system")),
    "builtins.eval": (RunsEval, ("builtins.eval",)),
    "arbitrary class": (ArbitraryClass, ("ArbitraryClass",)),
}


def _evil_checkpoint(tmp_path: Path, kind: str) -> tuple[Path, Path, tuple[str, ...]]:
    payload, names = PAYLOADS[kind]
    marker = tmp_path / "pwned"
    path = tmp_path / f"evil_{kind.replace(' ', '_').replace('.', '_')}.pt"
    torch.save({"model": payload(marker)}, path)
    assert not marker.exists()
    return path, marker, names


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_code_running_checkpoint_is_refused_and_never_runs(tmp_path: Path, kind: str) -> None:
    path, marker, names = _evil_checkpoint(tmp_path, kind)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "refused" in message
    assert any(name in message for name in names), message
    assert "numpy scalars" in message and "state_dict" in message
    assert "weights_only=False" not in message
    assert not marker.exists()


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_eval_cli_refuses_code_running_checkpoint(tmp_path: Path, kind: str) -> None:
    path, marker, names = _evil_checkpoint(tmp_path, kind)
    proc = subprocess.run(
        [str(BIN / "deeplab-eval"), f"checkpoint={path}", f"hydra.run.dir={tmp_path / 'eval'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert path.name in proc.stderr and "refus" in proc.stderr and "Traceback" not in proc.stderr
    assert any(name in proc.stderr for name in names), proc.stderr
    assert not marker.exists()


def test_safe_globals_are_only_numpy_scalars_and_dtypes() -> None:
    for entry in SAFE_GLOBALS:
        obj = entry[0] if isinstance(entry, tuple) else entry
        assert obj.__module__.startswith("numpy"), entry


# --- what published checkpoints need still loads -------------------------------------------------------------


def test_numpy_scalars_load(tmp_path: Path) -> None:
    weights = {"conv.weight": torch.randn(4, 3, 1, 1), "conv.bias": torch.randn(4)}
    extra = {"best_pred": np.float64(0.78), "epoch": np.int64(3), "lr": np.float32(0.01), "ok": np.bool_(True)}
    path = tmp_path / "published.pth"
    torch.save({"model": weights, **extra}, path)
    state = load_checkpoint(path)
    for key, value in extra.items():
        assert state[key] == value and type(state[key]) is type(value), key
    for key, value in weights.items():
        torch.testing.assert_close(state["model"][key], value, rtol=0, atol=0)


def test_numpy1_legacy_checkpoint_loads(tmp_path: Path) -> None:
    """Files pickled under numpy 1.x name ``numpy.core.multiarray.scalar``; numpy 2 renamed it ``numpy._core``."""
    buf = io.BytesIO()
    torch.save({"model": {"w": torch.arange(4.0)}, "best_pred": np.float64(0.5)}, buf,
               _use_new_zipfile_serialization=False)  # fmt: skip
    data = buf.getvalue().replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar")
    assert b"numpy.core.multiarray\nscalar" in data
    path = tmp_path / "old.pth"
    path.write_bytes(data)
    state = load_checkpoint(path)
    assert state["best_pred"] == 0.5
    torch.testing.assert_close(state["model"]["w"], torch.arange(4.0))


# --- unreadable files --------------------------------------------------------------------------------------


def _good_bytes(tmp_path: Path) -> bytes:
    good = tmp_path / "good.pt"
    torch.save({"model": {"w": torch.randn(64, 64)}}, good)
    return good.read_bytes()


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("truncated.pt", lambda good: good[: len(good) // 2], "truncated or corrupt"),
        ("empty.pt", lambda good: b"", "empty"),
        ("random.pt", lambda good: b"\x13\x37" + random.Random(0).randbytes(4096), "not a PyTorch checkpoint"),
        ("page.pth", lambda good: b"<!DOCTYPE html><html>Not Found</html>", "HTML page"),
    ],
)
def test_unreadable_file_names_file_and_reason(tmp_path: Path, name: str, make, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(make(_good_bytes(tmp_path)))
    with pytest.raises(CheckpointError, match=reason) as info:
        load_checkpoint(path)
    assert f"checkpoint {path} could not be read" in str(info.value)
    assert "weights_only" not in str(info.value)


def test_directory_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory") as info:
        load_checkpoint(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_missing_file_message_is_unchanged(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist; pass checkpoint="):
        load_checkpoint(tmp_path / "nope.pt")


# --- load_weights -------------------------------------------------------------------------------------------


class Tiny(nn.Module):
    """Stem conv + BN + a 1x1 classifier, with ``num_classes`` like our DeepLab."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.classifier = nn.Conv2d(8, num_classes, 1)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)


def test_load_weights_class_count_mismatch_leaves_model_untouched() -> None:
    torch.manual_seed(0)
    model, other = Tiny(21), Tiny(10)
    before = _snapshot(model)
    with pytest.raises(CheckpointError) as info:
        load_weights(model, other.state_dict(), "ckpt.pt")
    message = str(info.value)
    assert "ckpt.pt" in message and "nothing was loaded" in message
    assert "the checkpoint has 10 classes, the config 21" in message
    assert "model.num_classes=10" in message and "dataset.num_classes=10" in message
    assert "classifier.weight: checkpoint [10, 8, 1, 1] vs model [21, 8, 1, 1]" in message
    assert "classifier.bias: checkpoint [10] vs model [21]" in message
    _assert_unchanged(model, before)  # stem/bn fit and were not copied on the way to the error


def test_load_weights_class_hint_without_num_classes_attribute() -> None:
    """Plain modules: the last conv weight differing in out-channels only is taken as the classifier."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 21, 1))
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 10, 1))
    with pytest.raises(CheckpointError, match="the checkpoint has 10 classes, the config 21"):
        load_weights(model, other.state_dict(), "other.pt")


def test_load_weights_lists_missing_and_unexpected_keys() -> None:
    torch.manual_seed(0)
    model = Tiny(21)
    before = _snapshot(model)
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    state["head.weight"] = state.pop("classifier.weight")
    state["aux.weight"] = torch.zeros(3)
    state["epoch"] = 3  # type: ignore[assignment]
    with pytest.raises(CheckpointError) as info:
        load_weights(model, state, "foreign.pth")
    message = str(info.value)
    assert "missing: classifier.weight" in message
    assert "unexpected: head.weight, aux.weight, epoch" in message
    assert "(1 missing, 3 unexpected, 0 with a different shape)" in message
    assert "classes" not in message  # no shape of the classifier differs
    _assert_unchanged(model, before)


def test_load_weights_many_keys_are_counted() -> None:
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(10)])
    with pytest.raises(CheckpointError, match=r"\(\+15 more\)") as info:
        load_weights(model, {}, "empty.pt")
    assert "(20 missing, 0 unexpected, 0 with a different shape)" in str(info.value)


def test_load_weights_matching_state_dict_loads() -> None:
    torch.manual_seed(0)
    model, other = Tiny(21), Tiny(21)
    load_weights(model, other.state_dict(), "ckpt.pt")
    _assert_unchanged(model, other.state_dict())


# --- disk errors ---------------------------------------------------------------------------------------------


def _half_then(error: BaseException):
    """A ``torch.save`` that writes half of the real bytes, then fails like a full disk mid-write."""
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise error

    return save


def _enospc_inside_torch() -> RuntimeError:
    """What torch's zip writer really raises on a full disk: a RuntimeError with the OSError as context."""
    exc = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    exc.__context__ = OSError(errno.ENOSPC, "No space left on device")
    return exc


@pytest.mark.parametrize(
    "error", [OSError(errno.ENOSPC, "No space left on device"), _enospc_inside_torch()], ids=["oserror", "wrapped"]
)
def test_full_disk_keeps_previous_checkpoint(tmp_path: Path, monkeypatch, error: BaseException) -> None:
    folder = tmp_path / "checkpoints"
    last = folder / "last.pt"
    old = {"iteration": 1, "model": {"w": torch.ones(32, 32)}}
    atomic_save(old, last)
    monkeypatch.setattr(checkpoint.torch, "save", _half_then(error))
    with pytest.raises(CheckpointError) as info:
        atomic_save({"iteration": 2, "model": {"w": torch.zeros(32, 32)}}, last)
    monkeypatch.undo()
    message = str(info.value)
    assert str(last) in message and "No space left on device" in message and "ENOSPC" in message
    assert f"The previous checkpoint at {last} is intact" in message
    assert os.listdir(folder) == ["last.pt"]  # no .last.pt.*.tmp left behind
    state = load_checkpoint(last)
    assert state["iteration"] == 1
    torch.testing.assert_close(state["model"]["w"], old["model"]["w"])


def test_full_disk_on_first_save_says_nothing_was_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(checkpoint.torch, "save", _half_then(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(CheckpointError, match="Nothing was written"):
        atomic_save({"a": 1}, tmp_path / "last.pt")
    assert os.listdir(tmp_path) == []


def test_interrupt_while_saving_propagates_and_cleans_up(tmp_path: Path, monkeypatch) -> None:
    last = tmp_path / "last.pt"
    atomic_save({"iteration": 1}, last)
    monkeypatch.setattr(checkpoint.torch, "save", _half_then(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"iteration": 2}, last)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last.pt"] and load_checkpoint(last)["iteration"] == 1


def test_non_disk_errors_are_not_disguised(tmp_path: Path) -> None:
    """A programming error (unpicklable object) is not a disk problem: it propagates as it was."""
    with pytest.raises(Exception) as info:
        atomic_save({"f": lambda: 0}, tmp_path / "last.pt")
    assert not isinstance(info.value, DeepLabError)
    assert os.listdir(tmp_path) == []


def test_folder_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("a file where a folder should be")
    target = blocker / "exp" / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError) as info:
        atomic_save({"a": 1}, target)
    message = str(info.value)
    assert str(target) in message and "Not a directory" in message and f"{blocker} is a file" in message


def test_check_writable_creates_folder_and_leaves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    check_writable(folder, "the run directory (hydra.run.dir)")
    assert folder.is_dir() and os.listdir(folder) == []


def test_check_writable_unwritable_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "outputs"
    blocker.write_text("")
    folder = blocker / "run"
    with pytest.raises(OutputDirError) as info:
        check_writable(folder, "the run directory (hydra.run.dir)")
    message = str(info.value)
    assert isinstance(info.value, DeepLabError)
    assert f"the run directory (hydra.run.dir) {folder}" in message and "Not a directory" in message
    assert f"{blocker} is a file" in message and "hydra.run.dir=" in message


def test_allowlist_is_scoped_to_each_load(tmp_path: Path) -> None:
    """The numpy allowlist applies inside ``load_checkpoint`` only; torch's global allowlist is left alone."""
    path = tmp_path / "np.pt"
    torch.save({"epoch": np.int64(3)}, path)
    assert load_checkpoint(path)["epoch"] == 3
    assert not any(g in torch.serialization.get_safe_globals() for g in SAFE_GLOBALS)


def test_best_is_a_link_to_last_not_a_second_write(tmp_path: Path, monkeypatch) -> None:
    from deeplab_cli.engine.runtime.checkpoint import atomic_link

    last, best = tmp_path / "last.pt", tmp_path / "best.pt"
    atomic_save({"iteration": 2, "w": torch.ones(3)}, last)
    atomic_link(last, best)
    assert best.stat().st_ino == last.stat().st_ino
    atomic_save({"iteration": 4, "w": torch.zeros(3)}, last)  # a later, worse validation: last moves on
    assert load_checkpoint(best)["iteration"] == 2 and load_checkpoint(last)["iteration"] == 4

    def no_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # e.g. a file system without hard links: a copy
    atomic_link(last, best)
    assert best.stat().st_ino != last.stat().st_ino and load_checkpoint(best)["iteration"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
