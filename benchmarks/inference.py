"""(b) Multi-scale + flip CAM inference (scales 0.5/1/1.5/2, with flips) on equal-size images.

caef: :func:`caef.stages.cam_inference.multiscale_cams` (one forward per scale for all images of the batch and
their flips), fp32 and, on CUDA, under bf16 autocast (+ channels_last where it works; on CPU the bf16 maps are
computed for the numerics check only, as CPU bf16 convolutions are slow and caef infers in fp32 there).
Reference: OC-CSE's ``infer_msf`` / PSA's ``infer_cls`` loop, one forward per variant per image: for each image,
scale and flip: resize, forward, upsample to the image, ReLU, flip back, accumulate; then keep the image's classes
and divide each by its max.
Numerics: max |caef - loop| over the normalised maps of the present classes, against two fp32 loops: the timed one
(its inputs resized by caef's ``resize_images``, as caef's batch is: this isolates the batching) and one whose inputs
are the reference's own, ``PIL.Image.resize(..., BICUBIC)`` of the uint8 image then normalisation (this adds the
difference between caef's resize and Pillow's).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    NUM_CLASSES,
    BenchConfig,
    autocast,
    free_device_memory,
    median,
    normalize_image,
    random_labels,
    synthetic_image,
    time_calls,
)

SCALES = (0.5, 1.0, 1.5, 2.0)


@torch.no_grad()
def reference_loop_cams(
    net, images: torch.Tensor, labels: torch.Tensor, scales=SCALES, scaled_input=None
) -> torch.Tensor:
    """One forward per (image, scale, flip), accumulated per image, as the reference does. ``scaled_input(i, size)``
    gives image ``i``'s input at ``size`` (default: caef's ``resize_images`` of the normalised image)."""
    from caef.stages.cam_inference import resize_images, scaled_size

    if scaled_input is None:
        scaled_input = lambda i, size: resize_images(images[i : i + 1], size)  # noqa: E731
    out = []
    height, width = images.shape[-2:]
    for index, label in enumerate(labels):
        total = None
        for scale in scales:
            x = scaled_input(index, scaled_size(height, width, scale))
            for flip in (False, True):
                cam = net(x.flip(-1) if flip else x)
                cam = torch.nn.functional.interpolate(cam, (height, width), mode="bilinear", align_corners=False)
                cam = torch.relu(cam)[0]
                if flip:
                    cam = cam.flip(-1)
                total = cam if total is None else total + cam
        total = total * label[:, None, None]
        out.append(total / (total.amax(dim=(1, 2), keepdim=True) + 1e-5))
    return torch.stack(out)


def pil_input(pixels: list[np.ndarray], device: torch.device):
    """The reference's scaled inputs: ``PIL.Image.resize(..., BICUBIC)`` of the uint8 image, then normalisation."""
    from PIL import Image

    def scaled_input(index: int, size: tuple[int, int]) -> torch.Tensor:
        image = pixels[index]
        if size != image.shape[:2]:
            image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC))
        return normalize_image(image)[None].to(device)

    return scaled_input


def _max_abs_diff(cams: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> float:
    present = labels > 0
    return float((cams.float() - reference.float()).abs()[present].max())


def run(config: BenchConfig, device: torch.device, channels_last: str = "auto") -> dict[str, Any]:
    free_device_memory(device)
    try:
        return _run(config, device, channels_last)
    finally:
        free_device_memory(device)


def _run(config: BenchConfig, device: torch.device, channels_last: str) -> dict[str, Any]:
    from caef.models.cam_net import build_cam_net
    from caef.stages.cam_inference import multiscale_cams

    torch.manual_seed(1)
    net = build_cam_net("resnet38", NUM_CLASSES, width=config.width).to(device).eval()
    generator = torch.Generator().manual_seed(1)
    height, width, batch = config.image_height, config.image_width, config.msf_batch
    pixels = [synthetic_image(height, width, seed) for seed in range(batch)]
    images = torch.stack([normalize_image(image) for image in pixels]).to(device)
    labels = random_labels(batch, NUM_CLASSES - 1, generator).to(device)

    want_cl = {"auto": device.type == "cuda", "on": True, "off": False}[channels_last]
    cl_net = net
    if want_cl:
        import copy

        cl_net = copy.deepcopy(net).to(memory_format=torch.channels_last)

    def caef_fn(model, bf16: bool, cl: bool):
        memory_format = torch.channels_last if cl else torch.contiguous_format

        def cam_fn(x: torch.Tensor) -> torch.Tensor:
            return model(x.contiguous(memory_format=memory_format))

        def call() -> torch.Tensor:
            with autocast(device, bf16):
                return multiscale_cams(cam_fn, images, labels, SCALES, flip=True)

        return call

    variants = {"caef_fp32": caef_fn(net, False, False), "caef_bf16": caef_fn(cl_net, True, want_cl)}
    note = None
    out: dict[str, Any] = {
        "images": batch, "height": height, "width": width, "scales": list(SCALES), "flip": True,
        "forwards_per_batch": {"caef": len(SCALES), "reference": 2 * len(SCALES) * batch},
    }  # fmt: skip
    reference_fn = lambda: reference_loop_cams(net, images, labels)  # noqa: E731
    reference = reference_fn()
    reference_pil = reference_loop_cams(net, images, labels, scaled_input=pil_input(pixels, device))
    out["reference"] = _timed(reference_fn, config, device, batch)
    for name, fn in variants.items():
        try:
            cams = fn()
        except (RuntimeError, NotImplementedError) as exc:
            if name != "caef_bf16" or not want_cl or "out of memory" in str(exc):
                raise
            note = f"channels_last failed ({type(exc).__name__}); bf16 without it"
            fn = caef_fn(net, True, False)
            want_cl = False
            cams = fn()
        if name == "caef_bf16" and device.type != "cuda":  # caef infers in fp32 on CPU: numerics only
            out[name] = {"images_per_s": None, "speedup": None, "timed": False}
        else:
            out[name] = _timed(fn, config, device, batch)
            out[name]["speedup"] = out[name]["images_per_s"] / out["reference"]["images_per_s"]
        out[name]["max_abs_diff_vs_reference_fp32"] = _max_abs_diff(cams, reference, labels)
        out[name]["max_abs_diff_vs_pil_reference_fp32"] = _max_abs_diff(cams, reference_pil, labels)
    out["caef_bf16"].update({"channels_last": want_cl, "note": note})
    return out


def _timed(fn, config: BenchConfig, device: torch.device, batch: int) -> dict[str, Any]:
    times = time_calls(fn, device, max(1, config.warmup - 1), config.repeats)
    return {"batch_seconds": times, "batch_seconds_median": median(times), "images_per_s": batch / median(times)}
