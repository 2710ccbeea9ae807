"""Threshold-sweep CAM scoring against hand-computed confusion matrices and torchmetrics."""

import math

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from caef.metrics import (
    ThresholdSweepConfusion,
    default_thresholds,
    foreground_errors,
    given_classes,
    iou_from_confusion,
    mean_iou,
)


def test_default_thresholds_are_the_issue_sweep():
    t = default_thresholds()
    assert len(t) == 56 and t[0] == pytest.approx(0.05) and t[-1] == pytest.approx(0.60)


def test_hand_computed_confusion_matrix():
    # one image, 2x3 pixels, classes: 0 bg, 1, 2; CAMs for classes 1 and 2
    cams = torch.tensor([[[0.9, 0.4, 0.1], [0.0, 0.3, 0.2]], [[0.2, 0.5, 0.0], [0.1, 0.35, 0.25]]])[None]
    target = torch.tensor([[[1, 2, 0], [0, 255, 2]]])
    metric = ThresholdSweepConfusion(3, thresholds=[0.3, 0.45])
    metric.update(cams, target)
    # t = 0.3: top values (cls): .9(1) .5(2) .1(1) .1(2) [ignored] .25(2) -> preds 1 2 0 0 _ 0
    expected_03 = torch.tensor([[2, 0, 0], [0, 1, 0], [1, 0, 1]])
    # t = 0.45: .9 > .45 -> 1; .5 > .45 -> 2; rest background
    expected_045 = expected_03
    assert torch.equal(metric.confmat[0], expected_03)
    assert torch.equal(metric.confmat[1], expected_045)
    out = metric.compute()
    # IoU: bg 2/(2+1)=2/3, class1 1/1, class2 1/2 -> mean 0.7222
    assert out["iou"][0].tolist() == pytest.approx([2 / 3, 1.0, 0.5])
    assert float(out["best_miou"]) == pytest.approx((2 / 3 + 1 + 0.5) / 3)


def test_tie_goes_to_background():
    cams = torch.full((1, 1, 1, 2), 0.3)
    metric = ThresholdSweepConfusion(2, thresholds=[0.3])
    metric.update(cams, torch.tensor([[[1, 0]]]))
    assert metric.confmat[0].tolist() == [[1, 0], [1, 0]]  # argmax([t, cam]) with t == cam picks background


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torchmetrics_for_every_threshold(seed):
    g = torch.Generator().manual_seed(seed)
    num_classes = 5
    cams = torch.rand(3, num_classes - 1, 9, 11, generator=g)
    cams[:, 1] = 0  # an absent class: excluded from the mean unless predicted
    target = torch.randint(0, num_classes, (3, 9, 11), generator=g)
    target[0, :2] = 255
    thresholds = default_thresholds()
    metric = ThresholdSweepConfusion(num_classes, thresholds)
    metric.update(cams[:2], target[:2])
    metric.update(cams[2:], target[2:])  # accumulates across batches
    out = metric.compute()
    for j, t in enumerate(thresholds.tolist()):
        pred = torch.cat([torch.full_like(cams[:, :1], t), cams], 1).argmax(1)
        ref = MulticlassJaccardIndex(num_classes, ignore_index=255, average="none")
        ref.update(pred, target)
        ref_iou = ref.compute().double()
        ours = out["iou"][j]
        present = ~torch.isnan(ours)
        assert torch.allclose(ours[present], ref_iou[present], atol=1e-6)
        ref_macro = MulticlassJaccardIndex(num_classes, ignore_index=255)(pred, target)
        assert float(out["miou"][j]) == pytest.approx(float(ref_macro), abs=1e-5)


def test_absent_classes_are_excluded_from_the_mean():
    confmat = torch.tensor([[3, 1, 0], [1, 2, 0], [0, 0, 0]])
    iou = iou_from_confusion(confmat)
    assert torch.isnan(iou[2]) and float(mean_iou(iou)) == pytest.approx((3 / 5 + 2 / 4) / 2)


def test_thresholds_must_increase():
    with pytest.raises(ValueError, match="increasing"):
        ThresholdSweepConfusion(3, thresholds=[0.3, 0.2])


def test_foreground_errors_split_missed_pixels_from_wrong_classes():
    # rows = truth (background, a, b), columns = prediction
    confmat = torch.tensor([[50, 1, 1], [2, 5, 3], [0, 0, 10]])
    errors = foreground_errors(confmat)
    assert errors["missed_foreground"] == pytest.approx(2 / 20) and errors["wrong_class"] == pytest.approx(3 / 20)
    assert all(math.isnan(v) for v in foreground_errors(torch.tensor([[5, 0], [0, 0]])).values())


def test_given_classes_keeps_background_and_the_classes_in_each_image():
    scores = torch.zeros(2, 4, 2, 2)
    scores[:, 3] = 1.0  # class 3 scores highest everywhere, but is in neither image
    target = torch.tensor([[[0, 1], [1, 255]], [[2, 2], [0, 0]]])
    restricted = given_classes(scores, target)
    assert torch.isinf(restricted[:, 3]).all()
    assert restricted[0, [0, 1]].isfinite().all() and torch.isinf(restricted[0, 2]).all()
    assert restricted[1, [0, 2]].isfinite().all() and torch.isinf(restricted[1, 1]).all()
    assert set(restricted.argmax(1).unique().tolist()) <= {0, 1, 2}
