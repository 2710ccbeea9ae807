"""Stage 2: the CGNet, trained with class-specific adversarial erasing against a frozen ordinary classifier.

Per image one present class is drawn uniformly; the CGNet's CAM for it (upsampled, ReLU, normalised) is the
mask M. The frozen OC sees the image erased by M -- at the input (masking depth 0: ``I * (1 - M)``) or at
the output of its stage ``d`` -- and must no longer find that class while still finding the others:

    loss = BCE(CGNet logits, y) + w(epoch) * BCE(OC(erased), y without the target),  w = 0.3 + 0.05 * epoch

M is not detached: the second term reaches the CGNet through the mask, which is the adversarial signal.
The OC stays in eval mode and has no parameter gradients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from caef.checkpoints import check_state_dict, read_checkpoint
from caef.errors import CaefError
from caef.models.cam_net import CAMNet, build_cam_net
from caef.stages.cam_inference import DEFAULT_SCALES
from caef.stages.cam_module import CAMModule

MaskNormalization = Literal["batch", "image"]


def sample_target_classes(labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One class index per row, uniform among the row's positive labels (every row needs one)."""
    if not bool((labels.sum(1) > 0).all()):
        raise ValueError("every image needs at least one positive label to pick an erasing target")
    return torch.multinomial(labels.float(), 1, generator=generator).squeeze(1)


def erasing_mask(
    cams: Tensor, targets: Tensor, size: tuple[int, int], normalization: MaskNormalization = "batch"
) -> Tensor:
    """(B, 1, H, W) mask in [0, 1] from each image's target-class CAM: upsample, ReLU, divide by the max.

    ``batch`` divides by one max over the whole batch (the reference); ``image`` by each image's own max.
    """
    target_cams = cams[torch.arange(len(targets), device=cams.device), targets].unsqueeze(1)
    mask = F.relu(F.interpolate(target_cams.float(), size=size, mode="bilinear", align_corners=False))
    if normalization == "batch":
        return mask / (mask.amax() + 1e-5)
    if normalization == "image":
        return mask / (mask.amax(dim=(1, 2, 3), keepdim=True) + 1e-5)
    raise ValueError(f"mask_normalization must be 'batch' or 'image', got {normalization!r}")


#: ``model.ordinary_classifier`` of a CGNet checkpoint: the frozen OC is rebuilt from the checkpoint itself (its
#: architecture in ``ordinary_classifier_architecture``, its weights in the ``ordinary_classifier.*`` tensors), so the
#: checkpoint loads wherever it is, without the OC's original file
EMBEDDED = "embedded"
OC_HINT = (
    "copy it again or train one with `caef classifier fit` (runs/<name>/classifier/last.ckpt), or point "
    "model.ordinary_classifier at PSA's res38_cls.pth"
)


def load_ordinary_classifier(
    path: str | Path, num_classes: int, backbone: str = "resnet38", backbone_options: dict[str, Any] | None = None
) -> CAMNet:
    """The OC from a ``caef classifier`` checkpoint (.ckpt; architecture from its hyper-parameters) or from a
    PSA ``res38_cls.pth`` / OC-CSE ``net_cl.pth`` state dict (architecture from ``backbone``)."""
    return read_ordinary_classifier(path, num_classes, backbone, backbone_options)[0]


