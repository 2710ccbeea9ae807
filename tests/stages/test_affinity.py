"""AffinityNet: head taps and shapes, affinities, the training step, overfitting, trunk init, the CLI."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from caef.cli import main
from caef.data.affinity_labels import pair_offsets
from caef.data.source import write_mask
from caef.errors import CaefError
from caef.models.affinity_net import AffinityNet, affinity_depths, build_affinity_net
from caef.models.backbones import build_backbone
from caef.stage_cli import stage_cli
from caef.stages.affinity import AffinityNetModule
from caef.stages.classifier import ClassifierModule

# training_step is called without a Trainer in some tests: its self.log calls only warn
pytestmark = pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")

SMALL = {"width": 0.0625}
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def small_module(**kwargs) -> AffinityNetModule:
    kwargs["backbone_options"] = {**SMALL, **kwargs.get("backbone_options", {})}
    return AffinityNetModule(num_classes=4, backbone="resnet38", **kwargs)


def hand_made_batch() -> dict:
    """Two 64x80 images with a bright square; seed grid (8x10): square = class 1 or 2, border unsure, rest bg."""
    images = torch.randn(2, 3, 64, 80) * 0.1
    label = torch.zeros(2, 8, 10, dtype=torch.long)
    for b, cls in enumerate((1, 2)):
        images[b, cls - 1, 16:48, 8:40] += 2.0
        label[b, 1:7, 0:6] = 255
        label[b, 2:6, 1:5] = cls
    return {"image": images, "label": label}


# -- the network -------------------------------------------------------------------------------------
TAPS = [("resnet38", SMALL, (4, 5, 7)), ("resnet18", {}, (3, 4, 5))]


@pytest.mark.parametrize(("backbone", "options", "depths"), TAPS)
def test_head_taps_and_feature_shape(backbone, options, depths):
    net = build_affinity_net(backbone, **options)
    assert net.depths == affinity_depths(net.backbone) == depths
    channels = [net.backbone.stage_channels[d - 1] for d in depths]
    assert [c.in_channels for c in (net.f8_3, net.f8_4, net.f8_5)] == channels
    assert [c.out_channels for c in (net.f8_3, net.f8_4, net.f8_5)] == [64, 128, 256]
    assert all(c.bias is None for c in net.head_modules())
    features = net(torch.randn(2, 3, 40, 56))
    assert features.shape == (2, 448, 5, 7) and net.out_channels == 448


def test_resnet38_taps_are_the_bn_relu_inputs_of_blocks_b5_and_b6():
    """PSA's conv4 / conv5 are relu(b5.bn_branch2a(x)) and relu(b6.bn_branch2a(x)) of the stage-4 / stage-5
    outputs (``get_x_bn_relu``), conv6 the final relu(bn7(.)); not the raw residual stream of stages 4 and 5."""
    torch.manual_seed(0)
    net = build_affinity_net("resnet38", **SMALL).eval()
    trunk = net.backbone
    for module in trunk.modules():  # non-trivial BN statistics, so BN+ReLU differs from the raw stream
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_()
            module.bias.data.normal_()
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        raw = trunk.forward_stages(x, (4, 5, 7))
        taps = trunk.activated_stages(x, (4, 5, 7))
        expected = {
            4: torch.relu(trunk.b5.bn_branch2a(raw[4])),
            5: torch.relu(trunk.b6.bn_branch2a(raw[5])),
            7: raw[7],
        }
        for depth in (4, 5, 7):
            torch.testing.assert_close(taps[depth], expected[depth], rtol=0, atol=0)
        assert not torch.allclose(taps[4], raw[4]) and not torch.allclose(taps[5], raw[5])
        features = net(x)
        head = [net.f8_3, net.f8_4, net.f8_5]
        reduced = [torch.nn.functional.elu(conv(expected[d])) for conv, d in zip(head, (4, 5, 7))]
        torch.testing.assert_close(features, torch.nn.functional.elu(net.f9(torch.cat(reduced, 1))))


def test_resnet38_taps_run_batchnorm_once_in_training_mode():
    """The taps are read by hooks: a training step updates each BatchNorm's running statistics once."""
    net = build_affinity_net("resnet38", **SMALL, freeze_bn=False).train()
    net(torch.randn(2, 3, 32, 32))
    assert int(net.backbone.b5.bn_branch2a.num_batches_tracked) == 1
    assert int(net.backbone.b6.bn_branch2a.num_batches_tracked) == 1


def test_stride_probe_keeps_mode_and_statistics():
    backbone = build_backbone("resnet18")
    backbone.train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    assert backbone.stage_strides() == (2, 4, 8, 8, 8)
    assert backbone.training and all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())
    assert build_backbone("resnet38", **SMALL).stage_strides() == (1, 2, 4, 8, 8, 8, 8)
    assert affinity_depths(build_backbone("vgg16")) == (3, 4, 5)


