"""Predictions written back in a dataset's own stored label values, for its results server.

Cityscapes' server wants ``labelIds`` (road = 7), not the 19 train ids a model
predicts; ADE20K's wants 1..150. The inverse of the dataset's label mapping
(:meth:`LabelMapping.inverse`) gives them, so reading an exported file with the
same mapping returns the prediction exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

RESULTS_SUBDIR = Path("results")


def results_dir(run_dir: Path) -> Path:
    """Where the per-image PNGs go (``results/``, archived by ``voc_export.archive_results``)."""
    out = run_dir / RESULTS_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    return out


def save_raw_labels(out_dir: Path, stem: str, suffix: str, pred: torch.Tensor, inverse: np.ndarray) -> Path:
    """``<out_dir>/<stem><suffix>``: a greyscale PNG of the stored values of the predicted classes."""
    path = out_dir / f"{stem}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(inverse[pred.to(torch.uint8).cpu().numpy()], mode="L").save(path)
    return path
