"""Scoring the refinement stage's label maps against ground truth: pseudo labels, thresholded CAMs, CRF seeds.

One pass over the scoring split (VOC ``train``) reads, per image, the ground truth and each kind of label map
that exists for it, and accumulates one dataset-level confusion matrix per kind (torchmetrics, 255 ignored):

* ``pseudo_label``: the random walk's PNGs (``<run_dir>/pseudo``);
* ``thresholded_cam``: the CAM files at one background threshold (the CGNet's best one from its CAM score);
* ``crf_seed``: PSA's seed map (foreground from the low-alpha CRF, background from the high-alpha one). Its
  unsure pixels are left out of the score, so ``crf_seed_coverage`` (the share of labelled ground-truth pixels
  the seeds decide) is reported beside its mIoU: the seeds are precise but partial by design.

Per-image mIoU of the pseudo labels ranks the worst images for inspection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix
from tqdm import tqdm

from caef.cam_files import load_cams
from caef.data.source import IGNORE_INDEX, SegmentationSource, read_mask
from caef.errors import DataError
from caef.metrics import iou_from_confusion, mean_iou

KINDS = ("pseudo_label", "thresholded_cam", "crf_seed")


def threshold_cam_file(cams: np.ndarray, classes: np.ndarray, threshold: float) -> np.ndarray:
    """(K, H, W) CAMs of classes ``classes`` -> (H, W) label map: top class where its CAM exceeds ``threshold``."""
    if len(classes) == 0:
        return np.zeros(cams.shape[1:], np.uint8)
    top = cams.argmax(axis=0)
    return np.where(cams.max(axis=0) > threshold, classes[top], 0).astype(np.uint8)


def seed_map(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """PSA's seed rule as in :func:`caef.data.affinity_labels.seed_label_map`, on numpy label maps."""
    label = np.where(low == 0, IGNORE_INDEX, low)
    label = np.where(high == 0, 0, label)
    return np.where((low == IGNORE_INDEX) | (high == IGNORE_INDEX), IGNORE_INDEX, label).astype(np.uint8)


@dataclass
class LabelScores:
    """Dataset-level results per kind (only kinds that had files), plus the pseudo labels' per-image mIoU."""

    class_names: list[str]
    miou: dict[str, float] = field(default_factory=dict)
    iou: dict[str, dict[str, float | None]] = field(default_factory=dict)
    images: dict[str, int] = field(default_factory=dict)
    seed_coverage: float | None = None
    per_image: list[tuple[str, float]] = field(default_factory=list)  # (id, pseudo-label mIoU), worst first

    def summary(self) -> dict:
        """mIoU in percent, per-class IoU as fractions: the units of the CAM and DeepLab scores."""
        out: dict = {}
        for kind, value in self.miou.items():
            out[f"{kind}_miou"] = round(value * 100, 2)
            out[f"{kind}_iou"] = self.iou[kind]
            out[f"{kind}_images"] = self.images[kind]
        if self.seed_coverage is not None:
            out["crf_seed_coverage"] = round(self.seed_coverage * 100, 2)
        return out


