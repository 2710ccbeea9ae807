"""What the ordinary classifier and the CGNet share: a CAM network, the reference optimiser, and CAM
inference for validation (scored by callbacks) and prediction (written by :class:`CAMWriter`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from caef.models.cam_net import CAMNet, build_cam_net
from caef.stages.cam_inference import DEFAULT_SCALES, multiscale_cams
from caef.stages.optimization import configure_reference_optimizer


class CAMModule(pl.LightningModule):
    """Base LightningModule of the CAM networks.

    Args:
        num_classes: classes including background (linked from the datamodule).
        backbone: registered backbone name (``resnet38``, ``resnet101``, ``vgg16``, ...).
        pretrained: backbone weights: a file (``.params`` MXNet ImageNet, ``.pth`` state dict) or ``imagenet``.
        backbone_options: extra backbone arguments, e.g. ``{"width": 0.125}`` for the small ResNet-38.
        lr, weight_decay, momentum, poly_power: SGD with poly decay ``lr * (1 - step/max_step)^poly_power``.
            The reference passes weight decay positionally as SGD's momentum, so its effective momentum is
            5e-4; that is the default here.
        head_lr_mult: learning-rate multiplier of the 1x1 classifier (PSA's OC: 10; OC-CSE's CGNet: 1).
        optimizer: ``sgd`` (the reference) or ``adamw`` (same groups and poly decay; for training from scratch,
            as the CPU demo does without ImageNet weights).
        msf_scales, msf_flip: multi-scale + flip CAM inference for scoring and export.
        channels_last: run convolutions in channels-last memory format.
        head_dropout: channel dropout before the 1x1 classifier while training (PSA's classifier: 0.5).
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet38",
        pretrained: str | None = None,
        backbone_options: dict[str, Any] | None = None,
        lr: float = 0.01,
        weight_decay: float = 5e-4,
        momentum: float = 5e-4,
        poly_power: float = 0.9,
        head_lr_mult: float = 10.0,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        msf_scales: Sequence[float] = DEFAULT_SCALES,
        msf_flip: bool = True,
        channels_last: bool = False,
        head_dropout: float = 0.0,
    ):
        super().__init__()
        self.save_hyperparameters()  # collects the subclasses' __init__ arguments too
        self.net: CAMNet = build_cam_net(
            backbone, num_classes, pretrained=pretrained, head_dropout=head_dropout, **(backbone_options or {})
        )
        self.msf_scales, self.msf_flip = tuple(msf_scales), msf_flip
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    @property
    def num_foreground(self) -> int:
        return self.net.num_foreground

    def _input(self, images: Tensor) -> Tensor:
        return images.contiguous(memory_format=self.memory_format)

    def cams_of(self, images: Tensor) -> Tensor:
        return self.net(self._input(images))

    # -- inference ---------------------------------------------------------------------------------
    def infer_cams(self, batch: dict[str, Any]) -> Tensor:
        return multiscale_cams(self.cams_of, batch["image"], batch["label"], self.msf_scales, self.msf_flip)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """Multi-scale CAMs (scored against the masks) and the single-scale image logits (scored as a classifier:
        a class the network has not learned shows there, not in the IoU)."""
        logits = self.net.logits(self.cams_of(batch["image"]))
        return {**batch, "cams": self.infer_cams(batch), "logits": logits}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self.validation_step(batch, batch_idx)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return {"id": batch["id"], "label": batch["label"], "cams": self.infer_cams(batch)}

    # -- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        return configure_reference_optimizer(self, self.net.backbone, self.net.classifier.parameters())
