"""(a) CGNet training step, (e) its peak GPU memory, (f) its model FLOPs utilisation.

caef's step is :meth:`caef.stages.cgnet.CGNetModule.training_step` itself (vectorised target sampling, frozen OC
without parameter gradients, ``channels_last`` where it works, bf16 autocast on CUDA as Lightning's
``precision=bf16-mixed``), followed by backward and an SGD step over the reference parameter groups.

The reference step mirrors OC-CSE's ``model_cse.update``: fp32, ``split_label``'s Python loop over the batch
(``torch.nonzero`` + ``torch.randint`` per image, one-hot), the target CAM picked by boolean indexing, batch-max mask
normalisation, ``I * (1 - M)``, ``BCE(cgnet, y) + w * BCE(OC(erased), y_remain)``, backward, SGD step. Its OC is in
eval mode but keeps ``requires_grad=True`` on its trainable layers (the reference never freezes ``net_cl``, so its
parameter gradients are computed and accumulated every step; ResNet-38 itself fixes conv1a, b2 and BatchNorm in both).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import (
    NUM_CLASSES,
    BenchConfig,
    autocast,
    free_device_memory,
    median,
    peak_memory_gib,
    random_labels,
    time_calls,
)

LR, WEIGHT_DECAY, MOMENTUM = 0.01, 5e-4, 5e-4  # the reference optimiser (momentum = wt_dec, as OC-CSE passes it)
ERASE_WEIGHT = 0.3  # w(epoch 0)
CGNET_DROPOUT, OC_DROPOUT = (0.3, 0.5), (0.2, 0.2)  # OC-CSE's Net_er / Net_cl


def _batches(config: BenchConfig, device: torch.device, count: int = 4) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    shape = (config.batch, 3, config.crop, config.crop)
    return [
        {
            "image": torch.randn(shape, generator=generator).to(device),
            "label": random_labels(config.batch, NUM_CLASSES - 1, generator).to(device),
        }
        for _ in range(count)
    ]


def _optimizer(net) -> torch.optim.Optimizer:
    from caef.stages.optimization import reference_param_groups

    groups = reference_param_groups(net.backbone, net.classifier.parameters(), LR, WEIGHT_DECAY, head_lr_mult=1.0)
    return torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def _initial_states(config: BenchConfig, workdir: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A saved OC state dict (what ``--model.ordinary_classifier`` points at) and the CGNet's initial weights."""
    from caef.models.cam_net import build_cam_net

    torch.manual_seed(0)
    oc = build_cam_net("resnet38", NUM_CLASSES, width=config.width, dropout=OC_DROPOUT)
    oc_path = workdir / "oc.pth"
    torch.save(oc.state_dict(), oc_path)
    cgnet = build_cam_net("resnet38", NUM_CLASSES, width=config.width, dropout=CGNET_DROPOUT)
    return oc_path, {k: v.clone() for k, v in cgnet.state_dict().items()}


class CaefStep:
    """caef's training step: the real ``CGNetModule`` (no Trainer attached, so its ``log_dict`` is a no-op)."""

    def __init__(self, config: BenchConfig, oc_path: Path, cgnet_state, device: torch.device, bf16: bool, cl: bool):
        from caef.stages.cgnet import CGNetModule

        self.module = CGNetModule(
            ordinary_classifier=str(oc_path), num_classes=NUM_CLASSES, backbone="resnet38",
            backbone_options={"width": config.width, "dropout": list(CGNET_DROPOUT)},
            ordinary_classifier_options={"width": config.width, "dropout": list(OC_DROPOUT)},
            erase_weight_init=ERASE_WEIGHT, erase_weight_slope=0.05, lr=LR, weight_decay=WEIGHT_DECAY,
            momentum=MOMENTUM, head_lr_mult=1.0, channels_last=cl,
        )  # fmt: skip
        self.module.net.load_state_dict(cgnet_state)
        self.module.to(device).train()
        self.optimizer = _optimizer(self.module.net)
        self.device, self.bf16 = device, bf16

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.bf16):
            loss = self.module.training_step(batch, 0)
        loss.backward()
        self.optimizer.step()
        return loss


