"""CAM mIoU on the scoring split, for every background threshold at once (best one reported), and the network's
per-class classification AP on the same images.

Consumes the ``cams``/``mask`` (and ``logits``/``label``) that the CAM modules' validation and test steps return;
logs ``<prefix>/cam_miou``, ``<prefix>/cam_threshold``, per-class IoU, ``<prefix>/cls_map`` and per-class
``<prefix>/cls_ap/<class>``, and (optionally) merges the latest result into a run's ``summary.json`` under
``<summary_key>_cam_miou`` / ``_cam_threshold`` / ``_cam_iou`` / ``_cls_map`` / ``_cls_ap``. The AP tells a
class the network has not learned (AP near the class's frequency: its max-normalised CAM is noise) from one
whose CAM is merely partial, which the IoU alone cannot.
Under DDP each rank scores its own images and the confusion matrices are summed over the ranks before the
IoU is computed, so the result equals a single-process evaluation; only rank 0 writes the summary.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from torchmetrics.classification import MultilabelAveragePrecision

from caef.data.datamodule import trainer_class_names
from caef.io import update_json
from caef.metrics import ThresholdSweepConfusion, default_thresholds
from caef.run_layout import SUMMARY, RunPaths


class CAMScore(pl.Callback):
    """Args:
    thresholds: background thresholds to sweep (default 0.05..0.60 step 0.01).
    prefix: metric namespace (``val`` during fit, ``test`` when testing).
    summary_file: JSON file to merge the result into (e.g. ``runs/demo/summary.json``); None to skip.
    summary_key: key stem in the summary (``oc`` -> ``oc_cam_miou``).
    """

    #: where it reads and writes under the run folder when those arguments are unset (caef.run_layout)
    run_paths: ClassVar[RunPaths] = {"summary_file": (SUMMARY, None)}

    def __init__(
        self,
        thresholds: Sequence[float] | None = None,
        summary_file: str | None = None,
        summary_key: str = "cam",
    ):
        self.thresholds = thresholds
        self.summary_file, self.summary_key = summary_file, summary_key
        self.metric: ThresholdSweepConfusion | None = None
        self.ap: MultilabelAveragePrecision | None = None
        self.last_result: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        num_classes = pl_module.hparams.num_classes
        thresholds = default_thresholds() if self.thresholds is None else self.thresholds
        self.metric = ThresholdSweepConfusion(num_classes, thresholds).to(pl_module.device)
        # average=None: one AP per foreground class; thresholds=None keeps the exact scores (a scoring split's worth)
        self.ap = MultilabelAveragePrecision(num_labels=num_classes - 1, average=None).to(pl_module.device)

    def _update(self, pl_module: pl.LightningModule, outputs: dict[str, Any]) -> None:
        if "mask" not in outputs:
            return
        self.metric = self.metric.to(pl_module.device)
        self.metric.update(outputs["cams"], outputs["mask"])
        if "logits" in outputs:
            self.ap = self.ap.to(pl_module.device)
            self.ap.update(outputs["logits"].float(), outputs["label"].round().int())

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(pl_module, outputs)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(pl_module, outputs)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._finish(trainer, pl_module, "val")
        else:
            self.metric.reset()
            self.ap.reset()

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer, pl_module, "test")

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prefix: str) -> None:
        if trainer.world_size == 1 and int(self.metric.confmat.sum()) == 0:
            return  # nothing scored (no masks in this split)
        # under DDP, compute() sums the confusion matrices of all ranks (dist_reduce_fx="sum"; every rank must
        # get here): each rank scored its own images, none twice (see WSSSDataModule._inference_loader)
        result = self.metric.compute()
        self.metric.reset()
        ap = self._class_ap(trainer)
        if torch.isnan(result["best_miou"]):
            return  # nothing scored on any rank
        names = trainer_class_names(trainer, self.metric.num_classes)
        best_miou, best_threshold = float(result["best_miou"]), float(result["best_threshold"])
        iou = result["iou"][int(result["best_index"])]
        metrics = {f"{prefix}/cam_miou": best_miou, f"{prefix}/cam_threshold": best_threshold}
        metrics.update(_logged(f"{prefix}/cam_iou", names, iou))
        self.last_result = {
            "miou": best_miou,
            "threshold": best_threshold,
            "iou": _per_class(names, iou),
            "epoch": trainer.current_epoch,
        }
        if ap is not None:
            cls_map = float(ap.nanmean())
            metrics[f"{prefix}/cls_map"] = cls_map
            metrics.update(_logged(f"{prefix}/cls_ap", names[1:], ap))
            self.last_result.update(cls_map=cls_map, cls_ap=_per_class(names[1:], ap))
        # every rank holds the same (already global) values: "max" syncs them exactly, and quiets Lightning's
        # advice to sync epoch-level values; the loggers write from rank 0 only
        pl_module.log_dict(metrics, sync_dist=trainer.world_size > 1, reduce_fx="max")
        self._write_summary()

    def _class_ap(self, trainer: pl.Trainer) -> torch.Tensor | None:
        """Per-class AP over all ranks (NaN for a class without a positive image, which torchmetrics scores 0), or
        None where the module returned no logits (the same on every rank: every rank runs the same module) or no
        class had a positive image."""
        if not self.ap.update_count:
            return None
        targets = self.ap.target if isinstance(self.ap.target, list) else [self.ap.target]
        positives = sum(((t == 1).sum(0) for t in targets), torch.zeros(self.ap.num_labels, device=self.ap.device))
        positives = trainer.strategy.reduce(positives, reduce_op="sum")  # collective: every rank gets here
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*No positive samples.*")
            ap = self.ap.compute().float().reshape(-1)
        self.ap.reset()
        ap = torch.where(positives > 0, ap, torch.nan)
        return None if ap.isnan().all() else ap

    @rank_zero_only
    def _write_summary(self) -> None:
        if self.summary_file is None or self.last_result is None:
            return
        key, result = self.summary_key, self.last_result
        entries = {
            f"{key}_cam_miou": round(result["miou"] * 100, 2),
            f"{key}_cam_threshold": round(result["threshold"], 2),
            f"{key}_cam_iou": result["iou"],
        }
        if "cls_ap" in result:
            entries[f"{key}_cls_map"] = round(result["cls_map"] * 100, 2)
            entries[f"{key}_cls_ap"] = result["cls_ap"]
        update_json(self.summary_file, entries)


def _logged(stem: str, names: Sequence[str], values: torch.Tensor) -> dict[str, float]:
    """``{stem/<class>: value}`` for logging, leaving out undefined (NaN) classes."""
    return {f"{stem}/{name}": float(v) for name, v in zip(names, values) if not torch.isnan(v)}


def _per_class(names: Sequence[str], values: torch.Tensor) -> dict[str, float | None]:
    """``{class: value}`` for ``summary.json``: 6 decimals, None where undefined (NaN)."""
    return {name: (None if torch.isnan(v) else round(float(v), 6)) for name, v in zip(names, values)}
