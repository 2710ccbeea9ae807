"""Augmentation recipes: shapes, padding values, nearest-neighbour masks, resize range, flips, normalisation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from caef.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentationConfig,
    denormalize,
    eval_transform,
    train_transform,
)


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def seeded(config: AugmentationConfig, seed: int):
    transform = train_transform(config)
    transform.set_random_seed(seed)
    return transform


@pytest.mark.parametrize(
    "config, hw",
    [
        (AugmentationConfig(), (50, 70)),  # the reference recipe: long side 256..448, crop 384
        (AugmentationConfig(crop_size=32, resize_long=(40, 56)), (60, 30)),
        (AugmentationConfig(crop_size=24, resize_long=None, color_jitter=None), (30, 41)),
        (AugmentationConfig(crop_size=64, resize_long=None, flip=False, color_jitter=None), (20, 90)),
    ],
)
def test_train_output_shapes(config: AugmentationConfig, hw: tuple[int, int]) -> None:
    mask = np.random.default_rng(1).integers(0, 4, hw, dtype=np.uint8)
    out = seeded(config, 0)(image=image(*hw), mask=mask)
    crop = config.crop_size
    assert isinstance(out["image"], torch.Tensor) and out["image"].dtype == torch.float32
    assert tuple(out["image"].shape) == (3, crop, crop)
    assert tuple(out["mask"].shape) == (crop, crop)
    assert set(torch.unique(out["mask"]).tolist()) <= {0, 1, 2, 3, 255}
    only_image = seeded(config, 0)(image=image(*hw))
    assert tuple(only_image["image"].shape) == (3, crop, crop)


@pytest.mark.parametrize("seed", range(4))
def test_small_image_padded_with_zero_and_ignore(seed: int) -> None:
    config = AugmentationConfig(crop_size=40, resize_long=None, flip=False, color_jitter=None)
    rgb = np.full((16, 24, 3), 250, np.uint8)  # normalises to clearly non-zero values in every channel
    mask = np.full((16, 24), 2, np.uint8)
    out = seeded(config, seed)(image=rgb, mask=mask)
    img, msk = out["image"].numpy(), out["mask"].numpy()
    inside = msk != 255
    assert inside.sum() == 16 * 24 and set(np.unique(msk[inside]).tolist()) == {2}
    ys, xs = np.nonzero(inside)
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (16, 24)  # one block: the original image
    assert (img[:, ~inside] == 0).all()  # the mean colour in normalised space
    expected = (250 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(img[:, inside].mean(axis=1), expected, atol=1e-4)
    assert (np.abs(img[:, inside]) > 1).all()


@pytest.mark.parametrize("seed", range(3))
def test_black_crop_fill_pads_with_black_pixels_before_normalisation(seed: int) -> None:
    """PSA's AffinityNet crop: the image is padded with 0-valued pixels, i.e. -mean/std once normalised."""
    config = AugmentationConfig(crop_size=40, resize_long=None, flip=False, color_jitter=None, crop_fill="black")
    out = seeded(config, seed)(image=np.full((16, 24, 3), 250, np.uint8), mask=np.full((16, 24), 2, np.uint8))
    img, msk = out["image"].numpy(), out["mask"].numpy()
    inside = msk != 255
    assert inside.sum() == 16 * 24
    black = -np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(img[:, ~inside].T, np.broadcast_to(black, ((~inside).sum(), 3)), atol=1e-5)
    expected = (250 / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(img[:, inside].mean(axis=1), expected, atol=1e-4)


def test_padding_position_is_random() -> None:
    config = AugmentationConfig(crop_size=40, resize_long=None, flip=False, color_jitter=None)
    corners = set()
    for seed in range(12):
        msk = seeded(config, seed)(image=image(16, 24), mask=np.zeros((16, 24), np.uint8))["mask"].numpy()
        ys, xs = np.nonzero(msk != 255)
        corners.add((int(ys.min()), int(xs.min())))
    assert len(corners) > 1


@pytest.mark.parametrize("resize_long, hw", [((90, 110), (50, 70)), ((20, 28), (60, 80)), ((57, 57), (41, 33))])
def test_mask_resize_is_nearest_neighbour(resize_long: tuple[int, int], hw: tuple[int, int]) -> None:
    # crop no larger than the resized short side: no padding, so every output value must come from the input
    short = int(resize_long[0] * min(hw) / max(hw))
    config = AugmentationConfig(crop_size=short - 1, resize_long=resize_long)
    rng = np.random.default_rng(0)
    values = np.array([0, 3, 7, 255], np.uint8)
    fine = values[rng.integers(0, 4, hw)]  # per-pixel noise: any interpolation would create 1, 2, 5, 131, ...
    blocky = np.kron(values[rng.integers(0, 4, (hw[0] // 5 + 1, hw[1] // 5 + 1))], np.ones((5, 5), np.uint8))
    for mask in (fine, blocky[: hw[0], : hw[1]]):
        for seed in range(3):
            out = seeded(config, seed)(image=image(*hw), mask=mask)["mask"]
            assert out.dtype == torch.uint8
            assert set(torch.unique(out).tolist()) <= set(np.unique(mask).tolist())


def test_random_long_side_resize_within_range() -> None:
    low, high = 40, 60
    config = AugmentationConfig(crop_size=72, resize_long=(low, high), color_jitter=None)  # crop > max: nothing cut
    h, w = 30, 45
    longs = []
    for seed in range(16):
        msk = seeded(config, seed)(image=image(h, w), mask=np.zeros((h, w), np.uint8))["mask"].numpy()
        ys, xs = np.nonzero(msk != 255)  # the resized image is the un-padded block
        rh, rw = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert (msk[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] == 0).all()
        assert low <= rw <= high  # the long side
        assert abs(rh - rw * h / w) <= 1  # aspect ratio kept
        longs.append(rw)
    assert len(set(longs)) >= 4  # drawn at random, not a fixed size


def test_flip_happens_sometimes() -> None:
    config = AugmentationConfig(crop_size=20, resize_long=None, flip=True, color_jitter=None)
    mask = np.zeros((20, 20), np.uint8)
    mask[:, :6] = 1  # left stripe
    outcomes = []
    for seed in range(16):
        out = seeded(config, seed)(image=image(20, 20), mask=mask)["mask"].numpy()
        if (out == mask).all():
            outcomes.append("same")
        elif (out == mask[:, ::-1]).all():
            outcomes.append("flipped")
        else:
            pytest.fail(f"seed {seed}: neither the input nor its mirror image")
    assert "same" in outcomes and "flipped" in outcomes
    no_flip = AugmentationConfig(crop_size=20, resize_long=None, flip=False, color_jitter=None)
    for seed in range(4):
        assert (seeded(no_flip, seed)(image=image(20, 20), mask=mask)["mask"].numpy() == mask).all()


def test_image_and_mask_augmented_together() -> None:
    """Flip, resize and crop move image and mask alike: a red object keeps its mask label."""
    config = AugmentationConfig(crop_size=32, resize_long=(48, 64), color_jitter=None)
    rgb = np.zeros((40, 50, 3), np.uint8)
    mask = np.zeros((40, 50), np.uint8)
    rgb[5:30, 4:20] = (255, 0, 0)
    mask[5:30, 4:20] = 1
    for seed in range(8):
        out = seeded(config, seed)(image=rgb, mask=mask)
        red = denormalize(out["image"][None])[0][..., 0] > 128
        labelled = out["mask"].numpy() == 1
        # away from the object's edge (bicubic blends it over a pixel or two) the two agree exactly
        padded = np.pad(labelled, 2, mode="edge")
        window = np.stack([padded[dy : dy + 32, dx : dx + 32] for dy in range(5) for dx in range(5)])
        interior = window.all(axis=0) | ~window.any(axis=0)
        assert interior.sum() > 500
        assert (red[interior] == labelled[interior]).all(), f"seed {seed}: image and mask moved apart"


def test_eval_transform_normalises_with_imagenet_stats() -> None:
    rgb = np.zeros((5, 7, 3), np.uint8)
    rgb[2, 3] = (255, 0, 128)
    out = eval_transform()(image=rgb)["image"]
    assert tuple(out.shape) == (3, 5, 7) and out.dtype == torch.float32
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(out[:, 2, 3].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(out[:, 0, 0].numpy(), [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225], atol=1e-5)


def test_eval_transform_keeps_size_and_is_deterministic() -> None:
    rgb = image(33, 47)
    a, b = eval_transform()(image=rgb)["image"], eval_transform()(image=rgb)["image"]
    assert tuple(a.shape) == (3, 33, 47) and torch.equal(a, b)


def test_denormalize_round_trip() -> None:
    rgb = np.stack([image(19, 23, seed) for seed in range(3)])
    batch = torch.stack([eval_transform()(image=x)["image"] for x in rgb])
    back = denormalize(batch)
    assert back.shape == (3, 19, 23, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(int) - rgb.astype(int)).max() <= 1
    assert denormalize(torch.full((1, 3, 2, 2), 50.0)).max() == 255  # clamped, not wrapped


@pytest.mark.parametrize(
    "kwargs",
    [
        {"crop_size": 0},
        {"crop_size": -8},
        {"resize_long": (0, 10)},
        {"resize_long": (-5, 10)},
        {"resize_long": (300, 200)},
        {"crop_fill": "white"},
    ],
)
def test_bad_augmentation_config(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="crop_size|resize_long|crop_fill"):
        AugmentationConfig(**kwargs)


def test_no_albumentations_warnings() -> None:
    configs = [
        AugmentationConfig(),
        AugmentationConfig(crop_size=32, resize_long=(24, 40)),
        AugmentationConfig(crop_size=16, resize_long=None, flip=False, color_jitter=None),
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for config in configs:
            transform = train_transform(config)
            transform(image=image(30, 40), mask=np.zeros((30, 40), np.uint8))
            transform(image=image(30, 40))
        eval_transform()(image=image(30, 40))
    noisy = [w for w in caught if "albumentations" in (w.filename or "") or "albumentations" in str(w.message)]
    assert not noisy, [str(w.message) for w in noisy]


def test_random_resize_is_pils_bicubic_as_the_reference() -> None:
    """PSA's RandomResizeLong / OC-CSE's random_resize: PIL bicubic (antialiased when shrinking) to a long side drawn
    in the range, the short side rounded; OpenCV's bicubic differs by tens of grey levels on a noisy image."""
    from PIL import Image

    config = AugmentationConfig(crop_size=64, resize_long=(30, 50), flip=False, color_jitter=None, crop_fill="black")
    rgb = image(45, 60, seed=3)
    for seed in range(4):
        out = seeded(config, seed)(image=rgb, mask=np.zeros((45, 60), np.uint8))
        ys, xs = np.nonzero(out["mask"].numpy() != 255)
        rh, rw = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
        assert rh == int(round(45 * rw / 60))
        expected = np.asarray(Image.fromarray(rgb).resize((rw, rh), Image.BICUBIC)).astype(np.float32)
        block = out["image"][:, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].numpy().transpose(1, 2, 0)
        pixels = (block * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255
        np.testing.assert_allclose(pixels, expected, atol=1e-3)
