"""Pseudo-label mIoU after the random walk (``caef affinity predict``), beside the CAMs and CRF seeds it came from.

At the end of prediction (every rank has written its pseudo labels) rank 0 scores the scoring split with
:func:`caef.stages.label_scoring.score_label_maps`, logs mIoU and per-class IoU of each kind, logs a W&B table of
the worst pseudo labels (image with pseudo-label, CAM and ground-truth mask overlays), merges
``pseudo_label_miou``, ``thresholded_cam_miou``, ``crf_seed_miou`` (and IoUs, coverage) into ``summary.json``
and prints a short table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import lightning.pytorch as pl
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from caef.cam_files import load_cams
from caef.data.source import IGNORE_INDEX, read_mask
from caef.io import update_json
from caef.run_layout import CAM_DIR, PSEUDO_DIR, SEED_DIR, SUMMARY, RunPaths
from caef.stages.label_scoring import LabelScores, format_scores, score_label_maps, threshold_cam_file


class PseudoLabelScore(pl.Callback):
    """Args:
    split: the scoring split (VOC ``train``; the generated dataset's too).
    pseudo_dir, cam_dir, seed_dir: the folders to score (the CLI fills them from ``--run_dir``: ``pseudo``,
        ``cams/cgnet``, ``seeds``); a None folder is not scored.
    cam_threshold: background threshold of the CAMs; None reads ``cam_threshold_key`` from ``summary_file``.
    summary_file: the run's summary to read the threshold from and merge the scores into.
    worst_images: rows of the W&B table of worst pseudo labels (0: none).
    limit: score only the first ``limit`` images of the split (quick checks).
    """

    #: where it reads and writes under the run folder when those arguments are unset (caef.run_layout)
    run_paths: ClassVar[RunPaths] = {
        "pseudo_dir": (PSEUDO_DIR, None),
        "cam_dir": (CAM_DIR, "cgnet"),
        "seed_dir": (SEED_DIR, None),
        "summary_file": (SUMMARY, None),
    }

    def __init__(
        self,
        split: str = "train",
        pseudo_dir: str | None = None,
        cam_dir: str | None = None,
        seed_dir: str | None = None,
        cam_threshold: float | None = None,
        cam_threshold_key: str = "cgnet_cam_threshold",
        summary_file: str | None = None,
        worst_images: int = 8,
        limit: int | None = None,
    ):
        self.split, self.pseudo_dir, self.cam_dir, self.seed_dir = split, pseudo_dir, cam_dir, seed_dir
        self.cam_threshold, self.cam_threshold_key = cam_threshold, cam_threshold_key
        self.summary_file, self.worst_images, self.limit = summary_file, worst_images, limit
        self.scores: LabelScores | None = None

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        trainer.strategy.barrier()  # every rank's labels are on disk
        if trainer.global_rank != 0:
            return
        source = trainer.datamodule.source
        threshold = self._threshold() if self.cam_dir else None
        cam_dir = self.cam_dir if threshold is not None else None
        self.scores = score_label_maps(
            source, self.split, self.pseudo_dir, cam_dir, self.seed_dir, threshold, self.limit,
            progress=trainer.progress_bar_callback is not None,
        )  # fmt: skip
        summary = self.scores.summary()
        if threshold is not None:
            summary["thresholded_cam_threshold"] = threshold
        if self.summary_file:
            update_json(self.summary_file, summary)
        rank_zero_info(format_scores(self.scores))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, source, threshold)

    def _threshold(self) -> float | None:
        """The CAMs' background threshold; without one the thresholded CAMs are not scored (a warning says so)."""
        if self.cam_threshold is not None:
            return float(self.cam_threshold)
        path = Path(self.summary_file) if self.summary_file else None
        value = json.loads(path.read_text()).get(self.cam_threshold_key) if path and path.is_file() else None
        if value is None:
            rank_zero_warn(
                f"PseudoLabelScore: no CAM threshold ({self.cam_threshold_key!r} is not in {path}); the thresholded "
                "CAMs are not scored: set cam_threshold, or score the CGNet's CAMs first (caef cgnet fit/validate)"
            )
        return None if value is None else float(value)

    def _log_wandb(self, logger: WandbLogger, source, threshold: float | None) -> None:
        import wandb

        scores = self.scores
        metrics = {f"pseudo/{kind}_miou": value for kind, value in scores.miou.items()}
        for kind, iou in scores.iou.items():
            metrics.update({f"pseudo/{kind}_iou/{name}": v for name, v in iou.items() if v is not None})
        if scores.seed_coverage is not None:
            metrics["pseudo/crf_seed_coverage"] = scores.seed_coverage
        logger.log_metrics(metrics)
        if not self.worst_images or not scores.per_image:
            return
        class_labels = dict(enumerate(source.class_names)) | {IGNORE_INDEX: "ignore"}
        table = wandb.Table(columns=["id", "pseudo_label_miou", "overlay"])
        for image_id, miou in scores.per_image[: self.worst_images]:
            masks = {
                "pseudo_label": {"mask_data": read_mask(Path(self.pseudo_dir) / f"{image_id}.png", source.num_classes),
                                 "class_labels": class_labels},
                "ground_truth": {"mask_data": source.read_mask(image_id, self.split), "class_labels": class_labels},
            }  # fmt: skip
            cam_path = Path(self.cam_dir) / f"{image_id}.npz" if self.cam_dir else None
            if cam_path is not None and cam_path.is_file():
                cams, classes = load_cams(cam_path, source.num_classes, label=source.label_of(image_id))
                masks["thresholded_cam"] = {"mask_data": threshold_cam_file(cams, classes, threshold),
                                            "class_labels": class_labels}  # fmt: skip
            table.add_data(image_id, round(miou * 100, 2), wandb.Image(source.read_image(image_id), masks=masks))
        logger.experiment.log({"pseudo/worst_images": table})
