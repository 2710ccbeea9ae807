"""Batched multi-scale + flip CAM inference equals the reference's one-forward-per-variant loop."""

import pytest
import torch
import torch.nn.functional as F

from caef.models.cam_net import build_cam_net
from caef.stages.cam_inference import multiscale_cams, normalize_per_class, scaled_size


def per_variant_loop(net, images, labels, scales, flip):
    """The reference's recipe written plainly: every image, every scale, every flip, one forward each."""
    outputs = []
    for image in images:
        height, width = image.shape[-2:]
        total = torch.zeros(net.num_foreground, height, width)
        for scale in scales:
            size = scaled_size(height, width, scale)
            x = (
                image[None]
                if size == (height, width)
                else F.interpolate(image[None], size, mode="bicubic", align_corners=False)
            )
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
    images = torch.randn(3, 3, 37, 45)
    labels = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 1, 1]])
    scales = (0.5, 1.0, 1.5, 2.0)
    batched = multiscale_cams(net, images, labels, scales, flip)
    with torch.no_grad():
        looped = per_variant_loop(net, images, labels, scales, flip)
    assert batched.shape == (3, 3, 37, 45)
    torch.testing.assert_close(batched, looped, atol=1e-5, rtol=1e-4)


def test_normalised_maps_are_in_unit_range_and_zero_for_absent_classes():
    torch.manual_seed(1)
    net = build_cam_net("resnet38", 3, width=0.0625).eval()
    labels = torch.tensor([[1.0, 0.0]])
    cams = multiscale_cams(net, torch.randn(1, 3, 32, 32), labels)
    assert cams.min() >= 0 and cams.max() <= 1
    assert cams[0, 1].abs().max() == 0
    assert cams[0, 0].max() == pytest.approx(1.0, abs=1e-3) or cams[0, 0].max() == 0
