"""CI fails on a lint error: `make lint` runs `ruff check` and `ruff format --check`, and `.ci/run` lints before the
tests and stops at the first failure."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _lint(tree: Path) -> subprocess.CompletedProcess:
    """The repository's `make lint` on another tree (`STAMP=`: no install step)."""
    cmd = ["make", "-s", "-f", str(ROOT / "Makefile"), "-C", str(tree), "lint", f"BIN={BIN}", "STAMP="]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for folder in ("caef", "tests", "benchmarks", "examples"):
        (tmp_path / folder).mkdir()
    (tmp_path / "caef" / "good.py").write_text('"""A clean module."""\n\nVALUE = 1\n')
    return tmp_path


@pytest.mark.skipif(not (BIN / "ruff").exists() or shutil.which("make") is None, reason="needs ruff and make")
@pytest.mark.parametrize(
    "source, tool",
    [
        ("import os\n", "ruff check"),  # F401: unused import
        ('"""Unformatted."""\n\nVALUE = { "a":1 }\n', "ruff format"),
    ],
)
def test_make_lint_fails_on_a_lint_or_format_error(tree, source, tool):
    assert _lint(tree).returncode == 0, "a clean tree passes"
    (tree / "tests" / "bad.py").write_text(source)
    done = _lint(tree)
    assert done.returncode != 0, f"{tool} did not fail the lint:\n{done.stdout}\n{done.stderr}"
    assert "bad.py" in done.stdout + done.stderr


def test_ci_script_lints_then_installs_then_runs_make_test():
    script = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line.strip() for line in script if line.strip() and not line.lstrip().startswith("#")]
    assert "set -euo pipefail" in commands, "a failing step must stop CI"
    steps = [c for c in commands if c.startswith(("make ", ".venv/bin/python -m pytest"))]
    assert steps[0] == "make lint" and steps[-1] == "make test", steps
    assert any("tests/test_install.py" in step for step in steps)
