"""The CAM network shared by the ordinary classifier and the CGNet: backbone + 1x1 classifier without bias.

Its output *is* the class activation map (raw, at output stride 8); the image-level logits are its global
average (equal to the 1x1 classifier on pooled features, since both are linear).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from caef.models.backbones import Backbone, build_backbone


class CAMNet(nn.Module):
    """``head_dropout``: channel dropout on the features before the classifier while training (PSA's res38_cls
    ``dropout7``, 0.5); inactive in eval mode, so CAMs and the frozen OC are unaffected."""

    def __init__(self, backbone: Backbone, num_foreground: int, head_dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.head_dropout = nn.Dropout2d(head_dropout) if head_dropout else nn.Identity()
        self.classifier = nn.Conv2d(backbone.out_channels, num_foreground, kernel_size=1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)

    @property
    def num_foreground(self) -> int:
        return self.classifier.out_channels

    def forward(self, x: Tensor, erase_mask: Tensor | None = None, masking_depth: int = 0) -> Tensor:
        """Raw CAMs (B, K, H/8, W/8); with ``erase_mask`` the input or stage ``masking_depth`` is erased."""
        features = self.backbone(x, erase_mask=erase_mask, masking_depth=masking_depth)
        return self.classifier(self.head_dropout(features))

    @staticmethod
    def logits(cams: Tensor) -> Tensor:
        return cams.mean(dim=(2, 3))


def build_cam_net(
    backbone: str, num_classes: int, pretrained: str | None = None, head_dropout: float = 0.0, **backbone_options: Any
) -> CAMNet:
    """A CAM network for ``num_classes`` classes *including* background (the head has ``num_classes - 1``)."""
    return CAMNet(build_backbone(backbone, pretrained=pretrained, **backbone_options), num_classes - 1, head_dropout)
