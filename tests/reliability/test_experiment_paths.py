"""Case 11: an experiment file works from any working directory: its stage configs resolve relative to it and are
checked at load; an experiment path that does not exist is looked up among the experiments shipped with caef."""

from __future__ import annotations

from pathlib import Path

import pytest

from caef.errors import CaefError
from caef.pipeline import PipelineConfig
from tests.reliability.reliability_helpers import EXPERIMENTS


@pytest.mark.parametrize("experiment", ["demo.yaml", "voc_full.yaml", "coco_full.yaml"])
def test_an_experiment_loads_from_another_working_directory(tmp_path, monkeypatch, experiment):
    monkeypatch.chdir(tmp_path)
    for given in (EXPERIMENTS / experiment, Path("experiments") / experiment):  # absolute; shipped with caef
        config = PipelineConfig.load(given)
        for stage, settings in config.stages.items():
            if settings["config"]:
                assert Path(settings["config"]).is_file(), (given, stage)
                assert Path(settings["config"]).is_relative_to(EXPERIMENTS), (given, stage)


def test_stage_configs_resolve_relative_to_the_experiment_file(tmp_path, monkeypatch):
    (tmp_path / "exp" / "cgnet").mkdir(parents=True)
    (tmp_path / "exp" / "cgnet" / "mine.yaml").write_text("trainer: {max_epochs: 1}\n")
    (tmp_path / "exp" / "e.yaml").write_text("name: x\nstages: {cgnet: {config: cgnet/mine.yaml}}\n")
    monkeypatch.chdir(tmp_path)
    config = PipelineConfig.load("exp/e.yaml")
    assert Path(config.stages["cgnet"]["config"]) == (tmp_path / "exp" / "cgnet" / "mine.yaml").resolve()


@pytest.mark.parametrize(
    ("stage_config", "expected"),
    [("cgnet/missing.yaml", "cgnet/missing.yaml not found"), ("bad.yaml", "must hold a mapping")],
)
def test_a_missing_or_bad_stage_config_fails_at_load(tmp_path, stage_config, expected):
    (tmp_path / "bad.yaml").write_text("- a list\n")
    path = tmp_path / "e.yaml"
    path.write_text(f"name: x\nstages: {{cgnet: {{config: {stage_config}}}}}\n")
    with pytest.raises(CaefError) as info:
        PipelineConfig.load(path)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_an_experiment_found_nowhere_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CaefError) as info:
        PipelineConfig.load("experiments/nope.yaml")
    message = str(info.value)
    assert "pipeline config not found: experiments/nope.yaml" in message and "demo.yaml" in message