def read_ordinary_classifier(
    path: str | Path, num_classes: int, backbone: str = "resnet38", backbone_options: dict[str, Any] | None = None
) -> tuple[CAMNet, dict[str, Any]]:
    """:func:`load_ordinary_classifier` and the OC's architecture (``backbone``, ``num_classes``,
    ``backbone_options``: what :func:`build_oc` needs to rebuild it)."""
    path = Path(path)
    checkpoint = read_checkpoint(path, "ordinary classifier checkpoint", OC_HINT)
    if isinstance(checkpoint, dict) and "hyper_parameters" in checkpoint and "state_dict" in checkpoint:
        hp = checkpoint["hyper_parameters"]
        if not {"backbone", "num_classes"} <= set(hp or {}):
            raise CaefError(
                f"{path} is a Lightning checkpoint but not of a caef classifier (its hyper-parameters lack backbone "
                "and num_classes); point model.ordinary_classifier at runs/<name>/classifier/last.ckpt"
            )
        architecture = {
            "backbone": hp["backbone"],
            "num_classes": hp["num_classes"],
            "backbone_options": dict(hp.get("backbone_options") or {}),
        }
        state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    else:
        from caef.models.backbones.resnet38 import convert_reference_state_dict

        options = dict(backbone_options or {})
        architecture = {"backbone": backbone, "num_classes": num_classes, "backbone_options": options}
        state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise CaefError(
                f"ordinary classifier {path} holds a {type(state).__name__}, not a state dict of tensors; give a caef "
                "classifier .ckpt, PSA's res38_cls.pth or OC-CSE's net_cl.pth"
            )
        state = {k.removeprefix("module."): v for k, v in state.items()}
        if backbone == "resnet38" and "classifier.weight" not in state:
            state = convert_reference_state_dict(state)  # PSA / OC-CSE names (trunk + fc8)
    net = build_oc(architecture)
    if net.num_foreground != num_classes - 1:
        raise CaefError(
            f"ordinary classifier {path} predicts {net.num_foreground} foreground classes but the dataset has "
            f"{num_classes - 1}; use a classifier trained on this dataset"
        )
    check_state_dict(net, state, path, what="ordinary classifier")
    net.load_state_dict(state)
    return net, architecture


def build_oc(architecture: dict[str, Any]) -> CAMNet:
    """An (untrained) OC of the recorded ``architecture``."""
    return build_cam_net(
        architecture["backbone"], architecture["num_classes"], **(architecture.get("backbone_options") or {})
    )


