"""Composing one scene: MNIST-family objects, scaled up, coloured and textured per instance, over a textured
background, with bounded occlusion; the mask of an object is its thresholded pixels with holes filled."""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np
from scipy.ndimage import binary_fill_holes

from caef.data.scenes.config import ScenesConfig
from caef.data.scenes.idx import ObjectSet
from caef.errors import DataError

_PLACEMENT_TRIES = 12


def object_mask(glyph: np.ndarray, threshold: float) -> np.ndarray:
    """Pixels of a uint8 object image above ``threshold`` (fraction of 255), with enclosed holes filled."""
    return binary_fill_holes(glyph > threshold * 255)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _noise(rng: np.random.Generator, height: int, width: int, cells: int, channels: int = 3) -> np.ndarray:
    """Smooth noise: a random (cells+1)^2 grid upsampled bicubically, (height, width, channels) float32."""
    grid = rng.standard_normal((cells + 1, cells + 1, channels)).astype(np.float32)
    out = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return out.reshape(height, width, channels)


def _pattern(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A texture in [-1, 1] (stripes, checks or blotchy noise) at a random period and orientation, (h, w)."""
    kind = int(rng.integers(3))
    period = rng.uniform(4.0, 12.0)
    angle = rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u = (xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period)
    if kind == 0:
        return np.sin(u)
    if kind == 1:
        v = (yy * math.cos(angle) - xx * math.sin(angle)) * (2 * math.pi / period)
        return np.sign(np.sin(u) * np.sin(v)).astype(np.float32)
    noise = _noise(rng, height, width, max(2, round(max(height, width) / period)), 1)[..., 0]
    return np.clip(noise, -1.0, 1.0)


def _background(rng: np.random.Generator, size: int, kind: str = "textured") -> np.ndarray:
    img = _hsv(rng.uniform(), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.8)) + np.zeros((size, size, 3), np.float32)
    if kind == "plain":
        return img
    img += 0.10 * _noise(rng, size, size, 3) + 0.05 * _noise(rng, size, size, 12)
    tint = _hsv(rng.uniform(), rng.uniform(0.2, 0.7), rng.uniform(0.3, 0.9)) - img.mean(axis=(0, 1))
    img += rng.uniform(0.05, 0.2) * _pattern(rng, size, size)[..., None] * tint
    return img


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1]


def _place(
    rng: np.random.Generator, objects: ObjectSet, config: ScenesConfig, visible: list[np.ndarray]
) -> dict | None:
    """Draw an object and a position where it hides no earlier object beyond ``min_visible``; None if none fits."""
    size = config.size
    for _ in range(_PLACEMENT_TRIES):
        index = int(rng.integers(len(objects.labels)))
        side = int(rng.integers(config.min_scale, config.max_scale + 1))
        y, x = (int(v) for v in rng.integers(0, size - side + 1, 2))
        glyph = cv2.resize(objects.images[index], (side, side), interpolation=cv2.INTER_CUBIC)  # uint8: saturates
        mask = object_mask(glyph, config.threshold)
        if mask.sum() < 0.05 * side * side:
            continue
        full = np.zeros((size, size), bool)
        full[y : y + side, x : x + side] = mask
        if all((v & ~full).sum() >= config.min_visible * area for v, area in visible):
            return {"index": index, "side": side, "y": y, "x": x, "glyph": glyph, "mask": mask, "full": full}
    return None


def render(config: ScenesConfig, i: int, objects: ObjectSet) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Image ``i``: (RGB uint8 (S, S, 3), mask uint8 (S, S) with class ids 1..C in z-order, per-object metadata)."""
    rng = np.random.default_rng([config.seed, i])
    size = config.size
    img = _background(rng, size, config.background)
    label = np.zeros((size, size), np.uint8)
    placed: list[dict] = []
    visible: list[tuple[np.ndarray, int]] = []  # (visible mask, full area) of the objects so far
    for _ in range(int(rng.integers(1, config.max_objects + 1))):
        obj = _place(rng, objects, config, visible)
        if obj is None:
            break
        visible = [(v & ~obj["full"], area) for v, area in visible] + [(obj["full"], int(obj["mask"].sum()))]
        placed.append(obj)
    if not placed:
        raise DataError(
            f"could not place any object from the {objects.prefix!r} IDX set: its images have (almost) no pixels "
            f"above threshold={config.threshold}; lower --threshold or check the source"
        )
    for obj in placed:  # later objects are painted over earlier ones; the mask follows
        side, y, x, mask = obj["side"], obj["y"], obj["x"], obj["mask"]
        shade = 0.3 + 0.7 * obj["glyph"].astype(np.float32) / 255.0
        texture = 1.0 + config.texture_contrast * _pattern(rng, side, side)
        colour = _hsv(rng.uniform(), rng.uniform(0.25, 0.9), rng.uniform(0.6, 1.0))
        patch = img[y : y + side, x : x + side]
        patch[mask] = ((shade * texture)[..., None] * colour)[mask]
        label[obj["full"]] = int(objects.labels[obj["index"]]) + 1
    img += config.noise * rng.standard_normal(img.shape, dtype=np.float32)
    rgb = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    meta = []
    for obj, (vis, area) in zip(placed, visible):
        meta.append(
            {
                "class": int(objects.labels[obj["index"]]) + 1,
                "source": objects.prefix,
                "source_index": objects.offset + obj["index"],
                "side": obj["side"],
                "bbox": _bbox(vis),
                "visible": round(float(vis.sum()) / area, 4),
                "truncated": False,
            }
        )
    return rgb, label, meta
