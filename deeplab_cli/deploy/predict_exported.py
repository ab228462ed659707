"""``deeplab-predict checkpoint=FILE.onnx|.pt2``: the same masks and overlays from an exported file.

No model is rebuilt: ONNX Runtime (or ``torch.export.load``) runs the file, whose
graph holds the preprocessing and upsampling, and its metadata gives the classes and
palette. Test-time scales, flips and CRF are refused: they live outside the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..data.images import ImageFiles
from ..data.palette import voc_colormap
from .exporters import ExportError, onnx_runner, program_runner, read_metadata

EXPORTED_SUFFIXES = (".onnx", ".pt2")

#: writes one image's outputs: (dataset, index, labels, palette, class names)
Writer = Callable[[ImageFiles, int, torch.Tensor, np.ndarray, list[str]], None]


def check_plain(scales: list[float], flip: bool, crf: bool) -> None:
    if list(scales) != [1.0] or flip or crf:
        raise ExportError(
            "an exported model runs one pass over each image: eval.scales/eval.flip and crf= need the "
            "checkpoint (checkpoint=model.pt); drop them, or predict with the checkpoint."
        )


def predict_exported(path: Path, dataset: ImageFiles, write: Writer) -> int:
    """Run ``path`` on every image of ``dataset`` and hand its labels to ``write``; returns the count."""
    meta = read_metadata(path)
    if not meta["preprocess"]["in_graph"]:
        raise ExportError(
            f"{path} was exported with include_preprocess=false: it expects normalised tensors, not images. "
            "Export it again with include_preprocess=true for deeplab-predict."
        )
    run = onnx_runner(path) if path.suffix == ".onnx" else program_runner(path)
    palette = voc_colormap()
    palette[: len(meta["palette"])] = np.array(meta["palette"], dtype=np.uint8)
    for index in range(len(dataset)):
        rgb = dataset.load_rgb(index)
        out = run(np.ascontiguousarray(rgb.transpose(2, 0, 1))[None])[0]
        labels = out if meta["output"] == "labels" else out.argmax(0)
        write(dataset, index, torch.from_numpy(labels.astype(np.int64)), palette, list(meta["classes"]))
    return len(dataset)