def score_label_maps(
    source: SegmentationSource,
    split: str,
    pseudo_dir: str | Path | None = None,
    cam_dir: str | Path | None = None,
    seed_dir: str | Path | None = None,
    cam_threshold: float | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> LabelScores:
    """Score every kind whose folder is given on the images of ``split`` that have ground truth.

    An image counts for a kind when its file exists there (the pseudo labels may cover a shard of the split);
    the number of images scored per kind is reported with the result.
    """
    if not source.has_masks(split):
        raise DataError(f"split {split!r} of {source.root} has no ground-truth masks to score label maps against")
    if cam_dir is not None and cam_threshold is None:
        raise ValueError("scoring CAM files needs cam_threshold (the CGNet's best background threshold)")
    num_classes = source.num_classes
    dirs = {"pseudo_label": pseudo_dir, "thresholded_cam": cam_dir, "crf_seed": seed_dir}
    dirs = {kind: Path(d) for kind, d in dirs.items() if d is not None}
    confusion = {kind: torch.zeros(num_classes, num_classes, dtype=torch.long) for kind in dirs}
    images = dict.fromkeys(dirs, 0)
    decided = labelled = 0
    per_image: list[tuple[str, float]] = []
    ids = source.split_ids(split)[:limit]
    for image_id in tqdm(ids, desc=f"scoring label maps ({split})", unit="img", disable=not progress):
        truth = source.read_mask(image_id, split)
        label = source.label_of(image_id) if "thresholded_cam" in dirs else None
        predictions = _read_predictions(dirs, image_id, num_classes, truth.shape, cam_threshold, label)
        target = torch.from_numpy(truth.astype(np.int64))
        for kind, pred in predictions.items():
            if pred.shape != truth.shape:
                raise DataError(
                    f"{kind} map of {image_id} in {dirs[kind]} is {pred.shape[1]}x{pred.shape[0]} but its ground "
                    f"truth {source.mask_path(image_id, split)} is {truth.shape[1]}x{truth.shape[0]}; the maps are "
                    "from another dataset or resolution: delete the folder and re-run the stage that writes it"
                )
            pred_t = torch.from_numpy(pred.astype(np.int64))
            kind_target = target
            if kind == "crf_seed":  # unsure seed pixels are not decisions: leave them out of the score
                unsure = pred_t == IGNORE_INDEX
                kind_target = target.masked_fill(unsure, IGNORE_INDEX)
                valid = target != IGNORE_INDEX
                labelled += int(valid.sum())
                decided += int((valid & ~unsure).sum())
                pred_t = pred_t.masked_fill(unsure, 0)
            image_confusion = multiclass_confusion_matrix(
                pred_t.flatten(), kind_target.flatten(), num_classes, ignore_index=IGNORE_INDEX
            )
            confusion[kind] += image_confusion  # the dataset's matrix is the sum of the images'
            images[kind] += 1
            if kind == "pseudo_label":
                per_image.append((image_id, float(mean_iou(iou_from_confusion(image_confusion)))))
    scores = LabelScores(class_names=list(source.class_names))
    for kind in dirs:
        if images[kind] == 0:
            continue
        iou = iou_from_confusion(confusion[kind])
        scores.miou[kind] = float(mean_iou(iou))
        scores.iou[kind] = {
            name: None if np.isnan(v) else round(float(v), 6) for name, v in zip(source.class_names, iou.tolist())
        }
        scores.images[kind] = images[kind]
    if images.get("crf_seed"):
        scores.seed_coverage = decided / max(labelled, 1)
    scores.per_image = sorted(per_image, key=lambda item: item[1])
    return scores


def _read_predictions(
    dirs: dict[str, Path],
    image_id: str,
    num_classes: int,
    size: tuple[int, int],
    cam_threshold: float | None,
    label: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    if "pseudo_label" in dirs and (path := dirs["pseudo_label"] / f"{image_id}.png").is_file():
        out["pseudo_label"] = read_mask(path, num_classes)
    if "thresholded_cam" in dirs and (path := dirs["thresholded_cam"] / f"{image_id}.npz").is_file():
        cams, classes = load_cams(path, num_classes, size=size, label=label)
        out["thresholded_cam"] = threshold_cam_file(cams, classes, cam_threshold)
    if "crf_seed" in dirs:
        low, high = (dirs["crf_seed"] / kind / f"{image_id}.png" for kind in ("low", "high"))
        if low.is_file() and high.is_file():
            out["crf_seed"] = seed_map(read_mask(low, num_classes), read_mask(high, num_classes))
    return out


def format_scores(scores: LabelScores) -> str:
    """A short table: kind, mIoU, images scored."""
    lines = [f"{'label maps':<18}{'mIoU':>8}{'images':>8}", "-" * 34]
    for kind, value in scores.miou.items():
        note = f"  (decides {scores.seed_coverage * 100:.1f}% of pixels)" if kind == "crf_seed" else ""
        lines.append(f"{kind:<18}{value * 100:>8.2f}{scores.images[kind]:>8}{note}")
    return "\n".join(lines)
