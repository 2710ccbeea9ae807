"""An out-of-tree backbone: a small plain CNN that caef builds by import path, with no edit to caef.

    PYTHONPATH=examples caef pipeline experiments/demo.yaml --all.model.backbone=my_backbone:plain_cnn

or, installed with an entry point (pyproject.toml), by name (``--model.backbone=plain_cnn``)::

    [project.entry-points."caef.backbones"]
    plain_cnn = "my_backbone:plain_cnn"

The backbone declares its own stage table: ``stage_modules()`` (stage ``d`` is masking depth ``d``) and
``stage_channels``; erasing at any depth, AffinityNet's feature taps (the last three stride-8 stages) and DeepLab
read it from there.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from caef.models.backbones import Backbone


def _block(c_in: int, c_out: int, stride: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class PlainCNN(Backbone):
    """Six 3x3 conv stages at strides 2, 4, 8, 8, 8, 8 (the last two dilated), widths scaled by ``width``."""

    def __init__(self, width: float = 1.0, frozen_stages: int = 0, freeze_bn: bool = False) -> None:
        super().__init__()
        widths = tuple(max(4, round(c * width)) for c in (32, 64, 128, 128, 256, 256))
        strides, dilations = (2, 2, 2, 1, 1, 1), (1, 1, 1, 1, 2, 2)
        self.stages = nn.ModuleList(
            _block(c_in, c_out, s, d) for c_in, c_out, s, d in zip((3, *widths[:-1]), widths, strides, dilations)
        )
        self.stage_channels, self.frozen_stages, self.freeze_bn = widths, frozen_stages, freeze_bn
        self.apply_freezing()

    def stage_modules(self) -> Sequence[nn.Module]:
        return self.stages


def plain_cnn(
    width: float = 1.0,
    frozen_stages: int = 0,
    freeze_bn: bool = False,
    dropout: Sequence[float] | None = None,
    pretrained: str | None = None,
) -> PlainCNN:
    """The factory caef calls with ``--model.backbone_options``; ``dropout`` is accepted (and unused) so the stage
    configs written for ResNet-38 apply unchanged, ``pretrained`` must stay unset (no weights exist)."""
    if pretrained is not None:
        raise ValueError("plain_cnn has no pretrained weights; leave model.pretrained unset")
    return PlainCNN(width, frozen_stages, freeze_bn)
