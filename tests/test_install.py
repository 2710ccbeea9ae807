"""caef as an installed package: `pip install .` (not editable) into a fresh virtualenv, then the `caef` command from
another working directory, with the experiment configs shipped inside the package.

The new environment reuses this interpreter's installed dependencies (a `.pth` file naming its site-packages), so
torch is not reinstalled; only caef itself is built and installed, from a copy of the source tree (the checkout
stays clean). `.ci/run` runs this file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from test_pipeline import tiny_flags

import caef

ROOT = Path(__file__).resolve().parents[1]
#: top-level folders of a checkout that are not build inputs (results, datasets, environments)
_NOT_SOURCE = {".git", ".venv", "runs", "data", "wandb", "lightning_logs", "build", "dist"}
_CACHES = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache", ".ruff_cache")


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin/ folder of a fresh virtualenv with caef installed from a wheel built from a copy of the source."""
    base = tmp_path_factory.mktemp("install")
    source = base / "src"

    def ignore(folder: str, names: list[str]) -> set[str]:
        top = _NOT_SOURCE if Path(folder) == ROOT else set()
        return top.intersection(names) | _CACHES(folder, names)

    shutil.copytree(ROOT, source, ignore=ignore, symlinks=True)
    venv = base / "venv"
    # no pip of its own: ensurepip would bring an old setuptools that shadows this interpreter's (no bdist_wheel)
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], cwd=base)
    python = venv / "bin" / "python"
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], base).stdout.strip()
    )
    parent = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}  # this interpreter's dependencies
    (site / "_caef_test_parent.pth").write_text("".join(f"{path}\n" for path in sorted(parent)))
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps"]
    _run([*pip, "--no-build-isolation", str(source)], cwd=base)
    return venv / "bin"


def test_installed_package_is_the_built_copy_and_reports_its_version(installed, tmp_path):
    where = _run([str(installed / "python"), "-c", "import caef; print(caef.__file__)"], cwd=tmp_path).stdout
    assert Path(where.strip()).is_relative_to(installed.parent), f"caef imported from {where} (not the install)"
    assert _run([str(installed / "caef"), "--version"], cwd=tmp_path).stdout.strip() == f"caef {caef.__version__}"
    assert "--until" in _run([str(installed / "caef"), "pipeline", "--help"], cwd=tmp_path).stdout


@pytest.mark.slow  # ~30 s: one tiny classifier stage
def test_installed_package_runs_a_stage_of_the_demo_from_another_folder(installed, tmp_path, tiny_synth,
                                                                       tiny_synth_config):  # fmt: skip
    assert not (tmp_path / "experiments").exists()
    _run(
        [str(installed / "caef"), "pipeline", "experiments/demo.yaml", "--until", "classifier", "--name=tiny",
         f"--runs_root={tmp_path / 'runs'}", *tiny_flags(tiny_synth, tiny_synth_config)],
        cwd=tmp_path,
    )  # fmt: skip
    summary = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())
    assert 0 <= summary["oc_cam_miou"] <= 100
    assert (tmp_path / "runs" / "tiny" / "classifier" / "last.ckpt").is_file()
