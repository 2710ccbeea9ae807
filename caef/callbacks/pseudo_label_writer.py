"""Pseudo labels from AffinityNet features: the random walk over each image's saved CAMs, written as PNGs.

Used with ``caef affinity predict``: the predict step returns stride-8 features of each (padded) image; this
writer loads the image's CAM file, walks it (``caef.stages.random_walk.walked_scores``: background
``(1 - max)^alpha``, affinities^beta, t = 2^logt), optionally sharpens the result with a dense CRF on the image
(``crf``: the walked scores, normalised per pixel, as the CRF's unary) and writes ``<output_dir>/<image_id>.png``
atomically.
Images whose label already exists are still recomputed only if ``overwrite`` is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from caef.cam_files import load_cams
from caef.data.source import write_mask
from caef.errors import CaefError
from caef.run_layout import CAM_DIR, PSEUDO_DIR, RunPaths
from caef.stages.crf import CRFSeedConfig, dense_crf
from caef.stages.random_walk import (
    DENSE_WALK_NODES,
    MAX_WALK_PIXELS,
    check_walk_size,
    labels_from_scores,
    walked_scores,
)


class PseudoLabelWriter(BasePredictionWriter):
    """Args:
    cam_dir: CAM files to propagate (the CLI defaults it to ``<run_dir>/cams/cgnet``).
    output_dir: where the label PNGs go (the CLI defaults it to ``<run_dir>/pseudo``).
    alpha, beta, logt: PSA's random-walk settings (background power 16, affinity power 8, t = 2^8).
    radius: affinity radius on the stride-8 grid; None (default) takes the AffinityNet's own ``radius``.
    crf: run a dense CRF after the walk (the reference's pairwise terms, as ``caef crf``); off by default, as in
        PSA's ``infer_aff.py``.
    overwrite: recompute labels that already exist (default: keep them, so a rerun resumes).
    max_walk_pixels: largest image (pixels) walked; a larger one stops the stage before its features are computed,
        naming the image (default 4096 * 4096; the sparse walk needs about 200 MB per megapixel).
    dense_walk_nodes: largest stride-8 grid walked with PSA's dense matrix (bit for bit as PSA); larger grids take
        the sparse walk (the same product up to float rounding order).
    """

    #: where it reads and writes under the run folder when those arguments are unset (caef.run_layout)
    run_paths: ClassVar[RunPaths] = {"cam_dir": (CAM_DIR, "cgnet"), "output_dir": (PSEUDO_DIR, None)}

    def __init__(
        self,
        cam_dir: str | None = None,
        output_dir: str | None = None,
        alpha: float = 16.0,
        beta: float = 8.0,
        logt: int = 8,
        radius: int | None = None,
        crf: bool = False,
        overwrite: bool = False,
        max_walk_pixels: int = MAX_WALK_PIXELS,
        dense_walk_nodes: int = DENSE_WALK_NODES,
    ):
        super().__init__(write_interval="batch")
        self.cam_dir = Path(cam_dir) if cam_dir else None
        self.output_dir = Path(output_dir) if output_dir else None
        self.alpha, self.beta, self.logt, self.radius, self.overwrite = alpha, beta, logt, radius, overwrite
        self.crf = crf
        self.max_walk_pixels, self.dense_walk_nodes = max_walk_pixels, dense_walk_nodes
        self.crf_params = CRFSeedConfig().crf_params()  # the reference's pairwise terms, as `caef crf`
        self.written = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "predict" and (self.cam_dir is None or self.output_dir is None):
            raise CaefError("PseudoLabelWriter needs cam_dir (CAM files) and output_dir (where labels go)")

    def on_predict_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Refuse an image too large for the walk before the network computes its features."""
        height, width = batch["image"].shape[-2:]
        for image_id in batch["id"]:
            check_walk_size(image_id, int(height), int(width), self.max_walk_pixels)

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: dict[str, Any],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        datamodule = trainer.datamodule
        num_classes, palette = datamodule.num_classes, datamodule.source.palette
        height, width = batch["image"].shape[-2:]
        for image_id, features in zip(prediction["id"], prediction["features"]):
            check_walk_size(image_id, int(height), int(width), self.max_walk_pixels)
            out = self.output_dir / f"{image_id}.png"
            if out.is_file() and not self.overwrite:
                continue
            source = datamodule.source
            cams, classes = load_cams(
                self.cam_dir / f"{image_id}.npz", num_classes, (height, width), source.label_of(image_id),
                source.class_names,
            )  # fmt: skip
            scores = walked_scores(
                torch.from_numpy(cams), features, self.alpha, self.beta, self.logt,
                radius=self.radius or pl_module.hparams.radius, dense_nodes=self.dense_walk_nodes,
            ).float().cpu()  # fmt: skip
            if self.crf:
                probs = np.clip(scores.numpy(), 1e-8, None)
                probs /= probs.sum(axis=0, keepdims=True)
                image = datamodule.source.read_image(image_id)
                scores = torch.from_numpy(dense_crf(image, probs, **self.crf_params))
            write_mask(out, labels_from_scores(scores, torch.from_numpy(classes)).numpy(), palette)
            self.written += 1
