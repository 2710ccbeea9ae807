"""CAM callbacks inside a real (tiny) validation loop: scoring, W&B overlays in offline mode, CAM files."""

import json

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import WandbLogger

from caef.callbacks import CAMScore, CAMVisualization
from caef.callbacks.cam_visualization import heatmap_overlay, threshold_cams
from caef.data.datamodule import ClassificationDataModule
from caef.stages.classifier import ClassifierModule


def datamodule(root, config):
    return ClassificationDataModule(
        root=str(root), synth=config, crop_size=48, resize_long=(40, 56), batch_size=4, num_workers=0, score_limit=6
    )


def test_threshold_cams_and_overlay():
    cams = torch.tensor([[[[0.1, 0.5]], [[0.3, 0.2]]]])  # (1, 2 classes, 1, 2)
    assert threshold_cams(cams, 0.25).tolist() == [[[2, 1]]]
    assert threshold_cams(cams, 0.6).tolist() == [[[0, 0]]]
    image = np.zeros((1, 2, 3), np.uint8)
    out = heatmap_overlay(image, np.array([[0.0, 1.0]]))
    assert out.dtype == np.uint8 and out.shape == (1, 2, 3) and not np.array_equal(out[0, 0], out[0, 1])


def test_score_and_summary_from_a_validation_run(tmp_path, tiny_synth, tiny_synth_config):
    torch.manual_seed(0)
    summary = tmp_path / "summary.json"
    score = CAMScore(summary_file=str(summary), summary_key="oc")
    model = ClassifierModule(num_classes=4, backbone_options={"width": 0.0625}, msf_scales=(1.0,))
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[score])
    trainer.validate(model, datamodule(tiny_synth, tiny_synth_config))
    data = json.loads(summary.read_text())
    assert 0 <= data["oc_cam_miou"] <= 100 and data["oc_cam_miou"] == pytest.approx(
        score.last_result["miou"] * 100, abs=0.01
    )
    assert 0.05 <= data["oc_cam_threshold"] <= 0.60
    assert set(data["oc_cam_iou"]) == {"background", "stripes_0", "dots_0", "zigzag_0"}
    assert set(data["oc_cls_ap"]) == {"stripes_0", "dots_0", "zigzag_0"} and 0 <= data["oc_cls_map"] <= 100
    logged = trainer.callback_metrics
    assert "val/cam_miou" in logged and "val/cam_iou/background" in logged
    assert "val/cls_map" in logged and "val/cls_ap/dots_0" in logged


class _KnownLogits(ClassifierModule):
    """Logits with a known AP per class: class 0 ranks its images perfectly, class 1 not at all (a constant, as a
    class the network has not learned), class 2 is removed from the labels (absent from the split)."""

    def validation_step(self, batch, batch_idx):
        out = super().validation_step(batch, batch_idx)
        label = out["label"].clone()
        label[:, 2] = 0
        logits = torch.stack([4 * label[:, 0] - 2, torch.zeros_like(label[:, 1]), torch.zeros_like(label[:, 2])], 1)
        return {**out, "label": label, "logits": logits}


def test_classification_ap_known_answer(tmp_path, tiny_synth, tiny_synth_config):
    summary = tmp_path / "summary.json"
    model = _KnownLogits(num_classes=4, backbone_options={"width": 0.0625}, msf_scales=(1.0,))
    trainer = pl.Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[CAMScore(summary_file=str(summary), summary_key="cgnet")],
    )
    dm = datamodule(tiny_synth, tiny_synth_config)
    trainer.validate(model, dm)
    labels = torch.stack([dm.val_dataloader().dataset[i]["label"] for i in range(len(dm.val_dataloader().dataset))])
    frequency = float(labels[:, 1].mean())
    assert 0 < frequency < 1, "the scoring split must hold images with and without class 1"
    ap = json.loads(summary.read_text())["cgnet_cls_ap"]
    assert ap["stripes_0"] == pytest.approx(1.0)
    assert ap["dots_0"] == pytest.approx(frequency, abs=1e-6)  # constant scores: precision = the class's frequency
    assert ap["zigzag_0"] is None  # no positive image: undefined, not 0
    assert json.loads(summary.read_text())["cgnet_cls_map"] == pytest.approx(50 * (1 + frequency), abs=0.01)


def test_visualization_writes_wandb_media_offline(tmp_path, tiny_synth, tiny_synth_config, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    torch.manual_seed(0)
    logger = WandbLogger(project="caef-test", save_dir=str(tmp_path))
    callbacks = [CAMScore(), CAMVisualization(num_images=3)]
    model = ClassifierModule(num_classes=4, backbone_options={"width": 0.0625}, msf_scales=(1.0,))
    trainer = pl.Trainer(logger=logger, enable_checkpointing=False, enable_progress_bar=False, callbacks=callbacks)
    trainer.validate(model, datamodule(tiny_synth, tiny_synth_config))
    logger.experiment.finish()
    media = list(tmp_path.rglob("media/images/val/cams_*.png"))
    masks = list(tmp_path.rglob("media/images/mask/val/cams_*.png"))
    assert len(media) == 3, [str(p) for p in tmp_path.rglob("*.png")]
    assert len(masks) == 6  # prediction + ground truth per image
