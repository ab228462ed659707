"""Predictions written to disk: palette PNGs, the VOC server's archive, and labels in a dataset's stored values.

- ``save_prediction``: a palette PNG of the image's size (``deeplab-eval save_predictions=true``,
  ``deeplab-predict``, and the VOC server's files).
- The PASCAL VOC evaluation server (http://host.robots.ox.ac.uk:8080/) expects an archive holding
  ``results/VOC2012/Segmentation/comp6_test_cls/<id>.png`` (comp6: trained with data beyond VOC, e.g.
  SBD or COCO), one palette PNG per test image.
- Cityscapes' server wants ``labelIds`` (road = 7), not the 19 train ids a model predicts;
  ADE20K's wants 1..150. The inverse of the dataset's label mapping (:meth:`LabelMapping.inverse`)
  gives them, so reading an exported file with the same mapping returns the prediction exactly.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

RESULTS_SUBDIR = Path("results")
VOC_RESULTS_SUBDIR = RESULTS_SUBDIR / "VOC2012" / "Segmentation" / "comp6_test_cls"


def save_prediction(out_dir: Path, image_id: str, pred: torch.Tensor, palette: np.ndarray) -> None:
    """A palette PNG of the image's size (``image_id`` may hold sub-folders, as Cityscapes' ``city/name``)."""
    path = out_dir / f"{image_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_prediction_file(path, pred, palette)


def save_prediction_file(path: Path, pred: torch.Tensor, palette: np.ndarray) -> None:
    """``pred`` as a palette PNG at ``path`` (the format is PNG whatever the name's ending)."""
    img = Image.fromarray(pred.to(torch.uint8).cpu().numpy(), mode="P")
    img.putpalette(palette.reshape(-1).tolist())
    img.save(path, format="PNG")


def voc_results_dir(run_dir: Path) -> Path:
    """Where the VOC server's per-image PNGs go; created on demand."""
    out = run_dir / VOC_RESULTS_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    return out


def labels_results_dir(run_dir: Path) -> Path:
    """Where the per-image stored-value PNGs go (``results/``, archived by :func:`archive_results`)."""
    out = run_dir / RESULTS_SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    return out


def archive_results(run_dir: Path) -> Path:
    """``results.tar.gz`` with the ``results/`` tree at its root, ready to upload."""
    archive = run_dir / "results.tar.gz"
    tmp = archive.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(run_dir / RESULTS_SUBDIR, arcname=str(RESULTS_SUBDIR))
    tmp.replace(archive)
    return archive


def save_raw_labels(out_dir: Path, stem: str, suffix: str, pred: torch.Tensor, inverse: np.ndarray) -> Path:
    """``<out_dir>/<stem><suffix>``: a greyscale PNG of the stored values of the predicted classes."""
    path = out_dir / f"{stem}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(inverse[pred.to(torch.uint8).cpu().numpy()], mode="L").save(path)
    return path
