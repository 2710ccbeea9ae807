"""A checkpoint of another backbone or class count, or a truncated / corrupt checkpoint file: a CaefError naming the
file and what to change, never a torch traceback or hundreds of state-dict keys."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from reliability_helpers import EXPERIMENTS, assert_actionable, caef_error_line, run_caef

from caef.errors import CaefError
from caef.models.cam_net import build_cam_net
from caef.stages.cgnet import CGNetModule, load_ordinary_classifier
from caef.stages.classifier import ClassifierModule

SMALL = {"width": 0.0625}


def save_ckpt(path: Path, num_classes: int, backbone: str = "resnet38", **options) -> Path:
    """A caef classifier checkpoint as Lightning writes it (architecture in its hyper-parameters)."""
    module = ClassifierModule(num_classes=num_classes, backbone=backbone, backbone_options=options or SMALL)
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def save_state_dict(path: Path, num_classes: int, backbone: str = "resnet38", **options) -> Path:
    """A plain state dict (.pth), as PSA / OC-CSE ship their classifiers: no architecture recorded."""
    torch.save(build_cam_net(backbone, num_classes, **(options or SMALL)).state_dict(), path)
    return path


def cgnet(oc: Path, num_classes: int = 4, **kwargs) -> CGNetModule:
    options = dict(backbone_options=SMALL, ordinary_classifier_options=SMALL)
    return CGNetModule(ordinary_classifier=str(oc), num_classes=num_classes, **{**options, **kwargs})


# -- another architecture or class count ------------------------------------------------------------
def test_plain_state_dict_of_another_backbone(tmp_path: Path) -> None:
    path = save_state_dict(tmp_path / "res18_cls.pth", 4, "resnet18", frozen_stages=0)
    with pytest.raises(CaefError) as err:
        cgnet(path)  # ordinary_classifier_backbone defaults to resnet38
    message = assert_actionable(str(err.value), path, "does not match", "model.ordinary_classifier_backbone")
    assert "missing keys" in message and "unexpected keys" in message and len(message) < 1000


def test_plain_state_dict_of_another_width(tmp_path: Path) -> None:
    path = save_state_dict(tmp_path / "oc.pth", 4, width=0.125)
    with pytest.raises(CaefError) as err:
        load_ordinary_classifier(path, 4, backbone_options=SMALL)
    assert_actionable(str(err.value), path, "shape mismatches", "ordinary_classifier_options (e.g. width)")


def test_plain_state_dict_of_another_class_count(tmp_path: Path) -> None:
    path = save_state_dict(tmp_path / "oc_voc.pth", 21)
    with pytest.raises(CaefError) as err:
        cgnet(path, num_classes=4)
    assert_actionable(str(err.value), path, "predicts 20 foreground classes but 3 are configured", "use one trained")


def test_lightning_checkpoint_of_another_class_count(tmp_path: Path) -> None:
    path = save_ckpt(tmp_path / "oc.ckpt", num_classes=6)
    with pytest.raises(CaefError) as err:
        cgnet(path, num_classes=4)
    assert_actionable(str(err.value), path, "predicts 5 foreground classes but the dataset has 3")


def test_init_from_a_classifier_of_another_architecture(tmp_path: Path) -> None:
    path = save_ckpt(tmp_path / "oc.ckpt", num_classes=4, width=0.125)
    cgnet(path)  # a wider OC is fine as the frozen classifier ...
    with pytest.raises(CaefError) as err:
        cgnet(path, init_from_ordinary_classifier=True)  # ... but cannot initialise a narrower CGNet
    assert_actionable(str(err.value), path, "as CGNet init", "model.init_from_ordinary_classifier=false")


def test_checkpoint_of_another_class_count_through_the_cli(tmp_path, capsys, tiny_synth, tiny_synth_config):
    path = save_ckpt(tmp_path / "voc_oc.ckpt", num_classes=21)
    args = ["cgnet", "fit", *tiny_cgnet_args(tiny_synth, tiny_synth_config, tmp_path)]
    code, _, err = run_caef([*args, f"--model.ordinary_classifier={path}"], capsys)
    line = caef_error_line(code, err)
    assert_actionable(line, path, "predicts 20 foreground classes but the dataset has 3")


# -- unreadable files -------------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CORRUPTIONS = {
    "truncated": _truncate,
    "empty": lambda p: p.write_bytes(b""),
    "not a torch file": lambda p: p.write_text("<html>404 Not Found</html>"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_unreadable_checkpoint_names_the_file(tmp_path: Path, corruption: str) -> None:
    path = save_ckpt(tmp_path / "last.ckpt", num_classes=4)
    CORRUPTIONS[corruption](path)
    with pytest.raises(CaefError) as err:
        cgnet(path)
    assert_actionable(str(err.value), path, "cannot read ordinary classifier checkpoint", "copy it again")


@pytest.mark.parametrize(
    "content, words",
    [
        ([1, 2, 3], "holds a list, not a state dict"),
        ({"hyper_parameters": {"lr": 0.1}, "state_dict": {}}, "not of a caef classifier"),
    ],
    ids=["a list", "another Lightning module"],
)
def test_checkpoint_with_the_wrong_content(tmp_path: Path, content, words: str) -> None:
    path = tmp_path / "weird.pth"
    torch.save(content, path)
    with pytest.raises(CaefError) as err:
        load_ordinary_classifier(path, 4)
    assert_actionable(str(err.value), path, words)


def test_truncated_checkpoint_through_the_cli(tmp_path, capsys, tiny_synth, tiny_synth_config):
    path = save_ckpt(tmp_path / "last.ckpt", num_classes=tiny_synth_config.num_classes + 1)
    _truncate(path)
    args = ["cgnet", "fit", *tiny_cgnet_args(tiny_synth, tiny_synth_config, tmp_path)]
    code, _, err = run_caef([*args, f"--model.ordinary_classifier={path}"], capsys)
    assert_actionable(caef_error_line(code, err), path, "cannot read")


# -- --ckpt_path (LightningCLI and the Trainer load it: cli.py has to check it first) ----------------
def test_ckpt_path_of_another_architecture_is_followed(tmp_path, capsys, tiny_synth, tiny_synth_config):
    """LightningCLI builds the model from the hyper-parameters stored in --ckpt_path, so a checkpoint of another
    backbone width just works (the data still decides the class count: see the next test)."""
    path = save_ckpt(tmp_path / "wide.ckpt", num_classes=tiny_synth_config.num_classes + 1, width=0.125)
    args = ["classifier", "validate", *tiny_classifier_synth_args(tiny_synth, tiny_synth_config, tmp_path)]
    code, _, err = run_caef([*args, f"--ckpt_path={path}"], capsys)
    assert code == 0, err


def test_ckpt_path_of_another_class_count(tmp_path, capsys, tiny_synth, tiny_synth_config):
    path = save_ckpt(tmp_path / "voc.ckpt", num_classes=21)
    args = ["classifier", "validate", *tiny_classifier_synth_args(tiny_synth, tiny_synth_config, tmp_path)]
    code, _, err = run_caef([*args, f"--ckpt_path={path}"], capsys)
    assert_actionable(caef_error_line(code, err), path, "predicts 20 foreground classes but 3 are configured")


def test_truncated_ckpt_path(tmp_path, capsys, tiny_synth, tiny_synth_config):
    path = save_ckpt(tmp_path / "last.ckpt", num_classes=tiny_synth_config.num_classes + 1)
    _truncate(path)
    args = ["classifier", "validate", *tiny_classifier_synth_args(tiny_synth, tiny_synth_config, tmp_path)]
    code, _, err = run_caef([*args, f"--ckpt_path={path}"], capsys)
    assert_actionable(caef_error_line(code, err), path, "cannot read")


def _synth_overrides(root: Path, config, run_dir: Path) -> list[str]:
    return [
        f"--data.root={root}", f"--data.synth.num_images={config.num_images}", f"--data.synth.size={config.size}",
        f"--data.synth.num_classes={config.num_classes}", f"--data.synth.seed={config.seed}", "--data.crop_size=32",
        "--data.resize_long=[40, 56]", "--data.batch_size=4", "--data.num_workers=0", "--data.score_limit=2",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=1", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false", "--model.msf_scales=[1.0]", f"--run_dir={run_dir / 'run'}",
    ]  # fmt: skip


def tiny_cgnet_args(root: Path, config, run_dir: Path) -> list[str]:
    return ["--config", str(EXPERIMENTS / "cgnet" / "demo.yaml"), *_synth_overrides(root, config, run_dir)]


def tiny_classifier_synth_args(root: Path, config, run_dir: Path) -> list[str]:
    return ["--config", str(EXPERIMENTS / "classifier" / "demo.yaml"), *_synth_overrides(root, config, run_dir)]
