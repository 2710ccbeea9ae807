"""caef's torch version of Pillow's bicubic resize against Pillow itself."""

import numpy as np
import pytest
import torch
from PIL import Image

from caef.data.pil_resize import pil_bicubic_resize


@pytest.mark.parametrize(
    ("size", "out"), [((75, 101), (38, 50)), ((75, 101), (112, 152)), ((75, 101), (150, 202)), ((5, 9), (5, 3))]
)
def test_equals_pillow_bit_for_bit_on_landscape_images(size, out):
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    reference = np.asarray(Image.fromarray(image).resize((out[1], out[0]), Image.BICUBIC))
    ours = pil_bicubic_resize(torch.from_numpy(image).permute(2, 0, 1), out).permute(1, 2, 0).numpy()
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, reference)


def test_narrow_portraits_follow_the_horizontal_pass_first_as_pillow_8_did():
    """Pillow 8 (the reference's time) always resampled horizontally first; Pillow 13 goes vertical first when the
    height shrinks more than twice as much as the width. Pillow's one-pass resizes, chained horizontal then vertical,
    are the old two-pass result: caef equals them."""
    image = np.random.default_rng(1).integers(0, 256, (100, 44, 3), dtype=np.uint8)
    wide = Image.fromarray(image).resize((22, 100), Image.BICUBIC)
    old_pillow = np.asarray(wide.resize((22, 50), Image.BICUBIC))
    ours = pil_bicubic_resize(torch.from_numpy(image).permute(2, 0, 1), (50, 22)).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(ours, old_pillow)


def test_batched_and_float_input_give_the_same_pixels():
    images = torch.randint(0, 256, (2, 3, 20, 30), dtype=torch.uint8)
    one = pil_bicubic_resize(images[1], (10, 15))
    both = pil_bicubic_resize(images.float(), (10, 15))
    torch.testing.assert_close(both[1], one)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_device_gives_the_cpus_pixels():
    images = torch.randint(0, 256, (2, 3, 37, 53), dtype=torch.uint8)
    for size in ((18, 26), (56, 80), (74, 106)):
        torch.testing.assert_close(pil_bicubic_resize(images.cuda(), size).cpu(), pil_bicubic_resize(images, size))


def test_mixed_precision_does_not_round_the_pixels():
    """Inside a bf16 autocast region (mixed-precision CAM inference) the weights stay float64: Pillow's pixels."""
    image = np.random.default_rng(2).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    reference = np.asarray(Image.fromarray(image).resize((60, 45), Image.BICUBIC))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = pil_bicubic_resize(torch.from_numpy(image).permute(2, 0, 1).float(), (45, 60))
    np.testing.assert_array_equal(ours.permute(1, 2, 0).numpy(), reference)
