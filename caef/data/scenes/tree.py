"""Writing a scene dataset as a PASCAL VOC 2012 tree (the generated dataset's writer), atomically, with a manifest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from caef.data.scenes.config import FORMAT, FORMAT_VERSION, MANIFEST, META, ScenesConfig, split_sizes
from caef.data.scenes.idx import ObjectSet, default_source, read_object_sets
from caef.data.scenes.render import render
from caef.data.synthetic.config import VOC_SUBDIR
from caef.data.synthetic.tree import write_tree_atomically, write_voc_tree
from caef.errors import DataError
from caef.io import write_json


def read_manifest(out: str | Path) -> dict | None:
    """The manifest of a scene tree at ``out``, or None where ``out`` holds none."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read scene-dataset manifest {path}: {exc}; delete {Path(out)} and regenerate") from exc
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def pick_sets(sets: dict[str, ObjectSet]) -> tuple[ObjectSet, ObjectSet]:
    """(objects of train_aug, objects of val): ``train`` and ``t10k`` where both exist, so that val shows object
    instances never seen in training; otherwise one set for both."""
    train = sets.get("train", sets[sorted(sets)[0]])
    val = sets.get("t10k", next((s for p, s in sorted(sets.items()) if p != train.prefix), train))
    return train, val


def _digest(sets: dict[str, ObjectSet]) -> str:
    h = hashlib.sha256()
    for prefix in sorted(sets):
        h.update(prefix.encode() + sets[prefix].images.tobytes() + sets[prefix].labels.tobytes())
    return h.hexdigest()[:16]


def generate_scenes(
    out: str | Path, config: ScenesConfig, source: str | Path | None = None, progress: bool = True
) -> Path:
    """Write the scene tree to ``out`` (replacing an earlier scene tree) from the IDX files in ``source`` (default:
    Fashion-MNIST where :func:`caef.data.scenes.idx.default_source` finds it); returns its VOC2012 dir."""
    config.validate()
    source = Path(source) if source is not None else default_source()
    sets = read_object_sets(source)
    names = config.names()
    train_objects, val_objects = pick_sets(sets)
    train_objects = train_objects.range(config.objects_from, config.objects_to)  # a bad range fails before writing
    top = max(int(s.labels.max()) for s in sets.values())
    if top >= len(names):
        raise DataError(
            f"{source} has labels up to {top} but class_names={config.class_names!r} names {len(names)} classes; "
            f"pass --class-names with {top + 1} comma-separated names"
        )
    write_tree_atomically(
        out, lambda root: _write_tree(root, config, sets, (train_objects, val_objects), source, progress), MANIFEST,
        lambda: read_manifest(out) is not None, what="scene",
    )  # fmt: skip
    return Path(out) / VOC_SUBDIR


def _write_tree(
    root: Path,
    config: ScenesConfig,
    sets: dict[str, ObjectSet],
    objects: tuple[ObjectSet, ObjectSet],
    source: Path,
    progress: bool,
) -> None:
    """``objects``: (train_aug's, val's), as :func:`pick_sets` chose them, train_aug's within its range."""
    names = config.names()
    train_objects, val_objects = objects
    ids = [f"scene_{i:06d}" for i in range(config.num_images)]
    n_val, n_train = split_sizes(config)
    split_rng = np.random.default_rng([config.seed, 2 * 10**6])
    order = split_rng.permutation(config.num_images)
    val, train_aug = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
    train = sorted(split_rng.choice(train_aug, n_train, replace=False).tolist())
    val_set = set(val)
    all_meta, counts = {}, [0] * len(names)

    def images():
        for i in tqdm(range(config.num_images), desc="scene images", unit="img", disable=not progress):
            rgb, label, meta = render(config, i, val_objects if i in val_set else train_objects)
            for obj in meta:
                obj["name"] = names[obj["class"] - 1]
                counts[obj["class"] - 1] += 1
            all_meta[ids[i]] = {"split": "val" if i in val_set else "train_aug", "objects": meta}
            yield ids[i], rgb, label, meta

    splits = {name: [ids[i] for i in m] for name, m in (("train_aug", train_aug), ("train", train), ("val", val))}
    write_voc_tree(root / VOC_SUBDIR, images(), splits, names, config.jpeg_quality, database="caef scenes")
    write_json(root / META, all_meta)
    write_json(
        root / MANIFEST,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": asdict(config),
            "source": {
                "folder": str(source),
                "sets": {p: len(s.labels) for p, s in sets.items()},
                "train_aug_objects": train_objects.prefix,
                "train_aug_object_range": [train_objects.offset, train_objects.offset + len(train_objects.labels)],
                "val_objects": val_objects.prefix,
                "digest": _digest(sets),
            },
            "class_names": list(names),
            "voc_dir": VOC_SUBDIR,
            "meta": META,
            "description": describe(config),
            "counts": {
                "images": config.num_images,
                "train_aug": len(train_aug),
                "train": len(train),
                "val": len(val),
                "objects": sum(counts),
                "objects_per_class": dict(zip(names, counts)),
            },
        },
    )


def describe(config: ScenesConfig) -> str:
    n_val, n_train = split_sizes(config)
    return (
        f"scene VOC tree: {config.num_images} images {config.size}x{config.size}, {len(config.names())} classes, "
        f"1-{config.max_objects} objects/image of {config.min_scale}-{config.max_scale} px, "
        f"train_aug {config.num_images - n_val} (train {n_train}) / val {n_val}, seed {config.seed}"
    )
