"""DeepLab on pseudo labels (the last pipeline stage) or on ground truth (the fully supervised upper bound).

Training: per-pixel cross-entropy at the input size, 255 ignored. Evaluation: whole images, softmax averaged
over ``eval_scales`` (and horizontal flips), optionally refined by a dense CRF, scored by a dataset-level
confusion matrix: ``val/miou`` is the mean IoU over classes present in the ground truth or the prediction (VOC
convention). :class:`caef.callbacks.SegmentationScore` merges the result into a run's ``summary.json``.

Diagnostics beside it say where the errors are: ``val/missed_foreground`` and ``val/wrong_class`` (the fractions of
labelled foreground pixels predicted background / another class) and, without CRF, ``val/miou_given_classes``: the mIoU
when each image's true classes are given, as CAM and pseudo-label scoring have them. A DeepLab far ahead of the
CAMs there but not in ``val/miou`` is limited by recognition, not localisation. With CRF, ``val/miou_without_crf``
scores the same probabilities' argmax, so one run gives both numbers. The result names its evaluation
(:func:`evaluation_protocol`): a CRF-refined mIoU is never read as a plain one.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.loggers import WandbLogger
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix

from caef.data.datamodule import trainer_class_names
from caef.data.source import IGNORE_INDEX
from caef.data.transforms import denormalize
from caef.errors import CaefError
from caef.metrics import foreground_errors, given_classes, iou_from_confusion, mean_iou
from caef.models.deeplab import DeepLab, Variant, build_deeplab, multiscale_probs, segmentation_loss
from caef.stages.crf import dense_crf
from caef.stages.optimization import configure_reference_optimizer

LABEL_SOURCES = ("pseudo", "ground_truth")
EVAL_ONLY = ("eval_scales", "eval_flip", "crf_eval", "crf_options", "log_images")


def crf_refine(images: Tensor, probs: Tensor, **crf_options: Any) -> Tensor:
    """Labels (B, H, W) after a dense CRF of ``probs`` on the de-normalised images (``caef.stages.crf.dense_crf``)."""
    pixels = denormalize(images)
    probs_np = probs.float().cpu().numpy()
    labels = [dense_crf(pixels[i], probs_np[i], **crf_options).argmax(axis=0) for i in range(len(pixels))]
    return torch.from_numpy(np.stack(labels)).long().to(images.device)


def evaluation_protocol(scales: Sequence[float], flip: bool, crf: bool) -> str:
    """How a DeepLab mIoU was computed, in words (``plain``; ``flip, dense CRF``; ``scales 0.5/0.75/1, flip``):
    written beside the number, as papers' final numbers add test-time flips, scales and a CRF to the plain forward."""
    parts = [] if tuple(scales) == (1.0,) else ["scales " + "/".join(f"{s:g}" for s in scales)]
    parts += ["flip"] * flip + ["dense CRF"] * crf
    return ", ".join(parts) or "plain"


