"""The metrics a pipeline run reports: the ``summary.json`` keys each stage writes.

One table for every reader: a W&B sweep's ``metric.name`` must be one of them (``caef sweep`` checks it), the
pipeline's own W&B run logs them under these names as each stage finishes, and the dashboards plot them.
Per-class values (``<stem>_iou``, ``<stem>_cls_ap``) are written next to them as ``{class: value}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: stage -> the scalar metrics it merges into ``summary.json`` (mIoU and mAP in percent)
STAGE_METRICS: dict[str, tuple[str, ...]] = {
    "classifier": ("oc_cam_miou", "oc_cam_threshold", "oc_cls_map"),
    "cgnet": ("cgnet_cam_miou", "cgnet_cam_threshold", "cgnet_cls_map"),
    "pseudo": ("pseudo_label_miou", "thresholded_cam_miou", "crf_seed_miou", "crf_seed_coverage"),
    "deeplab": ("deeplab_val_miou",),
    "fully_supervised": ("fully_supervised_val_miou",),
}
#: summary.json key prefixes each stage owns (what its score callbacks write): a stage's manifest entry keeps all
#: of them, also those a rerun rewrote with an unchanged value
SUMMARY_PREFIXES: dict[str, tuple[str, ...]] = {
    "classifier": ("oc_",),
    "cgnet": ("cgnet_",),
    "pseudo": ("pseudo_label_", "crf_seed_", "thresholded_cam_"),
    "deeplab": ("deeplab_val_",),
    "fully_supervised": ("fully_supervised_val_",),
}
#: written by the pipeline itself once its stages are done
PIPELINE_METRICS = ("total_seconds",)


def evaluation_of(summary: Mapping[str, Any], miou_key: str) -> str | None:
    """How the mIoU under ``miou_key`` was computed (``<prefix>_evaluation`` beside ``<prefix>_miou``, written for
    DeepLab: ``plain``, ``flip, dense CRF``, ...); None where the stage records none (the CAM stages)."""
    return summary.get(miou_key.removesuffix("_miou") + "_evaluation")


def reported_metrics(stages: Iterable[str] | None = None) -> tuple[str, ...]:
    """Every scalar metric a pipeline with ``stages`` (None: all stages) reports, in pipeline order."""
    chosen = STAGE_METRICS if stages is None else {s: STAGE_METRICS[s] for s in stages if s in STAGE_METRICS}
    return tuple(key for keys in chosen.values() for key in keys) + PIPELINE_METRICS


def loggable(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The numeric entries of a ``summary.json`` mapping, as W&B logs them: numbers, and ``{name: number}`` maps
    (per-class IoU and AP, per-stage seconds) with their undefined (None) entries left out. Strings, lists and
    booleans (versions, overrides, flags) are not metrics."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if _number(value):
            out[key] = value
        elif isinstance(value, Mapping):
            numbers = {k: v for k, v in value.items() if _number(v)}
            if numbers and all(_number(v) or v is None for v in value.values()):
                out[key] = numbers
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
