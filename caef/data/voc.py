"""PASCAL VOC 2012 (+ SBD's SegmentationClassAug / train_aug), read from the standard VOCdevkit layout.

The generated dataset is written in this layout too, so one reader serves both; a tree may name its own
foreground classes in ``VOC2012/classes.txt`` (absent for real VOC, which uses the 20 standard names).
"""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from caef.data.source import SegmentationSource, parse_split_list, read_split_list
from caef.errors import DataError
from caef.io import save_npz

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

#: where each split's list file is looked for, first match wins (SBD lists are often kept beside VOC's)
_LIST_DIRS = ("ImageSets/Segmentation", "ImageSets/SegmentationAug")
#: splits whose masks come from SBD's SegmentationClassAug (no 255 boundary band) instead of SegmentationClass
_AUG_SPLITS = ("train_aug",)
_HOW_TO_GET = (
    "download VOCtrainval_11-May-2012.tar (host.robots.ox.ac.uk/pascal/VOC/voc2012) and SBD's "
    "SegmentationClassAug + train_aug.txt, and place them as data/VOCdevkit/VOC2012/{JPEGImages,Annotations,"
    "SegmentationClass,SegmentationClassAug,ImageSets/Segmentation/train_aug.txt} (see data/README.md)"
)


def resolve_voc_root(root: str | Path) -> Path:
    """Accept ``.../VOC2012``, ``.../VOCdevkit`` or a folder containing ``VOCdevkit``; return the VOC2012 dir."""
    root = Path(root)
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    if not root.exists():
        raise DataError(f"VOC dataset root not found: {root}. To get it: {_HOW_TO_GET}")
    raise DataError(
        f"no VOC2012 tree under {root}: expected {root}/VOCdevkit/VOC2012/JPEGImages (or {root}/JPEGImages). "
        f"To get it: {_HOW_TO_GET}"
    )


