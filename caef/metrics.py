"""Segmentation metrics on confusion matrices (dataset-level IoU, VOC convention, 255 ignored).

:class:`ThresholdSweepConfusion` scores thresholded CAMs for every background threshold at once: a pixel
predicts its top foreground class when that class's CAM exceeds the threshold t, else background (the
reference's ``argmax([t, cams])``, ties to background). One histogram over (crossing threshold, truth,
top class) gives every threshold's confusion matrix by cumulative sums, so a sweep of 56 thresholds
costs about as much as one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

IGNORE_INDEX = 255


def default_thresholds() -> Tensor:
    """0.05, 0.06, ..., 0.60 (the issue's sweep; the reference searched 0.10..0.39)."""
    return torch.arange(5, 61, dtype=torch.float64) / 100


def iou_from_confusion(confmat: Tensor) -> Tensor:
    """Per-class IoU from (..., C, C) confusion matrices (rows = truth); NaN where a class is absent from both."""
    confmat = confmat.double()
    tp = confmat.diagonal(dim1=-2, dim2=-1)
    union = confmat.sum(-1) + confmat.sum(-2) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(iou: Tensor) -> Tensor:
    return iou.nanmean(dim=-1)


def foreground_errors(confmat: Tensor) -> dict[str, float]:
    """Where a segmenter's errors on labelled foreground pixels go (class 0 = background), as fractions of them:
    ``missed_foreground`` predicted background, ``wrong_class`` predicted another foreground class. The first is a
    localisation error, the second a recognition one; CAM and pseudo-label scoring, given each image's classes, can
    make only the first."""
    foreground = confmat[1:].double()
    total = float(foreground.sum())
    if total == 0:
        return {"missed_foreground": float("nan"), "wrong_class": float("nan")}
    missed = float(foreground[:, 0].sum())
    right = float(foreground[:, 1:].diagonal().sum())
    return {"missed_foreground": missed / total, "wrong_class": (total - missed - right) / total}


def given_classes(scores: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """``scores`` (B, C, H, W) with every class absent from an image's ``target`` (B, H, W) set to -inf, background
    kept: the help CAM and pseudo-label scoring get (the image's true classes), given to a segmenter, so that its
    mIoU can be read beside theirs (a diagnostic, never a result)."""
    num_classes = scores.shape[1]
    labels = target.flatten(1).long()
    labels = torch.where(labels == ignore_index, num_classes, labels).clamp(max=num_classes)
    present = torch.zeros(len(target), num_classes + 1, dtype=torch.bool, device=target.device)
    present.scatter_(1, labels, True)
    present[:, 0] = True
    return scores.masked_fill(~present[:, :num_classes, None, None], float("-inf"))


class ThresholdSweepConfusion(Metric):
    """Confusion matrices (T, C, C) of thresholded CAMs for T background thresholds."""

    full_state_update = False
    higher_is_better = True

    def __init__(
        self, num_classes: int, thresholds: Sequence[float] | Tensor | None = None, ignore_index: int = IGNORE_INDEX
    ):
        super().__init__()
        thresholds = default_thresholds() if thresholds is None else torch.as_tensor(thresholds, dtype=torch.float64)
        if thresholds.ndim != 1 or not bool((thresholds[1:] > thresholds[:-1]).all()):
            raise ValueError("thresholds must be a strictly increasing 1-D sequence")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.register_buffer("thresholds", thresholds, persistent=False)
        self.add_state(
            "confmat", torch.zeros(len(thresholds), num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(self, cams: Tensor, target: Tensor) -> None:
        """``cams``: (B, C-1, H, W) foreground CAMs in [0, 1]; ``target``: (B, H, W) class indices, 255 ignored."""
        top_value, top_class = cams.float().max(dim=1)
        valid = target != self.ignore_index
        truth = target[valid].long()
        pred_fg = top_class[valid] + 1
        # number of thresholds strictly below the value = thresholds at which the pixel is foreground
        crossing = torch.searchsorted(self.thresholds.to(top_value.dtype), top_value[valid].contiguous())
        num_t, c = len(self.thresholds), self.num_classes
        hist = torch.bincount((crossing * c + truth) * c + pred_fg, minlength=(num_t + 1) * c * c)
        hist = hist.view(num_t + 1, c, c)
        foreground = hist.flip(0).cumsum(0).flip(0)[1:]  # threshold j: pixels with crossing > j
        background = hist.sum(-1).cumsum(0)[:-1]  # threshold j: pixels with crossing <= j, predicted 0
        confmat = foreground.clone()
        confmat[:, :, 0] += background
        self.confmat += confmat

    def compute(self) -> dict[str, Tensor]:
        iou = iou_from_confusion(self.confmat)
        miou = mean_iou(iou)
        best = int(torch.nan_to_num(miou, nan=-1.0).argmax())
        return {
            "miou": miou,
            "iou": iou,
            "best_index": torch.tensor(best),
            "best_miou": miou[best],
            "best_threshold": self.thresholds[best],
        }
