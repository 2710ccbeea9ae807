"""`caef deeplab predict`: benchmark files for every image of a split without masks (VOC `test`), with the evaluation
settings, in the layout of the PASCAL evaluation server; COCO's results format."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from helpers import make_voc_tree, voc_colour_map
from PIL import Image

import caef
from caef.callbacks.segmentation_writer import coco_segmentation_results, voc_result_dir
from caef.cli import main
from caef.errors import CaefError
from caef.stages.deeplab import DeepLabModule

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
TINY = {"backbone": "resnet38", "backbone_options": {"width": 0.0625, "freeze_bn": False}}


def save_deeplab(path: Path, num_classes: int) -> DeepLabModule:
    torch.manual_seed(0)
    module = DeepLabModule(num_classes=num_classes, **TINY)
    state = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    torch.save({**state, "pytorch-lightning_version": pl.__version__}, path)
    return module


def test_voc_test_predictions_for_every_id_with_palette_and_size(tmp_path):
    tree = make_voc_tree(tmp_path / "voc")
    for image_id in tree["ids"]["test"]:  # like VOC 2012's test set: no image-level labels to read
        (tree["voc"] / "Annotations" / f"{image_id}.xml").unlink(missing_ok=True)
    ckpt = tmp_path / "last.ckpt"
    save_deeplab(ckpt, 21)
    args = [
        "deeplab", "predict", "--config", str(EXPERIMENTS / "deeplab" / "demo.yaml"), f"--run_dir={tmp_path / 'run'}",
        "--data.dataset=voc", f"--data.root={tree['root']}", "--data.predict_split=test", "--data.num_workers=0",
        "--trainer.logger=false", "--trainer.enable_progress_bar=false", "--model.eval_scales=[1.0, 0.75]",
        "--model.eval_flip=true", "--trainer.callbacks+=caef.callbacks.SegmentationWriter", f"--ckpt_path={ckpt}",
    ]  # fmt: skip
    assert main(args) == 0
    folder = voc_result_dir(tmp_path / "run" / "deeplab", "test")
    assert folder == tmp_path / "run/deeplab/results/VOC2012/Segmentation/comp6_test_cls"
    assert sorted(p.stem for p in folder.glob("*.png")) == sorted(tree["ids"]["test"])
    deeplab = caef.load(ckpt, eval_scales=[1.0, 0.75], eval_flip=True)
    for image_id in tree["ids"]["test"]:
        with Image.open(folder / f"{image_id}.png") as png:
            assert png.mode == "P" and png.size[::-1] == tree["sizes"][image_id]
            palette = np.asarray(png.getpalette()[: 256 * 3], np.uint8).reshape(-1, 3)
            label = np.asarray(png)
        np.testing.assert_array_equal(palette, voc_colour_map())
        image = np.asarray(Image.open(tree["voc"] / "JPEGImages" / f"{image_id}.jpg").convert("RGB"))
        np.testing.assert_array_equal(label, caef.predict(deeplab, image))  # the evaluation settings were applied


def test_coco_results_are_rle_per_present_class_with_coco_ids():
    from pycocotools import mask as mask_utils

    label = np.zeros((6, 5), np.uint8)
    label[1:3, 1:4], label[4:, :2], label[0, 4] = 1, 2, 255
    entries = coco_segmentation_results("COCO_val2014_000000000042", label, {1: 1, 2: 90})
    assert [(e["image_id"], e["category_id"]) for e in entries] == [(42, 1), (42, 90)]
    for entry, index in zip(entries, (1, 2)):
        assert isinstance(entry["segmentation"]["counts"], str)
        decoded = mask_utils.decode({**entry["segmentation"], "counts": entry["segmentation"]["counts"].encode()})
        np.testing.assert_array_equal(decoded, label == index)
    json.dumps(entries)  # serialisable as the results file
    with pytest.raises(CaefError, match="numeric image ids"):
        coco_segmentation_results("no_number_here_x", label, {1: 1})


def test_coco_results_need_a_coco_dataset(tmp_path, capsys):
    tree = make_voc_tree(tmp_path / "voc")
    for image_id in tree["ids"]["test"]:  # like VOC 2012's test set: no image-level labels to read
        (tree["voc"] / "Annotations" / f"{image_id}.xml").unlink(missing_ok=True)
    ckpt = tmp_path / "last.ckpt"
    save_deeplab(ckpt, 21)
    args = [
        "deeplab", "predict", "--config", str(EXPERIMENTS / "deeplab" / "demo.yaml"), f"--run_dir={tmp_path / 'run'}",
        "--data.dataset=voc", f"--data.root={tree['root']}", "--data.predict_split=test", "--data.num_workers=0",
        "--trainer.logger=false", "--trainer.callbacks+=caef.callbacks.SegmentationWriter",
        "--trainer.callbacks.format=coco", f"--ckpt_path={ckpt}",
    ]  # fmt: skip
    assert main(args) == 2
    assert "format coco needs a COCO dataset" in capsys.readouterr().err
