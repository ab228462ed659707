"""Stored configs (in checkpoints) brought to today's layout, so old checkpoints keep loading."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .schema import MOVED_TO_PREPROCESS, PreprocessConfig


def migrate_stored_config(stored: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's config in today's layout (a copy): ``dataset.mean/std/bgr`` become ``model.preprocess``,
    a dataset without ``family`` is VOC's (the only layout before there was a choice), and ADE20K's test
    split is its test images, not the validation ones.

    Checkpoints written before preprocessing moved to the model keep their
    normalisation this way; a config that already has ``model.preprocess`` wins.
    """
    stored = {**stored}
    dataset = dict(stored.get("dataset") or {})
    if dataset and "family" not in dataset:  # written before other layouts existed: VOC's
        dataset["family"] = "voc"
        stored["dataset"] = dataset
    if dataset.get("family") == "ade20k" and dataset.get("test_split") == "validation":
        # the ADE20K preset once named the validation images its test split, so eval.export=labels wrote
        # validation predictions for the server; the test images are images/testing (deeplab-prepare --test)
        dataset["test_split"] = "testing"
        stored["dataset"] = dataset
    moved = {k: dataset.pop(k) for k in MOVED_TO_PREPROCESS if k in dataset}
    if moved:
        stored["dataset"] = dataset
        model = dict(stored.get("model") or {})
        model.setdefault("preprocess", {**asdict(PreprocessConfig()), **moved})
        stored["model"] = model
    return stored
