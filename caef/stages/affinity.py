"""Stage 3b: AffinityNet (PSA), trained on the dense-CRF seeds so the random walk can refine the CGNet's CAMs.

Why: CAMs cover only the most discriminative parts of objects. AffinityNet learns, from the confident regions of
the CRF seeds alone, whether two nearby pixels belong to the same class; the random walk then spreads each CAM
over the regions its pixels have high affinity to, up to the object boundaries.

Loss (PSA): on the stride-8 seed grid, every pair of cells within ``radius`` is a background positive (both
background), a foreground positive (same object class) or a negative (different classes); pairs touching an
unsure cell (255) are ignored. With ``a = exp(-mean_c |f_i - f_j|)``:

    loss = bg/4 + fg/4 + neg/2,   bg = mean -log(a) over bg pairs, fg likewise, neg = mean -log(1 - a)

Each mean runs over all pairs of its kind in the batch (:func:`caef.data.affinity_labels.affinity_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from caef.data.affinity_labels import affinity_loss, extract_affinity_labels, pairwise_affinity
from caef.errors import CaefError
from caef.models.affinity_net import FEATURE_STRIDE, AffinityNet, build_affinity_net
from caef.stages.optimization import configure_reference_optimizer


class AffinityNetModule(pl.LightningModule):
    """AffinityNet training (``fit``) and feature export for the random walk (``predict``).

    Args:
        num_classes: classes including background (linked from the datamodule; the loss does not need it).
        backbone, pretrained, backbone_options: the trunk, as for the CAM networks (e.g. ResNet-38 from the
            ImageNet ``.params``, or PSA's ``res38_cls.pth``).
        init_checkpoint: a caef classifier / CGNet ``.ckpt`` whose trunk initialises AffinityNet's (the demo's
            experiment file passes ``{run}/cgnet/last.ckpt``; VOC/COCO start from ImageNet as PSA), or PSA's
            trained AffinityNet ``res38_aff.pth`` (trunk and head: ``caef affinity predict`` with it runs PSA's
            random-walk features); loaded after ``pretrained``; not saved as a hyper-parameter.
        feature_depths: the three backbone stages the head reads (default: ResNet-38 4/5/7 as PSA's taps, the
            BN-and-ReLU'd inputs of b5 and b6 and the final features; otherwise the last three stride-8 stages, see
            :func:`caef.models.affinity_net.affinity_depths`).
        radius: pair radius on the stride-8 grid (PSA: 5, 34 pairs per cell).
        lr, weight_decay, momentum, poly_power: SGD with poly decay, as :class:`caef.stages.cam_module.CAMModule`.
            PSA's ``train_aff.py`` default lr 0.1 is its VGG-16 setting; for ResNet-38 0.01 is used (as SEAM and
            AEFT do). Momentum 5e-4 is the reference's effective value (weight decay passed positionally).
        head_lr_mult: lr multiplier of the head trained from scratch (PSA: 10x weights, 20x biases).
        optimizer: ``sgd`` (reference) or ``adamw`` (same groups and decay; the CPU demo).
        channels_last: run convolutions in channels-last memory format.
    """

    def __init__(
        self,
        num_classes: int = 21,
        backbone: str = "resnet38",
        pretrained: str | None = None,
        backbone_options: dict[str, Any] | None = None,
        init_checkpoint: str | None = None,
        feature_depths: Sequence[int] | None = None,
        radius: int = 5,
        lr: float = 0.01,
        weight_decay: float = 5e-4,
        momentum: float = 5e-4,
        poly_power: float = 0.9,
        head_lr_mult: float = 10.0,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        channels_last: bool = False,
    ):
        super().__init__()
        # init_checkpoint only seeds training: an AffinityNet checkpoint holds all its weights, and `--ckpt_path`
        # (which re-applies saved hyper-parameters) must not need that file, e.g. after the run folder moved
        self.save_hyperparameters(ignore=("init_checkpoint",))
        if radius < 2:
            raise CaefError(f"model.radius must be at least 2 (PSA: 5), got {radius}")
        self.net: AffinityNet = build_affinity_net(
            backbone, pretrained=pretrained, depths=feature_depths, **(backbone_options or {})
        )
        if init_checkpoint:
            self.net.load_init_checkpoint(init_checkpoint)
        self.radius = radius
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images.contiguous(memory_format=self.memory_format))

    # -- training ----------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        labels = batch["label"]
        rows, cols = labels.shape[-2:]
        if rows < self.radius or cols < 2 * self.radius - 1:
            raise CaefError(
                f"a {rows}x{cols} seed grid is too small for radius {self.radius}: pairs need at least "
                f"{self.radius}x{2 * self.radius - 1} cells, so use data.crop_size >= "
                f"{FEATURE_STRIDE * (2 * self.radius - 1)} or a smaller model.radius"
            )
        features = self(batch["image"])
        if tuple(features.shape[-2:]) != tuple(labels.shape[-2:]):
            raise CaefError(
                f"AffinityNet features are {tuple(features.shape[-2:])} but the seed label grid is "
                f"{tuple(labels.shape[-2:])}; the labels must be on the stride-{FEATURE_STRIDE} grid of the crop"
            )
        aff = pairwise_affinity(features.float(), self.radius)
        loss, parts = affinity_loss(aff, *extract_affinity_labels(labels, self.radius))
        size = len(labels)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log_dict({f"train/{k}_loss": parts[k] for k in ("bg", "fg", "neg")}, batch_size=size)
        self.log_dict({f"train/{k}_count": parts[f"{k}_count"] for k in ("bg", "fg", "neg")}, batch_size=size)
        return loss

    # -- feature export ----------------------------------------------------------------------------
    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Features (B, 448, ceil(H/8), ceil(W/8)) of whole images zero-padded (in normalised space) to a multiple
        of 8, as PSA's ``infer_aff.py`` and :func:`caef.stages.random_walk.propagate` expect."""
        images = batch["image"]
        height, width = images.shape[-2:]
        images = F.pad(images, (0, -width % FEATURE_STRIDE, 0, -height % FEATURE_STRIDE))
        return {"id": batch["id"], "features": self(images).float()}

    # -- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        head = (p for m in self.net.head_modules() for p in m.parameters())
        return configure_reference_optimizer(self, self.net.backbone, head)
