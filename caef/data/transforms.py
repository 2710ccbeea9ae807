"""Augmentation recipes (albumentations 2.0.8), one per use, with the reference's defaults.

Training (OC-CSE ``build_dataset``): random long-side resize in ``resize_long`` (Pillow bicubic), horizontal flip,
colour jitter (0.3, 0.3, 0.3, 0.1), ImageNet normalisation, then a random crop padded with 0 in
*normalised* space (the mean colour) for the image and 255 (ignore) for masks. PSA's AffinityNet recipe
(``train_aff.py``) has no resize and pads its crop with black pixels (0 before normalisation):
``resize_long=None, crop_fill="black"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from PIL import Image

from caef.data.source import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AugmentationConfig:
    """Training augmentation of one stage; the defaults are the reference CGNet recipe."""

    crop_size: int = 384
    resize_long: tuple[int, int] | None = (256, 448)
    flip: bool = True
    color_jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.1)
    crop_fill: Literal["mean", "black"] = "mean"  # image padding of the crop: OC-CSE's mean colour, PSA's black

    def __post_init__(self) -> None:
        if self.resize_long is not None and not 0 < self.resize_long[0] <= self.resize_long[1]:
            raise ValueError(f"resize_long must be (low, high) with 0 < low <= high, got {self.resize_long}")
        if self.crop_size <= 0:
            raise ValueError(f"crop_size must be positive, got {self.crop_size}")
        if self.crop_fill not in ("mean", "black"):
            raise ValueError(f"crop_fill must be 'mean' or 'black', got {self.crop_fill!r}")


class RandomLongSideResize(A.DualTransform):
    """The reference's random resize (PSA ``RandomResizeLong``, OC-CSE ``random_resize``): the long side drawn
    uniformly in ``[low, high]``, the short side rounded to keep the aspect ratio, the image resized by Pillow's
    bicubic (antialiased when shrinking, as the reference), masks by nearest neighbour."""

    def __init__(self, low: int, high: int, p: float = 1.0):
        super().__init__(p=p)
        self.low, self.high = low, high

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        height, width = params["shape"][:2]
        target = self.py_random.randint(self.low, self.high)
        if width < height:
            return {"size": (target, int(round(width * target / height)))}
        return {"size": (int(round(height * target / width)), target)}

    def apply(self, img: np.ndarray, size: tuple[int, int], **params) -> np.ndarray:
        return np.asarray(Image.fromarray(img).resize((size[1], size[0]), Image.BICUBIC))

    def apply_to_mask(self, mask: np.ndarray, size: tuple[int, int], **params) -> np.ndarray:
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("low", "high")


def train_transform(config: AugmentationConfig) -> A.Compose:
    """Image (+ mask) training pipeline; masks are resized nearest-neighbour and padded with 255."""
    steps: list[A.BasicTransform] = []
    if config.resize_long is not None:
        steps.append(RandomLongSideResize(*config.resize_long))
    if config.flip:
        steps.append(A.HorizontalFlip(p=0.5))
    if config.color_jitter is not None:
        brightness, contrast, saturation, hue = config.color_jitter
        steps.append(A.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=1.0))
    normalize = A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0)
    crop = [
        A.PadIfNeeded(
            min_height=config.crop_size,
            min_width=config.crop_size,
            position="random",
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,  # in normalised space (after normalize) the mean colour; in pixels (before) black
            fill_mask=IGNORE_INDEX,
        ),
        A.RandomCrop(config.crop_size, config.crop_size),
    ]
    steps += [normalize, *crop] if config.crop_fill == "mean" else [*crop, normalize]
    return A.Compose([*steps, ToTensorV2()])


def eval_transform() -> A.Compose:
    """Normalisation only, original size: what multi-scale inference and evaluation start from."""
    return A.Compose([A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=255.0), ToTensorV2()])


def denormalize(
    images: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """(B, 3, H, W) normalised tensors back to (B, H, W, 3) uint8, for visualisation."""
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    pixels = ((images.float() * std_t + mean_t) * 255.0).clamp(0, 255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def reseed_augmentation(dataset: object, seed: int) -> None:
    """Restart the random stream of ``dataset.transform`` (an albumentations Compose keeps its own generator,
    ignoring global seeds) from ``seed``. Called per DataLoader worker with its torch seed and per epoch in the
    main process, so augmentations follow the torch RNG: reproducible, distinct per worker and epoch."""
    transform = getattr(dataset, "transform", None)
    if isinstance(transform, A.BaseCompose):
        transform.set_random_seed(seed % 2**32)
