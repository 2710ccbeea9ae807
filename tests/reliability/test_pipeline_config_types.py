"""Case 12: the experiment file is checked against its schema before anything runs (every key's type, every
stage entry), and stage flags (overrides, ``args``) are parsed by the stage's own command line up front."""

from __future__ import annotations

import pytest

from caef.errors import CaefError
from caef.pipeline import Pipeline, PipelineConfig
from tests.reliability.reliability_helpers import EXPERIMENTS

CGNET = EXPERIMENTS / "cgnet/demo.yaml"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("name: [a, b]\nstages: {}\n", "'name'"),
        ("name: x\nseed: abc\nstages: {}\n", "'seed'"),
        ("name: x\nseed: true\nstages: {}\n", "'seed'"),
        ("name: x\ntags: demo\nstages: {}\n", "'tags'"),
        ("name: x\nall: --trainer.max_epochs=1\nstages: {}\n", "'all'"),
        ("name: x\nstages: [classifier]\n", "'stages'"),
        ("name: x\nstages: {crf: --workers=1}\n", "'crf'"),
        ("name: x\nstages: {crf: {args: --seed=1}}\n", "`args`"),
        ("name: x\nstages: {crf: {args: [1, 2]}}\n", "`args`"),
        (f"name: x\nstages: {{cgnet: {{config: [{CGNET}]}}}}\n", "`config`"),
        ("name: x\ndataset: imagenet\nstages: {}\n", "'dataset'"),
        ("name: ../x\nstages: {}\n", "'name'"),
    ],
)
def test_a_wrongly_typed_key_is_a_one_line_error_naming_it(tmp_path, text, named):
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(CaefError) as info:
        PipelineConfig.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and named in message, message


def test_args_given_as_a_list_of_strings_stay_whole_flags(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("name: x\nstages: {crf: {args: [--workers=1, --low-alpha=0.3]}}\n")
    assert PipelineConfig.load(path).stages["crf"]["args"] == ["--workers=1", "--low-alpha=0.3"]


@pytest.mark.parametrize(
    ("overrides", "flag"),
    [
        ({"cgnet": ["--model.masking_depht=3"]}, "masking_depht"),
        ({"cgnet": ["--model.masking_depth=abc"]}, "abc"),
        ({"crf": ["--wrkers=2"]}, "--wrkers"),
    ],
)
def test_stage_flags_are_checked_before_the_first_stage_runs(tmp_path, overrides, flag):
    """Even a dry run (which runs nothing) rejects a flag the stage would reject an hour later."""
    path = tmp_path / "p.yaml"
    path.write_text(
        f"name: x\nstages:\n  classifier: {{config: {EXPERIMENTS / 'classifier/demo.yaml'}}}\n"
        f"  cgnet: {{config: {CGNET}}}\n  crf: {{}}\n"
    )
    config = PipelineConfig.load(path)
    config.runs_root = str(tmp_path / "runs")
    with pytest.raises(CaefError) as info:
        Pipeline(config, overrides).run(dry_run=True)
    stage = next(iter(overrides))
    assert f"stage {stage!r}" in str(info.value) and flag in str(info.value)
    assert not (tmp_path / "runs").exists()
