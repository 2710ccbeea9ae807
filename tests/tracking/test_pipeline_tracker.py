"""PipelineTracker under the environment `wandb agent` gives: the pipeline owns the agent's run, stages get their own.

The runs are read back from their offline ``.wandb`` files with wandb's record schema (``wandb_records``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from wandb_records import offline_runs

from caef.pipeline_tracking import (
    RUN_BINDING_VARIABLES,
    PipelineTracker,
    WandbPipelineTracker,
    params_from_overrides,
    sweep_params,
)

CONTEXT = {
    "group": "md-3",
    "tags": ["dataset:synthetic", "seed:1", "masking_depth:3"],
    "config": {"name": "md-3", "seed": 1, "dataset": "synthetic", "masking_depth": 3, "erasing": True},
}
#: a stage process: one W&B run, as the stage's WandbLogger opens it (no id given: W&B reads WANDB_RUN_ID)
STAGE = """
import json, os, sys, wandb
run = wandb.init(project="caef", dir=sys.argv[1], job_type=sys.argv[2], group=os.environ.get("WANDB_RUN_GROUP"),
                 config={"pipeline": json.loads(os.environ["CAEF_PIPELINE"])["config"]})
run.log({"val/cam_miou": 12.5})
run.finish()
"""


def agent_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, params: dict) -> None:
    """What `wandb agent` sets for one sweep point (wandb/wandb_agent.py): sweep id, run id, the parameter file."""
    from wandb.sdk.lib import config_util

    param_path = tmp_path / "wandb" / "sweep-sweep123" / "config-agentrun1.yaml"
    config_util.save_config_file_from_dict(str(param_path), {k: {"value": v} for k, v in params.items()})
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep123")
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun1")
    monkeypatch.setenv("WANDB_SWEEP_PARAM_PATH", str(param_path))


def test_plain_environment_gives_the_plain_tracker_and_the_stages_the_pipeline_context():
    tracker = PipelineTracker.from_environ("demo", CONTEXT, {"PATH": "/bin", "WANDB_MODE": "offline"})
    assert type(tracker) is PipelineTracker
    env = tracker.stage_environ("cgnet")
    assert env["PATH"] == "/bin" and json.loads(env["CAEF_PIPELINE"]) == CONTEXT and "WANDB_RUN_ID" not in env


def test_agent_run_belongs_to_the_pipeline_and_each_stage_gets_its_own(monkeypatch, tmp_path):
    agent_environ(monkeypatch, tmp_path, {"cgnet.model.masking_depth": 3})
    monkeypatch.setenv("WANDB_PROJECT", "caef-sweeps")  # `wandb agent ENTITY/PROJECT/ID` sets it: the stages keep it
    run_dir = tmp_path / "runs" / "md-3"
    tracker = PipelineTracker.from_environ("md-3", CONTEXT, run_dir=run_dir)
    assert isinstance(tracker, WandbPipelineTracker)
    stage_ids = {}
    for stage in ("classifier", "cgnet"):
        env = tracker.stage_environ(stage)
        assert not {"WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_SERVICE"} & set(env)
        assert env["WANDB_RUN_ID"] != "agentrun1" and env["WANDB_RUN_GROUP"] == "md-3"
        assert env["WANDB_PROJECT"] == "caef-sweeps" and env["WANDB_MODE"] == "offline"
        assert json.loads(env["CAEF_PIPELINE"])["config"]["pipeline_run_id"] == "agentrun1"
        subprocess.run([sys.executable, "-c", STAGE, str(run_dir), stage], env=env, check=True)
        stage_ids[stage] = env["WANDB_RUN_ID"]
        tracker.stage_finished(stage, {f"{stage}_cam_miou": 40.5, f"{stage}_cam_iou": {"a": 0.5, "b": None}}, 2.0)
    summary = {"classifier_cam_miou": 40.5, "seed": 1, "stage_seconds": {"classifier": 2.0, "cgnet": 2.0},
               "total_seconds": 4.0, "versions": {"torch": "2"}, "overrides": {"cgnet": ["--x=1"]},
               "fully_supervised_val_miou": 52.99, "fully_supervised_val_evaluation": "flip, dense CRF"}  # fmt: skip
    tracker.finish(summary, run_dir)

    runs = {run.id: run for run in offline_runs(run_dir / "wandb")}
    assert set(runs) == {"agentrun1", *stage_ids.values()} and len(set(stage_ids.values())) == 2
    pipeline = runs["agentrun1"]
    assert pipeline.job_type == "pipeline" and pipeline.group == "md-3" and pipeline.exit_code == 0
    assert pipeline.config["cgnet.model.masking_depth"] == 3 and pipeline.config["masking_depth"] == 3
    assert pipeline.config["seed"] == 1 and pipeline.config["erasing"] is True
    assert pipeline.summary["cgnet_cam_miou"] == 40.5 and pipeline.summary["cgnet_cam_iou"] == {"a": 0.5}
    assert pipeline.summary["stage_seconds"] == {"classifier": 2.0, "cgnet": 2.0}
    assert pipeline.summary["total_seconds"] == 4.0 and "versions" not in pipeline.summary
    assert pipeline.summary["fully_supervised_val_miou"] == 52.99  # with how it was computed beside it
    assert pipeline.summary["fully_supervised_val_evaluation"] == "flip, dense CRF"
    assert pipeline.summary["stage_runs"] == stage_ids and pipeline.summary["pipeline_status"] == "finished"
    for stage, run_id in stage_ids.items():
        stage_run = runs[run_id]
        assert stage_run.job_type == stage and stage_run.group == "md-3"
        assert "cgnet.model.masking_depth" not in stage_run.config  # the sweep's parameters are the pipeline's
        assert stage_run.config["pipeline"]["sweep_id"] == "sweep123"


def test_an_interrupted_pipeline_closes_the_agent_run_as_interrupted(monkeypatch, tmp_path):
    agent_environ(monkeypatch, tmp_path, {"seed": 2})
    run_dir = tmp_path / "runs" / "x"
    with pytest.raises(KeyboardInterrupt):
        with PipelineTracker.from_environ("x", CONTEXT, run_dir=run_dir) as tracker:
            tracker.stage_environ("classifier")
            tracker.stage_finished("classifier", {"oc_cam_miou": 10.0}, 1.0)
            raise KeyboardInterrupt
    (run,) = offline_runs(run_dir / "wandb")
    assert run.id == "agentrun1" and run.exit_code == 130
    assert run.summary["pipeline_status"] == "interrupted" and run.summary["oc_cam_miou"] == 10.0


def test_sweep_parameters_come_from_the_agent_file_else_from_the_flags(tmp_path):
    from wandb.sdk.lib import config_util

    path = tmp_path / "config-r.yaml"
    config_util.save_config_file_from_dict(str(path), {"classifier.model.backbone": {"value": "vgg16"}, "seed": {
        "value": 1}})  # fmt: skip
    assert sweep_params({"WANDB_SWEEP_PARAM_PATH": str(path)}) == {"classifier.model.backbone": "vgg16", "seed": 1}
    assert sweep_params({}, {"seed": 4}) == {"seed": 4}
    assert params_from_overrides({"cgnet": ["--model.masking_depth=3", "--model.erasing=false"]}) == {
        "cgnet.model.masking_depth": 3, "cgnet.model.erasing": False}  # fmt: skip
    assert "WANDB_RUN_ID" in RUN_BINDING_VARIABLES and "WANDB_SWEEP_PARAM_PATH" in RUN_BINDING_VARIABLES


def test_a_signal_during_a_wandb_call_is_delivered_after_it():
    """SIGTERM while the tracker opens or closes the run (wandb.init takes seconds) must not cut W&B short: the
    pipeline's handler runs when the call is done, and finds a run it can close."""
    import os
    import signal

    from caef.pipeline_tracking import signals_deferred

    class Stop(BaseException):
        pass

    def handler(signum, frame):
        raise Stop

    previous = signal.signal(signal.SIGTERM, handler)
    steps = []
    try:
        with pytest.raises(Stop):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                steps.append("after the signal, inside the W&B call")
        assert steps == ["after the signal, inside the W&B call"]
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_every_reported_metric_belongs_to_its_stage_summary_prefixes():
    """The two tables of what a stage writes agree: a metric outside its stage's prefixes would be dropped from the
    manifest's summary entries (and so from a stage-cache copy) while the sweep check still accepted it."""
    from caef.reported_metrics import STAGE_METRICS, SUMMARY_PREFIXES

    assert set(STAGE_METRICS) == set(SUMMARY_PREFIXES)
    for stage, metrics in STAGE_METRICS.items():
        for metric in metrics:
            assert metric.startswith(SUMMARY_PREFIXES[stage]), (stage, metric)
