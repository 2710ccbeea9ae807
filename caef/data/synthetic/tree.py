"""Writing the generated dataset as a PASCAL VOC 2012 tree, atomically, with a manifest."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from caef.data.source import write_mask
from caef.data.synthetic.config import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    META,
    VOC_SUBDIR,
    SynthConfig,
    _split_sizes,
    class_names,
    describe,
)
from caef.data.synthetic.render import class_look, render
from caef.errors import DataError
from caef.io import write_json, write_text


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


def annotation_xml(image_id: str, width: int, height: int, meta: list[dict], database: str = "caef synthetic") -> str:
    """VOC XML of one image: ``meta`` holds its objects (``name``, ``truncated``, ``bbox`` = xmin, ymin, xmax, ymax)."""

    def add(parent: ET.Element, *items: tuple[str, object]) -> None:
        for tag, value in items:
            ET.SubElement(parent, tag).text = str(value)

    root = ET.Element("annotation")
    add(root, ("folder", "VOC2012"), ("filename", f"{image_id}.jpg"))
    add(ET.SubElement(root, "source"), ("database", database))
    add(ET.SubElement(root, "size"), ("width", width), ("height", height), ("depth", 3))
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
    write_tree_atomically(
        out, lambda root: _write_tree(root, config, progress), MANIFEST, lambda: read_manifest(out) is not None
    )
    return Path(out) / VOC_SUBDIR


def write_tree_atomically(
    out: str | Path, write: Callable[[Path], None], manifest: str, ours: Callable[[], bool], what: str = "synthetic"
) -> None:
    """Run ``write(tmp)`` on a temporary folder beside ``out``, then put it in place of ``out``.

    A non-empty ``out`` is only replaced when ``ours()`` says it is an earlier generated tree (it holds
    ``manifest``); the previous tree is restored if the swap fails, and nothing is left behind on error.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"cannot generate the {what} dataset at {out}: it is a file; choose another directory")
    if out.is_dir() and any(out.iterdir()) and not ours():
        raise DataError(
            f"refusing to generate the {what} dataset into {out}: the directory is not empty and holds "
            f"no {manifest} from an earlier run; choose an empty or new directory"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        write(tmp)
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


def write_voc_tree(
    voc: Path,
    images: Iterable[tuple[str, np.ndarray, np.ndarray, list[dict]]],
    splits: dict[str, Sequence[str]],
    names: Sequence[str],
    jpeg_quality: int,
    database: str = "caef synthetic",
) -> None:
    """Write a VOC 2012 tree under ``voc`` (a new folder): per ``(image_id, rgb, label, objects)`` a JPEG, an XML
    naming its objects, the palette mask in ``SegmentationClass`` and ``SegmentationClassAug``; then the split
    lists (``{split: ids}``) and ``classes.txt`` (``names``, background implicit)."""
    dirs = {
        name: voc / name
        for name in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation")
    }
    for d in dirs.values():
        d.mkdir(parents=True)
    for image_id, rgb, label, objects in images:
        Image.fromarray(rgb).save(dirs["JPEGImages"] / f"{image_id}.jpg", format="JPEG", quality=jpeg_quality)
        xml = annotation_xml(image_id, rgb.shape[1], rgb.shape[0], objects, database)
        (dirs["Annotations"] / f"{image_id}.xml").write_text(xml)
        write_mask(dirs["SegmentationClass"] / f"{image_id}.png", label)
        shutil.copyfile(dirs["SegmentationClass"] / f"{image_id}.png", dirs["SegmentationClassAug"] / f"{image_id}.png")
    for split, members in splits.items():
        write_text(dirs["ImageSets/Segmentation"] / f"{split}.txt", "".join(f"{i}\n" for i in members))
    write_text(voc / "classes.txt", "".join(f"{name}\n" for name in names))


def _write_tree(root: Path, config: SynthConfig, progress: bool) -> None:
    voc = root / VOC_SUBDIR
    names = class_names(config.num_classes)
    looks = [class_look(config, c) for c in range(config.num_classes)]
    ids = [f"synth_{i:06d}" for i in range(config.num_images)]
    n_val, n_train = _split_sizes(config)
    split_rng = np.random.default_rng([config.seed, 2 * 10**6])
    order = split_rng.permutation(config.num_images)
    val, train_aug = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
    train = sorted(split_rng.choice(train_aug, n_train, replace=False).tolist())
    train_aug_set = set(train_aug)
    all_meta, class_counts, heads = {}, [0] * config.num_classes, 0

    def images() -> Iterator[tuple[str, np.ndarray, np.ndarray, list[dict]]]:
        nonlocal heads
        indices = tqdm(range(config.num_images), desc="synthetic images", unit="img", disable=not progress)
        for i in indices:
            rgb, label, meta = render(config, i, looks)
            for obj in meta:
                obj["name"] = names[obj["class"] - 1]
                class_counts[obj["class"] - 1] += 1
                heads += obj["head"]
            all_meta[ids[i]] = {"split": "train_aug" if i in train_aug_set else "val", "objects": meta}
            yield ids[i], rgb, label, meta

    splits = {
        name: [ids[i] for i in members] for name, members in (("train_aug", train_aug), ("train", train), ("val", val))
    }
    write_voc_tree(voc, images(), splits, names, config.jpeg_quality)
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