class CGNetModule(CAMModule):
    """The CAM-generation network (arguments of :class:`CAMModule`, plus):

    Args:
        ordinary_classifier: checkpoint of the frozen OC (see :func:`load_ordinary_classifier`); the CLI
            defaults it to ``<run_dir>/classifier/last.ckpt``. A saved CGNet checkpoint says ``embedded``: its OC is
            rebuilt from ``ordinary_classifier_architecture`` and takes its weights from the checkpoint's own
            ``ordinary_classifier.*`` tensors, so the checkpoint loads after its run folder moved.
        ordinary_classifier_backbone: OC architecture for plain state dicts (a .ckpt records its own).
        ordinary_classifier_options: backbone options for plain state dicts.
        init_from_ordinary_classifier: start the CGNet from the OC's weights (same architecture needed) instead
            of ``pretrained``; the CPU demo uses it in place of ImageNet weights.
        masking_depth: d_m; 0 erases the image, d >= 1 the output of the OC's stage d.
        mask_normalization: ``batch`` (reference: one max per batch) or ``image``.
        erase_weight_init, erase_weight_slope: w(epoch) = init + slope * epoch.
        erasing: ``false`` trains the same network without the erasing term (the OC is not even run): the
            equal-budget control that separates the erasing's effect from that of the extra training.
        ordinary_classifier_architecture: ``{backbone, num_classes, backbone_options}`` of the OC, recorded when
            it is loaded from its file; read only with ``ordinary_classifier=embedded``.
    """

    def __init__(
        self,
        ordinary_classifier: str | None = None,
        num_classes: int = 21,
        backbone: str = "resnet38",
        pretrained: str | None = None,
        backbone_options: dict[str, Any] | None = None,
        ordinary_classifier_backbone: str = "resnet38",
        ordinary_classifier_options: dict[str, Any] | None = None,
        init_from_ordinary_classifier: bool = False,
        masking_depth: int = 0,
        mask_normalization: MaskNormalization = "batch",
        erase_weight_init: float = 0.3,
        erase_weight_slope: float = 0.05,
        erasing: bool = True,
        lr: float = 0.01,
        weight_decay: float = 5e-4,
        momentum: float = 5e-4,
        poly_power: float = 0.9,
        head_lr_mult: float = 1.0,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        msf_scales: Sequence[float] = DEFAULT_SCALES,
        msf_flip: bool = True,
        channels_last: bool = False,
        ordinary_classifier_architecture: dict[str, Any] | None = None,
    ):
        super().__init__(
            num_classes, backbone, pretrained, backbone_options, lr, weight_decay, momentum, poly_power,
            head_lr_mult, optimizer, msf_scales, msf_flip, channels_last,
        )  # fmt: skip
        if not ordinary_classifier:
            raise CaefError("model.ordinary_classifier is not set: give the classifier checkpoint (.ckpt or .pth)")
        self._oc_weights_pending = ordinary_classifier == EMBEDDED
        if self._oc_weights_pending:
            if not ordinary_classifier_architecture:
                raise CaefError(
                    "model.ordinary_classifier=embedded needs model.ordinary_classifier_architecture (a CGNet "
                    "checkpoint records both); give the classifier checkpoint (.ckpt or .pth) instead"
                )
            oc, architecture = build_oc(ordinary_classifier_architecture), dict(ordinary_classifier_architecture)
        else:
            oc, architecture = read_ordinary_classifier(
                ordinary_classifier, num_classes, ordinary_classifier_backbone, ordinary_classifier_options
            )
        self.hparams["ordinary_classifier_architecture"] = architecture
        self.ordinary_classifier_source = str(ordinary_classifier)
        oc.backbone.check_depth(masking_depth)
        if init_from_ordinary_classifier and not self._oc_weights_pending:  # embedded: the checkpoint has both nets
            check_state_dict(
                self.net, oc.state_dict(), Path(ordinary_classifier), "ordinary classifier (as CGNet init)"
            )
            self.net.load_state_dict(oc.state_dict())
        oc.requires_grad_(False)
        self.ordinary_classifier = oc.eval()
        if channels_last:
            self.ordinary_classifier.to(memory_format=torch.channels_last)
        self.masking_depth, self.mask_normalization = masking_depth, mask_normalization

    def train(self, mode: bool = True) -> CGNetModule:
        super().train(mode)
        self.ordinary_classifier.eval()  # frozen: dropout off, BN running statistics
        return self

    # -- a checkpoint that carries its OC ----------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The OC's weights are in the state dict already: the checkpoint says ``embedded`` instead of the OC's file
        (kept as ``ordinary_classifier_source``, for the record), so it loads wherever it is moved."""
        hparams = dict(checkpoint.get("hyper_parameters") or {})
        hparams["ordinary_classifier"] = EMBEDDED
        hparams["ordinary_classifier_architecture"] = self.hparams["ordinary_classifier_architecture"]
        checkpoint["hyper_parameters"] = hparams
        checkpoint["ordinary_classifier_source"] = self.ordinary_classifier_source

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        if any(key.startswith("ordinary_classifier.") for key in state_dict):
            self._oc_weights_pending = False
        return result

    def on_train_start(self) -> None:
        if self._oc_weights_pending and self.hparams.erasing:
            raise CaefError(
                "the CGNet's ordinary classifier is 'embedded' but no checkpoint weights were loaded into it; train "
                "with --ckpt_path=<cgnet checkpoint> or give model.ordinary_classifier=<classifier checkpoint>"
            )

    def erase_weight(self) -> float:
        if not self.hparams.erasing:
            return 0.0
        return self.hparams.erase_weight_init + self.hparams.erase_weight_slope * self.current_epoch

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        images, labels = self._input(batch["image"]), batch["label"]
        cams = self.net(images)
        cls_loss = F.binary_cross_entropy_with_logits(self.net.logits(cams).float(), labels)
        if not self.hparams.erasing:
            self.log("train/loss", cls_loss, prog_bar=True)
            return cls_loss

        targets = sample_target_classes(labels)
        mask = erasing_mask(cams, targets, images.shape[-2:], self.mask_normalization).to(images.dtype)
        erased_logits = self.net.logits(
            self.ordinary_classifier(images, erase_mask=mask, masking_depth=self.masking_depth)
        )
        remaining = labels.scatter(1, targets.unsqueeze(1), 0.0)
        erase_loss = F.binary_cross_entropy_with_logits(erased_logits.float(), remaining)

        weight = self.erase_weight()
        loss = cls_loss + weight * erase_loss
        self.log_dict(
            {
                "train/loss": loss,
                "train/cls_loss": cls_loss,
                "train/erase_loss": erase_loss,
                "train/erase_weight": weight,
            },
            prog_bar=True,
        )
        return loss
