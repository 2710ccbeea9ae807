"""PSA's random walk: propagate CAMs over the AffinityNet affinity graph of one image's stride-8 grid.

Orientation (PSA ``infer_aff.py``): ``T = A**beta / A**beta.sum(dim=0)`` is column-stochastic and the CAMs are row
vectors, ``cam_rw = cam_vec @ T**(2**logt)``. As ``A`` is symmetric this is the paper's ``T_paper^t vec(M)`` with
``T_paper = D^-1 A**beta``: every node takes a weighted *average* of its neighbours (constants are preserved; the
degree-weighted sum ``cam @ d`` is invariant, the plain sum over nodes is not).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from caef.stages.affinity_labels import pair_offsets, shifted_pairs


def pair_indices(height: int, width: int, radius: int = 5, crop: bool = True, device=None) -> tuple[Tensor, Tensor]:
    """Flat ``(src, dst)`` indices of the forward pairs on an ``(h, w)`` grid.

    ``crop=True`` is PSA's set and order (sources in the crop of :mod:`caef.stages.affinity_labels`); it leaves a few
    border nodes without any pair (the first ``r-1`` nodes of the top row, the bottom corners), which then keep their
    own CAM. ``crop=False`` takes every pair within the radius whose ends are both on the grid.
    """
    grid = torch.arange(height * width, device=device).view(height, width)
    if crop:
        src, dst = shifted_pairs(grid, radius)
        return src.expand_as(dst).reshape(-1), dst.reshape(-1)
    srcs, dsts = [], []
    for dy, dx in pair_offsets(radius):
        if dy >= height or abs(dx) >= width:
            continue
        srcs.append(grid[: height - dy, max(0, -dx) : width - max(0, dx)].reshape(-1))
        dsts.append(grid[dy:, max(0, dx) : width - max(0, -dx)].reshape(-1))
    empty = grid.new_zeros(0)
    return torch.cat(srcs) if srcs else empty, torch.cat(dsts) if dsts else empty


def dense_affinity(features: Tensor, radius: int = 5, crop: bool = True) -> Tensor:
    """``(N, N)`` affinity of a ``(C, h, w)`` feature map, ``N = h * w``: ``exp(-mean_c |f_i - f_j|)`` on the radius
    pairs scattered symmetrically into a dense matrix (as PSA's ``to_dense``), 1 on the diagonal, 0 elsewhere."""
    channels, height, width = features.shape
    flat = features.reshape(channels, -1)
    src, dst = pair_indices(height, width, radius, crop, device=features.device)
    aff = torch.exp(-(flat[:, src] - flat[:, dst]).abs().mean(dim=0))
    dense = flat.new_zeros(height * width, height * width)
    dense[src, dst] = aff
    dense[dst, src] = aff
    dense.diagonal().fill_(1.0)
    return dense


def transition_matrix(aff: Tensor, beta: float = 8) -> Tensor:
    """``aff**beta`` divided by its column sums (PSA's ``sum(dim=0)``): each column of ``(..., N, N)`` sums to 1."""
    powered = aff.pow(beta)
    return powered / powered.sum(dim=-2, keepdim=True)


def _power(trans: Tensor, logt: int) -> Tensor:
    for _ in range(logt):
        trans = trans @ trans
    return trans


def random_walk(cam_vec: Tensor, trans: Tensor, logt: int = 8) -> Tensor:
    """``cam_vec (C, N) @ T**(2**logt)``, the power by ``logt`` squarings (PSA's loop)."""
    return cam_vec @ _power(trans, logt)


def random_walk_batch(cam_vecs: Tensor, trans: Tensor, logt: int = 8) -> Tensor:
    """:func:`random_walk` for ``B`` images of one grid size: ``cam_vecs (B, C, N)``, ``trans (B, N, N)``."""
    for _ in range(logt):
        trans = torch.bmm(trans, trans)
    return torch.bmm(cam_vecs, trans)


@torch.no_grad()
def propagate(cams: Tensor, classes: Tensor, features: Tensor, **walk: Any) -> Tensor:
    """Random-walk label map ``(H, W)`` (class ids, 0 = background) of one image, as PSA's ``infer_aff.py``: the
    argmax of :func:`walked_scores` (``walk``: its keyword arguments) mapped to the ids in ``classes (K,)``."""
    return labels_from_scores(walked_scores(cams, features, **walk), classes)


def labels_from_scores(scores: Tensor, classes: Tensor) -> Tensor:
    """Label map ``(H, W)`` of class ids from ``(1 + K, H, W)`` scores, background first: the argmax, mapped to 0
    and the ids in ``classes (K,)``."""
    lut = torch.cat([classes.new_zeros(1), classes]).to(scores.device, torch.long)
    return lut[scores.argmax(dim=0)]


@torch.no_grad()
def walked_scores(
    cams: Tensor,
    features: Tensor,
    alpha: float = 16,
    beta: float = 8,
    logt: int = 8,
    stride: int = 8,
    radius: int = 5,
    crop: bool = True,
) -> Tensor:
    """The ``(1 + K, H, W)`` walked scores of one image, background first.

    ``cams (K, H, W)``: full-resolution normalised CAMs (the CAM file format); ``features (C, h, w)``: AffinityNet
    features of the image zero-padded to a multiple of ``stride``. Background ``(1 - max_k cam)**alpha`` is added
    before zero padding, the maps are average-pooled to the grid, walked (affinities**beta, t = 2**logt),
    upsampled bilinearly (``align_corners=False``) to the padded size and cropped.
    """
    num, height, width = cams.shape
    grid = (-(-height // stride), -(-width // stride))
    if tuple(features.shape[-2:]) != grid:
        raise ValueError(f"features are {tuple(features.shape[-2:])} but a {height}x{width} image needs {grid}")
    cams = cams.to(features.device, torch.float32)
    peak = cams.amax(dim=0) if num else cams.new_zeros(height, width)
    full = torch.cat([(1 - peak).pow(alpha)[None], cams])
    full = F.pad(full, (0, grid[1] * stride - width, 0, grid[0] * stride - height))
    cam_vec = F.avg_pool2d(full[None], stride, stride).reshape(num + 1, -1)
    trans = transition_matrix(dense_affinity(features.float(), radius, crop), beta)
    walked = random_walk(cam_vec, trans, logt).reshape(1, num + 1, *grid)
    walked = F.interpolate(walked, size=full.shape[-2:], mode="bilinear", align_corners=False)
    return walked[0, :, :height, :width]
