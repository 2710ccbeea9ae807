"""The pipeline's ``precision``: resolved once on the machine that runs the stages, passed to the network stages
(classifier, CGNet, DeepLab) and never to the AffinityNet or the random walk, part of every fingerprint it reaches,
recorded in ``summary.json``; a bad value is a one-line error naming the file and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caef import precision_policy
from caef.errors import CaefError
from caef.pipeline import Pipeline, PipelineConfig
from caef.pipeline_cli import main as pipeline_main
from caef.pipeline_cli import parse_args
from caef.precision_policy import resolve_precision
from caef.stage_graph import ORDER
from tests.reliability.reliability_helpers import EXPERIMENTS
from tests.test_pipeline import tiny_flags

NETWORK_STAGES = ("classifier", "cgnet", "cams", "deeplab", "fully_supervised")


def _demo(tmp_path: Path, precision: str | None) -> Pipeline:
    """The demo's stages without its own per-stage flags (its classifier pins fp32: tested below)."""
    config = PipelineConfig.load(EXPERIMENTS / "demo.yaml")
    config.runs_root, config.precision = str(tmp_path / "runs"), precision
    config.stages["classifier"]["args"] = []
    return Pipeline(config)


def test_the_demo_keeps_its_classifier_in_fp32_whatever_the_precision(tmp_path):
    config = PipelineConfig.load(EXPERIMENTS / "demo.yaml")
    config.runs_root, config.precision = str(tmp_path / "runs"), "bf16-mixed"
    pipeline = Pipeline(config)
    assert config.precision == "bf16-mixed" and PipelineConfig.load(EXPERIMENTS / "demo.yaml").precision == "auto"
    assert pipeline._setting("classifier", "trainer.precision") == "32-true"
    assert pipeline._setting("cgnet", "trainer.precision") == "bf16-mixed"


@pytest.mark.parametrize(("amx", "resolved"), [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_follows_the_cpu(monkeypatch, amx, resolved):
    monkeypatch.setattr(precision_policy, "cpu_multiplies_bf16", lambda: amx)
    assert resolve_precision("auto") == resolved
    assert resolve_precision("bf16-mixed") == "bf16-mixed" and resolve_precision(None) is None


def test_the_cpu_probe_answers_a_bool():
    assert isinstance(precision_policy.cpu_multiplies_bf16(), bool)


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_precision_reaches_the_network_stages_only(tmp_path, precision):
    pipeline = _demo(tmp_path, precision)
    for stage in ORDER:
        flags = [a for a in pipeline.argv(stage) if a.startswith("--trainer.precision=")]
        assert flags == ([f"--trainer.precision={precision}"] if stage in NETWORK_STAGES else []), stage


def test_unset_precision_leaves_the_stage_configs_in_charge(tmp_path):
    pipeline = _demo(tmp_path, None)
    assert not any(a.startswith("--trainer.precision") for s in ORDER for a in pipeline.argv(s))


def test_a_stage_flag_still_overrides_the_pipeline_precision(tmp_path):
    config = PipelineConfig.load(EXPERIMENTS / "demo.yaml")
    config.runs_root, config.precision = str(tmp_path / "runs"), "bf16-mixed"
    config.stages["classifier"]["args"] = []
    pipeline = Pipeline(config, {"cgnet": ["--trainer.precision=32-true"]})
    assert pipeline._setting("cgnet", "trainer.precision") == "32-true"
    assert pipeline._setting("classifier", "trainer.precision") == "bf16-mixed"


def test_precision_is_part_of_the_fingerprints_it_reaches(tmp_path):
    bf16, fp32 = _demo(tmp_path, "bf16-mixed"), _demo(tmp_path, "32-true")
    empty = {"stages": {}}
    assert bf16.fingerprint("cgnet", empty) != fp32.fingerprint("cgnet", empty)
    # the AffinityNet's own settings are untouched (its upstream fingerprints still differ, as they should)
    assert bf16._stage_digest("affinity").hexdigest() == fp32._stage_digest("affinity").hexdigest()
    assert bf16.config_hash() != fp32.config_hash()


def test_bad_precision_in_a_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nprecision: fp16\nstages: {}\n")
    with pytest.raises(CaefError) as err:
        PipelineConfig.load(path)
    message = str(err.value)
    assert str(path) in message and "'precision'" in message and "bf16-mixed" in message and "\n" not in message


def test_the_command_line_names_a_precision():
    args, _ = parse_args(["experiments/demo.yaml", "--precision=32-true"])
    assert args.precision == "32-true"
    with pytest.raises(SystemExit):
        parse_args(["experiments/demo.yaml", "--precision=fp16"])


def test_bf16_network_stages_run_and_the_summary_says_so(tmp_path, tiny_synth, tiny_synth_config):
    """A real run in bf16 autocast on the CPU: training, multi-scale scoring and the CAM export."""
    runs = tmp_path / "runs"
    argv = [str(EXPERIMENTS / "demo.yaml"), "--name=bf16", f"--runs_root={runs}", "--precision=bf16-mixed",
            "--until=cams", *tiny_flags(tiny_synth, tiny_synth_config),
            "--classifier.trainer.precision=bf16-mixed"]  # fmt: skip
    # (the demo pins its classifier to fp32; overridden here so that bf16 training and scoring run too)
    assert pipeline_main(argv) == 0
    summary = json.loads((runs / "bf16" / "summary.json").read_text())
    assert summary["precision"]["classifier"] == summary["precision"]["cgnet"] == "bf16-mixed"
    assert summary["precision"]["affinity"] == "32-true"
    assert 0 <= summary["oc_cam_miou"] <= 100 and 0 <= summary["cgnet_cam_miou"] <= 100
    assert list((runs / "bf16" / "cams" / "cgnet").glob("*.npz"))
