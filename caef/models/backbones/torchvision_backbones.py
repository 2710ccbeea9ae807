"""torchvision ResNets and VGG-16 as CAM backbones at output stride 8.

CAMs need dense features, so the last strided stages are replaced by dilated convolutions (the "atrous"
trick: every output of the stride-32 network is still computed, plus the positions in between). The
torchvision modules are kept as attributes under their own names, so torchvision state dicts (ImageNet
weights or your own) load directly; the stage lists only *refer* to those modules and are not registered,
so no parameter appears twice in ``state_dict``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.models import vgg as tv_vgg

from caef.errors import CaefError
from caef.models.backbones.base import Backbone
from caef.models.backbones.registry import register_backbone

# Heads that torchvision checkpoints carry but a CAM trunk does not use.
_HEAD_PREFIXES = ("fc.", "classifier.")


class TorchvisionBackbone(Backbone):
    """Common part: stage bookkeeping, dropout after the last stage, weight loading and freezing."""

    def _setup(
        self,
        stages: Sequence[nn.Module],
        stage_channels: tuple[int, ...],
        *,
        name: str,
        weights_enum: Any,
        pretrained: str | None,
        frozen_stages: int,
        freeze_bn: bool,
        dropout: float,
    ) -> None:
        """Called by subclasses once their torchvision modules are attributes."""
        if not 0 <= frozen_stages <= len(stages):
            raise CaefError(f"{name}: frozen_stages={frozen_stages} is out of range, use 0..{len(stages)}")
        if not 0.0 <= dropout < 1.0:
            raise CaefError(f"{name}: dropout={dropout} must be in [0, 1)")
        # A plain tuple is not registered by nn.Module, so the stage wrappers add no state_dict keys.
        self._stages = tuple(stages)
        self.stage_channels = stage_channels
        self.frozen_stages = frozen_stages
        self.freeze_bn = freeze_bn
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        if pretrained is not None:
            self.load_torchvision_weights(resolve_pretrained(pretrained, weights_enum, name))
        self.apply_freezing()
        self.train(self.training)

    def stage_modules(self) -> Sequence[nn.Module]:
        return self._stages

    def forward(self, x: Tensor, erase_mask: Tensor | None = None, masking_depth: int = 0) -> Tensor:
        """Final features (see :meth:`Backbone.forward`), then Dropout2d, which is a no-op in eval mode."""
        return self.dropout(super().forward(x, erase_mask, masking_depth))

    def load_torchvision_weights(self, path: str | os.PathLike) -> None:
        """Load a torchvision-format state dict; classifier heads are ignored, anything else must match."""
        path = Path(path)
        if not path.is_file():
            raise CaefError(
                f"pretrained weights file {path} does not exist; pretrained must be None, 'imagenet' "
                "(or a torchvision weights name such as 'IMAGENET1K_V2') or the path of a torchvision state dict"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt file, pickle with code, not a torch file ...
            raise CaefError(f"cannot read pretrained weights {path}: {exc}") from exc
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise CaefError(f"pretrained weights {path} is not a state dict of tensors (got {type(state).__name__})")
        state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
        own = self.state_dict()
        for key, value in own.items():
            if key not in state:
                # Old torchvision checkpoints predate BatchNorm's counter; BatchNorm fills it in itself.
                if key.endswith("num_batches_tracked"):
                    continue
                raise CaefError(f"pretrained weights {path} lack key {key!r} expected by {type(self).__name__}")
            if state[key].shape != value.shape:
                raise CaefError(
                    f"pretrained weights {path}: key {key!r} has shape {tuple(state[key].shape)}, "
                    f"expected {tuple(value.shape)} (is it a checkpoint of another architecture?)"
                )
        for key in state:
            if key not in own:
                raise CaefError(f"pretrained weights {path} have unexpected key {key!r} for {type(self).__name__}")
        self.load_state_dict(state, strict=True)


def resolve_pretrained(pretrained: str | os.PathLike, weights_enum: Any, name: str) -> Path:
    """A local file for ``pretrained``: a path as given, or the torch hub cache file of torchvision weights.

    ``"imagenet"`` means ``IMAGENET1K_V1`` (the classic weights used throughout the WSSS literature); any
    member name of the weights enum (``"IMAGENET1K_V2"``, ``"DEFAULT"``) is accepted too. Nothing is
    downloaded: training machines are often offline, and a silent download hides which weights were used.
    """
    text = os.fspath(pretrained)
    member = "IMAGENET1K_V1" if text == "imagenet" else text
    if member not in weights_enum.__members__:
        return Path(text)
    url = weights_enum[member].url
    filename = os.path.basename(urlparse(url).path)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cached.is_file():
        raise CaefError(
            f"{name}: ImageNet weights {weights_enum.__name__}.{member} are not cached and caef does not download "
            f"them. Download {url} and place it as {cached} ($TORCH_HOME/hub/checkpoints/{filename}), "
            f"or pass pretrained=<path to a torchvision state dict>"
        )
    return cached


# -- ResNets ------------------------------------------------------------------------------------------------


def _dilate_basic_layer(layer: nn.Sequential, previous: int, dilation: int) -> None:
    """Turn a stride-2 BasicBlock layer into a stride-1 one with dilated 3x3 convolutions.

    Same scheme as torchvision's ``replace_stride_with_dilation`` for Bottlenecks: the formerly strided
    conv keeps the previous dilation (it still sees the un-strided input), every conv after it gets the new
    one. The output sampled every ``dilation // previous`` pixels then equals the strided network's output.
    """
    for index, block in enumerate(layer):
        first = block.conv1
        first.stride = (1, 1)
        first_dilation = previous if index == 0 else dilation
        first.dilation = first.padding = (first_dilation, first_dilation)
        block.conv2.dilation = block.conv2.padding = (dilation, dilation)
        block.stride = 1
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)


class TorchvisionResNet(TorchvisionBackbone):
    """torchvision ResNet at output stride 8; stages: stem (H/2), maxpool+layer1 (H/4), layer2..4 (H/8)."""

    def __init__(
        self,
        depth: int = 50,
        pretrained: str | None = None,
        frozen_stages: int = 1,
        freeze_bn: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        name = f"resnet{depth}"
        if name not in _RESNETS:
            raise CaefError(f"unsupported ResNet depth {depth}; choose one of {sorted(_RESNETS)}")
        builder, weights_enum = _RESNETS[name]
        basic = depth < 50
        # torchvision refuses dilation for BasicBlock, so resnet18/34 are dilated by hand below.
        kwargs = {} if basic else {"replace_stride_with_dilation": [False, True, True]}
        net = builder(weights=None, **kwargs)
        if basic:
            _dilate_basic_layer(net.layer3, previous=1, dilation=2)
            _dilate_basic_layer(net.layer4, previous=2, dilation=4)
        self.depth = depth
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        stages = (
            nn.Sequential(self.conv1, self.bn1, self.relu),
            nn.Sequential(self.maxpool, self.layer1),
            self.layer2,
            self.layer3,
            self.layer4,
        )
        widths = (64, 128, 256, 512) if basic else (256, 512, 1024, 2048)
        self._setup(
            stages,
            (64, *widths),
            name=name,
            weights_enum=weights_enum,
            pretrained=pretrained,
            frozen_stages=frozen_stages,
            freeze_bn=freeze_bn,
            dropout=dropout,
        )


_RESNETS = {
    "resnet18": (tv_resnet.resnet18, tv_resnet.ResNet18_Weights),
    "resnet34": (tv_resnet.resnet34, tv_resnet.ResNet34_Weights),
    "resnet50": (tv_resnet.resnet50, tv_resnet.ResNet50_Weights),
    "resnet101": (tv_resnet.resnet101, tv_resnet.ResNet101_Weights),
    "resnet152": (tv_resnet.resnet152, tv_resnet.ResNet152_Weights),
}


def _resnet_factory(depth: int):
    def factory(
        pretrained: str | None = None,
        frozen_stages: int = 1,
        freeze_bn: bool = True,
        dropout: float = 0.0,
    ) -> TorchvisionResNet:
        return TorchvisionResNet(depth, pretrained, frozen_stages, freeze_bn, dropout)

    factory.__name__ = factory.__qualname__ = f"resnet{depth}"
    factory.__doc__ = f"torchvision ResNet-{depth} at output stride 8 (5 stages, see TorchvisionResNet)."
    return register_backbone(f"resnet{depth}")(factory)


resnet18 = _resnet_factory(18)
resnet34 = _resnet_factory(34)
resnet50 = _resnet_factory(50)
resnet101 = _resnet_factory(101)
resnet152 = _resnet_factory(152)


# -- VGG-16 -------------------------------------------------------------------------------------------------


class TorchvisionVGG16(TorchvisionBackbone):
    """torchvision VGG-16 ``features`` at output stride 8: the 5 conv blocks are the stages.

    Blocks 1-3 keep their max-pool (H/2, H/4, H/8); pools 4 and 5 become ``nn.Identity`` (so the indices,
    hence the state-dict keys ``features.<i>.*``, stay torchvision's) and block 5's convs are dilated by 2.
    Only ``features`` is built: the fully connected classifier (100M+ parameters) is of no use for CAMs.
    """

    def __init__(
        self,
        batch_norm: bool = False,
        pretrained: str | None = None,
        frozen_stages: int = 0,
        freeze_bn: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        name = "vgg16_bn" if batch_norm else "vgg16"
        self.features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=batch_norm)
        _init_like_torchvision_vgg(self.features)
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        stages, start = [], 0
        for block, pool in enumerate(pools, start=1):
            if block >= 4:
                self.features[pool] = nn.Identity()
            if block == 5:
                for module in self.features[start:pool]:
                    if isinstance(module, nn.Conv2d):
                        module.dilation = module.padding = (2, 2)
            stages.append(self.features[start : pool + 1])  # a new Sequential sharing the modules
            start = pool + 1
        weights_enum = tv_vgg.VGG16_BN_Weights if batch_norm else tv_vgg.VGG16_Weights
        self._setup(
            stages,
            (64, 128, 256, 512, 512),
            name=name,
            weights_enum=weights_enum,
            pretrained=pretrained,
            frozen_stages=frozen_stages,
            freeze_bn=freeze_bn,
            dropout=dropout,
        )


def _init_like_torchvision_vgg(features: nn.Module) -> None:
    """The initialisation torchvision's ``VGG.__init__`` applies, so random-init runs match torchvision."""
    for module in features.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.constant_(module.bias, 0)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)


@register_backbone("vgg16")
def vgg16(
    pretrained: str | None = None,
    frozen_stages: int = 0,
    freeze_bn: bool = True,
    dropout: float = 0.0,
) -> TorchvisionVGG16:
    """torchvision VGG-16 (no BatchNorm) at output stride 8."""
    return TorchvisionVGG16(False, pretrained, frozen_stages, freeze_bn, dropout)


@register_backbone("vgg16_bn")
def vgg16_bn(
    pretrained: str | None = None,
    frozen_stages: int = 0,
    freeze_bn: bool = True,
    dropout: float = 0.0,
) -> TorchvisionVGG16:
    """torchvision VGG-16 with BatchNorm at output stride 8."""
    return TorchvisionVGG16(True, pretrained, frozen_stages, freeze_bn, dropout)
