"""Is bf16 CAM inference safe? The same weights' multi-scale + flip CAMs in fp32 and under bf16 autocast (+
channels_last on CUDA, as caef runs it), on a small generated dataset, compared two ways: the largest absolute
difference of the normalised maps over the present classes, and the CAM mIoU (best background threshold of the
0.05..0.60 sweep, and bf16 at fp32's best threshold).

The network is a ResNet-38 classifier trained for a few steps on the generated images (AdamW), so its CAMs are
neither random nor flat; the comparison does not need a good network, only the same one in both precisions.
Tolerance (the goal): max |diff| <= 1e-2 and CAM mIoU within 0.1 point; otherwise bf16 inference is flagged to be
kept off (the configs infer in fp32: ``precision: 32-true``).
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import autocast, free_device_memory, normalize_image

MAX_DIFF_TOLERANCE = 1e-2
MIOU_TOLERANCE_POINTS = 0.1


@dataclass(frozen=True)
class Bf16Config:
    width: float  # ResNet-38 width
    images: int  # generated images (all of train_aug are scored)
    size: int  # generated image side
    train_steps: int
    batch: int


BF16_CONFIGS = {
    "full": Bf16Config(width=1.0, images=48, size=320, train_steps=30, batch=8),
    "small": Bf16Config(width=0.0625, images=16, size=96, train_steps=8, batch=4),
}


def verdict(max_diff: float, miou_delta_points: float) -> tuple[bool, str]:
    """(safe, sentence) against the tolerances."""
    safe = max_diff <= MAX_DIFF_TOLERANCE and miou_delta_points <= MIOU_TOLERANCE_POINTS
    measured = f"max |diff| {max_diff:.1e} (tolerance {MAX_DIFF_TOLERANCE:.0e}), CAM mIoU within "
    measured += f"{miou_delta_points:.3f} point (tolerance {MIOU_TOLERANCE_POINTS})"
    if safe:
        return True, f"bf16 CAM inference is within tolerance: {measured}"
    return False, f"bf16 CAM inference is NOT within tolerance, keep it off by default (fp32): {measured}"


def _load(root: Path, device: torch.device):
    from caef.data.voc import VOCSource

    source = VOCSource(root)
    ids = source.split_ids("train_aug")
    images = torch.stack([normalize_image(source.read_image(i)) for i in ids])
    masks = torch.stack([torch.from_numpy(source.read_mask(i, "train_aug").copy()) for i in ids])
    labels = torch.stack([torch.as_tensor(source.label_of(i), dtype=torch.float32) for i in ids])
    return source.num_classes, images.to(device), masks.long().to(device), labels.to(device)


def _train(net, images, labels, config: Bf16Config) -> None:
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    net.train()
    for _ in range(config.train_steps):
        idx = torch.randperm(len(images), generator=generator)[: config.batch].to(images.device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net.logits(net(images[idx])), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    net.eval()


def _cams(net, images, labels, device: torch.device, bf16: bool, channels_last: bool, batch: int) -> torch.Tensor:
    from caef.stages.cam_inference import multiscale_cams

    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = copy.deepcopy(net).to(memory_format=memory_format) if channels_last else net

    def cam_fn(x: torch.Tensor) -> torch.Tensor:
        return model(x.contiguous(memory_format=memory_format))

    out = []
    for start in range(0, len(images), batch):
        with autocast(device, bf16):
            out.append(multiscale_cams(cam_fn, images[start : start + batch], labels[start : start + batch]).float())
    return torch.cat(out)


def _miou(cams: torch.Tensor, masks: torch.Tensor, num_classes: int) -> dict[str, Any]:
    from caef.metrics import ThresholdSweepConfusion

    metric = ThresholdSweepConfusion(num_classes).to(cams.device)
    metric.update(cams, masks)
    scores = metric.compute()
    return {"miou": scores["miou"].cpu(), "best_index": int(scores["best_index"]),
            "best_miou": float(scores["best_miou"]), "best_threshold": float(scores["best_threshold"])}  # fmt: skip


def run(config: Bf16Config, device: torch.device) -> dict[str, Any]:
    from caef.data.synthetic import SynthConfig, generate
    from caef.models.cam_net import build_cam_net

    free_device_memory(device)
    with tempfile.TemporaryDirectory(prefix="caef-bf16-") as tmp:
        synth = SynthConfig(num_images=config.images + max(2, config.images // 4), size=config.size, seed=0)
        generate(Path(tmp) / "tree", synth, progress=False)
        num_classes, images, masks, labels = _load(Path(tmp) / "tree", device)
    torch.manual_seed(0)
    net = build_cam_net("resnet38", num_classes, width=config.width).to(device)
    _train(net, images, labels, config)
    channels_last = device.type == "cuda"
    with torch.no_grad():
        fp32 = _cams(net, images, labels, device, False, False, config.batch)
        bf16 = _cams(net, images, labels, device, True, channels_last, config.batch)
    present = labels > 0
    max_diff = float((bf16 - fp32).abs()[present].max())
    mean_diff = float((bf16 - fp32).abs()[present].mean())
    score_fp32, score_bf16 = _miou(fp32, masks, num_classes), _miou(bf16, masks, num_classes)
    at_same = float(score_bf16["miou"][score_fp32["best_index"]])
    delta = 100 * max(abs(score_bf16["best_miou"] - score_fp32["best_miou"]), abs(at_same - score_fp32["best_miou"]))
    safe, sentence = verdict(max_diff, delta)
    free_device_memory(device)
    return {
        "config": asdict(config), "images": len(images), "image_size": config.size, "num_classes": num_classes,
        "bf16_channels_last": channels_last, "max_abs_diff": max_diff, "mean_abs_diff": mean_diff,
        "miou_fp32": 100 * score_fp32["best_miou"], "threshold_fp32": score_fp32["best_threshold"],
        "miou_bf16": 100 * score_bf16["best_miou"], "threshold_bf16": score_bf16["best_threshold"],
        "miou_bf16_at_fp32_threshold": 100 * at_same, "miou_delta_points": delta,
        "within_tolerance": safe, "verdict": sentence,
        "tolerance": {"max_abs_diff": MAX_DIFF_TOLERANCE, "miou_points": MIOU_TOLERANCE_POINTS},
        "label_pixels": int(np.prod(masks.shape)),
    }  # fmt: skip
