"""AffinityNet training targets and loss (PSA), vectorised over images and pair offsets.

Pair geometry (PSA's ``get_indices_of_pairs`` / ``ExtractAffinityLabelInRadius``): on an ``(h, w)`` feature grid
with ``r1 = radius - 1``, the *source* pixels are the crop ``rows [0, h - r1) x cols [r1, w - r1)``, of size
``h' = h - r1``, ``w' = w - 2 * r1``; for every forward offset ``(dy, dx)`` of :func:`pair_offsets` the destination
``(y + dy, x + dx)`` then stays inside the grid. Pairs are laid out ``(B, P, h', w')``; flattening the last two dims
gives PSA's ``(B, P, h' * w')`` order exactly (offset-major, then row-major sources).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from caef.data.source import IGNORE_INDEX

EPS = 1e-5


def pair_offsets(radius: int = 5) -> list[tuple[int, int]]:
    """PSA's forward offsets: ``(0, 1..r-1)`` then rows ``dy = 1..r-1`` with ``dy^2 + dx^2 < r^2``."""
    offsets = [(0, dx) for dx in range(1, radius)]
    offsets += [
        (dy, dx) for dy in range(1, radius) for dx in range(-radius + 1, radius) if dy * dy + dx * dx < radius * radius
    ]
    return offsets


def cropped_size(height: int, width: int, radius: int = 5) -> tuple[int, int]:
    """Size ``(h', w')`` of the source crop; raises where the grid is too small for ``radius``."""
    r1 = radius - 1
    size = (height - r1, width - 2 * r1)
    if radius < 2 or min(size) < 1:
        raise ValueError(f"a {height}x{width} grid is too small for radius {radius} (needs >= {radius}x{2 * r1 + 1})")
    return size


def shifted_pairs(x: Tensor, radius: int = 5) -> tuple[Tensor, Tensor]:
    """Source crop ``(..., 1, h', w')`` and destinations ``(..., P, h', w')`` of a ``(..., h, w)`` tensor.

    One slice per offset (P = 34 for r = 5) rather than PSA's index_select on flat indices: same values, and
    it works for any leading dims (labels (B, h, w), features (B, C, h, w)).
    """
    ch, cw = cropped_size(x.shape[-2], x.shape[-1], radius)
    return _source(x, radius, ch, cw).unsqueeze(-3), torch.stack(_destinations(x, radius, ch, cw), dim=-3)


