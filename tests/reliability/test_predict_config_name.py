"""The predict stage saves its resolved config as the documented ``config_predict.yaml``."""

from __future__ import annotations

from lightning.pytorch.trainer.states import TrainerFn
from reliability_helpers import tiny_classifier_args

from caef.stage_cli import stage_cli


def test_predict_config_is_saved_as_config_predict_yaml(tmp_path, tiny_synth):
    run_dir = tmp_path / "run"
    args = tiny_classifier_args(tiny_synth, f"--run_dir={run_dir}", dataset="synthetic")[2:]  # without "classifier fit"
    cli = stage_cli("classifier", args, run=False)
    saver = cli.save_config_callback(cli.parser, cli.config, save_to_log_dir=False)
    for fn in (TrainerFn.PREDICTING, TrainerFn.FITTING):  # what Lightning passes to save_config
        saver.save_config(cli.trainer, cli.model, fn)
    saved = sorted(p.name for p in (run_dir / "classifier").glob("config*.yaml"))
    assert saved == ["config.yaml", "config_predict.yaml"]
    assert "backbone: resnet38" in (run_dir / "classifier" / "config_predict.yaml").read_text()