class DeepLabModule(pl.LightningModule):
    """Args:
    num_classes: classes including background (linked from the datamodule).
    variant: ``v2`` (ASPP-L, the WSSS standard) or ``v3plus`` (ASPP + decoder); see :mod:`caef.models.deeplab`.
    backbone, pretrained, backbone_options: the trunk (``pretrained``: a weights file or ``imagenet``).
    init_checkpoint: a caef classifier / CGNet ``.ckpt`` whose trunk initialises DeepLab's (loaded after
        ``pretrained``; shapes must match): the demo configs pass ``{run}/cgnet/last.ckpt``, the CPU stand-in for
        ImageNet weights, with which DeepLab learns datasets that it cannot learn from scratch in a few epochs.
    lr, weight_decay, momentum, poly_power: DeepLab-v2 recipe: SGD, lr 2.5e-4, momentum 0.9, weight decay
        5e-4, poly decay ``(1 - step/max_steps)^0.9`` per step. Biases get 2x lr and no weight decay.
    head_lr_mult: learning-rate multiplier of the head (DeepLab-v2: 10).
    optimizer: ``sgd`` or ``adamw`` (same groups and decay; for training from scratch, as the CPU demo does).
    eval_scales, eval_flip: multi-scale (+ flip) evaluation; ``[1.0]`` and False is the plain forward.
    crf_eval, crf_options: dense-CRF post-processing at evaluation (options: ``dense_crf``'s keywords).
        These evaluation settings (and ``log_images``) are not saved as hyper-parameters, so they apply when a
        checkpoint is validated: ``caef deeplab validate --ckpt_path ... --model.eval_flip=true``.
    label_source: what the network trains on, a tag for the summary: ``pseudo`` or ``ground_truth``; ``auto``
        takes it from ``data.label_dir`` (None: ground truth) or, when a checkpoint is loaded, from the checkpoint.
    log_images: validation images shown as W&B mask overlays (WandbLogger only, rank 0); 0 disables.
    """

    def __init__(
        self,
        num_classes: int = 21,
        variant: Variant = "v2",
        backbone: str = "resnet101",
        pretrained: str | None = None,
        backbone_options: dict[str, Any] | None = None,
        init_checkpoint: str | None = None,
        lr: float = 2.5e-4,
        weight_decay: float = 5e-4,
        momentum: float = 0.9,
        poly_power: float = 0.9,
        head_lr_mult: float = 10.0,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        eval_scales: Sequence[float] = (1.0,),
        eval_flip: bool = False,
        crf_eval: bool = False,
        crf_options: dict[str, float] | None = None,
        label_source: Literal["auto", "pseudo", "ground_truth"] = "auto",
        log_images: int = 8,
    ):
        super().__init__()
        if label_source not in ("auto", *LABEL_SOURCES):
            raise CaefError(f"label_source must be auto, pseudo or ground_truth, got {label_source!r}")
        if not eval_scales or min(eval_scales) <= 0:
            raise CaefError(f"eval_scales must be positive numbers, got {list(eval_scales)}")
        # evaluation-only settings stay out of the checkpoint: LightningCLI re-applies a checkpoint's hyper-parameters
        # over the command line, which would make `validate --ckpt_path ... --model.eval_flip=true` a silent no-op
        # init_checkpoint only seeds training: a DeepLab checkpoint holds all its weights and never needs that file
        self.save_hyperparameters(ignore=(*EVAL_ONLY, "init_checkpoint"))
        options = dict(backbone_options or {})
        self.net: DeepLab = build_deeplab(backbone, num_classes, variant, pretrained=pretrained, **options)
        if init_checkpoint:
            self.net.load_cam_checkpoint(init_checkpoint)
        self.eval_scales, self.eval_flip = tuple(eval_scales), eval_flip
        self.crf_eval, self.crf_options, self.log_images = crf_eval, dict(crf_options or {}), log_images
        self.confmat = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)
        self.confmat_given = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)
        self.confmat_plain = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)
        self._label_source_given = label_source != "auto"
        self.last_result: dict[str, Any] | None = None
        self._samples: list[dict[str, Any]] = []

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if not hasattr(datamodule, "label_dir"):
            return
        source = "ground_truth" if datamodule.label_dir is None else "pseudo"
        if not self._label_source_given:
            # setup runs before the loggers record hparams_initial (W&B config) and checkpoints save hparams
            for hparams in (self.hparams, getattr(self, "_hparams_initial", None)):
                if hparams is not None:
                    hparams["label_source"] = source
        elif stage == "fit" and self.hparams.label_source != source:
            warnings.warn(
                f"model.label_source={self.hparams.label_source!r} but data.label_dir={datamodule.label_dir!r} "
                "(None trains on ground truth): the summary will carry the wrong tag",
                stacklevel=1,
            )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {}).get("label_source")
        if not self._label_source_given and saved in LABEL_SOURCES:
            self.hparams.label_source = saved  # what the checkpoint was trained on, not this run's data.label_dir

    # -- training ----------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = segmentation_loss(self.net(batch["image"]), batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    # -- evaluation --------------------------------------------------------------------------------
    def predict_probs(self, images: Tensor) -> Tensor:
        return multiscale_probs(self.net, images, self.eval_scales, self.eval_flip)

    def predict_labels(self, images: Tensor) -> Tensor:
        return self._labels(images, self.predict_probs(images))

    def _labels(self, images: Tensor, probs: Tensor) -> Tensor:
        """Labels from the evaluation probabilities: dense CRF when ``crf_eval``, else the argmax."""
        return crf_refine(images, probs, **self.crf_options) if self.crf_eval else probs.argmax(dim=1)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        probs = self.predict_probs(batch["image"])
        pred = self._labels(batch["image"], probs)
        if "mask" in batch:
            self.confmat.update(pred, batch["mask"])
            if self.crf_eval:
                self.confmat_plain.update(probs.argmax(dim=1), batch["mask"])
            else:
                self.confmat_given.update(given_classes(probs, batch["mask"]).argmax(dim=1), batch["mask"])
        self._keep_samples(batch, pred)
        return {"id": batch["id"], "pred": pred}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        return self.validation_step(batch, batch_idx)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Label maps of whole images with the evaluation settings (scales, flip, CRF), for benchmark files
        (:class:`caef.callbacks.SegmentationWriter`); the split needs no masks (VOC ``test``)."""
        return {"id": batch["id"], "pred": self.predict_labels(batch["image"])}

    def compute_scores(self) -> dict[str, Any] | None:
        """Per-class IoU (NaN for classes absent from truth and prediction), their mean and the diagnostics (the
        module docstring); resets the matrices."""
        world_size = self.trainer.world_size if self._trainer is not None else 1
        if int(self.confmat.confmat.sum()) == 0 and world_size == 1:
            self._reset_scores()
            return None  # nothing scored (no masks in this split)
        confmat = self.confmat.compute()
        iou = iou_from_confusion(confmat)
        diagnostics = foreground_errors(confmat)
        # the second view of the same probabilities: without the CRF, or (no CRF) with each image's classes given
        name, matrix = (
            ("miou_without_crf", self.confmat_plain) if self.crf_eval else ("miou_given_classes", self.confmat_given)
        )
        if int(matrix.confmat.sum()) > 0 or world_size > 1:  # compute() syncs: every rank calls it
            diagnostics[name] = float(mean_iou(iou_from_confusion(matrix.compute())))
        self._reset_scores()
        return {"miou": float(mean_iou(iou)), "iou": iou, "diagnostics": diagnostics}

    def evaluation(self) -> str:
        return evaluation_protocol(self.eval_scales, self.eval_flip, self.crf_eval)

    def _reset_scores(self) -> None:
        for matrix in (self.confmat, self.confmat_given, self.confmat_plain):
            matrix.reset()

    def on_validation_epoch_end(self) -> None:
        self._finish("val")

    def on_test_epoch_end(self) -> None:
        self._finish("test")

    def _finish(self, prefix: str) -> None:
        if self.trainer.sanity_checking:
            self._reset_scores()
            self._samples = []
            return
        scores = self.compute_scores()
        names = trainer_class_names(self.trainer, self.hparams.num_classes)
        if scores is not None:
            iou = scores["iou"]
            diagnostics = {k: v for k, v in scores["diagnostics"].items() if not np.isnan(v)}
            metrics = {f"{prefix}/miou": scores["miou"]} | {f"{prefix}/{k}": v for k, v in diagnostics.items()}
            metrics |= {f"{prefix}/iou/{n}": float(v) for n, v in zip(names, iou) if not torch.isnan(v)}
            self.log_dict(metrics, sync_dist=False)
            self.last_result = {
                "miou": scores["miou"],
                "iou": {n: (None if torch.isnan(v) else round(float(v), 6)) for n, v in zip(names, iou)},
                "diagnostics": diagnostics,
                "evaluation": self.evaluation(),
                "epoch": self.current_epoch,
            }
        self._log_overlays(prefix, names)

    # -- W&B overlays ------------------------------------------------------------------------------
    def _wandb_loggers(self) -> list[WandbLogger]:
        return [lg for lg in self.trainer.loggers if isinstance(lg, WandbLogger)]

    def _keep_samples(self, batch: dict[str, Any], pred: Tensor) -> None:
        wanted = self.log_images - len(self._samples)
        trainer = self._trainer
        if wanted <= 0 or trainer is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if not self._wandb_loggers():
            return  # nothing to show the overlays in
        take = min(wanted, len(pred))
        images = denormalize(batch["image"][:take])
        for i in range(take):
            sample = {"id": batch["id"][i], "image": images[i], "pred": pred[i].cpu().numpy().astype(np.uint8)}
            if "mask" in batch:
                sample["mask"] = batch["mask"][i].cpu().numpy().astype(np.uint8)
            self._samples.append(sample)

    def _log_overlays(self, prefix: str, names: Sequence[str]) -> None:
        samples, self._samples = self._samples, []
        if not samples or not self.trainer.is_global_zero:
            return
        class_labels = dict(enumerate(names)) | {IGNORE_INDEX: "ignore"}
        masks = []
        for sample in samples:
            overlay = {"prediction": {"mask_data": sample["pred"], "class_labels": class_labels}}
            if "mask" in sample:
                overlay["ground_truth"] = {"mask_data": sample["mask"], "class_labels": class_labels}
            masks.append(overlay)
        for logger in self._wandb_loggers():
            logger.log_image(
                key=f"{prefix}/segmentation",
                images=[s["image"] for s in samples],
                caption=[s["id"] for s in samples],
                masks=masks,
            )

    # -- optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        return configure_reference_optimizer(self, self.net.backbone, self.net.head.parameters())
