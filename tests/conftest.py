"""Shared fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from clitools import VOC_SAMPLE, voc_copy


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is as fast and avoids OpenMP spin-waits on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the real VOC sample (``clitools.voc_copy``); skipped where the sample is absent."""
    if not VOC_SAMPLE.is_dir():
        pytest.skip(f"real VOC sample not found at {VOC_SAMPLE}")
    return voc_copy(tmp_path_factory.mktemp("voc"))
