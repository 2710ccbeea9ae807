"""The embedded generated dataset: a PASCAL VOC 2012 tree that reproduces the partial-CAM problem.

VOC and COCO cannot be downloaded everywhere, so ``generate`` writes a small dataset in the exact VOC 2012 layout
(``JPEGImages``, ``Annotations``, ``SegmentationClass[Aug]``, ``ImageSets/Segmentation/{train_aug,train,val}.txt``
plus ``classes.txt`` naming the foreground classes), which the VOC reader loads unchanged.

Why it yields partial CAMs. Every object of class ``c`` has two parts:

* a large irregular **body** (radially perturbed ellipse, 8-25% of the image, random position, scale, rotation)
  filled with a *weak* class cue: a low-contrast texture (stripes, a rectangular dot lattice or zigzags) whose
  orientation and period are class-specific, laid over a base colour drawn from one distribution shared by all
  classes (colour says nothing about the class) with shading and noise;
* a compact **head** (a disc of 8-15% of the body area, inside the body near its rim) painted with saturated,
  high-contrast rings in two class-specific colours: by far the easiest cue.

A classifier minimising its loss latches onto the head, so its CAM peaks there and misses most of the body: the
situation adversarial erasing is meant to fix. With probability ``hidden_part_prob`` the head is not drawn
(occluded or absent), so the body cue is needed too and always suffices to name the class; erasing the head
therefore leaves a learnable signal on the body, which is what a CAM-generation network must learn to cover.

Backgrounds are textured (smooth colour value noise at two scales, soft blotches, faint lines) and differ per image.
Images hold 1..``max_objects`` objects (classes may repeat) in z-order: later objects occlude earlier ones and the
mask follows the visible pixels; an object left with too little visible area is removed before painting. Masks hold
the class index (1..C) on body and head pixels, 0 elsewhere, and optionally a VOC-like 255 band
(``ignore_border``). Per-object metadata (class, bbox, head drawn/visible, head bbox) goes to
``caef_meta/objects.json``; ``caef_synth.json`` is the manifest. Output is byte-identical for the same config.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from caef.data.source import write_mask
from caef.errors import DataError
from caef.io import write_json, write_text

FORMAT = "caef-synth"
FORMAT_VERSION = 1
MANIFEST = "caef_synth.json"
META = "caef_meta/objects.json"
VOC_SUBDIR = "VOCdevkit/VOC2012"
TEXTURES = ("stripes", "dots", "zigzag")


@dataclass(frozen=True)
class SynthConfig:
    num_images: int = 1000
    size: int = 128
    seed: int = 0
    num_classes: int = 6  # foreground classes
    max_objects: int = 3  # objects per image drawn uniformly from 1..max_objects
    val_fraction: float = 0.2
    score_fraction: float = 0.3  # fraction of train_aug also listed in `train` (the CAM scoring split)
    hidden_part_prob: float = 0.25  # probability that an object's head is not drawn
    ignore_border: int = 0  # width of a 255 band around object boundaries in the masks (0: none)
    body_contrast: float = 0.09  # mean amplitude of the body texture (image values in 0..1)
    noise: float = 0.03  # per-pixel Gaussian noise
    min_visible: float = 0.4  # an object must keep this fraction of its area visible, else it is dropped
    jpeg_quality: int = 90

    def validate(self) -> SynthConfig:
        ints = {
            "num_images": (2, None),
            "size": (32, None),
            "seed": (0, None),
            "num_classes": (1, 254),
            "max_objects": (1, None),
            "ignore_border": (0, None),
            "jpeg_quality": (1, 100),
        }
        for name, (low, high) in ints.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= (high or value):
                raise ValueError(f"SynthConfig.{name} must be an integer in {low}..{high or 'inf'}, got {value!r}")
        floats = {
            "val_fraction": "(0, 1)",
            "score_fraction": "(0, 1]",
            "hidden_part_prob": "[0, 1]",
            "body_contrast": "[0, 1]",
            "noise": "[0, 1]",
            "min_visible": "[0, 1]",
        }
        for name, bounds in floats.items():
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1  # False for NaN
            if not ok or (bounds[0] == "(" and value == 0) or (bounds[-1] == ")" and value == 1):
                raise ValueError(f"SynthConfig.{name} must be a number in {bounds}, got {value!r}")
        n_val, _ = _split_sizes(self)
        if n_val < 1 or n_val >= self.num_images:
            raise ValueError(
                f"SynthConfig.val_fraction={self.val_fraction} leaves {n_val} of {self.num_images} "
                "images for val; both val and train_aug need at least one image"
            )
        return self


def _split_sizes(config: SynthConfig) -> tuple[int, int]:
    n_val = round(config.val_fraction * config.num_images)
    n_train_aug = config.num_images - n_val
    return n_val, min(n_train_aug, max(1, round(config.score_fraction * n_train_aug)))


def class_names(num_classes: int) -> tuple[str, ...]:
    """Foreground class names: texture kind and body-texture orientation, e.g. ``stripes_0``, ``dots_90``."""
    n_orient = -(-num_classes // len(TEXTURES))
    return tuple(f"{TEXTURES[c % 3]}_{round(180 * (c // 3) / n_orient)}" for c in range(num_classes))


def describe(config: SynthConfig) -> str:
    n_val, n_train = _split_sizes(config)
    return (
        f"synthetic VOC tree: {config.num_images} images {config.size}x{config.size}, {config.num_classes} "
        f"classes, 1-{config.max_objects} objects/image, head hidden p={config.hidden_part_prob:g}, "
        f"train_aug {config.num_images - n_val} (train {n_train}) / val {n_val}, seed {config.seed}"
    )


def read_manifest(out: str | Path) -> dict | None:
    """The manifest of a generated tree at ``out``, or None where ``out`` holds none."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read synthetic-dataset manifest {path}: {exc}; delete {Path(out)} and regenerate"
        ) from exc
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


