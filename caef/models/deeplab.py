"""DeepLab segmentation networks on any registered caef backbone (all are output-stride-8 trunks).

* ``v2`` (Chen et al., TPAMI 2017): ASPP-L on the last stage, four parallel 3x3 convolutions with dilation
  6 / 12 / 18 / 24, each giving class logits, summed (the ResNet-101 DeepLab-v2 head, ``fc1_voc12_c0..c3``).
* ``v3plus`` (Chen et al., ECCV 2018): torchvision's ASPP (1x1, three 3x3 at rates 12 / 24 / 36, the rates for
  output stride 8, image pooling) then the decoder: 1x1 reduction of a low-level stage to 48 channels, concatenated
  with the upsampled ASPP output, two 3x3 convolutions and a 1x1 classifier.

The low-level stage of v3+ is found from the backbone's own stage shapes (a probe forward at construction): the
deepest stage at stride 4 (ResNet: maxpool + layer1; ResNet-38: b3; VGG-16: block 2), else the deepest at
stride 2, else the first at stride 8; ``low_level_stage`` overrides it. Logits are upsampled bilinearly to the
input size. With ``freeze_bn`` (the backbones' default) the trunk's BatchNorm stays frozen, as in DeepLab-v2; the
v3+ head's BatchNorm trains, so v3+ needs at least 2 images per device (image pooling gives 1x1 maps).

:func:`segmentation_loss` (cross-entropy, 255 ignored) and :func:`multiscale_probs` (softmax averaged over
scales and flips, at the original size) are the training loss and the evaluation of :mod:`caef.stages.deeplab`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from caef.data.source import IGNORE_INDEX
from caef.errors import CaefError
from caef.models.backbones import Backbone, build_backbone

Variant = Literal["v2", "v3plus"]
V2_RATES = (6, 12, 18, 24)
V3PLUS_RATES = (12, 24, 36)  # DeepLab-v3's (6, 12, 18) doubled for output stride 8


class ASPPv2(nn.Module):
    """DeepLab-v2 ASPP-L: parallel dilated 3x3 convolutions to class logits, summed; init N(0, 0.01) as Caffe."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = V2_RATES):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate) for rate in rates
        )
        for conv in self.branches:
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return sum(branch(x) for branch in self.branches)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DecoderV3Plus(nn.Module):
    """ASPP on the high-level features, fused with reduced low-level features at their resolution."""

    def __init__(
        self,
        high_channels: int,
        low_channels: int,
        num_classes: int,
        rates: Sequence[int] = V3PLUS_RATES,
        aspp_channels: int = 256,
        reduced_channels: int = 48,
    ):
        super().__init__()
        self.aspp = ASPP(high_channels, list(rates), aspp_channels)
        self.reduce = _conv_bn_relu(low_channels, reduced_channels, 1)
        self.fuse = nn.Sequential(
            _conv_bn_relu(aspp_channels + reduced_channels, aspp_channels, 3),
            _conv_bn_relu(aspp_channels, aspp_channels, 3),
        )
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        high = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([high, self.reduce(low)], dim=1)))


@torch.no_grad()
def pick_low_level_stage(strides: Sequence[int]) -> int:
    """1-based stage for the v3+ decoder: deepest at stride 4, else deepest at stride 2, else first at stride 8."""
    for wanted in (4, 2):
        candidates = [depth for depth, stride in enumerate(strides, start=1) if stride == wanted]
        if candidates:
            return candidates[-1]
    for depth, stride in enumerate(strides[:-1], start=1):
        if stride == 8:
            return depth
    raise CaefError(f"no stage at stride 2, 4 or 8 before the last one (stage strides: {list(strides)})")


class DeepLab(nn.Module):
    """Backbone + DeepLab head; ``forward(x)`` gives logits (B, C, H, W) at the input size."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        variant: Variant = "v2",
        low_level_stage: int | None = None,
    ):
        super().__init__()
        if variant not in ("v2", "v3plus"):
            raise CaefError(f"unknown DeepLab variant {variant!r}: use v2 or v3plus")
        self.backbone, self.variant, self.num_classes = backbone, variant, num_classes
        self.low_level_stage: int | None = None
        if variant == "v2":
            self.head: nn.Module = ASPPv2(backbone.out_channels, num_classes)
            return
        if low_level_stage is None:
            low_level_stage = pick_low_level_stage(backbone.stage_strides())
        if not 1 <= low_level_stage < backbone.num_stages:
            raise CaefError(f"low_level_stage={low_level_stage} must be in 1..{backbone.num_stages - 1}")
        self.low_level_stage = low_level_stage
        low_channels = backbone.stage_channels[low_level_stage - 1]
        self.head = DecoderV3Plus(backbone.out_channels, low_channels, num_classes)

    def load_cam_checkpoint(self, path: str | Path) -> None:
        """Copy the trunk of a caef classifier / CGNet ``.ckpt`` (its ``net.backbone.*`` tensors) into the backbone,
        strictly (every key, every shape): where no ImageNet weights are used, the trained CAM network's trunk stands
        in for them, as it does for the CGNet and AffinityNet. The head keeps its fresh initialisation."""
        from caef.checkpoints import check_state_dict
        from caef.models.affinity_net import read_cam_trunk

        path = Path(path)
        _, state = read_cam_trunk(path)
        check_state_dict(self.backbone, state, path, what="CAM checkpoint (DeepLab trunk init)")
        self.backbone.load_state_dict(state)

    def forward(self, x: Tensor) -> Tensor:
        if self.variant == "v2":
            logits = self.head(self.backbone(x))
        else:
            last = self.backbone.num_stages
            stages = self.backbone.forward_stages(x, (self.low_level_stage, last))
            high = stages[last]
            dropout = getattr(self.backbone, "dropout", None)  # torchvision trunks' optional Dropout2d
            if dropout is not None:
                high = dropout(high)
            logits = self.head(high, stages[self.low_level_stage])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def segmentation_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy over labelled pixels (255 ignored); 0 (with gradient) when no pixel is labelled."""
    if not bool((target != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target.long(), ignore_index=IGNORE_INDEX)


@torch.no_grad()
def multiscale_probs(
    logit_fn: Callable[[Tensor], Tensor], images: Tensor, scales: Sequence[float] = (1.0,), flip: bool = False
) -> Tensor:
    """Class probabilities (B, C, H, W): softmax averaged over the scales (and flips) of equal-size images."""
    batch, _, height, width = images.shape
    total, count = torch.zeros((), device=images.device), 0
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        x = images if size == (height, width) else F.interpolate(images, size, mode="bilinear", align_corners=False)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        logits = logit_fn(x).float()
        if tuple(logits.shape[-2:]) != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        probs = logits.softmax(dim=1)
        if flip:
            probs = probs[:batch] + probs[batch:].flip(-1)
        total, count = total + probs, count + (2 if flip else 1)
    return total / count


def build_deeplab(
    backbone: str,
    num_classes: int,
    variant: Variant = "v2",
    pretrained: str | None = None,
    low_level_stage: int | None = None,
    **backbone_options: Any,
) -> DeepLab:
    """A DeepLab for ``num_classes`` classes (background included) on the registered backbone ``backbone``."""
    trunk = build_backbone(backbone, pretrained=pretrained, **backbone_options)
    return DeepLab(trunk, num_classes, variant, low_level_stage)