def downsample_labels(label: Tensor, stride: int = 8) -> Tensor:
    """Grid labels ``(..., ceil(H/s), ceil(W/s))`` by sampling each cell's centre pixel (clamped to the image).

    Centre sampling is the nearest-neighbour choice for hard labels: a cell's label is never a blend of two classes
    and 255 survives. It approximates PSA, which averages CRF *scores* over the cell; use :func:`downsample_scores`
    where the score maps are kept.
    """
    height, width = label.shape[-2:]
    rows = (torch.arange(-(-height // stride), device=label.device) * stride + stride // 2).clamp(max=height - 1)
    cols = (torch.arange(-(-width // stride), device=label.device) * stride + stride // 2).clamp(max=width - 1)
    return label[..., rows[:, None], cols[None, :]]


def downsample_scores(scores: Tensor, stride: int = 8, classes: Tensor | None = None) -> Tensor:
    """PSA's grid labels from CRF score maps ``(B, C, H, W)``: zero-pad to a multiple of ``stride``, average each
    ``stride x stride`` block (``skimage.block_reduce`` with ``np.mean``, as PSA's ``imutils.AvgPool2d``), argmax.

    Cells whose best score is below 1e-5 (padding, outside a crop) become 255 as in ``VOC12AffDataset``. The argmax
    is a channel index; ``classes`` (C,) maps it to class ids (channel 0 is background in PSA's dicts).
    """
    height, width = scores.shape[-2:]
    padded = F.pad(scores.float(), (0, -width % stride, 0, -height % stride))
    pooled = F.avg_pool2d(padded, stride, stride)
    best, index = pooled.max(dim=1)
    if classes is not None:
        index = classes.to(index.device)[index]
    return index.masked_fill(best < EPS, IGNORE_INDEX)


def seed_label_map(low_label: Tensor, high_label: Tensor) -> Tensor:
    """PSA's affinity seed: confident foreground from the low-alpha CRF, confident background from the high-alpha one.

    ``label = low``; where low is background -> 255 (unsure); where high is background -> 0; 255 in either input
    (padding, PSA's no-score region) stays 255 -- applied last, as PSA does.
    """
    label = low_label.clone()
    label[low_label == 0] = IGNORE_INDEX
    label[high_label == 0] = 0
    label[(low_label == IGNORE_INDEX) | (high_label == IGNORE_INDEX)] = IGNORE_INDEX
    return label


def extract_affinity_labels(label: Tensor, radius: int = 5) -> tuple[Tensor, Tensor, Tensor]:
    """Boolean ``(bg_pos, fg_pos, neg)``, each ``(B, P, h', w')`` (``(P, h', w')`` for an ``(h, w)`` input).

    bg_pos: both ends background (0); fg_pos: same foreground class (not 0, not 255); neg: different classes, both
    valid (not 255). A pair touching 255 is in none of them.
    """
    src, dst = shifted_pairs(label, radius)
    valid = (src != IGNORE_INDEX) & (dst != IGNORE_INDEX)
    same = src == dst
    bg_pos = same & (src == 0)
    fg_pos = same & (src != 0) & valid
    neg = ~same & valid
    return bg_pos, fg_pos, neg


def pairwise_affinity(features: Tensor, radius: int = 5) -> Tensor:
    """AffinityNet's ``exp(-mean_c |f_i - f_j|)`` for features ``(B, C, h, w)`` -> ``(B, P, h', w')``, in (0, 1]."""
    return torch.exp(-_PairwiseL1.apply(features, radius))


class _PairwiseL1(torch.autograd.Function):
    """``mean_c |f_dst - f_src|`` of every radius pair, one offset at a time: the same values as stacking all P
    shifted copies (``(B, C, P, h', w')``, 34x the features) but without materialising them, forward or backward,
    which made this the AffinityNet's hot spot (8x faster on the demo's batches of 16 x 448 x 16 x 16)."""

    @staticmethod
    def forward(ctx: Any, features: Tensor, radius: int) -> Tensor:
        ch, cw = cropped_size(features.shape[-2], features.shape[-1], radius)
        src = _source(features, radius, ch, cw)
        dsts = _destinations(features, radius, ch, cw)
        out = features.new_empty((features.shape[0], len(dsts), ch, cw))
        for p, dst in enumerate(dsts):
            torch.mean((dst - src).abs_(), dim=1, out=out[:, p])
        ctx.save_for_backward(features)
        ctx.radius = radius
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, None]:
        (features,) = ctx.saved_tensors
        ch, cw = cropped_size(features.shape[-2], features.shape[-1], ctx.radius)
        src = _source(features, ctx.radius, ch, cw)
        grad = torch.zeros_like(features)
        grad_src = _source(grad, ctx.radius, ch, cw)  # views: the steps below add into ``grad``
        pairs = zip(_destinations(features, ctx.radius, ch, cw), _destinations(grad, ctx.radius, ch, cw))
        scale = 1.0 / features.shape[1]
        for p, (dst, grad_dst) in enumerate(pairs):
            step = (dst - src).sign_().mul_(grad_out[:, p : p + 1] * scale)
            grad_dst += step
            grad_src -= step
        return grad, None


def _source(x: Tensor, radius: int, ch: int, cw: int) -> Tensor:
    """The source crop of :func:`shifted_pairs` (rows ``[0, h')``, columns ``[r - 1, r - 1 + w')``), a view."""
    return x[..., :ch, radius - 1 : radius - 1 + cw]


def _destinations(x: Tensor, radius: int, ch: int, cw: int) -> list[Tensor]:
    """The destination views of :func:`shifted_pairs`, one per offset, without stacking them."""
    r1 = radius - 1
    return [x[..., dy : dy + ch, r1 + dx : r1 + dx + cw] for dy, dx in pair_offsets(radius)]


def affinity_loss(aff: Tensor, bg_pos: Tensor, fg_pos: Tensor, neg: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """PSA's loss ``bg/4 + fg/4 + neg/2``; each term is a mean over its pairs in the whole batch.

    Counts get PSA's ``+ 1e-5``, so a term with no pairs is exactly 0 (numerator 0), never NaN.
    """
    parts: dict[str, Tensor] = {}
    for name, mask, log_term in (
        ("bg", bg_pos, torch.log(aff + EPS)),
        ("fg", fg_pos, torch.log(aff + EPS)),
        ("neg", neg, torch.log(1.0 + EPS - aff)),
    ):
        weight = mask.to(aff.dtype)
        count = weight.sum()
        parts[name] = -(weight * log_term).sum() / (count + EPS)
        parts[f"{name}_count"] = count.detach()
    loss = parts["bg"] / 4 + parts["fg"] / 4 + parts["neg"] / 2
    return loss, parts
