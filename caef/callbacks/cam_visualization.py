"""CAM overlays for a fixed set of scoring images, logged to Weights & Biases every validation.

Each image is logged as a heatmap overlay (max over the image's classes) carrying two toggleable W&B
masks: the thresholded CAM prediction and the ground truth, both with class names.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from matplotlib import colormaps

from caef.callbacks.cam_miou import CAMScore
from caef.data.datamodule import trainer_class_names
from caef.data.source import IGNORE_INDEX
from caef.data.transforms import denormalize


def heatmap_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a (H, W) map in [0, 1] (jet colours) over an (H, W, 3) uint8 image."""
    colours = colormaps["jet"](np.clip(cam, 0, 1))[..., :3] * 255
    return (image * (1 - alpha) + colours * alpha).round().clip(0, 255).astype(np.uint8)


def threshold_cams(cams: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, K, H, W) CAMs -> (B, H, W) class indices, background where no CAM exceeds ``threshold``."""
    top_value, top_class = cams.max(dim=1)
    return torch.where(top_value > threshold, top_class + 1, torch.zeros_like(top_class))


class CAMVisualization(pl.Callback):
    """Args:
    num_images: how many scoring images to show (the first ones seen on rank 0, the same every epoch; under
        DDP they come from rank 0's share of the split). Only rank 0 collects and logs them.
    threshold: background threshold for the mask overlay; None uses the best one found by :class:`CAMScore`.
    key: W&B key of the image panel.
    """

    def __init__(self, num_images: int = 8, threshold: float | None = None, key: str = "val/cams"):
        self.num_images, self.threshold, self.key = num_images, threshold, key
        self._samples: list[dict[str, Any]] = []

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._samples = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or len(self._samples) >= self.num_images:
            return
        take = min(self.num_images - len(self._samples), len(outputs["id"]))
        images = denormalize(outputs["image"][:take])
        for i in range(take):
            sample = {"id": outputs["id"][i], "image": images[i], "cams": outputs["cams"][i].float().cpu()}
            if "mask" in outputs:
                sample["mask"] = outputs["mask"][i].cpu().numpy().astype(np.uint8)
            self._samples.append(sample)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if trainer.sanity_checking or not trainer.is_global_zero or not self._samples or not loggers:
            return
        names = trainer_class_names(trainer, pl_module.hparams.num_classes)
        class_labels = {i: name for i, name in enumerate(names)} | {IGNORE_INDEX: "ignore"}
        threshold = self._threshold(trainer)
        images, captions, masks = [], [], []
        for sample in self._samples:
            cams = sample["cams"]
            images.append(heatmap_overlay(sample["image"], cams.amax(0).numpy()))
            captions.append(f"{sample['id']} (t={threshold:.2f})")
            overlay = {"prediction": {"mask_data": threshold_cams(cams[None], threshold)[0].numpy().astype(np.uint8),
                                      "class_labels": class_labels}}  # fmt: skip
            if "mask" in sample:
                overlay["ground_truth"] = {"mask_data": sample["mask"], "class_labels": class_labels}
            masks.append(overlay)
        for logger in loggers:
            logger.log_image(key=self.key, images=images, caption=captions, masks=masks)

    def _threshold(self, trainer: pl.Trainer) -> float:
        if self.threshold is not None:
            return self.threshold
        for callback in trainer.callbacks:
            if isinstance(callback, CAMScore) and callback.last_result is not None:
                return callback.last_result["threshold"]
        return 0.2
