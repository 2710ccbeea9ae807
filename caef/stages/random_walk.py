"""PSA's random walk: propagate CAMs over the AffinityNet affinity graph of one image's stride-8 grid.

Orientation (PSA ``infer_aff.py``): ``T = A**beta / A**beta.sum(dim=0)`` is column-stochastic and the CAMs are row
vectors, ``cam_rw = cam_vec @ T**(2**logt)``. As ``A`` is symmetric this is the paper's ``T_paper^t vec(M)`` with
``T_paper = D^-1 A**beta``: every node takes a weighted *average* of its neighbours (constants are preserved; the
degree-weighted sum ``cam @ d`` is invariant, the plain sum over nodes is not).

Size: the dense ``(N, N)`` matrix of an ``N``-node grid (a 4000x3000 image: 187,500 nodes, 140 GB) is used up to
:data:`DENSE_WALK_NODES` nodes (1 GiB per matrix; about 1024x1024 pixels), where it matches PSA bit for bit. Larger
grids walk a sparse transition matrix, ``2**logt`` sparse-dense products of the CAM vectors: the same product
``cam_vec @ T**t``, equal up to float rounding order (measured: max relative difference 4e-6, identical argmax, on
grids of 2,961 to 9,216 nodes) in O(t * nnz) time and O(nnz) memory. Images above ``max_pixels``
(:data:`MAX_WALK_PIXELS`) are refused by :func:`check_walk_size` before anything is allocated.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from caef.data.affinity_labels import pair_offsets, shifted_pairs
from caef.errors import CaefError

#: largest grid (nodes, ``ceil(H/8) * ceil(W/8)``) walked with PSA's dense matrix: 1 GiB per (N, N) float32 matrix
DENSE_WALK_NODES = 16_384
#: largest image (pixels) the random walk accepts: the sparse walk needs about 200 MB per megapixel
MAX_WALK_PIXELS = 4096 * 4096
#: pairs whose feature differences are computed at once in the sparse walk (bounds its (C, pairs) buffer)
_PAIR_CHUNK = 1 << 16


def check_walk_size(image_id: str, height: int, width: int, max_pixels: int = MAX_WALK_PIXELS) -> None:
    """A :class:`CaefError` naming the image, its size and the limit when ``height * width`` exceeds
    ``max_pixels``: raised before any feature or affinity is computed."""
    if height * width > max_pixels:
        raise CaefError(
            f"image {image_id!r} is {width}x{height} ({height * width / 1e6:.1f} megapixels), above the random walk's "
            f"limit of {max_pixels} pixels (max_walk_pixels, about 200 MB of memory per megapixel); resize the image, "
            "remove it from the split list, or raise PseudoLabelWriter's max_walk_pixels"
        )


def pair_indices(height: int, width: int, radius: int = 5, crop: bool = True, device=None) -> tuple[Tensor, Tensor]:
    """Flat ``(src, dst)`` indices of the forward pairs on an ``(h, w)`` grid.

    ``crop=True`` is PSA's set and order (sources in the crop of :mod:`caef.data.affinity_labels`); it leaves a few
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


def sparse_transition(features: Tensor, radius: int = 5, crop: bool = True, beta: float = 8) -> Tensor:
    """The transposed transition matrix ``T.T`` of :func:`transition_matrix` (``dense_affinity``'s pairs and
    diagonal, ``**beta``, divided by column sums) as a sparse CSR ``(N, N)`` tensor, built without any dense
    ``(N, N)`` buffer; the feature differences of the pairs are computed in chunks."""
    channels, height, width = features.shape
    num = height * width
    flat = features.reshape(channels, -1)
    src, dst = pair_indices(height, width, radius, crop, device=features.device)
    aff = torch.cat(
        [
            torch.exp(-(flat[:, s] - flat[:, d]).abs().mean(dim=0))
            for s, d in zip(src.split(_PAIR_CHUNK), dst.split(_PAIR_CHUNK))
        ]
        or [flat.new_zeros(0)]
    )
    node = torch.arange(num, device=features.device)
    rows, cols = torch.cat([src, dst, node]), torch.cat([dst, src, node])
    values = torch.cat([aff, aff, aff.new_ones(num)]).pow(beta)
    values = values / values.new_zeros(num).index_add_(0, cols, values)[cols]
    transposed = torch.sparse_coo_tensor(torch.stack([cols, rows]), values, (num, num), check_invariants=False)
    with warnings.catch_warnings():  # CSR is "beta" in torch; its product with a dense matrix is all this needs
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return transposed.coalesce().to_sparse_csr()


def sparse_random_walk(cam_vec: Tensor, trans_t: Tensor, logt: int = 8) -> Tensor:
    """``cam_vec (C, N) @ T**(2**logt)`` as ``2**logt`` products with the sparse ``T.T`` (:func:`sparse_transition`):
    the same product as :func:`random_walk`, in another order of float operations."""
    walked = cam_vec.T.contiguous()
    for _ in range(2**logt):
        walked = trans_t @ walked
    return walked.T


def _power(trans: Tensor, logt: int) -> Tensor:
    """``trans ** (2**logt)`` by squaring, its subnormal entries set to zero before and after each product: a
    sharp affinity power (beta = 32 in the demo) sends far pairs below the smallest normal float, and a CPU
    multiplies through subnormals about 30x slower (0.20 -> 0.04 s for the demo's 256-node walk). Scores move by
    less than 1e-36, and no label of the demo's pseudo labels changes (tests/stages/test_random_walk.py)."""
    tiny = torch.finfo(trans.dtype).tiny
    trans = trans.masked_fill(trans.abs() < tiny, 0.0)
    for _ in range(logt):
        trans = trans @ trans
        trans = trans.masked_fill(trans.abs() < tiny, 0.0)
    return trans


def random_walk(cam_vec: Tensor, trans: Tensor, logt: int = 8) -> Tensor:
    """``cam_vec (C, N) @ T**(2**logt)``, the power by ``logt`` squarings (PSA's loop)."""
    return cam_vec @ _power(trans, logt)


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
    dense_nodes: int = DENSE_WALK_NODES,
) -> Tensor:
    """The ``(1 + K, H, W)`` walked scores of one image, background first.

    ``cams (K, H, W)``: full-resolution normalised CAMs (the CAM file format); ``features (C, h, w)``: AffinityNet
    features of the image zero-padded to a multiple of ``stride``. Background ``(1 - max_k cam)**alpha`` is added
    before zero padding, the maps are average-pooled to the grid, walked (affinities**beta, t = 2**logt),
    upsampled bilinearly (``align_corners=False``) to the padded size and cropped. Grids of more than
    ``dense_nodes`` nodes take the sparse walk (see the module docstring).
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
    if grid[0] * grid[1] <= dense_nodes:
        trans = transition_matrix(dense_affinity(features.float(), radius, crop), beta)
        walked = random_walk(cam_vec, trans, logt)
    else:
        walked = sparse_random_walk(cam_vec, sparse_transition(features.float(), radius, crop, beta), logt)
    walked = walked.reshape(1, num + 1, *grid)
    walked = F.interpolate(walked, size=full.shape[-2:], mode="bilinear", align_corners=False)
    return walked[0, :, :height, :width]
