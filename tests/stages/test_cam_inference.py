"""Batched multi-scale + flip CAM inference equals the reference's one-forward-per-variant loop, on the reference's
inputs (Pillow bicubic on the uint8 image, then normalisation)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from caef.data.transforms import eval_transform
from caef.models.cam_net import build_cam_net
from caef.stages.cam_inference import DEFAULT_SCALES, multiscale_cams, normalize_per_class, resize_images, scaled_size


def noisy_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Noise on a smooth ramp: both edges and flat regions, the hard case for a resize."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 40, height)[:, None, None]
    return np.clip(ramp + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)


def pil_input(image: np.ndarray, scale: float) -> torch.Tensor:
    """The reference's scaled input: PIL bicubic on the uint8 image, then normalised."""
    height, width = image.shape[:2]
    size = scaled_size(height, width, scale)
    resized = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC))
    return eval_transform()(image=resized)["image"]


def per_variant_loop(net, images, labels, scales, flip):
    """The reference's recipe written plainly: every image, every scale, every flip, one forward each."""
    outputs = []
    for image in images:
        height, width = image.shape[:2]
        total = torch.zeros(net.num_foreground, height, width)
        for scale in scales:
            x = pil_input(image, scale)[None]
            for flipped in (False, True) if flip else (False,):
                xi = x.flip(-1) if flipped else x
                cam = F.relu(F.interpolate(net(xi), (height, width), mode="bilinear", align_corners=False))[0]
                total += cam.flip(-1) if flipped else cam
        outputs.append(total)
    return normalize_per_class(torch.stack(outputs), labels)


@pytest.mark.parametrize("flip", [True, False])
def test_batched_msf_equals_per_variant_loop(flip):
    torch.manual_seed(0)
    net = build_cam_net("resnet38", 4, width=0.0625).eval()
    images = [noisy_image(37, 45, seed) for seed in range(3)]
    batch = torch.stack([eval_transform()(image=image)["image"] for image in images])
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 1]])
    scales = (0.5, 1.0, 1.5, 2.0)
    batched = multiscale_cams(net, batch, labels, scales, flip)
    with torch.no_grad():
        looped = per_variant_loop(net, images, labels, scales, flip)
    assert batched.shape == (3, 3, 37, 45)
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("size", [(75, 101), (120, 160)])
def test_multiscale_inputs_are_pils_bicubic_resize_within_one_grey_level(size):
    """What the network sees at every scale is PIL's bicubic resize of the uint8 image (the reference's input);
    torch's plain bicubic on the normalised tensor was up to ~24 grey levels off at scale 0.5."""
    image = noisy_image(*size)
    normalised = eval_transform()(image=image)["image"][None]
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) * 255
    for scale in DEFAULT_SCALES:
        ours = resize_images(normalised, scaled_size(*size, scale))[0]
        reference = pil_input(image, scale)
        grey_levels = ((ours - reference) * std).abs().max().item()
        assert grey_levels <= 1.0 + 1e-3, f"scale {scale}: {grey_levels:.2f} grey levels from PIL"


def test_normalised_maps_are_in_unit_range_and_zero_for_absent_classes():
    torch.manual_seed(1)
    net = build_cam_net("resnet38", 3, width=0.0625).eval()
    labels = torch.tensor([[1.0, 0.0]])
    cams = multiscale_cams(net, torch.randn(1, 3, 32, 32), labels)
    assert cams.min() >= 0 and cams.max() <= 1
    assert cams[0, 1].abs().max() == 0
    assert cams[0, 0].max() == pytest.approx(1.0, abs=1e-3) or cams[0, 0].max() == 0
