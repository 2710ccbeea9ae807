"""What every benchmark shares: the two configurations, timing with device synchronisation, synthetic inputs,
device description and peak FLOP rates."""

from __future__ import annotations

import platform
import re
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass

import numpy as np
import torch

from caef.cpus import usable_cpus

#: PASCAL VOC: 20 foreground classes + background
NUM_CLASSES = 21
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BenchConfig:
    """Sizes and repeat counts of one run. ``full`` is the reference recipe's scale (for a GPU); ``small`` is a
    width-1/16 ResNet-38 on small inputs that finishes in a few minutes on a 2-core CPU."""

    name: str
    width: float  # ResNet-38 channel multiplier
    batch: int  # (a) training batch
    crop: int  # (a) training crop
    image_height: int  # (b, c, d) the "500x375" image
    image_width: int
    msf_batch: int  # (b) images per caef multi-scale batch (equal size, as the size-bucketing sampler gives)
    warmup: int  # untimed iterations before every timed measurement
    repeats: int  # timed repeats; the median is reported
    train_steps: int  # training steps per timed repeat
    crf_images_per_worker: int  # (c) images per CRF run = this x workers
    crf_repeats: int
    rw_repeats: int
    affinity_channels: int = 448  # (d) AffinityNet feature channels (PSA: 448)


CONFIGS = {
    "full": BenchConfig(
        name="full", width=1.0, batch=8, crop=384, image_height=375, image_width=500, msf_batch=4,
        warmup=3, repeats=5, train_steps=5, crf_images_per_worker=4, crf_repeats=2, rw_repeats=5,
    ),
    "small": BenchConfig(
        name="small", width=0.0625, batch=4, crop=128, image_height=94, image_width=125, msf_batch=2,
        warmup=2, repeats=3, train_steps=2, crf_images_per_worker=16, crf_repeats=2, rw_repeats=10,
    ),
}  # fmt: skip


def config_dict(config: BenchConfig) -> dict:
    return asdict(config)


# -- timing ------------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], object], device: torch.device, warmup: int, repeats: int, calls_per_repeat: int = 1
) -> list[float]:
    """Seconds per call of ``fn`` for each of ``repeats`` timed repeats (after ``warmup`` untimed calls); the device
    is synchronised before and after every timed repeat, so queued GPU work is counted where it belongs."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls_per_repeat):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - start) / calls_per_repeat)
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def autocast(device: torch.device, enabled: bool) -> AbstractContextManager:
    """bf16 autocast on ``device`` (what Lightning's ``precision=bf16-mixed`` does), or nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def free_device_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


# -- synthetic inputs ------------------------------------------------------------------------------------
def synthetic_image(height: int, width: int, seed: int) -> np.ndarray:
    """A natural-looking (H, W, 3) uint8 image: smooth colour regions plus fine noise (deterministic)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.random((1, 3, max(2, height // 24), max(2, width // 24)), dtype=np.float32))
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    image = smooth[0].permute(1, 2, 0).numpy() * 200 + rng.normal(0, 8, (height, width, 3))
    return np.clip(image + 28, 0, 255).astype(np.uint8)


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32, ImageNet-normalised as caef's transforms do."""
    x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float() / 255  # a writable copy
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std


def synthetic_cams(num: int, height: int, width: int, seed: int) -> np.ndarray:
    """(num, H, W) float32 CAM-like maps in [0, 1] (each a sum of Gaussian blobs, max 1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cams = np.zeros((num, height, width), dtype=np.float32)
    for k in range(num):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.random() * height, rng.random() * width
            sigma = (0.08 + 0.15 * rng.random()) * min(height, width)
            cams[k] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)).astype(np.float32)
        cams[k] /= cams[k].max()
    return cams


def random_labels(batch: int, num_foreground: int, generator: torch.Generator, max_positive: int = 3) -> torch.Tensor:
    """(batch, num_foreground) multi-hot float labels with 1..max_positive classes per row (VOC-like)."""
    labels = torch.zeros(batch, num_foreground)
    for row in range(batch):
        count = int(torch.randint(1, max_positive + 1, (1,), generator=generator))
        labels[row, torch.randperm(num_foreground, generator=generator)[:count]] = 1.0
    return labels


# -- device --------------------------------------------------------------------------------------------------
def cpu_count() -> int:
    return usable_cpus()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


#: dense bf16 tensor-core peaks (TFLOP/s) by device-name substring, most specific first (vendor data sheets)
PEAK_BF16_TFLOPS = (
    ("h200", 989.0),
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("h100", 989.0),
    ("a100", 312.0),
)


def peak_tflops(name: str) -> float | None:
    lowered = name.lower()
    for key, value in PEAK_BF16_TFLOPS:
        if key in lowered:
            return value
    return None
