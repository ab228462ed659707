"""Shared fixtures, and the split of the CPU between pytest-xdist workers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from clitools import VOC_SAMPLE, needs_shared, require_shared, shared_reason, voc_copy

#: ``pytest -n N`` (pyproject's addopts): N worker processes share the cores, so each one's torch
#: (and the console scripts it starts, through OMP_NUM_THREADS) gets its share instead of all of them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    _share = max(1, (os.cpu_count() or 1) // WORKERS)
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    torch.set_num_threads(_share)


#: the longest test of the suite (two halves of about 4.5 minutes each on 2 cores): started first, one per worker
LONGEST = "test_readme_commands.py::test_readme_commands_run_and_leave_the_data_untouched"


#: fixtures that copy or read the real-data folder: a test using one needs it
SHARED_FIXTURES = {"voc_root": VOC_SAMPLE, "voc_sample": VOC_SAMPLE, "broken": VOC_SAMPLE}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_shared(path): reads the real-data folder ../shared (DEEPLAB_SHARED)")
    config.pluginmanager.register(_SlowFirst(), "deeplab-slow-first")


class _SlowFirst:
    """Orders the tests after ``-m`` has selected them, so the chunks are the selection's."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        items.sort(key=lambda item: (LONGEST not in item.nodeid, item.get_closest_marker("slow") is None))
        items[:] = spread_slow_tests(items, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


@pytest.hookimpl(tryfirst=True)  # before -m needs_shared selects: the fixture-derived markers must be there
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the tests whose real data is absent (one reason, saying how to provide it). ``_SlowFirst`` then
    orders the selection: the README's two halves and the slow tests dealt to the workers in turn."""
    for item in items:
        for name, path in SHARED_FIXTURES.items():
            if name in getattr(item, "fixturenames", ()):
                item.add_marker(needs_shared(path))
        missing = [m.args[0] for m in item.iter_markers("needs_shared") if not m.args[0].exists()]
        if missing:
            item.add_marker(pytest.mark.skip(reason=shared_reason(missing[0])))


def spread_slow_tests(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """The slow tests dealt in turn into the first chunk of each worker, the rest after them.

    xdist's ``load`` scheduler first sends each worker ``max(len(items) // workers // 4, 2)``
    consecutive tests, then hands out the rest in order as workers free up. Slow tests left
    next to each other land in one worker's first chunk (both README halves on one core
    while the other idles); dealt into each chunk in turn, every worker starts with its share.
    """
    if workers < 2:
        return items
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    rest = iter([item for item in items if item.get_closest_marker("slow") is None])
    chunk = max(len(items) // workers // 4, 2)
    ordered: list[pytest.Item] = []
    dealt = [slow[k::workers][:chunk] for k in range(workers)]
    for share in dealt:
        ordered += share + [item for _, item in zip(range(chunk - len(share)), rest, strict=False)]
    placed = {id(item) for item in ordered}
    return ordered + [item for item in items if id(item) not in placed]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A test that skips for want of the real data but is not marked ``needs_shared`` fails: unmarked, it
    would escape ``pytest -m needs_shared``, the CI step that runs these tests with the data present."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and "DEEPLAB_SHARED" in str(report.longrepr) and item.get_closest_marker("needs_shared") is None:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} reads the real-data folder but lacks @needs_shared(path) (tests/clitools.py)"


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
    require_shared(VOC_SAMPLE)
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
