"""Test helpers: a tiny PASCAL VOC 2012 tree written in the real on-disk format, independently of caef.

``make_voc_tree`` does not use caef's writers (``caef.data.synthetic``, ``caef.data.source.write_mask``), so a bug
shared by caef's reader and writer cannot hide itself: JPEGs come from PIL, annotations are hand-built VOC XML,
masks are palette PNGs written byte-by-byte with the VOC colour map computed here.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

#: the 20 PASCAL VOC classes, background first (a copy, not imported from caef)
VOC_CLASS_NAMES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

#: (id, (height, width), objects as (class name, difficult, (x0, y0, x1, y1) half-open box)), in z-order
_TRAIN_AUG = [
    ("2007_000032", (40, 56), [("aeroplane", 0, (4, 6, 30, 24)), ("person", 0, (34, 10, 50, 36))]),
    ("2007_000039", (40, 56), [("tvmonitor", 0, (10, 8, 40, 30))]),
    # the chair is 'difficult': VOC still counts it as present, so the label has chair too
    ("2007_000063", (48, 40), [("dog", 0, (2, 4, 24, 40)), ("chair", 1, (26, 30, 38, 46))]),
    ("2007_000068", (48, 40), [("bird", 0, (8, 8, 32, 28))]),
    ("2008_000008", (40, 56), [("horse", 0, (2, 2, 40, 38)), ("person", 0, (30, 4, 44, 30))]),
    ("2008_000015", (48, 40), [("bottle", 0, (12, 6, 20, 30)), ("bottle", 0, (22, 6, 30, 30))]),
    ("2009_000012", (40, 56), [("cat", 0, (6, 6, 50, 36))]),
    ("2010_000002", (48, 40), [("car", 0, (4, 20, 36, 44)), ("bus", 0, (6, 2, 34, 18))]),
]
#: the VOC ``train`` segmentation list is a subset of SBD's ``train_aug``
_TRAIN = ("2007_000032", "2007_000063", "2008_000008", "2009_000012")
_VAL = [
    ("2007_000033", (40, 56), [("aeroplane", 0, (2, 4, 50, 30))]),
    ("2007_000042", (48, 40), [("train", 0, (2, 10, 38, 40)), ("person", 1, (30, 2, 36, 12))]),
    ("2007_000129", (40, 56), [("bicycle", 0, (6, 8, 26, 34)), ("person", 0, (20, 2, 40, 38))]),
]
_TEST = [("2008_000001", (40, 56)), ("2008_000004", (48, 40))]
#: in real VOC, Annotations/ also holds detection-only images that no segmentation list names
_DETECTION_ONLY = [("2008_000002", (40, 56), [("sheep", 0, (4, 4, 20, 20)), ("cow", 0, (24, 4, 50, 30))])]


def voc_colour_map(num_entries: int = 256) -> np.ndarray:
    """The standard VOC colour map (the devkit's ``labelcolormap``), computed independently of caef."""
    cmap = np.zeros((num_entries, 3), dtype=np.uint8)
    for i in range(num_entries):
        c, rgb = i, [0, 0, 0]
        for j in range(8):
            for k in range(3):
                rgb[k] |= ((c >> k) & 1) << (7 - j)
            c >>= 3
        cmap[i] = rgb
    return cmap


def write_palette_png(path: Path, mask: np.ndarray) -> None:
    """A mode-'P' PNG whose pixel values are the class indices of ``mask`` (VOC's SegmentationClass format)."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    img = Image.frombytes("P", (mask.shape[1], mask.shape[0]), mask.tobytes())
    img.putpalette(voc_colour_map().reshape(-1).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")


def write_jpeg(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], axis=-1)
    rgb = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="JPEG", quality=90)
    return rgb


def annotation_xml(image_id: str, height: int, width: int, objects: Iterable[tuple[str, int, tuple]]) -> str:
    """A VOC 2012 annotation file as the devkit ships it (tabs, ``<segmented>``, ``<difficult>``, 1-based boxes)."""
    parts = [
        "<annotation>",
        "\t<folder>VOC2012</folder>",
        f"\t<filename>{image_id}.jpg</filename>",
        "\t<source>",
        "\t\t<database>The VOC2007 Database</database>",
        "\t\t<annotation>PASCAL VOC2007</annotation>",
        "\t\t<image>flickr</image>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{width}</width>",
        f"\t\t<height>{height}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>1</segmented>",
    ]
    for name, difficult, (x0, y0, x1, y1) in objects:
        parts += [
            "\t<object>",
            f"\t\t<name>{name}</name>",
            "\t\t<pose>Unspecified</pose>",
            "\t\t<truncated>0</truncated>",
            f"\t\t<difficult>{difficult}</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{x0 + 1}</xmin>",
            f"\t\t\t<ymin>{y0 + 1}</ymin>",
            f"\t\t\t<xmax>{x1}</xmax>",
            f"\t\t\t<ymax>{y1}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    parts.append("</annotation>")
    return "\n".join(parts) + "\n"


def rasterise(height: int, width: int, objects: Iterable[tuple[str, int, tuple]], class_names=VOC_CLASS_NAMES):
    """Class-index mask of the objects (later ones on top), background 0."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for name, _difficult, (x0, y0, x1, y1) in objects:
        mask[y0:y1, x0:x1] = class_names.index(name)
    return mask


def boundary_band(mask: np.ndarray) -> np.ndarray:
    """VOC's 255 'void' band: every pixel whose 4-neighbourhood holds another class (width 1 on each side)."""
    out = mask.copy()
    edge = np.zeros(mask.shape, dtype=bool)
    edge[:-1] |= mask[:-1] != mask[1:]
    edge[1:] |= mask[1:] != mask[:-1]
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    out[edge] = 255
    return out


def make_voc_tree(
    root: Path,
    *,
    drop_image: Iterable[str] = (),
    truncate_image: Iterable[str] = (),
    drop_mask: Iterable[str] = (),
    corrupt_mask: Iterable[str] = (),
    out_of_range_mask: Mapping[str, int] | Iterable[str] = (),
    rgb_mask: Iterable[str] = (),
    size_mismatch: Iterable[str] = (),
    no_class: Iterable[str] = (),
    unknown_class: Mapping[str, str] | None = None,
    malformed_xml: Iterable[str] = (),
    drop_xml: Iterable[str] = (),
    empty_split: Iterable[str] = (),
    drop_split: Iterable[str] = (),
) -> dict:
    """Write a tiny VOC 2012 (+ SBD aug) tree under ``root`` and describe it.

    Layout: ``root/VOCdevkit/VOC2012/{JPEGImages,Annotations,SegmentationClass,SegmentationClassAug,
    ImageSets/Segmentation/{train,val,train_aug,test}.txt}``. SegmentationClass holds train+val masks with a 255
    band at object boundaries, SegmentationClassAug train_aug+val masks without it; test images have an XML
    without objects and no masks; one detection-only image has an XML but is in no list.

    Faults (each takes image ids; masks faults hit every mask file of the id):
        drop_image / truncate_image (half the JPEG bytes), drop_mask, corrupt_mask (not a PNG),
        out_of_range_mask ({id: value} or ids -> 77), rgb_mask (RGB PNG instead of palette), size_mismatch (mask
        4 px narrower), no_class (XML and mask without objects), unknown_class ({id: name} replaces the first
        object's name), malformed_xml, drop_xml, empty_split / drop_split (split names).

    Returns a dict: ``root`` (the folder passed in), ``voc`` (the VOC2012 dir), ``ids`` {split: [ids]},
    ``labels`` {id: multi-hot uint8 over the 20 classes}, ``masks`` {id: SegmentationClass array},
    ``aug_masks`` {id: SegmentationClassAug array}, ``sizes`` {id: (height, width)}.
    """
    root = Path(root)
    voc = root / "VOCdevkit" / "VOC2012"
    unknown_class = dict(unknown_class or {})
    if not isinstance(out_of_range_mask, Mapping):
        out_of_range_mask = {image_id: 77 for image_id in out_of_range_mask}
    no_class, drop_image, truncate_image, drop_mask = (
        set(no_class),
        set(drop_image),
        set(truncate_image),
        set(drop_mask),
    )
    corrupt_mask, rgb_mask, size_mismatch = set(corrupt_mask), set(rgb_mask), set(size_mismatch)
    malformed_xml, drop_xml = set(malformed_xml), set(drop_xml)

    records = {i: (size, objs) for i, size, objs in _TRAIN_AUG + _VAL + _DETECTION_ONLY}
    records.update({i: (size, []) for i, size in _TEST})
    ids = {
        "train_aug": [i for i, _, _ in _TRAIN_AUG],
        "train": list(_TRAIN),
        "val": [i for i, _, _ in _VAL],
        "test": [i for i, _ in _TEST],
    }
    with_mask = set(ids["train"]) | set(ids["val"])
    with_aug_mask = set(ids["train_aug"]) | set(ids["val"])

    labels, masks, aug_masks, sizes = {}, {}, {}, {}
    for seed, (image_id, ((h, w), objects)) in enumerate(sorted(records.items())):
        if image_id in no_class:
            objects = []
        sizes[image_id] = (h, w)
        label = np.zeros(len(VOC_CLASS_NAMES) - 1, dtype=np.uint8)
        for name, _difficult, _box in objects:
            label[VOC_CLASS_NAMES.index(name) - 1] = 1
        labels[image_id] = label

        jpg = voc / "JPEGImages" / f"{image_id}.jpg"
        if image_id not in drop_image:
            write_jpeg(jpg, h, w, seed)
            if image_id in truncate_image:
                data = jpg.read_bytes()
                jpg.write_bytes(data[: len(data) // 2])

        xml = voc / "Annotations" / f"{image_id}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        if image_id in malformed_xml:
            xml.write_text(f"<annotation>\n\t<filename>{image_id}.jpg</filename>\n\t<object><name>dog</name>\n")
        elif image_id not in drop_xml:
            named = list(objects)
            if image_id in unknown_class:
                _, difficult, box = named[0]
                named[0] = (unknown_class[image_id], difficult, box)
            xml.write_text(annotation_xml(image_id, h, w, named))

        plain = rasterise(h, w, objects)
        for folder, mask, members, store in (
            ("SegmentationClass", boundary_band(plain), with_mask, masks),
            ("SegmentationClassAug", plain, with_aug_mask, aug_masks),
        ):
            if image_id not in members:
                continue
            store[image_id] = mask
            path = voc / folder / f"{image_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if image_id in drop_mask:
                continue
            if image_id in corrupt_mask:
                path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not a PNG body" * 4)
            elif image_id in rgb_mask:
                Image.fromarray(voc_colour_map()[mask]).save(path, format="PNG")
            elif image_id in size_mismatch:
                write_palette_png(path, mask[:, :-4])
            elif image_id in out_of_range_mask:
                bad = mask.copy()
                bad[0, 0] = out_of_range_mask[image_id]
                write_palette_png(path, bad)
            else:
                write_palette_png(path, mask)

    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    for split, members in ids.items():
        if split in drop_split:
            continue
        text = "" if split in empty_split else "".join(f"{i}\n" for i in members)
        (lists / f"{split}.txt").write_text(text)
    return {
        "root": root,
        "voc": voc,
        "ids": ids,
        "labels": labels,
        "masks": masks,
        "aug_masks": aug_masks,
        "sizes": sizes,
    }


# -- MXNet .params writers (test-only: fabricate ademxapp files for the reader in caef) ---------------------------
#: MXNet's NDArray list format (apache/mxnet src/ndarray/ndarray.cc), written here independently of caef's reader
_MX_LIST_MAGIC, _MX_NDARRAY_V2_MAGIC, _MX_CPU_CONTEXT = 0x112, 0xF993FAC9, (1, 0)
_MX_TYPE_FLAG_DTYPES = {
    0: np.dtype("<f4"), 1: np.dtype("<f8"), 2: np.dtype("<f2"), 3: np.dtype("u1"), 4: np.dtype("<i4"),
    5: np.dtype("i1"), 6: np.dtype("<i8"), 7: np.dtype("?"), 8: np.dtype("<i2"), 9: np.dtype("<u2"),
    10: np.dtype("<u4"), 11: np.dtype("<u8"),
}  # fmt: skip
_MX_BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_var"}
_MX_AUX_STATS = ("moving_mean", "moving_var")
_PSA_BLOCK_NAME = re.compile(r"^b(\d)(?:_(\d+))?\.(conv|bn)_(branch[0-9a-z]+)\.(\w+)$")


def save_mxnet_params(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as MXNet does (V2 dense NDArrays on cpu(0)), to fabricate test checkpoints."""
    flags = {dtype.newbyteorder("="): flag for flag, dtype in _MX_TYPE_FLAG_DTYPES.items()}
    chunks = [struct.pack("<QQQ", _MX_LIST_MAGIC, 0, len(arrays))]
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.ndim == 0:
            raise ValueError(f"array {name!r} is 0-d; the V2 NDArray format cannot store it, reshape it to (1,)")
        flag = flags.get(array.dtype.newbyteorder("="))
        if flag is None:
            raise ValueError(f"array {name!r} has dtype {array.dtype}, which MXNet files cannot store")
        little = np.ascontiguousarray(array, dtype=_MX_TYPE_FLAG_DTYPES[flag])
        chunks.append(struct.pack("<Iii", _MX_NDARRAY_V2_MAGIC, 0, array.ndim))
        chunks.append(struct.pack(f"<{array.ndim}q", *array.shape))
        chunks.append(struct.pack("<iii", *_MX_CPU_CONTEXT, flag))
        chunks.append(little.tobytes())
    chunks.append(struct.pack("<Q", len(arrays)))
    for name in arrays:
        encoded = name.encode("utf-8")
        chunks.append(struct.pack("<Q", len(encoded)) + encoded)
    Path(path).write_bytes(b"".join(chunks))


def resnet38_state_to_mxnet(state_dict: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Inverse of :func:`convert_mxnet_to_resnet38` (``num_batches_tracked`` dropped), to fabricate ademxapp files."""
    params: dict[str, np.ndarray] = {}
    for key, tensor in state_dict.items():
        array = tensor.detach().cpu().numpy().copy()
        if key.endswith("num_batches_tracked"):
            continue
        if key == "conv1a.weight":
            params["arg:conv1a_weight"] = array
        elif key.startswith("bn7."):
            mx_param = _MX_BN_NAMES[key.split(".", 1)[1]]
            params[f"{'aux' if mx_param in _MX_AUX_STATS else 'arg'}:bn7_{mx_param}"] = array
        elif match := _PSA_BLOCK_NAME.match(key):
            stage, index, layer, branch, param = match.groups()
            block = "a" if index is None else f"b{index}"
            if layer == "conv":
                params[f"arg:res{stage}{block}_{branch}_weight"] = array
            else:
                mx_param = _MX_BN_NAMES[param]
                prefix = "aux" if mx_param in _MX_AUX_STATS else "arg"
                params[f"{prefix}:bn{stage}{block}_{branch}_{mx_param}"] = array
        else:
            raise ValueError(f"state dict key {key!r} is not a ResNet-38 trunk parameter")
    return params
