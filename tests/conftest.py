"""Shared fixtures, and the split of the CPU between pytest-xdist workers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from clitools import VOC_SAMPLE, voc_copy

#: ``pytest -n N`` (pyproject's addopts): N worker processes share the cores, so each one's torch
#: (and the console scripts it starts, through OMP_NUM_THREADS) gets its share instead of all of them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    _share = max(1, (os.cpu_count() or 1) // WORKERS)
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    torch.set_num_threads(_share)


#: the longest test of the suite (about 10 minutes on 2 cores): started first, so it never finishes last
LONGEST = "test_readme_commands.py::test_readme_commands_run_and_leave_the_data_untouched"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest test, then the slow ones, then the rest: xdist hands the first tests out in turn, so
    the long ones start at once on different workers instead of one of them finishing last."""
    items.sort(key=lambda item: (not item.nodeid.endswith(LONGEST), item.get_closest_marker("slow") is None))


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


@pytest.fixture
def patch_catalogue(monkeypatch: pytest.MonkeyPatch):
    """``patch_catalogue(entry_id, sha256=...)``: the weights catalogue with one entry's fields replaced.

    Test files are random tensors, so their hashes are never the published ones; the
    tests that exercise verification make the catalogue expect the test file's hash.
    """
    import dataclasses

    from deeplab_cli.models.weights import catalogue

    real = catalogue.load_catalogue()

    def patch(entry_id: str, **changes) -> None:
        current = catalogue.load_catalogue()
        if entry_id not in {e.id for e in current}:
            raise KeyError(entry_id)
        patched = tuple(dataclasses.replace(e, **changes) if e.id == entry_id else e for e in current)
        monkeypatch.setattr(catalogue, "load_catalogue", lambda path=None: patched)

    assert real  # the real file parses
    return patch
