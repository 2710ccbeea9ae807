"""`make demo`'s runner end to end on a tiny generated dataset: three stage processes, then the summary."""

import json

from caef.demo import format_summary, main


def test_demo_runs_every_stage_and_writes_the_summary(tmp_path, tiny_synth, tiny_synth_config, capsys):
    overrides = [
        f"--data.root={tiny_synth}", f"--data.synth.num_images={tiny_synth_config.num_images}",
        f"--data.synth.size={tiny_synth_config.size}", f"--data.synth.num_classes={tiny_synth_config.num_classes}",
        "--data.crop_size=48", "--data.resize_long=[40, 56]", "--data.batch_size=4", "--data.num_workers=0",
        "--data.score_limit=4", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        "--trainer.check_val_every_n_epoch=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--model.msf_scales=[1.0]",
    ]  # fmt: skip
    assert main(["--name", "tiny", "--seed", "3", "--runs-root", str(tmp_path), "--", *overrides]) == 0
    summary = json.loads((tmp_path / "tiny" / "summary.json").read_text())
    for key in ("oc_cam_miou", "cgnet_cam_miou", "oc_cam_threshold", "cgnet_cam_threshold"):
        assert isinstance(summary[key], float)
    assert summary["seed"] == 3 and summary["cgnet_backbone"] == "resnet38" and summary["masking_depth"] == 0
    assert set(summary["stage_seconds"]) == {"classifier_fit", "cgnet_fit", "cgnet_predict"}
    assert len(list((tmp_path / "tiny" / "cams" / "cgnet").glob("*.npz"))) > 0
    table = capsys.readouterr().out
    assert "CGNet CAM" in table and f"{summary['cgnet_cam_miou']:.2f}" in table


def test_summary_table_formats_missing_values():
    assert "-" in format_summary({"oc_cam_miou": None})
