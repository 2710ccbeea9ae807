"""Small pipelines for the run-layer tests: an experiment file with chosen stages, run with the fake stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from caef.pipeline import Pipeline, PipelineConfig
from tests.reliability.fake_stage import fake_python
from tests.reliability.reliability_helpers import EXPERIMENTS

ROOT = Path(__file__).resolve().parents[2]


def experiment(folder: Path, data_root: Path, stages: str, name: str = "t") -> Path:
    """An experiment YAML with ``stages`` (the YAML text of the mapping), on the tiny generated dataset."""
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\ndataset: synthetic\ndata_root: {data_root}\nstages: {stages}\n")
    return path


def classifier_pipeline(tmp_path: Path, data_root: Path, name: str = "t", **kwargs) -> Pipeline:
    """A one-stage pipeline (the classifier) whose stage process is the fake stage."""
    path = experiment(tmp_path, data_root, f"{{classifier: {{config: {EXPERIMENTS / 'classifier/demo.yaml'}}}}}", name)
    config = PipelineConfig.load(path)
    config.runs_root = str(tmp_path / "runs")
    return Pipeline(config, python=fake_python(tmp_path), **kwargs)


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def sleeping_pipeline(tmp_path: Path, yaml: Path, pids: Path) -> subprocess.Popen:
    """A real ``caef pipeline`` process (stderr piped) whose fake stages sleep, each writing its pids to ``pids``
    (``{stage}`` in it: the stage's name)."""
    driver = (
        "import sys; from caef.cli import main; "
        f"sys.executable = {fake_python(tmp_path)!r}; "
        f"sys.exit(main(['pipeline', {str(yaml)!r}, '--runs_root={tmp_path / 'runs'}']))"
    )
    env = os.environ | {"FAKE_STAGE": "sleep", "FAKE_PIDS": str(pids), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", driver], env=env, stderr=subprocess.PIPE, text=True)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, waiting to be reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
