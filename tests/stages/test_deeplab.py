"""DeepLab (v2 / v3+) on caef backbones: shapes, loss, overfitting, evaluation (metric, multi-scale, CRF), training
through Lightning on a generated tree, the summary callback and the stage's configs."""

import json
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import WandbLogger

from caef.callbacks import SegmentationScore
from caef.data.datamodule import SegmentationDataModule
from caef.data.synthetic import SynthConfig, generate
from caef.errors import CaefError
from caef.models.deeplab import build_deeplab, multiscale_probs, pick_low_level_stage, segmentation_loss
from caef.stage_cli import stage_cli
from caef.stages.deeplab import DeepLabModule

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
SMALL = {"resnet18": {}, "resnet38": {"width": 0.0625}}
TINY = {"backbone": "resnet38", "backbone_options": {"width": 0.0625}}


@pytest.fixture
def one_thread():
    """Tiny networks run far faster on one thread than on oversubscribed shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blocky_masks(generator: torch.Generator, count: int = 2, classes: int = 3, size: int = 32, block: int = 8):
    coarse = torch.randint(0, classes, (count, size // block, size // block), generator=generator)
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)


@pytest.mark.parametrize("variant", ["v2", "v3plus"])
@pytest.mark.parametrize("backbone", ["resnet18", "resnet38"])
def test_logits_have_the_input_size(backbone, variant, one_thread):
    net = build_deeplab(backbone, 5, variant, **SMALL[backbone]).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 37, 50)).shape == (1, 5, 37, 50)
    if variant == "v3plus":  # the deepest stride-4 stage: ResNet maxpool+layer1, ResNet-38 b3
        assert net.low_level_stage == {"resnet18": 2, "resnet38": 3}[backbone]


def test_low_level_stage_fallbacks():
    assert pick_low_level_stage([2, 4, 4, 8, 8]) == 3
    assert pick_low_level_stage([1, 2, 2, 8, 8]) == 3
    assert pick_low_level_stage([1, 8, 8]) == 2
    with pytest.raises(CaefError, match="no stage"):
        pick_low_level_stage([1, 16])


def test_cross_entropy_ignores_255():
    logits = torch.randn(2, 4, 5, 6)
    target = torch.full((2, 5, 6), 255)
    target[1, 2, 3] = 2
    alone = F.cross_entropy(logits[1:2, :, 2, 3], torch.tensor([2]))
    torch.testing.assert_close(segmentation_loss(logits, target), alone)
    empty = segmentation_loss(logits.requires_grad_(), torch.full((2, 5, 6), 255))
    assert empty.item() == 0 and empty.requires_grad


@pytest.mark.parametrize("variant", ["v2", "v3plus"])
def test_overfits_one_batch(variant, one_thread):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    images, masks = torch.randn(2, 3, 32, 32, generator=generator), blocky_masks(generator)
    net = build_deeplab("resnet38", 3, variant, width=0.0625, dropout=(0.0, 0.0)).train()
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(60):
        logits = net(images)
        loss = segmentation_loss(logits, masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if variant == "v2":  # frozen trunk BatchNorm: eval mode is the trained function
        with torch.no_grad():
            logits = net.eval()(images)
    # (v3+: the head's BatchNorm running statistics lag after 60 steps, so its training-mode logits are scored)
    accuracy = (logits.argmax(1) == masks).float().mean().item()
    assert accuracy > 0.95, f"{variant}: pixel accuracy {accuracy:.3f} after 60 steps (loss {loss.item():.3f})"


def test_validation_miou_excludes_absent_classes(one_thread):
    module = DeepLabModule(num_classes=4, **TINY)
    target = torch.tensor([[[0, 0, 1, 1], [255, 2, 2, 0]]])
    pred = torch.tensor([[[0, 1, 1, 1], [3, 2, 2, 0]]])  # class 3 only where the truth is ignored
    module.predict_probs = lambda images: F.one_hot(pred, 4).permute(0, 3, 1, 2).float()
    module.validation_step({"id": ["a"], "image": torch.zeros(1, 3, 2, 4), "mask": target}, 0)
    scores = module.compute_scores()
    # by hand, over the 7 labelled pixels: class 0 truth {00,01,13} pred {00,13}: 2/3; class 1 truth {02,03} pred
    # {01,02,03}: 2/3; class 2: 2/2; class 3 absent (its one prediction is on an ignored pixel): NaN, not 0
    expected = torch.tensor([2 / 3, 2 / 3, 1.0, float("nan")], dtype=torch.float64)
    torch.testing.assert_close(scores["iou"], expected, equal_nan=True)
    assert scores["miou"] == pytest.approx((2 / 3 + 2 / 3 + 1.0) / 3)
    assert int(module.confmat.confmat.sum()) == 0  # reset for the next epoch
    assert module.compute_scores() is None


def test_single_scale_no_flip_is_the_plain_forward(one_thread):
    torch.manual_seed(0)
    module = DeepLabModule(num_classes=3, variant="v3plus", eval_scales=[1.0], eval_flip=False, **TINY).eval()
    images = torch.randn(2, 3, 24, 40)
    with torch.no_grad():
        logits = module.net(images)
    probs = module.predict_probs(images)
    torch.testing.assert_close(probs, logits.softmax(1))
    assert torch.equal(module.predict_labels(images), logits.argmax(1))


def test_multiscale_flip_is_flip_equivariant_and_normalised(one_thread):
    torch.manual_seed(0)
    net = build_deeplab("resnet38", 3, "v2", width=0.0625).eval()
    images = torch.randn(1, 3, 24, 40)
    probs = multiscale_probs(net, images, scales=(0.5, 1.0, 1.5), flip=True)
    assert probs.shape == (1, 3, 24, 40)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 24, 40))
    flipped = multiscale_probs(net, images.flip(-1), scales=(0.5, 1.0, 1.5), flip=True)
    torch.testing.assert_close(flipped, probs.flip(-1), atol=1e-5, rtol=1e-4)


def test_crf_eval_gives_labels_in_range(one_thread):
    torch.manual_seed(0)
    module = DeepLabModule(num_classes=3, crf_eval=True, crf_options={"iterations": 3}, **TINY).eval()
    labels = module.predict_labels(torch.randn(2, 3, 24, 30))
    assert labels.shape == (2, 24, 30) and labels.dtype == torch.long
    assert 0 <= int(labels.min()) and int(labels.max()) < 3


def test_fit_one_epoch_logs_miou_summary_and_overlays(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("WANDB_MODE", "offline")
    synth = SynthConfig(num_images=12, size=48, num_classes=3)
    generate(tmp_path / "tree", synth, progress=False)
    data = SegmentationDataModule(root=str(tmp_path / "tree"), synth=synth, crop_size=32, batch_size=2, num_workers=0)
    torch.manual_seed(0)
    module = DeepLabModule(num_classes=4, optimizer="adamw", lr=1e-3, log_images=2, **TINY)
    logger = WandbLogger(project="caef-test", save_dir=str(tmp_path / "wandb"))
    logged = []
    original = logger.log_image
    monkeypatch.setattr(logger, "log_image", lambda **kwargs: (logged.append(kwargs), original(**kwargs)))
    summary = tmp_path / "summary.json"
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=2, logger=logger, callbacks=[SegmentationScore(str(summary))],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, data)
    logger.experiment.finish()
    assert 0.0 <= float(trainer.callback_metrics["val/miou"]) <= 1.0
    assert "train/loss" in trainer.callback_metrics and "val/iou/background" in trainer.callback_metrics
    assert module.hparams.label_source == module.hparams_initial.label_source == "ground_truth"  # auto, no label_dir
    result = json.loads(summary.read_text())
    assert result["fully_supervised_val_label_source"] == "ground_truth"
    assert result["fully_supervised_val_miou"] == round(module.last_result["miou"] * 100, 2)
    assert set(result["fully_supervised_val_iou"]) == {"background", "stripes_0", "dots_0", "zigzag_0"}
    assert result["fully_supervised_val_evaluation"] == "plain"
    diagnostics = result["fully_supervised_val_diagnostics"]
    assert set(diagnostics) == {"missed_foreground", "wrong_class", "miou_given_classes"}
    assert all(0 <= v <= 100 for v in diagnostics.values()) and "val/miou_given_classes" in trainer.callback_metrics
    (call,) = logged  # one validation, rank 0: two images with prediction and ground-truth masks
    assert call["key"] == "val/segmentation" and len(call["images"]) == len(call["masks"]) == 2
    overlay = call["masks"][0]
    assert set(overlay) == {"prediction", "ground_truth"} and overlay["prediction"]["class_labels"][1] == "stripes_0"
    assert overlay["prediction"]["mask_data"].shape == call["images"][0].shape[:2] == (48, 48)
    assert list((tmp_path / "wandb").glob("wandb/offline-run-*/files/media/images/val/segmentation_*.png"))


def test_summary_key_follows_the_label_source(tmp_path):
    path = tmp_path / "summary.json"
    result = {"miou": 0.61234, "iou": {"background": 0.9, "cat": None}}

    def module(source):
        return SimpleNamespace(last_result=result, hparams=SimpleNamespace(label_source=source))

    for source in ("pseudo", "ground_truth"):
        SegmentationScore(str(path))._write(module(source))
    SegmentationScore(str(path), "custom")._write(module("auto"))  # unresolved (no label_dir): pseudo
    summary = json.loads(path.read_text())
    assert summary["deeplab_val_miou"] == summary["fully_supervised_val_miou"] == summary["custom_miou"] == 61.23
    assert summary["deeplab_val_iou"] == {"background": 0.9, "cat": None}
    assert summary["custom_label_source"] == "pseudo"


def test_checkpoint_label_source_wins_over_auto():
    module = DeepLabModule(num_classes=3, **TINY)
    module.on_load_checkpoint({"hyper_parameters": {"label_source": "pseudo"}})
    assert module.hparams.label_source == "pseudo"
    explicit = DeepLabModule(num_classes=3, label_source="ground_truth", **TINY)
    explicit.on_load_checkpoint({"hyper_parameters": {"label_source": "pseudo"}})
    assert explicit.hparams.label_source == "ground_truth"
    with pytest.raises(CaefError, match="label_source"):
        DeepLabModule(num_classes=3, label_source="gt", **TINY)


@pytest.mark.parametrize("config", ["demo.yaml", "voc.yaml"])
def test_configs_parse_for_the_deeplab_cli(config, tmp_path, tiny_synth, tiny_synth_config):
    args = [
        *("--config", str(EXPERIMENTS / "deeplab" / config), f"--run_dir={tmp_path}", "--data.dataset=synthetic"),
        f"--data.root={tiny_synth}", f"--data.synth.num_images={tiny_synth_config.num_images}",
        f"--data.synth.size={tiny_synth_config.size}", f"--data.synth.num_classes={tiny_synth_config.num_classes}",
        f"--data.synth.seed={tiny_synth_config.seed}", "--trainer.logger=false",
        *("--model.pretrained=null", "--model.backbone=resnet38", '--model.backbone_options={"width": 0.0625}'),
    ]  # fmt: skip
    cli = stage_cli("deeplab", args, run=False)
    assert cli.model.hparams.num_classes == tiny_synth_config.num_classes + 1
    assert isinstance(cli.datamodule, SegmentationDataModule) and cli.datamodule.label_dir is None
    assert any(isinstance(c, SegmentationScore) for c in cli.trainer.callbacks)
    assert np.isfinite(cli.model.hparams.lr)


def test_eval_settings_apply_when_validating_a_checkpoint(tmp_path, tiny_synth, tiny_synth_config, one_thread):
    """LightningCLI re-applies a checkpoint's hyper-parameters over the command line: eval settings must not be one."""
    module = DeepLabModule(num_classes=tiny_synth_config.num_classes + 1, **TINY)
    assert not {"eval_scales", "eval_flip", "crf_eval", "crf_options", "log_images"} & set(module.hparams)
    ckpt = tmp_path / "last.ckpt"
    state = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save({**state, "pytorch-lightning_version": pl.__version__}, ckpt)
    args = [
        "validate", *("--config", str(EXPERIMENTS / "deeplab" / "demo.yaml"), f"--run_dir={tmp_path}"),
        f"--data.root={tiny_synth}", f"--data.synth.num_images={tiny_synth_config.num_images}",
        f"--data.synth.size={tiny_synth_config.size}", f"--data.synth.num_classes={tiny_synth_config.num_classes}",
        f"--data.synth.seed={tiny_synth_config.seed}", "--data.num_workers=0", "--trainer.logger=false",
        "--trainer.limit_val_batches=1", "--model.eval_scales=[1.0, 0.5]", "--model.eval_flip=true",
        "--trainer.enable_progress_bar=false", f"--ckpt_path={ckpt}",
    ]  # fmt: skip
    cli = stage_cli("deeplab", args)
    assert cli.model.eval_flip and cli.model.eval_scales == (1.0, 0.5)
    assert 0 <= float(cli.trainer.callback_metrics["val/miou"]) <= 1