class ReferenceStep:
    """OC-CSE's update, written out as the reference does it (see the module docstring)."""

    def __init__(self, config: BenchConfig, oc_path: Path, cgnet_state, device: torch.device):
        from caef.models.cam_net import build_cam_net

        self.cgnet = build_cam_net("resnet38", NUM_CLASSES, width=config.width, dropout=CGNET_DROPOUT)
        self.cgnet.load_state_dict(cgnet_state)
        self.oc = build_cam_net("resnet38", NUM_CLASSES, width=config.width, dropout=OC_DROPOUT)
        self.oc.load_state_dict(torch.load(oc_path, map_location="cpu"))
        self.cgnet.to(device).train()
        self.oc.to(device).eval()  # no requires_grad_(False): its parameter gradients are computed, as in OC-CSE
        self.optimizer = _optimizer(self.cgnet)
        self.bce = torch.nn.BCEWithLogitsLoss()
        self.device = device

    def split_label(self, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        label_mask = torch.zeros_like(label)
        label_remain = label.clone()
        for i in range(label.shape[0]):
            label_idx = torch.nonzero(label[i], as_tuple=False)
            rand_idx = torch.randint(0, len(label_idx), (1,))
            target = label_idx[rand_idx][0]
            label_remain[i, target] = 0
            label_mask[i, target] = 1
        return label_mask, label_remain

    def __call__(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        img, label = batch["image"], batch["label"]
        label_mask, label_remain = self.split_label(label)
        self.optimizer.zero_grad()
        cam = self.cgnet(img)
        out = self.cgnet.logits(cam)
        mask = cam[label_mask == 1, :, :].unsqueeze(1)
        mask = F.interpolate(mask, img.shape[2:], mode="bilinear", align_corners=False)
        mask = F.relu(mask)
        mask = mask / (mask.max() + 1e-5)
        out_cl = self.oc.logits(self.oc(img * (1 - mask)))
        loss = self.bce(out, label) + ERASE_WEIGHT * self.bce(out_cl, label_remain)
        loss.backward()
        self.optimizer.step()
        return loss


def count_flops(step, batch) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step(batch)
    return float(counter.get_total_flops())


def _measure(name: str, make_step, config: BenchConfig, device: torch.device, batches) -> dict[str, Any]:
    free_device_memory(device)
    step = make_step()
    calls = iter(range(1 << 62))

    def one_step() -> None:
        step(batches[next(calls) % len(batches)])

    times = time_calls(one_step, device, config.warmup, config.repeats, config.train_steps)
    result: dict[str, Any] = {
        "step_seconds": times,
        "step_seconds_median": median(times),
        "images_per_s": config.batch / median(times),
        "peak_memory_gib": peak_memory_gib(device),  # weights + gradients + optimiser state + activations
    }
    result["flops_per_step"] = count_flops(step, batches[0])
    result["achieved_tflops"] = result["flops_per_step"] / result["step_seconds_median"] / 1e12
    step = None  # free the models before the next measurement
    free_device_memory(device)
    return result


def run(config: BenchConfig, device: torch.device, channels_last: str = "auto") -> dict[str, Any]:
    """Both steps on ``device``, one after the other (each alone in memory, so each peak is its own)."""
    warnings.filterwarnings("ignore", message=".*self.trainer. reference is not registered.*")
    bf16 = device.type == "cuda"
    want_cl = {"auto": device.type == "cuda", "on": True, "off": False}[channels_last]
    batches = _batches(config, device)
    out: dict[str, Any] = {"batch": config.batch, "crop": config.crop, "width": config.width}
    with tempfile.TemporaryDirectory(prefix="caef-bench-") as workdir:
        oc_path, cgnet_state = _initial_states(config, Path(workdir))

        def make_caef(cl: bool):
            return lambda: CaefStep(config, oc_path, cgnet_state, device, bf16, cl)

        cl_note = None
        try:
            out["caef"] = _measure("caef", make_caef(want_cl), config, device, batches)
        except (RuntimeError, NotImplementedError) as exc:
            if not want_cl or "out of memory" in str(exc):
                raise
            cl_note = f"channels_last failed ({type(exc).__name__}: {str(exc)[:120]}); fell back to contiguous"
            want_cl = False
            out["caef"] = _measure("caef", make_caef(False), config, device, batches)
        out["caef"].update(
            {"bf16_autocast": bf16, "channels_last": want_cl, "frozen_oc": True, "note": cl_note}
        )  # fmt: skip
        out["reference"] = _measure(
            "reference", lambda: ReferenceStep(config, oc_path, cgnet_state, device), config, device, batches
        )
        out["reference"].update({"bf16_autocast": False, "channels_last": False, "frozen_oc": False})
    out["speedup"] = out["caef"]["images_per_s"] / out["reference"]["images_per_s"]
    return out
