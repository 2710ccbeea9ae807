"""Case 10: SIGTERM (a scheduler) or SIGINT (Ctrl-C) to ``caef pipeline`` stops the running stage's whole process
group, marks the stage ``interrupted`` and ends with one line, no traceback; nothing is left running, and the same
command resumes the stage."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from caef import code_fingerprint
from caef.pipeline import Pipeline, PipelineConfig
from tests.reliability.pipeline_fixtures import alive, experiment, manifest, sleeping_pipeline

ROOT = Path(__file__).resolve().parents[2]


def _interrupt(tmp_path: Path, tiny_synth: Path, sig: signal.Signals) -> None:
    yaml = experiment(tmp_path, tiny_synth, "{crf: {}}", name="stopped")
    pids = tmp_path / "pids.json"
    process = sleeping_pipeline(tmp_path, yaml, pids)
    deadline = time.time() + 120
    while not pids.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    stage_pids = json.loads(pids.read_text())
    assert all(alive(pid) for pid in stage_pids)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert process.returncode == 2 and "Traceback" not in err, err
    assert lines[-1:] == [
        f"caef: error: interrupted by {sig.name} during stage 'crf' (its processes were stopped); rerun the same "
        "command to resume"
    ], err
    deadline = time.time() + 10
    while any(alive(pid) for pid in stage_pids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in stage_pids), "a stage process was left running"
    run_dir = tmp_path / "runs" / "stopped"
    assert manifest(run_dir)["stages"]["crf"]["status"] == "interrupted"
    assert json.loads((run_dir / ".lock").read_text() or "{}") == {}  # released


def test_sigterm_stops_the_stage_group_and_the_rerun_resumes(tmp_path, tiny_synth, capsys, monkeypatch):
    _interrupt(tmp_path, tiny_synth, signal.SIGTERM)
    # the same code as the interrupted process (sources edited meanwhile would rightly rerun the stage instead)
    code = manifest(tmp_path / "runs" / "stopped")["code"]
    monkeypatch.setattr(code_fingerprint, "code_identity", lambda: code)
    config = PipelineConfig.load(tmp_path / "stopped.yaml")
    config.runs_root = str(tmp_path / "runs")
    capsys.readouterr()
    Pipeline(config).run(dry_run=True)
    assert "crf (dense-CRF seeds): interrupted -- resuming" in capsys.readouterr().out


def test_ctrl_c_is_one_line_too(tmp_path, tiny_synth):
    _interrupt(tmp_path, tiny_synth, signal.SIGINT)


def test_sigkill_of_the_pipeline_leaves_no_stage_running(tmp_path):
    """SIGKILL cannot be caught: the stage, in its own session (out of reach of a signal to the pipeline's group),
    dies with the pipeline instead of writing on into the run folder as an orphan."""
    pid_file = tmp_path / "stage.pid"
    stage_script = tmp_path / "stage.py"
    stage_script.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    parent = (
        "import sys; from caef.stage_runner import run_stage_process; "
        f"run_stage_process([sys.executable, {str(stage_script)!r}], {{}})"
    )
    pipeline = subprocess.Popen([sys.executable, "-c", parent], cwd=ROOT)
    deadline = time.monotonic() + 30
    while not (pid_file.is_file() and pid_file.read_text()):
        assert time.monotonic() < deadline and pipeline.poll() is None, "the stage did not start"
        time.sleep(0.05)
    stage = int(pid_file.read_text())
    assert alive(stage)
    pipeline.kill()
    pipeline.wait()
    deadline = time.monotonic() + 10
    while alive(stage) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(stage), "the stage outlived its killed pipeline"
