"""What every conformance check shares: the result row, the clones' context, seeded weights with perturbed
BatchNorm, the two comparisons (max abs diff, label agreement) and the test images."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

NUM_CLASSES = 21  # VOC, as the reference's hard-coded fc8
VOC_NAME = "2007_000032"  # an id in the reference's cls_labels.npy (aeroplane, person); the pixels are ours


@dataclass
class Result:
    component: str
    metric: str  # "max abs diff", "label agreement" or "error" (the check could not run: value None)
    value: float | None
    tolerance: float | None
    note: str = ""

    @property
    def passed(self) -> bool:
        if self.metric == "label agreement":
            return self.value >= self.tolerance
        return self.value <= self.tolerance


@dataclass
class Context:
    occse: Path
    psa: Path
    seed: int = 0


def perturb_batchnorm(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (deterministic from ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_((torch.rand(n, generator=generator) - 0.5) * 0.2)
                module.running_var.copy_(0.8 + 0.4 * torch.rand(n, generator=generator))
                module.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=generator))
                module.bias.copy_((torch.rand(n, generator=generator) - 0.5) * 0.2)
    return net


def seeded(factory: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return perturb_batchnorm(factory(), seed)


def max_diff(a: Any, b: Any) -> float:
    a, b = torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a), torch.as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def agreement(a: Any, b: Any) -> float:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float((a == b).mean() * 100.0)


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="caef-conformance-") as folder:
        yield Path(folder)


def test_image(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth ramp with noise and a bright block: edges and flat regions, uint8 RGB."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 180, width)[None, :, None] + np.linspace(0, 60, height)[:, None, None]
    image = ramp + rng.normal(0, 30, (height, width, 3))
    image[height // 4 : height // 2, width // 3 : 2 * width // 3] += 90
    return np.clip(image, 0, 255).astype(np.uint8)


def normalised(image: np.ndarray) -> torch.Tensor:
    from caef.data.transforms import eval_transform

    return eval_transform()(image=image)["image"][None]


def write_voc_image(root: Path, name: str, image: np.ndarray) -> None:
    """The reference reads ``<root>/JPEGImages/<name>.jpg``; a PNG under that name keeps the pixels exact."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", format="PNG")
