"""Rules that keep the suite honest on a fresh clone (one way into the real-data folder, a README that states
how many tests need it) and the code's shape (the import layers, commands that are wiring only, a library
that never sees the config)."""

from __future__ import annotations

import ast
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
    """pyproject.toml's import-linter contracts: cli > tools > config > engine/deploy/postprocess > models/data >
    errors (a lower layer never imports a higher one), and no command imports another. CI also runs them."""
    lint = Path(sys.executable).parent / "lint-imports"  # the dev extra's console script, beside this Python
    done = subprocess.run([str(lint)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0 and "2 kept, 0 broken" in done.stdout, done.stdout[-3000:]


def _functions(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    return [
        (node.name, node.end_lineno - node.lineno + 1)
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    ]


def test_commands_are_wiring_only() -> None:
    """No function of ``deeplab_cli/cli/`` is over 60 lines: what a command computes lives in the library."""
    long = [
        f"{path.name}:{name} ({lines} lines)"
        for path in sorted((REPO / "deeplab_cli" / "cli").glob("*.py"))
        for name, lines in _functions(path)
        if lines > 60
    ]
    assert not long, f"split these, or move their work out of cli/: {long}"


def test_the_library_never_sees_the_config() -> None:
    """engine/, models/, data/, deploy/, postprocess/ and the bottom modules import neither Hydra nor OmegaConf:
    they take values and settings dataclasses, which config/ makes from the config."""
    library = [REPO / "deeplab_cli" / name for name in ("engine", "models", "data", "deploy", "postprocess")]
    files = [f for folder in library for f in folder.rglob("*.py")]
    files += [REPO / "deeplab_cli" / name for name in ("errors.py", "imagenet.py", "_paths.py")]
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ("hydra", "omegaconf")]
    assert len(files) > 60 and not offenders, offenders


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
