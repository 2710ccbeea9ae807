"""The stage CLIs end to end on a tiny generated dataset: fit the OC, fit the CGNet against it, export CAMs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from caef.cam_files import load_cams
from caef.cli import main
from caef.models.cam_net import build_cam_net
from caef.stage_cli import stage_cli
from caef.wandb_mode import configure_wandb_mode

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
#: the CAM stages' configs (affinity and deeplab configs are instantiated in their own test files)
CAM_STAGE_CONFIGS = sorted(
    str(p.relative_to(EXPERIMENTS)) for s in ("classifier", "cgnet") for p in EXPERIMENTS.glob(f"{s}/*.yaml")
)


def save_oc_checkpoint(path: Path, num_classes: int, width: float = 0.0625) -> Path:
    """A classifier checkpoint in caef's .ckpt layout (architecture recorded in its hyper-parameters)."""
    net = build_cam_net("resnet38", num_classes, width=width)
    hparams = {"backbone": "resnet38", "num_classes": num_classes, "backbone_options": {"width": width}}
    torch.save({"hyper_parameters": hparams, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def tiny_overrides(root: Path, config) -> list[str]:
    return [
        f"--data.root={root}",
        f"--data.synth.num_images={config.num_images}",
        f"--data.synth.size={config.size}",
        f"--data.synth.num_classes={config.num_classes}",
        f"--data.synth.seed={config.seed}",
        "--data.crop_size=48",
        "--data.resize_long=[40, 56]",
        "--data.batch_size=4",
        "--data.num_workers=0",
        "--data.score_limit=6",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.check_val_every_n_epoch=1",
        "--trainer.logger=false",
        "--model.msf_scales=[1.0, 0.5]",
    ]


def test_classifier_then_cgnet_then_cam_export(tmp_path, tiny_synth, tiny_synth_config):
    run_dir = tmp_path / "run"
    common = [f"--run_dir={run_dir}", *tiny_overrides(tiny_synth, tiny_synth_config)]
    assert main(["classifier", "fit", "--config", str(EXPERIMENTS / "classifier/demo.yaml"), *common]) == 0
    assert (run_dir / "classifier" / "last.ckpt").is_file()
    assert main(["cgnet", "fit", "--config", str(EXPERIMENTS / "cgnet/demo.yaml"), *common]) == 0
    ckpt = run_dir / "cgnet" / "last.ckpt"
    assert ckpt.is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("oc_cam_miou", "oc_cam_threshold", "cgnet_cam_miou", "cgnet_cam_threshold"):
        assert key in summary
    assert 0 <= summary["cgnet_cam_miou"] <= 100 and 0.05 <= summary["cgnet_cam_threshold"] <= 0.60
    assert set(summary["oc_cam_iou"]) == {"background", "stripes_0", "dots_0", "zigzag_0"}

    predict = ["cgnet", "predict", "--config", str(EXPERIMENTS / "cgnet/demo.yaml"), *common, f"--ckpt_path={ckpt}"]
    assert main(predict) == 0
    cam_dir = run_dir / "cams" / "cgnet"
    files = sorted(cam_dir.glob("*.npz"))
    ids = (tiny_synth / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt").read_text().split()
    assert [f.stem for f in files] == sorted(ids)
    cams, classes = load_cams(files[0], num_classes=tiny_synth_config.num_classes + 1, size=(64, 64))
    assert cams.dtype == np.float32 and len(cams) == len(classes) >= 1
    assert cams.max() <= 1.0 + 1e-3 and cams.min() >= 0
    assert not list(cam_dir.glob(".*tmp*")), "temporary files left behind"


def test_missing_ordinary_classifier_is_a_clear_error(tmp_path, tiny_synth, tiny_synth_config, capsys):
    args = ["cgnet", "fit", "--config", str(EXPERIMENTS / "cgnet/demo.yaml"), f"--run_dir={tmp_path}"]
    assert main(args + tiny_overrides(tiny_synth, tiny_synth_config)) == 2
    err = capsys.readouterr().err
    assert "ordinary classifier checkpoint not found" in err and str(tmp_path / "classifier" / "last.ckpt") in err


@pytest.mark.parametrize("config", CAM_STAGE_CONFIGS)
def test_every_experiment_config_parses_and_instantiates(config, tmp_path, tiny_synth, tiny_synth_config):
    """Every CAM-stage config in experiments/ is valid for its CLI (dataset swapped for the tiny generated one)."""
    stage = config.split("/")[0]
    oc = save_oc_checkpoint(tmp_path / "oc.ckpt", tiny_synth_config.num_classes + 1)
    args = [
        *("--config", str(EXPERIMENTS / config), f"--run_dir={tmp_path}", "--data.dataset=synthetic"),
        *tiny_overrides(tiny_synth, tiny_synth_config),
        *("--model.pretrained=null", "--model.backbone_options.width=0.0625"),
    ]
    if stage == "cgnet":
        args.append(f"--model.ordinary_classifier={oc}")
    cli = stage_cli(stage, args, run=False)
    assert cli.model.hparams.num_classes == tiny_synth_config.num_classes + 1


def test_sweep_style_flags_parse(tmp_path, tiny_synth, tiny_synth_config):
    """The argv a W&B agent builds (`--key=value` per parameter) reaches the model."""
    oc = save_oc_checkpoint(tmp_path / "oc.ckpt", tiny_synth_config.num_classes + 1)
    args = ["--config", str(EXPERIMENTS / "cgnet/demo.yaml"), *tiny_overrides(tiny_synth, tiny_synth_config),
            f"--run_dir={tmp_path}", f"--model.ordinary_classifier={oc}", "--model.masking_depth=3",
            "--model.mask_normalization=image", "--model.erase_weight_init=0.5", "--seed_everything=7"]  # fmt: skip
    cli = stage_cli("cgnet", args, run=False)
    assert cli.model.masking_depth == 3 and cli.model.mask_normalization == "image"
    assert cli.model.hparams.erase_weight_init == 0.5


def test_run_layout_fills_unset_paths(tmp_path, tiny_synth, tiny_synth_config):
    oc = save_oc_checkpoint(tmp_path / "oc.ckpt", tiny_synth_config.num_classes + 1)
    overrides = [a for a in tiny_overrides(tiny_synth, tiny_synth_config) if not a.startswith("--trainer.logger")]
    args = ["--config", str(EXPERIMENTS / "cgnet/demo.yaml"), f"--run_dir={tmp_path / 'r'}", *overrides]
    cli = stage_cli("cgnet", args + [f"--model.ordinary_classifier={oc}"], run=False)
    config = cli.config
    assert config.trainer.default_root_dir == str(tmp_path / "r" / "cgnet")
    by_class = {c.class_path: c.init_args for c in config.trainer.callbacks}
    assert by_class["lightning.pytorch.callbacks.ModelCheckpoint"].dirpath == str(tmp_path / "r" / "cgnet")
    assert by_class["caef.callbacks.CAMScore"].summary_file == str(tmp_path / "r" / "summary.json")
    assert by_class["caef.callbacks.CAMWriter"].output_dir == str(tmp_path / "r" / "cams" / "cgnet")
    assert config.trainer.logger.init_args.group == "r" and config.trainer.logger.init_args.job_type == "cgnet"


def test_wandb_defaults_to_offline_without_a_key(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    env: dict[str, str] = {}
    assert configure_wandb_mode(env) == "offline" and env["WANDB_MODE"] == "offline"
    assert configure_wandb_mode({"WANDB_MODE": "disabled"}) == "disabled"


def test_wandb_with_a_key_is_online_only_when_its_server_answers(capsys):
    """A key but no route to the server (closed port) must not stop a run: offline, with a one-line note."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        reachable = f"http://127.0.0.1:{server.getsockname()[1]}"
        assert configure_wandb_mode({"WANDB_API_KEY": "x", "WANDB_BASE_URL": reachable}) == "online"
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    env = {"WANDB_API_KEY": "x", "WANDB_BASE_URL": closed}
    assert configure_wandb_mode(env) == "offline" and env["WANDB_MODE"] == "offline"
    assert "unreachable" in capsys.readouterr().err


def test_resolved_config_is_saved_in_the_stage_folder(tmp_path, tiny_synth, tiny_synth_config, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory
    run_dir = tmp_path / "run"
    args = ["classifier", "fit", "--config", str(EXPERIMENTS / "classifier/demo.yaml"), f"--run_dir={run_dir}"]
    assert main(args + tiny_overrides(tiny_synth, tiny_synth_config) + ["--trainer.limit_val_batches=0"]) == 0
    saved = (run_dir / "classifier" / "config.yaml").read_text()
    assert "backbone: resnet38" in saved and f"run_dir: {run_dir}" in saved
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize(
    "every, epochs, expected",
    [(12, 6, 6), (12, 15, 5), (4, 15, 3), (6, 6, None), (3, 12, None), (1, 7, None), (None, 7, None)],
)
def test_validation_is_moved_onto_the_last_epoch(every, epochs, expected):
    from jsonargparse import Namespace

    from caef.run_layout import validate_last_epoch

    trainer = Namespace(check_val_every_n_epoch=every, max_epochs=epochs)
    note = validate_last_epoch(trainer)
    if expected is None:
        assert note is None and trainer.check_val_every_n_epoch == every
    else:
        assert trainer.check_val_every_n_epoch == expected and epochs % expected == 0
        assert f"check_val_every_n_epoch={every}" in note and f"max_epochs={epochs}" in note


@pytest.mark.parametrize(
    "interval, steps, epochs, expected",
    [(100, 400, None, None), (100, 250, None, 50), (300, 400, None, 200), (100, 400, 1, "epochs")],
)
def test_step_based_runs_validate_their_last_step(interval, steps, epochs, expected):
    """DeepLab's recipes count steps: the interval must divide max_steps, and a max_epochs override (which can end
    training between two checks) turns the run into an epoch-bounded one validated after its last epoch."""
    from jsonargparse import Namespace

    from caef.run_layout import validate_last_epoch

    trainer = Namespace(check_val_every_n_epoch=None, val_check_interval=interval, max_steps=steps, max_epochs=epochs)
    note = validate_last_epoch(trainer)
    if expected is None:
        assert note is None and trainer.val_check_interval == interval and trainer.max_steps == steps
    elif expected == "epochs":
        assert (trainer.max_steps, trainer.check_val_every_n_epoch, trainer.val_check_interval) == (-1, epochs, 1.0)
        assert f"max_epochs={epochs}" in note and f"max_steps={steps}" in note
    else:
        assert trainer.val_check_interval == expected and steps % expected == 0
        assert f"val_check_interval={interval}" in note and f"max_steps={steps}" in note


def test_epoch_validation_with_a_step_interval_is_a_one_line_error():
    from jsonargparse import Namespace

    from caef.errors import CaefError
    from caef.run_layout import validate_last_epoch

    trainer = Namespace(check_val_every_n_epoch=1, val_check_interval=100, max_steps=400, max_epochs=None)
    with pytest.raises(CaefError, match=r"check_val_every_n_epoch=1 with trainer.val_check_interval=100 .*=null"):
        validate_last_epoch(trainer)


def test_fewer_epochs_than_the_validation_interval_still_scores_the_cams(tmp_path, tiny_synth, tiny_synth_config):
    """classifier/demo.yaml validates once, at its last epoch (18); a 2-epoch run must still score its final weights."""
    run_dir = tmp_path / "run"
    args = [a for a in tiny_overrides(tiny_synth, tiny_synth_config) if "check_val_every_n_epoch" not in a]
    args = [a if a != "--trainer.max_epochs=1" else "--trainer.max_epochs=2" for a in args]
    with pytest.warns(UserWarning, match="using check_val_every_n_epoch=2"):
        code = main(["classifier", "fit", "--config", str(EXPERIMENTS / "classifier/demo.yaml"),
                     f"--run_dir={run_dir}", *args])  # fmt: skip
    assert code == 0
    assert "oc_cam_miou" in json.loads((run_dir / "summary.json").read_text())
