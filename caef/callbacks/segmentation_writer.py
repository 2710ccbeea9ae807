"""Benchmark files from ``caef deeplab predict``: what the PASCAL VOC evaluation server and COCO's tools read.

* ``voc``: one palette PNG of class indices per image (the VOC colour map, the image's size), laid out as the
  server's tarball expects: ``<output_dir>/results/VOC2012/Segmentation/comp6_<split>_cls/<id>.png`` (``comp6``:
  trained on data beyond VOC's own, as every weakly supervised method with ImageNet weights is); archive the
  ``results`` folder (``tar -czf results.tgz results``) and upload it.
* ``coco``: the COCO results format for segmentation, one JSON list with an entry per (image, present class):
  ``{"image_id", "category_id", "segmentation": RLE}`` (pycocotools' compressed RLE, COCO's own category ids),
  written to ``<output_dir>/results/segmentation_<split>_results.json``.

Every file is written atomically; under DDP each rank writes its own images (COCO: its own JSON,
``..._results.rank<k>.json``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from caef.data.source import write_mask
from caef.errors import CaefError, check_writable_dir
from caef.io import write_json

_COCO_IMAGE_NUMBER = re.compile(r"(\d+)$")


def voc_result_dir(output_dir: str | Path, split: str, competition: str = "comp6") -> Path:
    """Where the VOC evaluation server looks for the segmentation PNGs of ``split``."""
    return Path(output_dir) / "results" / "VOC2012" / "Segmentation" / f"{competition}_{split}_cls"


def coco_segmentation_results(image_id: str, label: np.ndarray, category_ids: dict[int, int]) -> list[dict]:
    """COCO result entries of one label map: one RLE per present class (background 0 and 255 left out)."""
    from pycocotools import mask as mask_utils

    match = _COCO_IMAGE_NUMBER.search(image_id)
    if match is None:
        raise CaefError(f"COCO results need numeric image ids; {image_id!r} has none (expected COCO_val2014_<number>)")
    entries = []
    for index in np.unique(label):
        if int(index) not in category_ids:
            continue
        rle = mask_utils.encode(np.asfortranarray(label == index, dtype=np.uint8))
        rle["counts"] = rle["counts"].decode("ascii")
        entries.append({"image_id": int(match.group(1)), "category_id": category_ids[int(index)], "segmentation": rle})
    return entries


class SegmentationWriter(BasePredictionWriter):
    """Args:
    output_dir: folder of the ``results`` tree; default: the stage folder (``<run_dir>/deeplab``).
    format: ``voc`` (palette PNGs for the evaluation server) or ``coco`` (results JSON).
    competition: the VOC competition folder prefix (``comp5``: VOC data only; ``comp6``: any data).
    """

    def __init__(
        self, output_dir: str | None = None, format: Literal["voc", "coco"] = "voc", competition: str = "comp6"
    ):
        super().__init__(write_interval="batch")
        if format not in ("voc", "coco"):
            raise CaefError(f"SegmentationWriter format must be voc or coco, got {format!r}")
        self.output_dir = Path(output_dir) if output_dir else None
        self.format, self.competition = format, competition
        self.written = 0
        self._coco: list[dict] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        if self.output_dir is None:
            self.output_dir = Path(trainer.default_root_dir)
        check_writable_dir(self.output_dir, "SegmentationWriter output_dir")
        if self.format == "coco" and not hasattr(trainer.datamodule.source, "category_index"):
            raise CaefError(
                f"SegmentationWriter format coco needs a COCO dataset (its category ids), got data.dataset="
                f"{trainer.datamodule.dataset!r}; use format voc"
            )
        self._coco = []

    def _split(self, trainer: pl.Trainer) -> str:
        return getattr(trainer.datamodule, "predict_split", "predict")

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
        labels = prediction["pred"].cpu().numpy().astype(np.uint8)
        source = trainer.datamodule.source
        if self.format == "voc":
            folder = voc_result_dir(self.output_dir, self._split(trainer), self.competition)
            for image_id, label in zip(prediction["id"], labels):
                write_mask(folder / f"{image_id}.png", label, source.palette)
        else:
            category_ids = {index: coco_id for coco_id, index in source.category_index.items()}
            for image_id, label in zip(prediction["id"], labels):
                self._coco += coco_segmentation_results(image_id, label, category_ids)
        self.written += len(labels)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.format != "coco":
            return
        suffix = f".rank{trainer.global_rank}" if trainer.world_size > 1 else ""
        name = f"segmentation_{self._split(trainer)}_results{suffix}.json"
        write_json(self.output_dir / "results" / name, self._coco)