def test_the_diagnostics_tell_a_recognition_error_from_a_localisation_error(one_thread):
    """Every object found, all named as a class that is not in its image: val mIoU is low, but given each image's
    classes (as CAM scoring is) the DeepLab is perfect, and every foreground error is a wrong class."""
    module = DeepLabModule(num_classes=3, **TINY)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6], target[1, :4] = 1, 2
    scores = torch.zeros(2, 3, 8, 8)
    scores[:, 0] = (target == 0).float()
    scores[0, 1], scores[1, 2] = 0.5 * (target[0] == 1), 0.5 * (target[1] == 2)  # the right class, second best
    scores[0, 2], scores[1, 1] = (target[0] == 1).float(), (target[1] == 2).float()  # the other class, best
    module.predict_probs = lambda images: scores.softmax(1)
    module.validation_step({"image": torch.zeros(2, 3, 8, 8), "mask": target, "id": ["a", "b"]}, 0)
    result = module.compute_scores()
    assert result["miou"] == pytest.approx(1 / 3)  # background only
    assert result["diagnostics"] == pytest.approx(
        {"missed_foreground": 0.0, "wrong_class": 1.0, "miou_given_classes": 1.0}
    )


def test_evaluation_protocol_names_what_was_added_to_the_plain_forward():
    from caef.stages.deeplab import evaluation_protocol

    assert evaluation_protocol([1.0], False, False) == "plain"
    assert evaluation_protocol([1.0], True, True) == "flip, dense CRF"
    assert evaluation_protocol([0.5, 0.75, 1.0], True, False) == "scales 0.5/0.75/1, flip"
    module = DeepLabModule(num_classes=3, eval_scales=[1.0, 1.25], crf_eval=True, **TINY)
    assert module.evaluation() == "scales 1/1.25, dense CRF"


def test_with_crf_the_argmax_is_scored_beside_it(monkeypatch, one_thread):
    """One CRF run gives both numbers: the CRF's labels (here: everything background) make ``miou``, the same
    probabilities' argmax (here: perfect) makes ``miou_without_crf``; the result names its evaluation."""
    import caef.stages.deeplab as deeplab_stage

    monkeypatch.setattr(
        deeplab_stage, "crf_refine", lambda images, probs, **options: torch.zeros_like(probs[:, 0]).long()
    )
    module = DeepLabModule(num_classes=3, crf_eval=True, **TINY)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6], target[1, :4] = 1, 2
    module.predict_probs = lambda images: F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    module.validation_step({"image": torch.zeros(2, 3, 8, 8), "mask": target, "id": ["a", "b"]}, 0)
    result = module.compute_scores()
    bg_iou = float((target == 0).sum()) / target.numel()
    assert result["miou"] == pytest.approx(bg_iou / 3)  # background's IoU; both objects scored 0
    assert result["diagnostics"] == pytest.approx(
        {"missed_foreground": 1.0, "wrong_class": 0.0, "miou_without_crf": 1.0}
    )
    assert int(module.confmat_plain.confmat.sum()) == 0  # reset with the others
