"""AffinityNet (PSA, Ahn & Kwak 2018): a CAM trunk plus a small head whose features define pixel affinities.

Three feature maps of the trunk at output stride 8 are each reduced by a 1x1 conv (64, 128 and 256 channels) + ELU,
concatenated (448) and mixed by a 1x1 conv 448 -> 448 + ELU (``f9``). The affinity of two grid cells ``i, j`` is
``exp(-mean_c |f_i - f_j|)`` (see :func:`caef.data.affinity_labels.pairwise_affinity`); the random walk
(:mod:`caef.stages.random_walk`) propagates CAMs over it. Head layers keep PSA's names (``f8_3``, ``f8_4``,
``f8_5``, ``f9``) and, like PSA's, have no bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from caef.data.affinity_labels import pairwise_affinity
from caef.errors import CaefError
from caef.models.backbones import Backbone, build_backbone

#: output channels of the three reduction convs (PSA's f8_3, f8_4, f8_5); f9 maps their 448 channels to 448
HEAD_CHANNELS = (64, 128, 256)
FEATURE_STRIDE = 8
_CAM_CHECKPOINT_PREFIX = "net.backbone."
INIT_CHECKPOINT_HELP = (
    "pass a caef classifier/CGNet checkpoint (runs/<name>/cgnet/last.ckpt) or PSA's trained AffinityNet res38_aff.pth "
    "(https://github.com/jiwoon-ahn/psa); trunk-only weights (ImageNet, res38_cls.pth) go to model.pretrained"
)


def affinity_depths(backbone: Backbone) -> tuple[int, int, int]:
    """The three stages (1-based) AffinityNet's head reads.

    ResNet-38: stages 4, 5 and 7 (512/1024/4096 channels at full width), read as PSA's ``conv4``, ``conv5`` and
    ``conv6``: the BN-and-ReLU'd *inputs* of blocks b5 and b6 (``relu(b5.bn_branch2a(out_4))``,
    ``relu(b6.bn_branch2a(out_5))``) and the final ``relu(bn7(b7))``, not the raw residual stream (see
    :meth:`caef.models.backbones.Backbone.activated_stages`). Any other backbone: the outputs of its last three
    stride-8 stages (torchvision ResNets: layer2..layer4; VGG-16: conv blocks 3..5), which already end in a ReLU:
    the same "activated input of the next stage" as PSA's taps.
    """
    from caef.models.backbones.resnet38 import ResNet38

    if isinstance(backbone, ResNet38):
        return (4, 5, 7)
    strides = backbone.stage_strides()
    at_eight = [depth for depth, stride in enumerate(strides, start=1) if stride == FEATURE_STRIDE]
    if len(at_eight) < 3:
        raise CaefError(
            f"AffinityNet needs three stride-{FEATURE_STRIDE} stages but {type(backbone).__name__} has stage strides "
            f"{strides}; pass feature_depths explicitly"
        )
    return tuple(at_eight[-3:])


class AffinityNet(nn.Module):
    """Backbone + PSA's affinity head; ``forward`` gives the (B, 448, H/8, W/8) affinity features.

    ``depths``: the three backbone stages to tap (default :func:`affinity_depths`). The backbone keeps its own
    freezing (frozen first stages, BatchNorm in eval mode with fixed affine parameters).
    """

    def __init__(self, backbone: Backbone, depths: Sequence[int] | None = None):
        super().__init__()
        self.backbone = backbone
        depths = tuple(affinity_depths(backbone) if depths is None else depths)
        if len(depths) != len(HEAD_CHANNELS):
            raise CaefError(f"AffinityNet taps exactly {len(HEAD_CHANNELS)} stages, got feature_depths={depths}")
        for depth in depths:
            backbone.check_depth(depth, allow_zero=False)
        self.depths = depths
        in_channels = [backbone.stage_channels[d - 1] for d in depths]
        self.f8_3, self.f8_4, self.f8_5 = (
            nn.Conv2d(c_in, c_out, 1, bias=False) for c_in, c_out in zip(in_channels, HEAD_CHANNELS)
        )
        self.f9 = nn.Conv2d(sum(HEAD_CHANNELS), sum(HEAD_CHANNELS), 1, bias=False)
        for conv in (self.f8_3, self.f8_4, self.f8_5):
            nn.init.kaiming_normal_(conv.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)

    @property
    def out_channels(self) -> int:
        return self.f9.out_channels

    def head_modules(self) -> list[nn.Module]:
        """The layers trained from scratch (PSA's ``from_scratch_layers``)."""
        return [self.f8_3, self.f8_4, self.f8_5, self.f9]

    def forward(self, x: Tensor) -> Tensor:
        taps = self.backbone.activated_stages(x, self.depths)
        reduced = [F.elu(conv(taps[d])) for conv, d in zip((self.f8_3, self.f8_4, self.f8_5), self.depths)]
        return F.elu(self.f9(torch.cat(reduced, dim=1)))

    def affinities(self, x: Tensor, radius: int = 5) -> Tensor:
        """(B, P, h', w') affinities of the radius pairs (layout of :mod:`caef.data.affinity_labels`)."""
        return pairwise_affinity(self(x), radius)

    # -- initialisation from a CAM network -----------------------------------------------------------------
    def load_cam_checkpoint(self, path: str | Path) -> None:
        """Copy the trunk of a caef classifier / CGNet ``.ckpt`` (its ``net.backbone.*`` tensors) into the backbone.

        A CGNet checkpoint also holds its frozen ``ordinary_classifier.*``: only the CGNet (``net.``) is read.
        """
        from caef.checkpoints import check_state_dict

        path = Path(path)
        _, state = read_cam_trunk(path)
        check_state_dict(self.backbone, state, path, what="CAM checkpoint (AffinityNet trunk init)")
        self.backbone.load_state_dict(state)

    def load_init_checkpoint(self, path: str | Path) -> None:
        """``model.init_checkpoint``: a caef classifier / CGNet checkpoint (trunk only, the head stays fresh) or PSA's
        trained AffinityNet ``res38_aff.pth`` (trunk and head, :func:`convert_psa_affinity_state_dict`)."""
        from caef.checkpoints import read_checkpoint

        path = Path(path)
        raw = read_checkpoint(path, "model.init_checkpoint", INIT_CHECKPOINT_HELP)
        if isinstance(raw, dict) and "hyper_parameters" in raw:
            self.load_cam_checkpoint(path)
        else:
            self.load_psa_affinity_state(raw, path)

    def load_psa_affinity_state(self, raw: Any, path: Path) -> None:
        """Load PSA's ``network.resnet38_aff.Net`` state dict (``res38_aff.pth``): trunk and f8_3/f8_4/f8_5/f9."""
        from caef.checkpoints import check_state_dict

        if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
            raw = raw["state_dict"]
        if not isinstance(raw, dict) or not any(str(k).endswith("f9.weight") for k in raw):
            raise CaefError(
                f"{path} is not a caef classifier/CGNet checkpoint nor a PSA AffinityNet state dict (no f9.weight); "
                f"{INIT_CHECKPOINT_HELP}"
            )
        state = convert_psa_affinity_state_dict(raw)
        for key, value in self.state_dict().items():  # PyTorch 0.4-era files lack BatchNorm step counters
            if key.endswith("num_batches_tracked"):
                state.setdefault(key, value)
        check_state_dict(self, state, path, what="PSA AffinityNet")
        self.load_state_dict(state)

    @classmethod
    def from_cam_checkpoint(cls, path: str | Path, depths: Sequence[int] | None = None, **overrides: Any):
        """An AffinityNet whose backbone is built from the checkpoint's recorded architecture (``backbone`` and
        ``backbone_options`` hyper-parameters; ``overrides`` replace options, e.g. ``frozen_stages``) and loaded
        from its trunk; the head is freshly initialised."""
        hp, _ = read_cam_trunk(Path(path))
        options = {**(hp.get("backbone_options") or {}), **overrides}
        net = cls(build_backbone(hp["backbone"], **options), depths)
        net.load_cam_checkpoint(path)
        return net


def read_cam_trunk(path: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(hyper-parameters, trunk state dict without the ``net.backbone.`` prefix) of a caef CAM checkpoint."""
    if not path.is_file():
        raise CaefError(
            f"CAM checkpoint not found: {path}; train one with `caef cgnet fit` (runs/<name>/cgnet/last.ckpt) or "
            "`caef classifier fit`, or leave model.init_checkpoint unset and use model.pretrained"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # not a torch file, truncated ...
        raise CaefError(f"cannot read CAM checkpoint {path}: {exc}") from exc
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    trunk = {
        k[len(_CAM_CHECKPOINT_PREFIX) :]: v for k, v in (state or {}).items() if k.startswith(_CAM_CHECKPOINT_PREFIX)
    }
    if not trunk or "backbone" not in (checkpoint.get("hyper_parameters") or {}):
        raise CaefError(
            f"{path} is not a caef classifier/CGNet checkpoint (no hyper-parameters or no net.backbone.* weights); "
            "PSA/OC-CSE .pth files and ImageNet weights go to model.pretrained instead"
        )
    return checkpoint["hyper_parameters"], trunk


def convert_psa_affinity_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """PSA ``resnet38_aff.Net`` keys -> caef :class:`AffinityNet` keys: trunk ``conv1a.weight`` ... ``bn7.*`` go
    under ``backbone.``; the head (``f8_3``, ``f8_4``, ``f8_5``, ``f9``) keeps its names; ``module.`` prefixes
    (DataParallel) are stripped and other keys dropped."""
    from caef.models.backbones.resnet38 import is_trunk_key

    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        key = str(key)
        while key.startswith("module."):
            key = key[len("module.") :]
        if key.split(".", 1)[0] in ("f8_3", "f8_4", "f8_5", "f9"):
            converted[key] = value
        elif is_trunk_key(key):
            converted[f"backbone.{key}"] = value
    return converted


def build_affinity_net(
    backbone: str,
    pretrained: str | None = None,
    depths: Sequence[int] | None = None,
    **backbone_options: Any,
) -> AffinityNet:
    return AffinityNet(build_backbone(backbone, pretrained=pretrained, **backbone_options), depths)
