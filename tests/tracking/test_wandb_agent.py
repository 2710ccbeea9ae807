"""A tiny `caef pipeline` in the exact environment `wandb agent` gives it, W&B logging on, read back from the
offline ``.wandb`` files: the agent's run is the pipeline's, with every summary.json metric; each stage has its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pipeline import tiny_flags
from wandb_records import OfflineRun, offline_runs

from caef.reported_metrics import STAGE_METRICS

ROOT = Path(__file__).resolve().parents[2]
#: two stages with W&B on, as subprocesses: about 80 s each on a shared 2-core machine
pytestmark = pytest.mark.slow


def pipeline_command(tmp_path: Path, tiny_synth, tiny_synth_config, agent: bool) -> tuple[list[str], dict]:
    """`caef pipeline experiments/demo.yaml --until cgnet --cgnet.model.masking_depth=3` with the stages' W&B
    logger on (the tiny flags turn it off) and, with ``agent``, the variables `wandb agent` sets for one point."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path / "agent"),
            "WANDB_CONFIG_DIR": str(tmp_path / "config"), "WANDB_CACHE_DIR": str(tmp_path / "cache"),
            "WANDB_DATA_DIR": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    if agent:  # what wandb/wandb_agent.py sets before it starts the sweep's command for one point
        from wandb.sdk.lib import config_util

        params = tmp_path / "agent" / "wandb" / "sweep-sweep123" / "config-agentrun1.yaml"
        config_util.save_config_file_from_dict(str(params), {"cgnet.model.masking_depth": {"value": 3}})
        env |= {"WANDB_SWEEP_ID": "sweep123", "WANDB_RUN_ID": "agentrun1", "WANDB_SWEEP_PARAM_PATH": str(params)}
    flags = [f for f in tiny_flags(tiny_synth, tiny_synth_config) if f != "--all.trainer.logger=false"]
    argv = [sys.executable, "-m", "caef.cli", "pipeline", "experiments/demo.yaml", "--name=md3",
            f"--runs_root={tmp_path / 'runs'}", "--until=cgnet", *flags, "--cgnet.model.masking_depth=3"]  # fmt: skip
    return argv, env


def run_pipeline(tmp_path: Path, tiny_synth, tiny_synth_config, agent: bool) -> tuple[Path, list[OfflineRun]]:
    """Run it as its own process; the run folder and every offline run written anywhere under ``tmp_path``."""
    argv, env = pipeline_command(tmp_path, tiny_synth, tiny_synth_config, agent)
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / "runs" / "md3", offline_runs(tmp_path)


def metrics_of(summary: dict) -> dict:
    """Every number of summary.json (top-level, or a {name: number} map such as per-class IoU)."""
    out = {}
    for key, value in summary.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = value
        elif isinstance(value, dict) and value and all(v is None or type(v) in (int, float) for v in value.values()):
            out[key] = value
    return out


def test_under_an_agent_the_pipeline_owns_the_agent_run_and_each_stage_logs_to_its_own(
    tmp_path, tiny_synth, tiny_synth_config
):
    run_dir, runs = run_pipeline(tmp_path, tiny_synth, tiny_synth_config, agent=True)
    summary = json.loads((run_dir / "summary.json").read_text())
    mine = [run for run in runs if run.id == "agentrun1"]
    assert len(mine) == 1, [(r.id, r.job_type, str(r.path)) for r in runs]
    pipeline = mine[0]
    assert pipeline.job_type == "pipeline" and pipeline.group == "md3" and pipeline.exit_code == 0
    assert pipeline.path.is_relative_to(run_dir / "wandb")
    assert pipeline.config["cgnet.model.masking_depth"] == 3 and pipeline.config["masking_depth"] == 3
    assert pipeline.config["seed"] == summary["seed"] and pipeline.config["dataset"] == "synthetic"
    for key in (*STAGE_METRICS["classifier"], *STAGE_METRICS["cgnet"]):
        assert key in summary, key  # the declared metrics are what the stages write
    for key, value in metrics_of(summary).items():
        if isinstance(value, dict):
            assert pipeline.summary[key] == {k: v for k, v in value.items() if v is not None}, key
        else:
            assert pipeline.summary[key] == value, key
    stages = [run for run in runs if run.id != "agentrun1"]
    assert sorted(run.job_type for run in stages) == ["cgnet", "classifier"]
    assert len({run.id for run in stages}) == 2 and all(run.group == "md3" for run in stages)
    assert pipeline.summary["stage_runs"] == {run.job_type: run.id for run in stages}
    for run in stages:
        assert "cgnet.model.masking_depth" not in run.config  # the sweep's parameters belong to the pipeline run
        assert run.config["pipeline"]["pipeline_run_id"] == "agentrun1"
        assert run.config["pipeline"]["sweep_id"] == "sweep123"


def test_a_plain_run_logs_one_run_per_stage_and_none_of_its_own(tmp_path, tiny_synth, tiny_synth_config):
    run_dir, runs = run_pipeline(tmp_path, tiny_synth, tiny_synth_config, agent=False)
    assert sorted(run.job_type for run in runs) == ["cgnet", "classifier"]
    assert len({run.id for run in runs}) == 2 and all(run.group == "md3" for run in runs)
    assert all(run.path.is_relative_to(run_dir / "wandb") for run in runs)
    for run in runs:
        assert run.config["pipeline"]["masking_depth"] == 3 and "pipeline_run_id" not in run.config["pipeline"]


def test_a_signal_forwarded_by_the_agent_closes_its_run_as_interrupted(tmp_path, tiny_synth, tiny_synth_config):
    """`wandb agent --forward-signals` passes SIGTERM to the pipeline process only; the pipeline stops its stage and
    the agent's run ends with exit code 128 + 15 and ``pipeline_status: interrupted``."""
    argv, env = pipeline_command(tmp_path, tiny_synth, tiny_synth_config, agent=True)
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    manifest = tmp_path / "runs" / "md3" / "manifest.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if manifest.is_file() and '"running"' in manifest.read_text():
            break
        time.sleep(0.5)
    time.sleep(2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2 and "interrupted by SIGTERM" in err, err[-2000:]
    (run,) = [run for run in offline_runs(tmp_path) if run.id == "agentrun1"]
    assert run.job_type == "pipeline" and run.exit_code == 128 + signal.SIGTERM
    assert run.summary["pipeline_status"] == "interrupted"