# -- appearance ----------------------------------------------------------------------------------------------------
def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


@dataclass(frozen=True)
class _ClassLook:
    kind: int  # index into TEXTURES
    angle: float  # body texture orientation (image frame, radians)
    period: float  # body texture period in pixels
    colours: tuple[np.ndarray, np.ndarray]  # head ring colours
    rings: int


def _class_look(config: SynthConfig, c: int) -> _ClassLook:
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
    looks = looks or [_class_look(config, c) for c in range(config.num_classes)]
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


# -- the tree ------------------------------------------------------------------------------------------------------
def _annotation_xml(image_id: str, size: int, meta: list[dict]) -> str:
    def add(parent: ET.Element, *items: tuple[str, object]) -> None:
        for tag, value in items:
            ET.SubElement(parent, tag).text = str(value)

    root = ET.Element("annotation")
    add(root, ("folder", "VOC2012"), ("filename", f"{image_id}.jpg"))
    add(ET.SubElement(root, "source"), ("database", "caef synthetic"))
    add(ET.SubElement(root, "size"), ("width", size), ("height", size), ("depth", 3))
    add(root, ("segmented", 1))
    for obj in meta:
        node = ET.SubElement(root, "object")
        add(
            node, ("name", obj["name"]), ("pose", "Unspecified"), ("truncated", int(obj["truncated"])), ("difficult", 0)
        )
        add(ET.SubElement(node, "bndbox"), *zip(("xmin", "ymin", "xmax", "ymax"), obj["bbox"]))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def generate(out: str | Path, config: SynthConfig, progress: bool = True) -> Path:
    """Write the dataset tree to ``out`` atomically (replacing a previous generated tree) and return its VOC2012 dir."""
    config.validate()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"cannot generate the synthetic dataset at {out}: it is a file; choose another directory")
    if out.is_dir() and any(out.iterdir()) and read_manifest(out) is None:
        raise DataError(
            f"refusing to generate the synthetic dataset into {out}: the directory is not empty and holds "
            f"no {MANIFEST} from an earlier run; choose an empty or new directory"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        _write_tree(tmp, config, progress)
        if not out.exists():
            os.replace(tmp, out)
        else:  # move the previous (or empty) tree aside, put the new one in place, restore the old one on failure
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / "tree")
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old / "tree", out)
                raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / VOC_SUBDIR


def _write_tree(root: Path, config: SynthConfig, progress: bool) -> None:
    voc = root / VOC_SUBDIR
    dirs = {
        name: voc / name
        for name in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation")
    }
    for d in dirs.values():
        d.mkdir(parents=True)
    names = class_names(config.num_classes)
    looks = [_class_look(config, c) for c in range(config.num_classes)]
    ids = [f"synth_{i:06d}" for i in range(config.num_images)]
    n_val, n_train = _split_sizes(config)
    split_rng = np.random.default_rng([config.seed, 2 * 10**6])
    order = split_rng.permutation(config.num_images)
    val, train_aug = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
    train = sorted(split_rng.choice(train_aug, n_train, replace=False).tolist())
    train_aug_set = set(train_aug)
    indices = tqdm(range(config.num_images), desc="synthetic images", unit="img", disable=not progress)
    all_meta, class_counts, heads = {}, [0] * config.num_classes, 0
    for i in indices:
        rgb, label, meta = render(config, i, looks)
        for obj in meta:
            obj["name"] = names[obj["class"] - 1]
            class_counts[obj["class"] - 1] += 1
            heads += obj["head"]
        image_id = ids[i]
        Image.fromarray(rgb).save(dirs["JPEGImages"] / f"{image_id}.jpg", format="JPEG", quality=config.jpeg_quality)
        (dirs["Annotations"] / f"{image_id}.xml").write_text(_annotation_xml(image_id, config.size, meta))
        write_mask(dirs["SegmentationClass"] / f"{image_id}.png", label)
        shutil.copyfile(dirs["SegmentationClass"] / f"{image_id}.png", dirs["SegmentationClassAug"] / f"{image_id}.png")
        all_meta[image_id] = {"split": "train_aug" if i in train_aug_set else "val", "objects": meta}
    for split, members in (("train_aug", train_aug), ("train", train), ("val", val)):
        write_text(dirs["ImageSets/Segmentation"] / f"{split}.txt", "".join(f"{ids[i]}\n" for i in members))
    write_text(voc / "classes.txt", "".join(f"{name}\n" for name in names))
    write_json(root / META, all_meta)
    write_json(
        root / MANIFEST,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": asdict(config),
            "class_names": list(names),
            "voc_dir": VOC_SUBDIR,
            "meta": META,
            "description": describe(config),
            "counts": {
                "images": config.num_images,
                "train_aug": len(train_aug),
                "train": len(train),
                "val": len(val),
                "objects": sum(class_counts),
                "heads_drawn": heads,
                "objects_per_class": dict(zip(names, class_counts)),
            },
        },
    )


def read_meta(out: str | Path) -> dict:
    """Per-image object metadata of a generated tree: ``{id: {"split", "objects": [{class, bbox, head, ...}]}}``."""
    path = Path(out) / META
    if not path.is_file():
        raise DataError(f"{path} not found: {out} is not a generated synthetic tree (run generate)")
    return json.loads(path.read_text())
