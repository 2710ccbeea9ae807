"""ResNet-38 (Wu et al., "Wider or Deeper", ademxapp), the trunk of PSA and OC-CSE, as a caef :class:`Backbone`.

Layers carry PSA's names (``conv1a``, ``b4_5.conv_branch2b1``, ``bn7``...) and nothing else is registered, so
PSA's ``res38_cls.pth`` and OC-CSE's ``net_er.pth``/``net_cl.pth`` load by name; ademxapp's ImageNet
``.params`` file is read without MXNet (see :mod:`caef.models.backbones.mxnet_params`).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caef.errors import CaefError
from caef.models.backbones.base import Backbone
from caef.models.backbones.mxnet_params import convert_mxnet_to_resnet38, load_mxnet_params
from caef.models.backbones.registry import register_backbone

FULL_WIDTH_CHANNELS = (64, 128, 256, 512, 1024, 2048, 4096)
# Residual blocks per stage 2..7, in PSA's naming: stage s has b{s}, b{s}_1, b{s}_2, ...
BLOCKS_PER_STAGE = {2: 3, 3: 3, 4: 6, 5: 3, 6: 1, 7: 1}
TRUNK_BLOCK_NAMES = tuple(
    f"b{stage}" if index == 0 else f"b{stage}_{index}"
    for stage, count in BLOCKS_PER_STAGE.items()
    for index in range(count)
)
IMAGENET_PARAMS = "data/pretrained/ilsvrc-cls_rna-a1_cls1000_ep-0001.params"
IMAGENET_WEIGHTS_HELP = (
    "download the ImageNet weights ilsvrc-cls_rna-a1_cls1000_ep-0001.params from "
    "https://github.com/itijyou/ademxapp, or PSA's res38_cls.pth from https://github.com/jiwoon-ahn/psa"
)


class PreActBasicBlock(nn.Module):
    """PSA's ``ResBlock``: BN-ReLU -> 3x3 conv -> BN-ReLU -> 3x3 conv, plus the input.

    When the shape changes, the shortcut is a 1x1 conv of the BN-ReLU'd input (pre-activation ResNet).
    ``first_dilation`` lets b5 keep dilation 1 in its first conv while the rest of the stage uses 2.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int = 1,
        first_dilation: int | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        first_dilation = dilation if first_dilation is None else first_dilation
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(
            in_channels, mid_channels, 3, stride, padding=first_dilation, dilation=first_dilation, bias=False
        )
        self.bn_branch2b1 = nn.BatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(mid_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False)
        self.conv_branch1 = None
        if in_channels != out_channels or stride != 1:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn_branch2a(x))
        shortcut = x if self.conv_branch1 is None else self.conv_branch1(activated)
        branch = self.conv_branch2a(activated)
        branch = self.conv_branch2b1(F.relu(self.bn_branch2b1(branch)))
        return shortcut + branch


class PreActBottleneck(nn.Module):
    """PSA's ``ResBlock_bot``: BN-ReLU -> 1x1 -> BN-ReLU-dropout -> 3x3 (dilated) -> BN-ReLU-dropout -> 1x1.

    The shortcut is always a 1x1 conv of the BN-ReLU'd input (b6 and b7 both widen).
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: tuple[int, int],
        out_channels: int,
        dilation: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        reduce_channels, wide_channels = mid_channels
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, reduce_channels, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(reduce_channels)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(
            reduce_channels, wide_channels, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn_branch2b2 = nn.BatchNorm2d(wide_channels)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(wide_channels, out_channels, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        activated = F.relu(self.bn_branch2a(x))
        branch = self.conv_branch2a(activated)
        branch = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(branch))))
        branch = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(branch))))
        return self.conv_branch1(activated) + branch


def scaled_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 4, so small widths keep every layer."""
    return max(4, round(channels * width))


