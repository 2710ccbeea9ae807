"""Stage flags are checked against the stage's own command line before anything runs (pipeline overrides, stage
``args`` and sweep parameters): a misspelled key or a wrong type fails at once, naming the flag."""

from __future__ import annotations

import pytest

from caef.errors import CaefError
from caef.stage_flags import check_stage_flags
from tests.reliability.reliability_helpers import EXPERIMENTS


@pytest.mark.parametrize(
    ("stage", "config", "flags"),
    [
        ("cgnet", "cgnet/demo.yaml", ["--model.masking_depth=3", "--trainer.max_epochs=2"]),
        ("cams", "cgnet/demo.yaml", ["--trainer.limit_predict_batches=2"]),
        ("crf", None, ["--workers=2", "--low-alpha=0.3", "--high-alpha=3.5"]),
    ],
)
def test_flags_the_stage_knows_pass(stage, config, flags):
    check_stage_flags(stage, EXPERIMENTS / config if config else None, flags)


@pytest.mark.parametrize(
    ("stage", "config", "flag", "reason"),
    [
        ("cgnet", "cgnet/demo.yaml", "--model.masking_depht=3", "masking_depht"),
        ("cgnet", "cgnet/demo.yaml", "--model.masking_depth=abc", "abc"),
        ("affinity", "affinity/demo.yaml", "--no_such_key=1", "no_such_key"),
        ("crf", None, "--wrkers=2", "--wrkers"),
        ("crf", None, "--low-alpha=-1", "low_alpha"),
    ],
)
def test_a_flag_the_stage_does_not_take_is_a_one_line_error_naming_it(stage, config, flag, reason):
    with pytest.raises(CaefError) as info:
        check_stage_flags(stage, EXPERIMENTS / config if config else None, [flag])
    message = str(info.value)
    assert "\n" not in message and f"stage {stage!r}" in message and flag in message and reason in message
