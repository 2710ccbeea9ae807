"""Drawing one generated image: textured background, objects with a weak-cue body and a strong-cue head."""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np

from caef.data.synthetic.config import SynthConfig


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


@dataclass(frozen=True)
class _ClassLook:
    kind: int  # index into TEXTURES
    angle: float  # body texture orientation (image frame, radians)
    period: float  # body texture period in pixels
    colours: tuple[np.ndarray, np.ndarray]  # head ring colours
    rings: int


def class_look(config: SynthConfig, c: int) -> _ClassLook:
    rng = np.random.default_rng([config.seed, 10**6 + c])
    n_orient = -(-config.num_classes // 3)
    angle = math.pi * (c // 3) / n_orient + rng.uniform(-0.04, 0.04)
    period = config.size * rng.uniform(0.045, 0.075)
    hue = (c + rng.uniform(-0.15, 0.15)) / config.num_classes
    colours = (
        _hsv(hue, rng.uniform(0.85, 1.0), rng.uniform(0.85, 1.0)),
        _hsv(hue + 1 / 3, rng.uniform(0.85, 1.0), rng.uniform(0.75, 1.0)),
    )
    return _ClassLook(c % 3, angle, period, colours, int(rng.integers(2, 4)))


def _value_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth colour noise: a (cells+1)^2 random grid upsampled with smoothstep interpolation, (size, size, 3)."""
    grid = rng.standard_normal((cells + 1, cells + 1, 3), dtype=np.float32)
    u = (np.arange(size) + 0.5) * (cells / size)
    i = np.minimum(u.astype(np.int64), cells - 1)
    t = u - i
    weights = np.zeros((size, cells + 1), np.float32)  # separable interpolation as two small products
    weights[np.arange(size), i], weights[np.arange(size), i + 1] = 1 - t * t * (3 - 2 * t), t * t * (3 - 2 * t)
    return (weights @ grid.transpose(2, 0, 1) @ weights.T).transpose(1, 2, 0)


def _background(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    img = _hsv(rng.uniform(), rng.uniform(0.1, 0.5), rng.uniform(0.35, 0.8)) + np.zeros((size, size, 3), np.float32)
    img += 0.12 * _value_noise(rng, size, 3) + 0.05 * _value_noise(rng, size, 10)
    for _ in range(int(rng.integers(2, 6))):  # soft blotches
        cy, cx = rng.uniform(0, size, 2).tolist()
        sigma = size * rng.uniform(0.05, 0.2)
        a = rng.uniform(0.2, 0.6) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        img += a[..., None] * (_hsv(rng.uniform(), rng.uniform(0.1, 0.6), rng.uniform(0.2, 0.9)) - img)
    for _ in range(int(rng.integers(1, 4))):  # faint lines
        cy, cx = rng.uniform(0, size, 2).tolist()
        theta, width = rng.uniform(0, math.pi), rng.uniform(0.5, 1.5)
        dist = np.abs((xx - cx) * math.sin(theta) - (yy - cy) * math.cos(theta))
        a = rng.uniform(0.1, 0.3) * np.clip(width - dist + 0.5, 0, 1)
        img += a[..., None] * (_hsv(rng.uniform(), rng.uniform(0, 0.4), rng.uniform(0.1, 0.9)) - img)
    return img


def _texture(look: _ClassLook, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """The class body texture in [-1, 1], in image coordinates (its orientation is part of the class cue)."""
    theta = look.angle + rng.uniform(-0.06, 0.06)
    period = look.period * rng.uniform(0.92, 1.08)
    s = (xx * math.cos(theta) + yy * math.sin(theta)) / period + rng.uniform()
    t = (-xx * math.sin(theta) + yy * math.cos(theta)) / period + rng.uniform()
    if look.kind == 0:  # stripes
        return np.sin(2 * np.pi * s)
    if look.kind == 1:  # rectangular dot lattice (1 x 1.7 periods, so orientation matters)
        f = (1 + np.cos(2 * np.pi * s)) * (1 + np.cos(2 * np.pi * t / 1.7)) / 4
        return np.tanh(6 * (f - 0.3))
    tri = 2 * np.abs(t / 1.5 - np.floor(t / 1.5 + 0.5))  # zigzag stripes
    return np.sin(2 * np.pi * (s + 0.6 * tri))


# -- one image -----------------------------------------------------------------------------------------------------
def _draw_object(rng: np.random.Generator, config: SynthConfig, yy: np.ndarray, xx: np.ndarray) -> dict:
    """Geometry of one object: body signed distance, head disc (or none), class, full area."""
    size = config.size
    cls = int(rng.integers(1, config.num_classes + 1))
    amps = (rng.uniform(0, 0.12, 4) * np.array([1.0, 0.8, 0.6, 0.4])).tolist()  # python floats keep arrays float32
    phases = rng.uniform(0, 2 * np.pi, 4).tolist()
    area = rng.uniform(0.08, 0.25) * size * size
    radius = math.sqrt(area / (math.pi * (1 + 0.5 * sum(a * a for a in amps))))
    aspect, rot = math.exp(rng.uniform(-0.35, 0.35)), rng.uniform(0, 2 * math.pi)
    cy, cx = (rng.uniform(0.2, 0.8, 2) * size).tolist()
    dx, dy = xx - cx, yy - cy
    u = (dx * math.cos(rot) + dy * math.sin(rot)) / aspect
    v = (-dx * math.sin(rot) + dy * math.cos(rot)) * aspect

    def rim(angle: np.ndarray) -> np.ndarray:
        return radius * (1 + sum(a * np.cos(k * angle + p) for a, k, p in zip(amps, range(2, 6), phases)))

    body = rim(np.arctan2(v, u)) - np.hypot(u, v)  # > 0 inside, ~pixels
    head_r = math.sqrt(rng.uniform(0.08, 0.15) * area / math.pi)
    angles = rng.uniform(0, 2 * math.pi, 8)
    rho = np.maximum(rim(angles) - 1.3 * head_r * max(aspect, 1 / aspect), 0.3 * rim(angles))
    hu, hv = rho * np.cos(angles) * aspect, rho * np.sin(angles) / aspect
    hx = cx + hu * math.cos(rot) - hv * math.sin(rot)
    hy = cy + hu * math.sin(rot) + hv * math.cos(rot)
    inside = (np.minimum(hx, hy) > 0.5 * head_r) & (np.maximum(hx, hy) < size - 0.5 * head_r)
    pick = int(np.argmax(inside)) if inside.any() else int(np.argmin(np.hypot(hx - size / 2, hy - size / 2)))
    drawn = bool(rng.uniform() >= config.hidden_part_prob)
    head = (head_r - np.hypot(xx - float(hx[pick]), yy - float(hy[pick]))) if drawn else None
    hard = (body > 0) | (head > 0) if drawn else body > 0
    return {
        "class": cls,
        "body": body,
        "head": head,
        "head_r": head_r,
        "hard": hard,
        "area": area,
        "rng": np.random.default_rng(int(rng.integers(2**63))),
    }


def _bbox(mask: np.ndarray) -> list[int] | None:
    ys, xs = np.nonzero(mask)
    return None if ys.size == 0 else [int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1]


def _ignore_band(label: np.ndarray, width: int) -> np.ndarray:
    lo = hi = label
    for axis in (0, 1):
        pad = [(width, width) if a == axis else (0, 0) for a in (0, 1)]
        plo, phi = np.pad(lo, pad, mode="edge"), np.pad(hi, pad, mode="edge")
        n = label.shape[axis]
        lo = np.min([np.take(plo, range(o, o + n), axis=axis) for o in range(2 * width + 1)], axis=0)
        hi = np.max([np.take(phi, range(o, o + n), axis=axis) for o in range(2 * width + 1)], axis=0)
    return np.where(lo != hi, 255, label).astype(np.uint8)


def render(
    config: SynthConfig, index: int, looks: list[_ClassLook] | None = None
) -> tuple[np.ndarray, np.ndarray, list]:
    """Image ``index``: RGB uint8 (H, W, 3), class mask uint8 (H, W) and per-object metadata (in z-order)."""
    looks = looks or [class_look(config, c) for c in range(config.num_classes)]
    rng = np.random.default_rng([config.seed, index])
    size = config.size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + np.float32(0.5)
    img = _background(rng, size, yy, xx)
    for _attempt in range(20):
        objs = [_draw_object(rng, config, yy, xx) for _ in range(int(rng.integers(1, config.max_objects + 1)))]
        while objs:  # drop the least visible object until every remaining one keeps enough visible area
            covered = np.zeros((size, size), bool)
            for obj in reversed(objs):
                obj["visible"] = obj["hard"] & ~covered
                covered |= obj["hard"]
            ratios = [int(o["visible"].sum()) / o["area"] for o in objs]
            worst = int(np.argmin(ratios))
            if ratios[worst] >= config.min_visible:
                break
            objs.pop(worst)
        if objs:
            break
    else:
        raise ValueError(f"synthetic image {index}: no placement keeps min_visible={config.min_visible}; lower it")
    label = np.zeros((size, size), np.uint8)
    meta = []
    for obj in objs:
        look, orng = looks[obj["class"] - 1], obj["rng"]
        fill = _hsv(orng.uniform(), orng.uniform(0.15, 0.55), orng.uniform(0.35, 0.75))
        gx, gy = (orng.normal(0, 1, 2) * (0.12 / math.sqrt(obj["area"] / math.pi))).tolist()
        shade = 1 + gx * (xx - size / 2) + gy * (yy - size / 2)
        contrast = config.body_contrast * orng.uniform(0.7, 1.3)
        body = fill * shade[..., None] + contrast * _texture(look, orng, yy, xx)[..., None]
        body += 0.06 * _value_noise(orng, size, 6)  # mottling, so the texture is not a clean signal
        alpha = np.clip(obj["body"] + 0.5, 0, 1)[..., None]
        img = img * (1 - alpha) + body * alpha
        head_vis = None
        if obj["head"] is not None:
            dist = obj["head_r"] - obj["head"]
            ring = (np.floor(dist / (obj["head_r"] / (look.rings + 0.5))) % 2)[..., None]
            paint = look.colours[0] * (1 - ring) + look.colours[1] * ring
            alpha = np.clip(obj["head"] + 0.5, 0, 1)[..., None]
            img = img * (1 - alpha) + paint * alpha
            head_vis = (obj["head"] > 0) & obj["visible"]
        label[obj["visible"]] = obj["class"]
        edge = obj["hard"]  # touching the frame: truncated
        meta.append(
            {
                "class": obj["class"],
                "name": None,
                "bbox": _bbox(obj["visible"]),
                "area": int(obj["visible"].sum()),
                "truncated": bool(edge[0].any() or edge[-1].any() or edge[:, 0].any() or edge[:, -1].any()),
                "head": obj["head"] is not None,
                "head_visible": 0 if head_vis is None else int(head_vis.sum()),
                "head_bbox": None if head_vis is None else _bbox(head_vis),
            }
        )
    img += config.noise * rng.standard_normal(img.shape, dtype=np.float32)
    rgb = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    if config.ignore_border:
        label = _ignore_band(label, config.ignore_border)
    return rgb, label, meta