class ResNet38(Backbone):
    """ResNet-38 at output stride 8 with 7 stages (conv1a, b2, b3, b4, b5, b6, b7+bn7+ReLU).

    ``width`` scales every channel count (same topology; small widths are for CPU demos and tests);
    ``dropout`` gives the Dropout2d rates of b6 and b7 (OC-CSE's CGNet ``Net_er``: 0.3, 0.5; its fixed
    classifier ``Net_cl``: 0.2, 0.2); ``pretrained`` is an ademxapp ``.params`` or a PSA/OC-CSE ``.pth``.
    """

    def __init__(
        self,
        width: float = 1.0,
        dropout: tuple[float, float] = (0.3, 0.5),
        frozen_stages: int = 2,
        freeze_bn: bool = True,
        pretrained: str | PathLike | None = None,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        if not 0 <= frozen_stages <= len(FULL_WIDTH_CHANNELS):
            raise ValueError(f"frozen_stages must be in 0..{len(FULL_WIDTH_CHANNELS)}, got {frozen_stages}")
        c64, c128, c256, c512, c1024, c2048, c4096 = (scaled_channels(ch, width) for ch in FULL_WIDTH_CHANNELS)
        self.width = width
        self.stage_channels = (c64, c128, c256, c512, c1024, c2048, c4096)
        self.frozen_stages = frozen_stages
        self.freeze_bn = freeze_bn

        self.conv1a = nn.Conv2d(3, c64, 3, padding=1, bias=False)
        self._add_stage(2, c64, c128, c128, stride=2)
        self._add_stage(3, c128, c256, c256, stride=2)
        self._add_stage(4, c256, c512, c512, stride=2)
        self._add_stage(5, c512, c512, c1024, first_dilation=1, dilation=2)
        self.b6 = PreActBottleneck(c1024, (c512, c1024), c2048, dilation=4, dropout=dropout[0])
        self.b7 = PreActBottleneck(c2048, (c1024, c2048), c4096, dilation=4, dropout=dropout[1])
        self.bn7 = nn.BatchNorm2d(c4096)

        # A plain tuple is not registered by nn.Module: the blocks keep PSA's names as their only names.
        self._stages = (
            nn.Sequential(self.conv1a),
            *(nn.Sequential(*self._blocks_of(stage)) for stage in (2, 3, 4, 5, 6)),
            nn.Sequential(self.b7, self.bn7, nn.ReLU()),
        )
        if pretrained is not None:
            self.load_pretrained(pretrained)
        self.apply_freezing()

    def _add_stage(self, stage: int, in_channels: int, mid_channels: int, out_channels: int, **first: Any) -> None:
        """Stage ``stage`` as ``b{stage}`` (takes ``first``: stride/dilation) then ``b{stage}_1``, ..."""
        dilation = first.get("dilation", 1)
        setattr(self, f"b{stage}", PreActBasicBlock(in_channels, mid_channels, out_channels, **first))
        for index in range(1, BLOCKS_PER_STAGE[stage]):
            block = PreActBasicBlock(out_channels, mid_channels, out_channels, dilation=dilation)
            setattr(self, f"b{stage}_{index}", block)

    def _blocks_of(self, stage: int) -> list[nn.Module]:
        return [getattr(self, name) for name in TRUNK_BLOCK_NAMES if name.split("_")[0] == f"b{stage}"]

    def stage_modules(self) -> Sequence[nn.Module]:
        return self._stages

    def activated_stages(self, x: Tensor, depths: Sequence[int]) -> dict[int, Tensor]:
        """PSA's taps (``resnet38d.forward_as_dict`` with ``get_x_bn_relu``): for stage ``d < 7``,
        ``relu(bn_branch2a(out_d))`` inside the first block of stage ``d + 1`` (PSA's ``conv4`` is b5's, ``conv5``
        b6's); for stage 7 its output ``relu(bn7(b7))`` (PSA's ``conv6``). The BN output is read by a forward hook
        while the trunk runs, so nothing is computed twice (nor are BatchNorm statistics updated twice)."""
        wanted = set(depths)
        for depth in wanted:
            self.check_depth(depth, allow_zero=False)
        taps: dict[int, Tensor] = {}
        handles = []
        for depth in wanted - {self.num_stages}:
            norm = getattr(self, f"b{depth + 1}").bn_branch2a

            def keep(_module: nn.Module, _inputs: Any, output: Tensor, depth: int = depth) -> None:
                taps[depth] = F.relu(output)

            handles.append(norm.register_forward_hook(keep))
        try:
            last = max(depth + 1 if depth < self.num_stages else depth for depth in wanted)
            outputs = self.forward_stages(x, [last])
        finally:
            for handle in handles:
                handle.remove()
        if self.num_stages in wanted:
            taps[self.num_stages] = outputs[self.num_stages]
        return {depth: taps[depth] for depth in sorted(wanted)}

    # -- weights ---------------------------------------------------------------------------------------
    def load_pretrained(self, path: str | PathLike) -> None:
        """Load trunk weights from an ademxapp ``.params`` or a PSA/OC-CSE/caef ``.pth``/``.pt``/``.ckpt``;
        ``imagenet`` means the ademxapp file at its usual place, ``data/pretrained/`` (as for torchvision trunks)."""
        path = Path(IMAGENET_PARAMS if str(path) == "imagenet" else path)
        if not path.is_file():
            raise CaefError(f"pretrained weights {path} not found; {IMAGENET_WEIGHTS_HELP}")
        suffix = path.suffix.lower()
        if suffix == ".params":
            state = convert_mxnet_to_resnet38(load_mxnet_params(path))
        elif suffix in (".pth", ".pt", ".ckpt"):
            state = _read_torch_state(path)
        else:
            raise CaefError(f"pretrained weights {path}: unknown suffix {suffix!r}; use .params, .pth, .pt or .ckpt")
        self._load_trunk(state, path)
        self.apply_freezing()

    def _load_trunk(self, state: dict[str, Tensor], path: Path) -> None:
        expected = self.state_dict()
        trunk = {key: value for key, value in state.items() if key in expected}
        missing = [key for key in expected if key not in trunk and not key.endswith("num_batches_tracked")]
        if missing:
            raise CaefError(
                f"pretrained weights {path}: {len(missing)} of the {len(expected)} ResNet-38 trunk tensors are "
                f"missing, e.g. {', '.join(missing[:5])}; the file should hold PSA-named weights (conv1a.weight, "
                f"b2.bn_branch2a.weight, ..., bn7.running_var) or ademxapp names. {IMAGENET_WEIGHTS_HELP}"
            )
        for key, value in trunk.items():
            if tuple(value.shape) != tuple(expected[key].shape):
                raise CaefError(
                    f"pretrained weights {path}: {key} has shape {tuple(value.shape)} in the file but "
                    f"{tuple(expected[key].shape)} in ResNet38(width={self.width}); pretrained ResNet-38 weights "
                    "fit width=1.0 only (use pretrained=None for small widths)"
                )
        self.load_state_dict(trunk, strict=False)


def is_trunk_key(key: str) -> bool:
    """Whether ``key`` (PSA naming, no prefix) belongs to the ResNet-38 trunk rather than a head."""
    head = key.split(".", 1)[0]
    return key == "conv1a.weight" or head == "bn7" or head in TRUNK_BLOCK_NAMES


def _strip_wrappers(key: str) -> str:
    """``module.`` (DataParallel) and anything up to ``backbone.`` (caef checkpoints) removed."""
    while key.startswith("module."):
        key = key[len("module.") :]
    return key.rsplit("backbone.", 1)[-1]


def _read_torch_state(path: Path) -> dict[str, Tensor]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise CaefError(f"pretrained weights {path}: not a readable torch state dict ({error})") from None
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]  # Lightning checkpoint
    if not isinstance(raw, dict):
        raise CaefError(f"pretrained weights {path}: expected a state dict, found {type(raw).__name__}")
    state: dict[str, Tensor] = {}
    for key, value in raw.items():
        name = _strip_wrappers(str(key))
        if not (isinstance(value, Tensor) and is_trunk_key(name)):
            continue
        if name in state:
            raise CaefError(f"pretrained weights {path}: several trunks hold {name} (e.g. {key}); save one network")
        state[name] = value
    return state


def convert_reference_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """PSA/OC-CSE classifier (trunk + ``fc8``) -> caef CAM network keys (``backbone.*``, ``classifier.weight``).

    ``module.`` prefixes are stripped and keys of neither the trunk nor fc8 are dropped.
    """
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module.") :]
        if key == "fc8.weight":
            converted["classifier.weight"] = value
        elif is_trunk_key(key):
            converted[f"backbone.{key}"] = value
    return converted


@register_backbone("resnet38")
def resnet38(
    width: float = 1.0,
    dropout: tuple[float, float] = (0.3, 0.5),
    frozen_stages: int = 2,
    freeze_bn: bool = True,
    pretrained: str | None = None,
) -> ResNet38:
    """ResNet-38 as in OC-CSE's CGNet; see :class:`ResNet38`."""
    return ResNet38(
        width=width, dropout=tuple(dropout), frozen_stages=frozen_stages, freeze_bn=freeze_bn, pretrained=pretrained
    )
