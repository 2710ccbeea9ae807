"""Multi-scale + flip CAM inference, batched: one forward per scale for all images and their flips.

The scaled inputs are the reference's: Pillow's bicubic resize of the uint8 image, then ImageNet normalisation.
Batches hold normalised images (:func:`caef.data.transforms.eval_transform`); their uint8 pixels are recovered
exactly (float error < 1e-3 grey levels), resized by :func:`caef.data.pil_resize.pil_bicubic_resize` on the
device and normalised again.

Per variant (as the reference ``infer_msf``): raw CAM upsampled bilinearly to the original size, ReLU,
flipped back; the variants are summed, kept for the image's classes, and each class is divided by its
spatial max (+1e-5).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from caef.data.pil_resize import pil_bicubic_resize
from caef.data.transforms import IMAGENET_MEAN, IMAGENET_STD

DEFAULT_SCALES = (0.5, 1.0, 1.5, 2.0)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize_images(images: Tensor, size: tuple[int, int]) -> Tensor:
    """ImageNet-normalised images (B, 3, H, W) resized as the reference does: Pillow bicubic on the uint8 pixels."""
    if tuple(images.shape[-2:]) == size:
        return images
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1) * 255.0
    pixels = (images.float() * std + mean).round().clamp(0, 255)
    resized = pil_bicubic_resize(pixels, size).float()
    return ((resized - mean) / std).to(images.dtype)


def upsampled_relu(cams: Tensor, size: tuple[int, int]) -> Tensor:
    return F.relu(F.interpolate(cams.float(), size=size, mode="bilinear", align_corners=False))


def normalize_per_class(cams: Tensor, labels: Tensor) -> Tensor:
    """Keep the labelled classes and scale each map to max 1 (the reference's ``/ (max + 1e-5)``)."""
    cams = cams * labels[:, :, None, None].to(cams.dtype)
    return cams / (cams.amax(dim=(2, 3), keepdim=True) + 1e-5)


@torch.no_grad()
def multiscale_cams(
    cam_fn: Callable[[Tensor], Tensor],
    images: Tensor,
    labels: Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
) -> Tensor:
    """Normalised CAMs (B, K, H, W) in [0, 1] for a batch of equal-size images (B, 3, H, W)."""
    batch, _, height, width = images.shape
    total = torch.zeros((), device=images.device)
    for scale in scales:
        x = resize_images(images, scaled_size(height, width, scale))
        if flip:
            x = torch.cat([x, x.flip(-1)])
        cams = upsampled_relu(cam_fn(x), (height, width))
        if flip:
            cams = cams[:batch] + cams[batch:].flip(-1)
        total = total + cams
    return normalize_per_class(total, labels)
