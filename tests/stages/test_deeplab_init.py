"""DeepLab's trunk initialised from a caef CAM checkpoint (``model.init_checkpoint``): the weights arrive, a
mismatched or missing checkpoint is a one-line error naming the file, and DeepLab's own checkpoints never need it."""

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from caef.errors import CaefError
from caef.stage_cli import stage_cli
from caef.stages.classifier import ClassifierModule
from caef.stages.deeplab import DeepLabModule

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
SMALL = {"width": 0.0625}
TINY = {"backbone": "resnet38", "backbone_options": SMALL}


def save_cam_checkpoint(path: Path, **options) -> ClassifierModule:
    """A classifier checkpoint as `caef classifier fit` writes it, its trunk perturbed away from any fresh init."""
    torch.manual_seed(1)
    module = ClassifierModule(num_classes=4, backbone="resnet38", backbone_options={**SMALL, **options})
    with torch.no_grad():
        for tensor in module.net.backbone.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor))
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return module


def assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    message = str(exc.value)
    assert "\n" not in message and str(path) in message, message


def test_trunk_equals_the_checkpoints_after_loading(tmp_path):
    path = tmp_path / "oc.ckpt"
    expected = save_cam_checkpoint(path).net.backbone.state_dict()
    torch.manual_seed(0)
    fresh = DeepLabModule(num_classes=3, **TINY).net.backbone.state_dict()
    torch.manual_seed(0)
    module = DeepLabModule(num_classes=3, init_checkpoint=str(path), **TINY)
    loaded = module.net.backbone.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in loaded.items():
        assert torch.equal(value, expected[key]), key
    floats = [k for k, v in fresh.items() if v.is_floating_point() and v.numel() > 1]
    assert all(not torch.equal(fresh[k], loaded[k]) for k in floats)  # the weights did change
    assert "init_checkpoint" not in module.hparams  # a DeepLab checkpoint never needs the CAM checkpoint again


def test_cgnet_checkpoint_trunk_comes_from_net_not_its_frozen_oc(tmp_path):
    trunk = DeepLabModule(num_classes=3, **TINY).net.backbone.state_dict()
    state = {f"net.backbone.{k}": v + 1 if v.is_floating_point() else v for k, v in trunk.items()}
    state |= {f"ordinary_classifier.backbone.{k}": torch.full_like(v, 7) for k, v in trunk.items()}
    hparams = {"backbone": "resnet38", "num_classes": 4, "backbone_options": SMALL}
    torch.save({"hyper_parameters": hparams, "state_dict": state}, tmp_path / "cgnet.ckpt")
    loaded = DeepLabModule(num_classes=3, init_checkpoint=str(tmp_path / "cgnet.ckpt"), **TINY).net.backbone
    assert all(torch.equal(v, state[f"net.backbone.{k}"]) for k, v in loaded.state_dict().items())


def test_mismatched_checkpoint_is_a_one_line_error_naming_the_file(tmp_path):
    wide = tmp_path / "wide.ckpt"
    save_cam_checkpoint(wide, width=0.125)
    with pytest.raises(CaefError, match="does not match the configured architecture") as exc:
        DeepLabModule(num_classes=3, init_checkpoint=str(wide), **TINY)
    assert_one_line_naming(exc, wide)
    assert "shape mismatches" in str(exc.value)
    missing = tmp_path / "missing.ckpt"
    with pytest.raises(CaefError, match="not found") as exc:
        DeepLabModule(num_classes=3, init_checkpoint=str(missing), **TINY)
    assert_one_line_naming(exc, missing)
    plain = tmp_path / "plain.pth"
    torch.save(DeepLabModule(num_classes=3, **TINY).net.backbone.state_dict(), plain)
    with pytest.raises(CaefError, match="not a caef classifier/CGNet checkpoint") as exc:
        DeepLabModule(num_classes=3, init_checkpoint=str(plain), **TINY)
    assert_one_line_naming(exc, plain)


def test_the_demo_config_takes_init_checkpoint(tmp_path, tiny_synth, tiny_synth_config):
    path = tmp_path / "cgnet.ckpt"
    expected = save_cam_checkpoint(path).net.backbone.state_dict()
    args = [
        *("--config", str(EXPERIMENTS / "deeplab" / "demo.yaml"), f"--run_dir={tmp_path}", "--data.dataset=synthetic"),
        f"--data.root={tiny_synth}", f"--data.synth.num_images={tiny_synth_config.num_images}",
        f"--data.synth.size={tiny_synth_config.size}", f"--data.synth.num_classes={tiny_synth_config.num_classes}",
        f"--data.synth.seed={tiny_synth_config.seed}", "--trainer.logger=false", f"--model.init_checkpoint={path}",
    ]  # fmt: skip
    cli = stage_cli("deeplab", args, run=False)
    loaded = cli.model.net.backbone.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.items())
