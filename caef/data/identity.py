"""What identifies the contents of a dataset tree, cheaply: its split lists, its class names, the manifest of the
generator that wrote it (the scenes), COCO's annotation files. Pipeline fingerprints include it, so a tree
regenerated, re-split or replaced under the same path reruns the stages that read it instead of keeping results
computed from the old one. Images and masks are not read (VOC has 17,000 of each); a pixel edited in place goes
unseen, which the split lists and manifests make rare.

The generated dataset (``synthetic``) is left out: its generator settings are stage flags already, and the tree is
written on first use from them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from caef.errors import DataError
from caef.io import file_digest

#: files of a VOC-layout tree, relative to its VOC2012 folder, that name what it holds
_VOC_FILES = ("ImageSets/Segmentation/*.txt", "ImageSets/SegmentationAug/*.txt", "classes.txt")
#: generator manifests, looked for in the VOC2012 folder and the two above it
_MANIFESTS = ("caef_scenes.json", "caef_synth.json")


def dataset_identity(dataset: str, root: str | Path | None) -> str | None:
    """A short digest of ``root``'s identifying files; None for the generated dataset or no root, ``missing``
    where the tree is not there (yet)."""
    if dataset == "synthetic" or not root:
        return None
    files = _identifying_files(dataset, Path(root))
    if files is None:
        return "missing"
    digest = hashlib.sha256()
    for name, path in files:
        digest.update(json.dumps([name, file_digest(path)]).encode())
    return digest.hexdigest()[:16]


def _identifying_files(dataset: str, root: Path) -> list[tuple[str, Path]] | None:
    if dataset == "coco":
        folder = root / "annotations"
        if not folder.is_dir():
            return None
        return [(f"annotations/{p.name}", p) for p in sorted(folder.glob("instances_*.json"))]
    from caef.data.voc import resolve_voc_root

    try:
        voc = resolve_voc_root(root)
    except DataError:
        return None
    found = [(p.relative_to(voc).as_posix(), p) for pattern in _VOC_FILES for p in sorted(voc.glob(pattern))]
    for up, folder in enumerate((voc, voc.parent, voc.parent.parent)):
        found += [(f"{'../' * up}{name}", folder / name) for name in _MANIFESTS if (folder / name).is_file()]
    return found
