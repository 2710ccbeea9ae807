"""Writes predicted CAMs to ``<output_dir>/<image_id>.npz`` (float16, compressed, atomic).

Under DDP every rank writes the images of its own share of the split (the inference loaders give each image
to exactly one rank), so each file is written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
from lightning.pytorch.callbacks import BasePredictionWriter

from caef.cam_files import save_cams
from caef.errors import CaefError, check_writable_dir
from caef.run_layout import CAM_DIR, RunPaths


class CAMWriter(BasePredictionWriter):
    """Args:
    output_dir: directory of the CAM files (one per image: the present classes' maps and their class ids);
        the CLI defaults it to ``<run_dir>/cams/<stage>``.
    """

    #: where it reads and writes under the run folder when those arguments are unset (caef.run_layout)
    run_paths: ClassVar[RunPaths] = {"output_dir": (CAM_DIR, None)}

    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.written = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "predict" and self.output_dir is None:
            raise CaefError("CAMWriter.output_dir is not set: give the folder the CAM files should go to")
        if stage == "predict":
            check_writable_dir(self.output_dir, "CAMWriter output_dir")

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
        cams = prediction["cams"].float().cpu()
        labels = prediction["label"].cpu()
        for image_id, image_cams, label in zip(prediction["id"], cams, labels):
            save_cams(self.output_dir / f"{image_id}.npz", image_cams, label)
            self.written += 1
