"""Collation that drops the samples a dataset skipped (``dataset.on_error=skip`` returns None)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch.utils.data import default_collate


def collate_kept(batch: Sequence[Any]) -> Any:
    """``default_collate`` over the non-None samples; None when the whole batch was skipped."""
    kept = [sample for sample in batch if sample is not None]
    return default_collate(kept) if kept else None
