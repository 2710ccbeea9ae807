"""Backbones: ResNet-38 (reference), torchvision ResNets and VGG-16 at output stride 8."""

from caef.models.backbones.base import Backbone, erase
from caef.models.backbones.registry import available_backbones, build_backbone, register_backbone

__all__ = ["Backbone", "available_backbones", "build_backbone", "erase", "register_backbone"]