def test_bad_feature_depths_are_clear():
    with pytest.raises(CaefError, match="exactly 3 stages"):
        build_affinity_net("resnet38", depths=(5, 7), **SMALL)
    with pytest.raises(ValueError, match="out of range"):
        build_affinity_net("resnet38", depths=(5, 6, 9), **SMALL)


def test_affinities_shape_and_range():
    net = build_affinity_net("resnet38", **SMALL).eval()
    with torch.no_grad():
        aff = net.affinities(torch.randn(2, 3, 64, 96), radius=5)
    assert aff.shape == (2, len(pair_offsets(5)), 8 - 4, 12 - 8)
    assert bool((aff > 0).all()) and bool((aff <= 1).all())


# -- the LightningModule -----------------------------------------------------------------------------
def test_training_step_gives_a_finite_loss_and_gradients_everywhere_trainable():
    torch.manual_seed(0)
    module = small_module()
    module.train()
    loss = module.training_step(hand_made_batch(), 0)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    net = module.net
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in net.head_modules())
    for name in ("b3", "b4", "b5", "b7"):  # every tapped stage and the one before
        grads = [p.grad for p in getattr(net.backbone, name).parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in net.backbone.conv1a.parameters())  # frozen stage (PSA's not_training)
    assert not any(m.training for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_seed_grid_must_match_the_features():
    batch = hand_made_batch()
    batch["label"] = batch["label"][:, :7]
    with pytest.raises(CaefError, match=r"features are \(8, 10\) but the seed label grid is \(7, 10\)"):
        small_module().training_step(batch, 0)
    batch["label"] = batch["label"][:, :, :8]
    with pytest.raises(CaefError, match="7x8 seed grid is too small for radius 5.*crop_size >= 72"):
        small_module().training_step(batch, 0)


def test_overfits_one_batch():
    torch.manual_seed(0)
    module = small_module(backbone_options={**SMALL, "frozen_stages": 0, "dropout": (0.0, 0.0)})
    module.train()
    batch = hand_made_batch()
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(30):
        loss = module.training_step(batch, 0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses


def test_predict_pads_to_a_multiple_of_8():
    module = small_module().eval()
    with torch.no_grad():
        out = module.predict_step({"id": ["a"], "image": torch.randn(1, 3, 50, 60)}, 0)
    assert out["id"] == ["a"] and out["features"].shape == (1, 448, 7, 8)


# -- initialisation from a CAM checkpoint --------------------------------------------------------------
def save_classifier_ckpt(path: Path, **options) -> ClassifierModule:
    module = ClassifierModule(num_classes=4, backbone="resnet38", backbone_options={**SMALL, **options})
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return module


def test_trunk_initialised_from_a_classifier_checkpoint(tmp_path):
    path = tmp_path / "oc.ckpt"
    oc = save_classifier_ckpt(path)
    module = small_module(init_checkpoint=str(path))
    expected = oc.net.backbone.state_dict()
    for key, value in module.net.backbone.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert AffinityNet.from_cam_checkpoint(path).backbone.width == SMALL["width"]
    # the init file is not a hyper-parameter: `--ckpt_path` re-applies those, and must not need it after a move
    assert "init_checkpoint" not in module.hparams


def test_cgnet_checkpoint_trunk_comes_from_net_not_the_oc(tmp_path):
    net = build_affinity_net("resnet38", **SMALL)
    trunk = net.backbone.state_dict()
    state = {f"net.backbone.{k}": v for k, v in trunk.items()}
    state.update({f"ordinary_classifier.backbone.{k}": torch.full_like(v, 7) for k, v in trunk.items()})
    hparams = {"backbone": "resnet38", "num_classes": 4, "backbone_options": SMALL}
    torch.save({"hyper_parameters": hparams, "state_dict": state}, tmp_path / "cgnet.ckpt")
    loaded = AffinityNet.from_cam_checkpoint(tmp_path / "cgnet.ckpt")
    assert all(torch.equal(v, trunk[k]) for k, v in loaded.backbone.state_dict().items())


def test_init_checkpoint_errors_name_the_file(tmp_path):
    path = tmp_path / "oc_wide.ckpt"
    save_classifier_ckpt(path, width=0.125)
    with pytest.raises(CaefError, match=f"{path.name} does not match .*shape mismatches.*width"):
        small_module(init_checkpoint=str(path))
    with pytest.raises(CaefError, match="model.init_checkpoint not found: .*missing.ckpt.*res38_aff.pth"):
        small_module(init_checkpoint=str(tmp_path / "missing.ckpt"))
    torch.save(build_affinity_net("resnet38", **SMALL).backbone.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CaefError, match="plain.pth is not a caef .* nor a PSA AffinityNet .*model.pretrained"):
        small_module(init_checkpoint=str(tmp_path / "plain.pth"))


def psa_affinity_state_dict(net: AffinityNet, prefix: str = "module.") -> dict:
    """What PSA's ``torch.save(model.state_dict())`` of a DataParallel ``resnet38_aff.Net`` holds: PSA's names
    (conv1a.weight, b4_5.bn_branch2a.running_mean, ..., bn7.*, f8_3.weight ... f9.weight), no BN step counters."""
    state = {}
    for key, value in net.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        state[prefix + key.removeprefix("backbone.")] = torch.randn_like(value.float()).to(value.dtype)
    return state


def test_a_psa_affinity_state_dict_round_trips_into_affinitynet(tmp_path):
    """PSA's res38_aff.pth (trunk + f8_3/f8_4/f8_5/f9) loads as model.init_checkpoint: every tensor lands where
    PSA's name says, so `caef affinity predict` computes PSA's affinities."""
    torch.manual_seed(0)
    state = psa_affinity_state_dict(build_affinity_net("resnet38", **SMALL))
    assert "module.b5.bn_branch2a.running_var" in state and "module.f9.weight" in state
    torch.save(state, tmp_path / "res38_aff.pth")
    module = small_module(init_checkpoint=str(tmp_path / "res38_aff.pth"))
    loaded = module.net.state_dict()
    for key, value in state.items():
        name = key.removeprefix("module.")
        target = name if name.startswith(("f8_", "f9.")) else f"backbone.{name}"
        assert torch.equal(loaded[target], value), key
    torch.save(psa_affinity_state_dict(build_affinity_net("resnet38", width=0.125)), tmp_path / "wide.pth")
    with pytest.raises(CaefError, match="wide.pth does not match .*shape mismatches"):
        small_module(init_checkpoint=str(tmp_path / "wide.pth"))


# -- the CLI ---------------------------------------------------------------------------------------------
def write_seeds(root: Path, out: Path) -> Path:
    """Seeds from the ground truth: low = the mask, high = its background (all foreground as class 1)."""
    from caef.data.datamodule import open_source

    source = open_source("synthetic", root)
    for image_id in source.split_ids("train_aug"):
        mask = source.read_mask(image_id, "train_aug")
        write_mask(out / "low" / f"{image_id}.png", mask)
        write_mask(out / "high" / f"{image_id}.png", np.where(mask == 0, 0, 1).astype(np.uint8))
    return out


def tiny_args(tmp_path: Path, root: Path, config) -> list[str]:
    return [
        f"--run_dir={tmp_path / 'run'}",
        "--data.dataset=synthetic",
        f"--data.root={root}",
        f"--data.synth.num_images={config.num_images}",
        f"--data.synth.size={config.size}",
        f"--data.synth.num_classes={config.num_classes}",
        f"--data.synth.seed={config.seed}",
        "--data.crop_size=72",
        "--data.resize_long=[64, 88]",
        "--data.batch_size=4",
        "--data.num_workers=0",
        "--trainer.logger=false",
        "--model.pretrained=null",
        "--model.backbone_options.width=0.0625",
    ]


@pytest.mark.parametrize("config", ["demo.yaml", "voc.yaml"])
def test_configs_instantiate(config, tmp_path, tiny_synth, tiny_synth_config):
    args = ["--config", str(EXPERIMENTS / "affinity" / config), *tiny_args(tmp_path, tiny_synth, tiny_synth_config)]
    cli = stage_cli("affinity", args, run=False)
    assert isinstance(cli.model, AffinityNetModule)
    assert cli.model.hparams.num_classes == tiny_synth_config.num_classes + 1
    assert cli.model.net.depths == (4, 5, 7)


def test_fit_from_the_cli(tmp_path, tiny_synth, tiny_synth_config, capsys):
    args = ["affinity", "fit", "--config", str(EXPERIMENTS / "affinity/demo.yaml")]
    args += tiny_args(tmp_path, tiny_synth, tiny_synth_config)
    args += ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2"]
    code = main(args)  # the run layout defaults data.seed_dir to <run_dir>/seeds, which does not exist yet
    err = capsys.readouterr().err
    assert code == 2 and "seeds/low not found" in err and "caef crf" in err
    seeds = write_seeds(tiny_synth, tmp_path / "seeds")
    assert main([*args, f"--data.seed_dir={seeds}"]) == 0
    checkpoint = torch.load(tmp_path / "run" / "affinity" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2 and any(k.startswith("net.f9") for k in checkpoint["state_dict"])
    groups = checkpoint["optimizer_states"][0]["param_groups"]  # trunk weights, trunk biases (BN), head 10x
    assert [g["initial_lr"] for g in groups] == pytest.approx([1e-3, 2e-3, 1e-2])
    assert [g["weight_decay"] for g in groups] == pytest.approx([1e-4, 0.0, 1e-4])
    predict = ["affinity", "predict", *args[2:], "--trainer.limit_predict_batches=1"]
    predict.append(f"--ckpt_path={tmp_path / 'run' / 'affinity' / 'last.ckpt'}")
    # predict runs the random walk over the CGNet's CAM files (covered in test_pseudo_labels.py); without them the
    # error names the missing file
    assert main(predict) == 2
    err = capsys.readouterr().err
    assert "CAM file not found" in err and str(tmp_path / "run" / "cams" / "cgnet") in err
