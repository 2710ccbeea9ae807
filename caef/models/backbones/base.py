"""A CNN trunk as an ordered list of stages, so that erasing can act at any masking depth d_m.

Masking depth 0 multiplies the input image by ``1 - M``; depth ``d >= 1`` multiplies the output of the
d-th stage by ``1 - M`` resized (bilinear) to that stage's resolution. Every backbone in caef exposes its
stages through :meth:`Backbone.stage_modules`, so erasing, feature taps (AffinityNet) and freezing are
written once here.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def erase(features: Tensor, mask: Tensor) -> Tensor:
    """``features * (1 - mask)`` with ``mask`` (B, 1, h, w) resized bilinearly to the features' resolution."""
    if mask.shape[-2:] != features.shape[-2:]:
        mask = F.interpolate(mask, size=features.shape[-2:], mode="bilinear", align_corners=False)
    return features * (1.0 - mask)


class Backbone(nn.Module, abc.ABC):
    """Base class of caef backbones.

    Subclasses build their layers, then implement :meth:`stage_modules`. Attributes they set:
    ``stage_channels`` (output channels per stage), ``frozen_stages`` (stages 1..k get no gradient),
    ``freeze_bn`` (BatchNorm in eval mode with frozen affine parameters, as the reference does).
    """

    stage_channels: tuple[int, ...] = ()
    frozen_stages: int = 0
    freeze_bn: bool = True

    @abc.abstractmethod
    def stage_modules(self) -> Sequence[nn.Module]:
        """The stages in order; stage ``i`` (1-based) is masking depth ``i``."""

    @property
    def num_stages(self) -> int:
        return len(self.stage_channels)

    @property
    def out_channels(self) -> int:
        return self.stage_channels[-1]

    def forward(self, x: Tensor, erase_mask: Tensor | None = None, masking_depth: int = 0) -> Tensor:
        """Final feature map; with ``erase_mask`` the input (depth 0) or stage ``masking_depth`` is erased."""
        if erase_mask is not None:
            self.check_depth(masking_depth)
            if masking_depth == 0:
                x = erase(x, erase_mask)
        for depth, stage in enumerate(self.stage_modules(), start=1):
            x = stage(x)
            if erase_mask is not None and depth == masking_depth:
                x = erase(x, erase_mask)
        return x

    def forward_stages(self, x: Tensor, depths: Sequence[int]) -> dict[int, Tensor]:
        """Outputs of the requested stages (1-based), computing only as deep as needed."""
        wanted = set(depths)
        for depth in wanted:
            self.check_depth(depth, allow_zero=False)
        out: dict[int, Tensor] = {}
        last = max(wanted)
        for depth, stage in enumerate(self.stage_modules(), start=1):
            x = stage(x)
            if depth in wanted:
                out[depth] = x
            if depth == last:
                break
        return out

    def activated_stages(self, x: Tensor, depths: Sequence[int]) -> dict[int, Tensor]:
        """Feature taps of the requested stages as the *next* stage sees them (AffinityNet's inputs).

        Post-activation backbones (torchvision ResNets, VGG-16) end every stage with a ReLU, so this is the stage
        output. Pre-activation ResNet-38 overrides it: its stage outputs are a raw residual stream, and PSA taps
        the BN-and-ReLU'd input of the next block instead.
        """
        return self.forward_stages(x, depths)

    def stage_strides(self, probe_size: int = 64) -> tuple[int, ...]:
        """Output stride of every stage, measured by one forward pass of a ``probe_size`` square (no_grad, eval
        mode, so BatchNorm statistics are untouched; the training mode is restored afterwards). Read by AffinityNet
        (its stride-8 taps) and DeepLab-v3+ (its low-level stage), so a plug-in backbone needs no table for them."""
        was_training = self.training
        self.eval()
        try:
            parameter = next(self.parameters())
            x = torch.zeros(1, 3, probe_size, probe_size, device=parameter.device, dtype=parameter.dtype)
            with torch.no_grad():
                outputs = self.forward_stages(x, range(1, self.num_stages + 1))
        finally:
            self.train(was_training)
        return tuple(round(probe_size / outputs[d].shape[-1]) for d in range(1, self.num_stages + 1))

    def check_depth(self, depth: int, allow_zero: bool = True) -> None:
        """A ValueError unless ``depth`` names a stage (1..num_stages) or, with ``allow_zero``, the image (0)."""
        low = 0 if allow_zero else 1
        if not low <= depth <= self.num_stages:
            raise ValueError(
                f"masking_depth={depth} is out of range for {type(self).__name__}: "
                f"use {low}..{self.num_stages} (0 = image level, i = output of stage i)"
            )

    # -- freezing, as in the reference: first stages and every BatchNorm fixed --------------------
    def apply_freezing(self) -> None:
        """Set ``requires_grad=False`` on frozen stages and (with ``freeze_bn``) BatchNorm affine parameters."""
        for stage in list(self.stage_modules())[: self.frozen_stages]:
            stage.requires_grad_(False)
        if self.freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.requires_grad_(False)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode and self.freeze_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def trainable_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(weights, biases) that require grad; the optimiser gives biases 2x lr and no weight decay."""
        weights, biases = [], []
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            (biases if name.endswith("bias") else weights).append(param)
        return weights, biases
