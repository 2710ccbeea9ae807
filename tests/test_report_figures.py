"""The run report's figures read on their own: titled columns, the image id per row, a legend of the class colours."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
import torch

from caef import report
from caef.cam_files import save_cams
from caef.data.datamodule import open_source
from caef.data.source import write_mask

matplotlib.use("Agg")
NAMES = ("background", "cat", "dog", "bird")


def _legend(fig) -> list[str]:
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def _titles(fig, ncols: int) -> list[str]:
    return [ax.get_title() for ax in fig.axes[:ncols]]


def test_label_grid_titles_each_column_names_each_image_and_shows_the_present_classes():
    image = np.zeros((8, 8, 3), np.uint8)
    truth = np.zeros((8, 8), np.uint8)
    truth[:4] = 2  # dog
    seeds = np.full((8, 8), 255, np.uint8)  # unsure everywhere
    seeds[0, 0] = 3  # bird
    rows = [("img_a", [image, truth, seeds]), ("img_b", [image, truth, None])]
    fig = report.label_grid(["image", "ground truth", "CRF seeds"], rows, NAMES)
    assert _titles(fig, 3) == ["image", "ground truth", "CRF seeds"]
    assert [fig.axes[3 * r].get_ylabel() for r in range(2)] == ["img_a", "img_b"]
    # only the classes that appear, in class order, then the ignore colour; the image panel is not a label map
    assert _legend(fig) == ["background", "dog", "bird", "ignore / unsure"]
    missing = fig.axes[5]
    assert [t.get_text() for t in missing.texts] == ["missing"] and not missing.images
    # every label panel is drawn in the VOC palette colour of its class
    palette = report.voc_palette()
    np.testing.assert_array_equal(fig.axes[1].images[0].get_array(), palette[truth])


def test_label_grid_refuses_a_row_whose_panels_do_not_match_the_columns():
    with pytest.raises(ValueError, match="img_a: 2 panels for 3 columns"):
        report.label_grid(["image", "ground truth", "CAM"], [("img_a", [np.zeros((2, 2, 3)), None])], NAMES)


def test_report_figures_of_a_run_folder_carry_titles_ids_and_legend(tmp_path, tiny_synth, monkeypatch):
    source = open_source("synthetic", tiny_synth)
    ids = source.split_ids("train")[:2]
    run = tmp_path / "run"
    for image_id in ids:
        truth = source.read_mask(image_id, "train")
        present = [int(c) for c in np.unique(truth) if 0 < c < source.num_classes]
        label = torch.zeros(source.num_classes - 1)
        label[[c - 1 for c in present]] = 1
        cams = torch.zeros(source.num_classes - 1, *truth.shape)
        for c in present:
            cams[c - 1] = torch.from_numpy((truth == c).astype(np.float32))
        save_cams(run / "cams" / "cgnet" / f"{image_id}.npz", cams, label)
        write_mask(run / "seeds" / "low" / f"{image_id}.png", truth)
        high = truth.copy()
        high[truth.shape[0] // 2 :][truth[truth.shape[0] // 2 :] == 0] = 1  # lower half: background unsure
        write_mask(run / "seeds" / "high" / f"{image_id}.png", high)
        write_mask(run / "pseudo" / f"{image_id}.png", truth)
    names = list(source.class_names)
    iou = {name: 0.5 for name in names}
    summary = {"name": "fake", "cgnet_cam_threshold": 0.25, "cgnet_cam_iou": iou, "pseudo_label_iou": iou}
    (run / "summary.json").write_text(json.dumps(summary))
    figures = {}
    saved = report._save
    monkeypatch.setattr(report, "_save", lambda fig, path: (figures.setdefault(path.name, fig), saved(fig, path)))
    text = report.write_report(run, source, num_images=2).read_text()
    assert "![train overlays](overlays_train.png)" in text and "![per-class IoU](iou_per_class.png)" in text
    train = figures["overlays_train.png"]
    columns = ["image", "ground truth", "CGNet CAM (bg threshold 0.25)", "CRF seeds", "pseudo label"]
    assert _titles(train, 5) == columns
    assert [train.axes[5 * r].get_ylabel() for r in range(len(ids))] == ids
    truth_classes = sorted({int(c) for i in ids for c in np.unique(source.read_mask(i, "train")) if c != 255})
    assert _legend(train) == [names[c] for c in truth_classes] + ["ignore / unsure"]
    assert all(ax.images for ax in train.axes[: 5 * len(ids)]), "every panel of a complete run is drawn"
    assert (run / "overlays_train.png").stat().st_size > 0
    bars = figures["iou_per_class.png"].axes[0]
    assert [t.get_text() for t in bars.get_xticklabels()] == names
    assert bars.get_title().startswith("Per-class IoU")


def test_the_report_shows_where_each_deeplabs_errors_are(tmp_path, tiny_synth):
    diagnostics = {"missed_foreground": 9.1, "wrong_class": 35.6, "miou_given_classes": 63.52}
    (tmp_path / "summary.json").write_text(json.dumps({"fully_supervised_val_diagnostics": diagnostics}))
    text = report.write_report(tmp_path, open_source("synthetic", tiny_synth)).read_text()
    assert "| on ground truth | 9.10 | 35.60 | 63.52 |" in text
    assert "on pseudo labels" not in text  # no row for a DeepLab that did not run


def test_the_report_says_how_each_deeplab_miou_was_computed(tmp_path, tiny_synth):
    """A CRF-refined mIoU is labelled as one, with the plain argmax's mIoU of the same run beside it."""
    summary = {
        "cgnet_cam_miou": 41.08,
        "fully_supervised_val_miou": 52.99,
        "fully_supervised_val_evaluation": "flip, dense CRF",
        "fully_supervised_val_diagnostics": {
            "missed_foreground": 10.18,
            "wrong_class": 28.64,
            "miou_without_crf": 49.45,
        },
        "deeplab_val_miou": 34.85,
        "deeplab_val_evaluation": "plain",
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    text = report.write_report(tmp_path, open_source("synthetic", tiny_synth)).read_text()
    assert "| DeepLab on ground truth (val; flip, dense CRF) | 52.99 |" in text
    assert "| DeepLab on pseudo labels (val; plain) | 34.85 |" in text
    assert "| CGNet CAM (train) | 41.08 |" in text
    assert "| on ground truth | 10.18 | 28.64 |  | 49.45 |" in text