class VOCSource(SegmentationSource):
    """A VOC 2012 tree; image-level labels derived from the XML annotations and cached in ``cache_dir``.

    ``skip_bad``: leave list entries with a missing/unreadable image, annotation or mask out of the splits, with a
    warning (see :class:`SegmentationSource`), instead of failing on them.
    """

    name = "voc"

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None, skip_bad: bool = False):
        self.voc_dir = resolve_voc_root(root)
        super().__init__(self.voc_dir, skip_bad=skip_bad)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.voc_dir / "caef_cache"
        self._class_names = self._read_class_names()
        self._class_index = {name: i for i, name in enumerate(self._class_names)}
        self._ids: dict[str, list[str]] = {}
        self.annotation_errors: dict[str, DataError] = {}

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._class_names

    @property
    def splits(self) -> tuple[str, ...]:
        found = []
        for list_dir in _LIST_DIRS:
            folder = self.voc_dir / list_dir
            if folder.is_dir():
                found += [p.stem for p in sorted(folder.glob("*.txt")) if p.stem not in found]
        return tuple(found)

    def split_list_path(self, split: str) -> Path:
        for list_dir in _LIST_DIRS:
            path = self.voc_dir / list_dir / f"{split}.txt"
            if path.is_file():
                return path
        raise DataError(
            f"split list {split!r} not found: expected {self.voc_dir / _LIST_DIRS[0] / (split + '.txt')}. "
            f"Available splits: {', '.join(self.splits) or 'none'}."
            + (" train_aug.txt comes with SBD's augmented set (see data/README.md)." if split == "train_aug" else "")
        )

    def split_ids(self, split: str) -> list[str]:
        if split not in self._ids:
            # plain ids, or SBD-style "/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png" pairs
            ids = read_split_list(self.split_list_path(split))
            self._ids[split] = self._drop_bad_entries(split, ids)
        return self._ids[split]

    def split_file(self, split: str) -> Path | None:
        try:
            return self.split_list_path(split)
        except DataError:
            return None

    def split_list_problems(self, split: str) -> list[str]:
        return parse_split_list(self.split_list_path(split))[1]

    def image_path(self, image_id: str) -> Path:
        return self.voc_dir / "JPEGImages" / f"{image_id}.jpg"

    def mask_path(self, image_id: str, split: str) -> Path | None:
        if split == "test":
            return None
        folder = "SegmentationClassAug" if split in _AUG_SPLITS else "SegmentationClass"
        return self.voc_dir / folder / f"{image_id}.png"

    def annotation_path(self, image_id: str) -> Path:
        return self.voc_dir / "Annotations" / f"{image_id}.xml"

    def _read_class_names(self) -> tuple[str, ...]:
        path = self.voc_dir / "classes.txt"
        if not path.is_file():
            return VOC_CLASSES
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not names or len(set(names)) != len(names) or "background" in names:
            raise DataError(f"{path} must list distinct foreground class names, one per line (background is implicit)")
        return ("background", *names)

    # -- image-level labels ---------------------------------------------------------------------
    def _load_class_labels(self) -> dict[str, np.ndarray]:
        """Labels of every annotated image; cached until any annotation file is added, removed, renamed or edited
        (see :func:`annotation_key`).

        An unreadable annotation only breaks its own image: its error is kept and raised by ``label_of``.
        """
        annotations = self.voc_dir / "Annotations"
        if not annotations.is_dir():
            raise DataError(f"VOC annotations folder not found: {annotations}. To get it: {_HOW_TO_GET}")
        files, key = annotation_key(annotations)
        fingerprint = np.frombuffer(key, dtype=np.uint8)
        cache = self.cache_dir / "cls_labels.npz"
        if cache.is_file():
            try:
                with np.load(cache) as data:
                    fresh = {"ids", "labels", "class_names", "fingerprint"} <= set(data.files) and np.array_equal(
                        data["fingerprint"], fingerprint
                    )
                    if fresh and list(data["class_names"]) == list(self.class_names[1:]):
                        return dict(zip(data["ids"].tolist(), data["labels"]))
            except Exception:  # an unreadable cache is rebuilt like a stale one
                pass
        labels: dict[str, np.ndarray] = {}
        for file in files:
            try:
                labels[file.stem] = self.parse_annotation(file.stem)
            except DataError as exc:
                self.annotation_errors[file.stem] = exc
        if not self.annotation_errors:
            self._write_label_cache(cache, labels, fingerprint)
        return labels

    def _write_label_cache(self, cache: Path, labels: dict[str, np.ndarray], fingerprint: np.ndarray) -> None:
        ids = sorted(labels)
        stacked = np.stack([labels[i] for i in ids]) if ids else np.zeros((0, self.num_classes - 1), np.uint8)
        try:
            save_npz(
                cache,
                ids=np.array(ids),
                labels=stacked,
                class_names=np.array(self.class_names[1:]),
                fingerprint=fingerprint,
            )
        except OSError:
            pass  # a read-only dataset tree still works; labels are then parsed on every start

    def label_of(self, image_id: str) -> np.ndarray:
        labels = self.class_labels  # parses (and fills annotation_errors) on first use
        if image_id in self.annotation_errors:
            raise self.annotation_errors[image_id]
        if image_id not in labels:
            raise DataError(
                f"no annotation for image {image_id!r}: expected {self.annotation_path(image_id)} "
                "(re-extract the VOC Annotations folder, or remove the id from the split list)"
            )
        return labels[image_id]

    def parse_annotation(self, image_id: str) -> np.ndarray:
        """Multi-hot label from the ``<object><name>`` entries of the image's XML (difficult objects included)."""
        path = self.annotation_path(image_id)
        try:
            tree = ET.parse(path)
        except (OSError, ET.ParseError) as exc:
            raise DataError(
                f"cannot parse annotation {path}: {exc} (re-extract it from the VOC tarball, or delete it and "
                "remove the image from the split lists)"
            ) from exc
        label = np.zeros(self.num_classes - 1, dtype=np.uint8)
        for name in tree.getroot().iterfind("object/name"):
            cls = (name.text or "").strip()
            if cls not in self._class_index:
                raise DataError(
                    f"annotation {path} names unknown class {cls!r}; known: {', '.join(self.class_names[1:])}"
                )
            label[self._class_index[cls] - 1] = 1
        return label


def annotation_key(folder: Path) -> tuple[list[Path], bytes]:
    """The ``*.xml`` files of ``folder`` (sorted) and a digest of each one's name, size, inode, ``mtime_ns`` and
    ``ctime_ns``: the label cache's key.

    The file system sets ``ctime`` on every content or metadata change and no user-level tool can set it back, so
    an edit that keeps the size and restores the old ``mtime`` (``cp -p``, ``rsync -a``, ``tar x``) still changes
    the key, and so does a rename. Only ``stat`` is read (0.14 s for 10,582 annotations against 0.25 s to digest
    their bytes and 0.6 s to parse them, warm page cache): on cold or networked storage reading every file is what
    the cache saves. A copied or re-extracted tree gets new inodes and ctimes, so its labels are parsed once again.
    """
    digest = hashlib.blake2b(digest_size=16)
    with os.scandir(folder) as entries:
        xml = sorted((e for e in entries if e.name.endswith(".xml") and e.is_file()), key=lambda e: e.name)
    for entry in xml:
        st = entry.stat()
        digest.update(f"{entry.name}\0{st.st_size}\0{st.st_ino}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode())
    return [folder / e.name for e in xml], digest.digest()
