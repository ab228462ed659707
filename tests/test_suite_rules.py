"""Rules that keep the suite honest on a fresh clone: one way into the real-data folder, and a README that
states how many tests need it (compared with what pytest collects, not typed by hand)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from clitools import REPO

TESTS = REPO / "tests"


def test_only_clitools_builds_paths_into_the_real_data_folder() -> None:
    """A test that builds its own ``../shared`` path escapes ``needs_shared`` and fails on a fresh clone
    (tests/test_importers.py did: 18 failures and 3 errors without ../shared)."""
    offenders = [
        f"{path.name}:{n}"
        for path in sorted(TESTS.glob("*.py"))
        if path.name != "clitools.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"""/\s*["']shared["']|["']\.\./shared""", line)
    ]
    assert not offenders, f"use clitools.SHARED/VOC_SAMPLE/VOC_MASKS/CAMVID/REFERENCE and needs_shared: {offenders}"


def test_the_import_layering_holds() -> None:
    """pyproject.toml's import-linter contract: commands > config adapter > engine/deploy/postprocess >
    models/data > errors (a lower layer never imports a higher one). CI also runs ``lint-imports``."""
    lint = Path(sys.executable).parent / "lint-imports"  # the dev extra's console script, beside this Python
    done = subprocess.run([str(lint)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0 and "1 kept, 0 broken" in done.stdout, done.stdout[-3000:]


def test_readme_states_how_many_tests_need_the_real_data() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "needs_shared", "-n", "0", "-p",
         "no:cacheprovider"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    counts = re.search(r"(\d+)/(\d+) tests collected", done.stdout)
    assert counts is not None, done.stdout[-2000:] + done.stderr[-2000:]
    readme = (REPO / "README.md").read_text()
    stated = re.search(r"(\d+) tests need the real-data folder", readme)
    assert stated is not None, "the README's Tests section should say how many tests need ../shared"
    assert int(stated.group(1)) == int(counts.group(1))
