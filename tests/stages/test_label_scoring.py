"""Scoring pseudo labels, thresholded CAM files and CRF seeds against ground truth (known answers)."""

import numpy as np
import pytest
import torch

from caef.cam_files import save_cams
from caef.data.datamodule import open_source
from caef.data.source import IGNORE_INDEX, write_mask
from caef.errors import DataError
from caef.stages.label_scoring import score_label_maps, seed_map, threshold_cam_file


@pytest.fixture
def source(tiny_synth):
    return open_source("synthetic", str(tiny_synth))


def _write_truth_copies(source, tmp_path, ids):
    """Pseudo labels, one-hot CAM files and CRF seeds that all reproduce the ground truth."""
    c = source.num_classes
    for image_id in ids:
        truth = source.read_mask(image_id, "train")
        clean = np.where(truth == IGNORE_INDEX, 0, truth)
        write_mask(tmp_path / "pseudo" / f"{image_id}.png", clean)
        cams = torch.stack([torch.from_numpy((clean == k).astype(np.float32)) for k in range(1, c)])
        save_cams(tmp_path / "cams" / f"{image_id}.npz", cams, cams.flatten(1).amax(1))
        write_mask(tmp_path / "seeds" / "low" / f"{image_id}.png", clean)
        write_mask(tmp_path / "seeds" / "high" / f"{image_id}.png", clean)


def test_maps_equal_to_the_ground_truth_score_100(source, tmp_path):
    ids = source.split_ids("train")[:6]
    _write_truth_copies(source, tmp_path, ids)
    scores = score_label_maps(source, "train", tmp_path / "pseudo", tmp_path / "cams", tmp_path / "seeds",
                              cam_threshold=0.5, limit=6, progress=False)  # fmt: skip
    assert scores.miou == pytest.approx({"pseudo_label": 1.0, "thresholded_cam": 1.0, "crf_seed": 1.0})
    assert scores.images == {"pseudo_label": 6, "thresholded_cam": 6, "crf_seed": 6}
    assert scores.seed_coverage == pytest.approx(1.0)
    summary = scores.summary()
    assert summary["pseudo_label_miou"] == 100.0 and summary["crf_seed_coverage"] == 100.0


def test_all_background_pseudo_labels_score_the_background_iou_only(source, tmp_path):
    ids = source.split_ids("train")[:4]
    truths = [source.read_mask(i, "train") for i in ids]
    for image_id, truth in zip(ids, truths):
        write_mask(tmp_path / "pseudo" / f"{image_id}.png", np.zeros_like(truth))
    scores = score_label_maps(source, "train", pseudo_dir=tmp_path / "pseudo", limit=4, progress=False)
    labelled = np.concatenate([t[t != IGNORE_INDEX] for t in truths])
    present = np.unique(labelled)
    expected = (labelled == 0).mean() / len(present)  # background IoU = bg share; every present fg class: 0
    assert scores.miou["pseudo_label"] == pytest.approx(expected)
    assert [image for image, _ in scores.per_image] == sorted(ids, key=dict(scores.per_image).get)


def test_seed_map_follows_psas_rule_and_unsure_pixels_are_not_scored():
    low = np.array([[0, 2, 0, 255]], np.uint8)
    high = np.array([[0, 2, 2, 2]], np.uint8)
    np.testing.assert_array_equal(seed_map(low, high), [[0, 2, 255, 255]])
    cams = np.array([[[0.2, 0.7]], [[0.6, 0.1]]], np.float32)
    np.testing.assert_array_equal(threshold_cam_file(cams, np.array([3, 1]), 0.5), [[1, 3]])
    np.testing.assert_array_equal(threshold_cam_file(cams, np.array([3, 1]), 0.8), [[0, 0]])


def test_a_label_map_of_the_wrong_size_names_the_folder(source, tmp_path):
    image_id = source.split_ids("train")[0]
    write_mask(tmp_path / "pseudo" / f"{image_id}.png", np.zeros((5, 7), np.uint8))
    with pytest.raises(DataError, match=r"pseudo_label map of .* is 7x5 but its ground truth"):
        score_label_maps(source, "train", pseudo_dir=tmp_path / "pseudo", limit=1, progress=False)


def test_callback_merges_scores_into_the_summary_and_logs_the_worst_images(source, tmp_path, monkeypatch):
    """PseudoLabelScore at predict end: summary keys, threshold read from the summary, a W&B table of the worst."""
    import json
    from types import SimpleNamespace

    from lightning.pytorch.loggers import WandbLogger

    from caef.callbacks import PseudoLabelScore
    from caef.io import write_json

    ids = source.split_ids("train")[:5]
    _write_truth_copies(source, tmp_path, ids)
    write_mask(tmp_path / "pseudo" / f"{ids[2]}.png", np.zeros_like(source.read_mask(ids[2], "train")))  # the worst
    write_json(tmp_path / "summary.json", {"cgnet_cam_threshold": 0.5})
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    logged: list[dict] = []
    monkeypatch.setattr(type(logger.experiment), "log", lambda self, data, *a, **k: logged.append(data), raising=False)
    monkeypatch.setattr(logger, "log_metrics", lambda metrics, step=None: logged.append(metrics))
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(barrier=lambda: None), global_rank=0, datamodule=SimpleNamespace(source=source),
        progress_bar_callback=None, loggers=[logger],
    )  # fmt: skip
    callback = PseudoLabelScore(
        pseudo_dir=str(tmp_path / "pseudo"), cam_dir=str(tmp_path / "cams"), seed_dir=str(tmp_path / "seeds"),
        summary_file=str(tmp_path / "summary.json"), worst_images=2, limit=5,
    )  # fmt: skip
    callback.on_predict_end(trainer, None)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["thresholded_cam_miou"] == 100.0 and summary["crf_seed_miou"] == 100.0
    assert summary["pseudo_label_miou"] < 100.0 and summary["thresholded_cam_threshold"] == 0.5
    table = next(entry["pseudo/worst_images"] for entry in logged if "pseudo/worst_images" in entry)
    assert [row[0] for row in table.data] == [ids[2], callback.scores.per_image[1][0]]
    assert any("pseudo/pseudo_label_miou" in entry for entry in logged)
