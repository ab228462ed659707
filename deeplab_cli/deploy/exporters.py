"""Write a :class:`~.wrapper.DeployModel` as ONNX or a torch.export program, and run such files.

Both go through ``torch.export`` (ONNX with ``torch.onnx.export(dynamo=True)``), with
batch, height and width as symbolic dimensions, so one file serves every image size.
A metadata entry (``deeplab_cli`` in ONNX ``metadata_props``, an extra file in the
``.pt2`` archive) records classes, palette, preprocessing and the source checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DeepLabError

FORMATS = ("onnx", "torch_export")
SUFFIX = {"onnx": ".onnx", "torch_export": ".pt2"}
OPSETS = range(18, 24)  # the dynamo exporter starts at 18; ONNX Runtime 1.2x runs up to 23
METADATA_KEY = "deeplab_cli"
EXTRA = "deeplab_cli.json"

Runner = Callable[[np.ndarray], np.ndarray]


class ExportError(DeepLabError):
    """An export that cannot be made, run or trusted; the message says why and what to change."""


def require_onnx() -> None:
    """onnx, onnxscript and onnxruntime are the optional ``export`` extra."""
    missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if _absent(m)]
    if missing:
        raise ExportError(
            f"{', '.join(missing)} not installed: ONNX export and ONNX Runtime need the export extra; run "
            'pip install -e ".[export]" (or pip install onnx onnxscript onnxruntime), or use format=torch_export.'
        )


def _absent(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def _dynamic_shapes(dynamic: bool) -> dict[str, dict[int, Any]] | None:
    """Batch, height and width symbolic, their ranges left to ``torch.export`` (``Dim.AUTO``).

    Named ranges fail on ceil-mode pooling, whose output size puts parity guards such as
    ``2 * (h // 2) < h + 1`` on the input that the solver cannot prove for every size
    (they hold for all); ``Dim.AUTO`` keeps such guards as checks instead. Every export is
    then run at several sizes and a batch of two (``deploy/verify.py``).
    """
    if not dynamic:
        return None
    from torch.export import Dim

    return {"image": {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}}


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def export_onnx(
    model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, dynamic: bool, metadata: dict[str, Any]
) -> None:
    """ONNX file at ``path`` (written next to it, then renamed), with the metadata entry."""
    import onnx

    tmp = _tmp(path)
    for name in ("onnx_ir", "onnxscript"):  # their optimiser logs every folded initializer at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress to stdout
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                input_names=["image"],
                output_names=[model.output],
                dynamic_shapes=_dynamic_shapes(dynamic),
                opset_version=opset,
                verbose=False,
            )
        proto = program.model_proto
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
        onnx.save(proto, str(tmp))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def export_program(
    model: torch.nn.Module, example: torch.Tensor, path: Path, dynamic: bool, metadata: dict[str, Any]
) -> None:
    """A ``torch.export`` archive (``.pt2``) at ``path``; ``torch.export.load(path).module()`` runs it."""
    tmp = _tmp(path)
    try:
        shapes = _dynamic_shapes(dynamic)
        program = torch.export.export(model, (example,), dynamic_shapes=shapes, strict=False)
        torch.export.save(program, str(tmp), extra_files={EXTRA: json.dumps(metadata)})
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def onnx_runner(path: Path, threads: int | None = None) -> Runner:
    """Run an ONNX file with ONNX Runtime's CPU provider: numpy in, numpy out."""
    require_onnx()
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def program_runner(path: Path) -> Runner:
    module = torch.export.load(str(path)).module()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return run


def read_metadata(path: Path) -> dict[str, Any]:
    """The ``deeplab_cli`` entry of an exported file (ONNX or .pt2); an ExportError if it has none."""
    try:
        if path.suffix == ".onnx":
            import onnx

            proto = onnx.load(str(path), load_external_data=False)
            found = {p.key: p.value for p in proto.metadata_props}
            if METADATA_KEY in found:
                return json.loads(found[METADATA_KEY])
        else:
            extra = {EXTRA: ""}
            torch.export.load(str(path), extra_files=extra)
            if extra[EXTRA]:
                return json.loads(extra[EXTRA])
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader error means the same thing to the user
        raise ExportError(f"{path} cannot be read as an exported model ({type(exc).__name__}: {exc}).") from None
    raise ExportError(f"{path} has no {METADATA_KEY} metadata: it was not written by deeplab-export; export it again.")
