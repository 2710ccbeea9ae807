"""Stage 2: the CGNet, trained with class-specific adversarial erasing against a frozen ordinary classifier.

Per image one present class is drawn uniformly; the CGNet's CAM for it (upsampled, ReLU, normalised) is the
mask M. The frozen OC sees the image erased by M -- at the input (masking depth 0: ``I * (1 - M)``) or at
the output of its stage ``d`` -- and must no longer find that class while still finding the others:

    loss = BCE(CGNet logits, y) + w(epoch) * BCE(OC(erased), y without the target),  w = 0.3 + 0.05 * epoch

M is not detached: the second term reaches the CGNet through the mask, which is the adversarial signal.
The OC stays in eval mode and has no parameter gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

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


def load_ordinary_classifier(
    path: str | Path, num_classes: int, backbone: str = "resnet38", backbone_options: dict[str, Any] | None = None
) -> CAMNet:
    """The OC from a ``caef classifier`` checkpoint (.ckpt; architecture from its hyper-parameters) or from a
    PSA ``res38_cls.pth`` / OC-CSE ``net_cl.pth`` state dict (architecture from ``backbone``)."""
    path = Path(path)
    if not path.is_file():
        raise CaefError(
            f"ordinary classifier checkpoint not found: {path}; train one with `caef classifier fit` "
            "(runs/<name>/classifier/last.ckpt) or point model.ordinary_classifier at PSA's res38_cls.pth"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, not a torch file, pickle errors ...
        detail = (str(exc).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")  # torch's first sentence
        raise CaefError(
            f"cannot read ordinary classifier checkpoint {path} ({type(exc).__name__}: {detail}): the file is "
            "truncated or not a torch checkpoint; copy it again or retrain it with `caef classifier fit`"
        ) from exc
    if isinstance(checkpoint, dict) and "hyper_parameters" in checkpoint and "state_dict" in checkpoint:
        hp = checkpoint["hyper_parameters"]
        if not {"backbone", "num_classes"} <= set(hp or {}):
            raise CaefError(
                f"{path} is a Lightning checkpoint but not of a caef classifier (its hyper-parameters lack backbone "
                "and num_classes); point model.ordinary_classifier at runs/<name>/classifier/last.ckpt"
            )
        net = build_cam_net(hp["backbone"], hp["num_classes"], **(hp.get("backbone_options") or {}))
        state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    else:
        from caef.models.backbones.resnet38 import convert_reference_state_dict

        net = build_cam_net(backbone, num_classes, **(backbone_options or {}))
        state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else checkpoint
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise CaefError(
                f"ordinary classifier {path} holds a {type(state).__name__}, not a state dict of tensors; give a caef "
                "classifier .ckpt, PSA's res38_cls.pth or OC-CSE's net_cl.pth"
            )
        state = {k.removeprefix("module."): v for k, v in state.items()}
        if backbone == "resnet38" and "classifier.weight" not in state:
            state = convert_reference_state_dict(state)  # PSA / OC-CSE names (trunk + fc8)
    if net.num_foreground != num_classes - 1:
        raise CaefError(
            f"ordinary classifier {path} predicts {net.num_foreground} foreground classes but the dataset has "
            f"{num_classes - 1}; use a classifier trained on this dataset"
        )
    check_state_dict(net, state, path, what="ordinary classifier")
    net.load_state_dict(state)
    return net


def check_state_dict(net: torch.nn.Module, state: dict[str, Tensor], path: Path, what: str) -> None:
    """Raise a short CaefError (counts and first keys, not hundreds of names) if ``state`` does not fit ``net``."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = [
        f"{len(items)} {label} (e.g. {', '.join(items[:3])})"
        for label, items in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if items
    ]
    if problems:
        hint = "Check the backbone name and options (e.g. width) it was trained with."
        if "CGNet init" in what:
            hint = (
                "init_from_ordinary_classifier needs the CGNet's architecture (model.backbone, "
                "model.backbone_options) to equal the classifier's: make them equal, or set "
                "model.init_from_ordinary_classifier=false."
            )
        elif what == "ordinary classifier":
            hint = (
                "For a plain state dict (.pth), set model.ordinary_classifier_backbone and "
                "model.ordinary_classifier_options (e.g. width) to the architecture it was trained with."
            )
        head = [k for k in ("classifier.weight", "net.classifier.weight") if k in state and k in expected]
        if head and tuple(state[head[0]].shape[1:]) == tuple(expected[head[0]].shape[1:]):
            found, wanted = len(state[head[0]]), len(expected[head[0]])
            if found != wanted:
                hint = (
                    f"It predicts {found} foreground classes but {wanted} are configured: use one trained on this "
                    "dataset (num_classes comes from the data)."
                )
        raise CaefError(f"{what} {path} does not match the configured architecture: {'; '.join(problems)}. {hint}")


class CGNetModule(CAMModule):
    """The CAM-generation network (arguments of :class:`CAMModule`, plus):

    Args:
        ordinary_classifier: checkpoint of the frozen OC (see :func:`load_ordinary_classifier`); the CLI
            defaults it to ``<run_dir>/classifier/last.ckpt``.
        ordinary_classifier_backbone: OC architecture for plain state dicts (a .ckpt records its own).
        ordinary_classifier_options: backbone options for plain state dicts.
        init_from_ordinary_classifier: start the CGNet from the OC's weights (same architecture needed) instead
            of ``pretrained``; the CPU demo uses it in place of ImageNet weights.
        masking_depth: d_m; 0 erases the image, d >= 1 the output of the OC's stage d.
        mask_normalization: ``batch`` (reference: one max per batch) or ``image``.
        erase_weight_init, erase_weight_slope: w(epoch) = init + slope * epoch.
        erasing: ``false`` trains the same network without the erasing term (the OC is not even run): the
            equal-budget control that separates the erasing's effect from that of the extra training.
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
    ):
        super().__init__(
            num_classes, backbone, pretrained, backbone_options, lr, weight_decay, momentum, poly_power,
            head_lr_mult, optimizer, msf_scales, msf_flip, channels_last,
        )  # fmt: skip
        if not ordinary_classifier:
            raise CaefError("model.ordinary_classifier is not set: give the classifier checkpoint (.ckpt or .pth)")
        oc = load_ordinary_classifier(
            ordinary_classifier, num_classes, ordinary_classifier_backbone, ordinary_classifier_options
        )
        oc.backbone._check_depth(masking_depth)
        if init_from_ordinary_classifier:
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
