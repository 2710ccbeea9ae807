"""Pillow's bicubic ``Image.resize`` of uint8 images, reproduced in torch (batched, on any device).

Why: the reference builds its multi-scale CAM inputs with ``PIL.Image.resize(..., BICUBIC)`` on the uint8 image
and normalises afterwards. Pillow's kernel (a = -0.5, widened by the scale factor when downscaling, i.e.
antialiased) differs from torch's plain bicubic (a = -0.75, no antialiasing) by up to ~25 grey levels; torch's
``antialias=True`` has Pillow's kernel but is one float pass, and still differs by up to ~20 levels when upscaling
(Pillow rounds its weights to 22-bit fixed point and rounds and clips to uint8 between its horizontal and vertical
pass). This module follows Pillow's
``Resample.c`` (``precompute_coeffs``, ``normalize_coeffs_8bpc``, ``ImagingResampleHorizontal_8bpc``): the same
weights, the same integer arithmetic (exact in float64 here), horizontal pass first, as every Pillow of the
reference's time (checked: Pillow 8.4.0's ``ImagingResampleInner``), so the pixels equal that Pillow's. Recent
Pillow (13.0.0 here) runs the vertical pass first when the height shrinks by more than twice as many pixels as the
width; on those images (portraits narrower than about 1:2 at scale 0.5) today's Pillow differs from the reference's
by a few grey levels, and caef keeps the reference's order (measured in docs/conformance.md).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision of 8-bit resampling weights
_BICUBIC_A = -0.5
_BICUBIC_SUPPORT = 2.0


def _bicubic(x: Tensor) -> Tensor:
    """Pillow's ``bicubic_filter`` (a = -0.5), term for term, in float64."""
    x = x.abs()
    a = _BICUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def pil_bicubic_weights(in_size: int, out_size: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """(indices, integer weights), both ``(out_size, taps)`` int64: output ``j`` is
    ``(2^21 + sum_k pixel[indices[j, k]] * weights[j, k]) >> 22`` clipped to 0..255, as in Pillow."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = _BICUBIC_SUPPORT * filterscale
    taps = int(math.ceil(support)) * 2 + 1
    center = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    xmin = torch.trunc(center - support + 0.5).clamp(min=0)
    xmax = torch.trunc(center + support + 0.5).clamp(max=in_size) - xmin  # number of valid taps
    weights = torch.zeros(out_size, taps, dtype=torch.float64)
    total = torch.zeros(out_size, dtype=torch.float64)
    inverse = 1.0 / filterscale
    for k in range(taps):  # sequential sum over taps, the order of Pillow's loop
        w = torch.where(k < xmax, _bicubic((k + xmin - center + 0.5) * inverse), 0.0)
        weights[:, k] = w
        total = total + w
    weights = torch.where(total[:, None] != 0, weights / total[:, None], weights)
    scaled = weights * (1 << PRECISION_BITS)
    fixed = torch.where(weights < 0, torch.trunc(scaled - 0.5), torch.trunc(scaled + 0.5)).long()
    indices = (xmin.long()[:, None] + torch.arange(taps)).clamp(max=in_size - 1)
    return indices.to(device), fixed.to(device)


def _resample_last_dim(pixels: Tensor, out_size: int) -> Tensor:
    """One pass along the last dimension as a float64 matrix product: every product and sum is an integer below
    2^35, exact in float64 whatever the summation order, so the result is Pillow's integer arithmetic."""
    in_size = pixels.shape[-1]
    indices, weights = pil_bicubic_weights(in_size, out_size)
    matrix = torch.zeros(in_size, out_size, dtype=torch.float64)
    matrix.index_put_((indices, torch.arange(out_size)[:, None].expand_as(indices)), weights.double(), accumulate=True)
    acc = pixels @ matrix.to(pixels.device) + (1 << (PRECISION_BITS - 1))
    return torch.floor(acc * 2.0**-PRECISION_BITS).clamp(0, 255)


def pil_bicubic_resize(pixels: Tensor, size: tuple[int, int]) -> Tensor:
    """``(..., H, W)`` integer-valued pixels (uint8 or any dtype holding 0..255) resized to ``size = (h, w)`` exactly
    as Pillow's ``Image.resize((w, h), BICUBIC)`` does per channel; returns uint8."""
    height, width = size
    x = pixels.double().round()
    with torch.autocast(pixels.device.type, enabled=False):  # float64 throughout, also inside a mixed-precision run
        if width != x.shape[-1]:
            x = _resample_last_dim(x, width)
        if height != x.shape[-2]:
            x = _resample_last_dim(x.transpose(-1, -2), height).transpose(-1, -2)
    return x.to(torch.uint8)
