"""MS-COCO 2014 as a :class:`SegmentationSource`: image-level labels and semantic masks from instance annotations.

COCO ships instance polygons and RLEs, not class-index masks, so each semantic mask is rasterised once and cached
as a palette PNG, in a folder named after a digest of the annotation json's bytes: an edited or replaced json never
serves masks rasterised from the old one (the json is read whole anyway, so the digest costs ~1 s of a ~20 s load).
The annotation jsons (train is ~450 MB) are parsed only when a split, label or mask is first needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from caef.data.source import SegmentationSource, probe_image, read_image, write_mask
from caef.errors import DataError

#: split name -> image folder (and annotation file suffix) of COCO 2014
SPLIT_DIRS = {"train": "train2014", "val": "val2014"}
_ID_PATTERN = re.compile(r"^COCO_(train2014|val2014)_\d+$")
_REQUIRED_KEYS = ("images", "annotations", "categories")
_LAYOUT_HINT = (
    "put MS-COCO 2014 under data/coco with train2014/, val2014/ and annotations/ (instances_train2014.json, "
    "instances_val2014.json), downloaded from https://cocodataset.org/#download"
)


class COCOSource(SegmentationSource):
    """COCO 2014 train/val. Class ``i`` (1..K) is the i-th category in ascending COCO category id (80 -> 81 classes).

    Images without any annotation are left out of :meth:`split_ids` (see :meth:`skipped_ids`) so every listed image
    carries a class. Crowd annotations count for labels and are painted into masks like any other instance.
    ``skip_bad`` also leaves out images whose file is missing or unreadable, with a warning (see
    :class:`SegmentationSource`); masks are rasterised from the json, so they are not checked up front.
    """

    name = "coco"

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None, skip_bad: bool = False):
        super().__init__(root, skip_bad=skip_bad)
        if not self.root.is_dir():
            raise DataError(f"coco: dataset root {self.root} does not exist; {_LAYOUT_HINT}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.root / "caef_cache"
        self._cocos: dict[str, Any] = {}
        self._digests: dict[str, str] = {}
        self._index: dict[str, tuple[list[str], list[str], dict[str, int]]] = {}
        self._usable: dict[str, list[str]] = {}

    # -- layout ---------------------------------------------------------------------------------
    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(SPLIT_DIRS)

    def annotation_path(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{SPLIT_DIRS[self._check_split(split)]}.json"

    def image_path(self, image_id: str) -> Path:
        """Derived from the id alone (``COCO_<folder>_<number>``), so it never loads a json."""
        match = _ID_PATTERN.match(image_id)
        if match is None:
            raise DataError(
                f"coco: image id {image_id!r} is not a COCO 2014 file stem such as 'COCO_train2014_000000000009'"
            )
        return self.root / match.group(1) / f"{image_id}.jpg"

    def cached_mask_path(self, image_id: str, split: str) -> Path:
        """Where the rasterised mask of ``image_id`` lives, whether or not it exists yet: under a folder keyed on the
        annotation json's content, so masks of another version of the json are never read."""
        folder = SPLIT_DIRS[self._check_split(split)]
        self._coco(split)  # fills the digest
        return self.cache_dir / "masks" / f"{folder}-{self._digests[split]}" / f"{image_id}.png"

    # -- splits and labels ----------------------------------------------------------------------
    def split_ids(self, split: str) -> list[str]:
        if split not in self._usable:
            self._usable[split] = self._drop_bad_entries(split, list(self._split_index(split)[0]))
        return list(self._usable[split])

    def split_file(self, split: str) -> Path | None:
        return self.annotation_path(split)

    def entry_problem(self, image_id: str, split: str) -> str | None:
        """Only the image file is checked (a mask is rasterised from the json on first use; its errors name the
        annotation)."""
        try:
            path = self.image_path(image_id)
            if not path.is_file():
                self.read_image(image_id)  # raises the message that says where the images come from
            probe_image(path)
        except DataError as exc:
            return str(exc)
        return None

    def skipped_ids(self, split: str) -> list[str]:
        """Ids of ``split`` left out of :meth:`split_ids` because the json gives them no annotation."""
        return list(self._split_index(split)[1])

    @property
    def class_names(self) -> tuple[str, ...]:
        return ("background", *(name for _, name in self._categories))

    @cached_property
    def category_index(self) -> dict[int, int]:
        """COCO category id -> contiguous class index ``1..K`` (COCO ids have gaps, e.g. 1..90 for 80 classes)."""
        return {cat_id: index for index, (cat_id, _) in enumerate(self._categories, start=1)}

    @cached_property
    def _categories(self) -> list[tuple[int, str]]:
        """Sorted (id, name) pairs; both splits must agree, else class indices would differ between them."""
        per_split = {}
        for split in SPLIT_DIRS:
            path = self.annotation_path(split)
            try:
                per_split[split] = sorted(
                    (int(c["id"]), str(c["name"])) for c in self._coco(split).dataset["categories"]
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"coco: malformed category in {path}: {exc!r}; re-download the annotations") from exc
        train, val = per_split["train"], per_split["val"]
        if train != val:
            diff = sorted(set(train) ^ set(val))[:5]
            raise DataError(
                f"coco: {self.annotation_path('train')} and {self.annotation_path('val')} list different categories "
                f"(e.g. {diff}); use the train and val instances files of the same COCO 2014 release"
            )
        if not 0 < len(train) < 255:
            raise DataError(f"coco: {self.annotation_path('train')} lists {len(train)} categories; expected 1..254")
        return train

    def _load_class_labels(self) -> dict[str, np.ndarray]:
        """Multi-hot over all annotations of each listed image, crowd included (a crowd still shows the class)."""
        labels: dict[str, np.ndarray] = {}
        num_fg = len(self.category_index)
        for split in SPLIT_DIRS:
            coco = self._coco(split)
            ids, _, stems = self._split_index(split)
            for image_id in ids:
                label = np.zeros(num_fg, dtype=np.uint8)
                for ann in coco.imgToAnns[stems[image_id]]:
                    label[self._class_of(ann, split) - 1] = 1
                labels[image_id] = label
        return labels

    # -- masks ----------------------------------------------------------------------------------
    def mask_path(self, image_id: str, split: str) -> Path:
        """The cached mask of ``image_id``, rasterised on first use; a cached file of the wrong size is an error."""
        path = self.cached_mask_path(image_id, split)
        record = self._image_record(image_id, split)
        if path.is_file():
            self._check_cached(path, record)
        else:
            write_mask(path, self.rasterise(image_id, split), self.palette)
        return path

    def prepare_masks(self, split: str, progress: bool = True) -> int:
        """Rasterise every missing mask of ``split`` up front (masks already cached are kept); returns how many."""
        from tqdm import tqdm

        written = 0
        for image_id in tqdm(self.split_ids(split), desc=f"coco {split} masks", unit="img", disable=not progress):
            path = self.cached_mask_path(image_id, split)
            if not path.is_file():
                write_mask(path, self.rasterise(image_id, split), self.palette)
                written += 1
        return written

    def rasterise(self, image_id: str, split: str) -> np.ndarray:
        """Class-index mask from all instances; larger ones are painted first so small objects stay visible."""
        coco = self._coco(split)
        record = self._image_record(image_id, split)
        mask = np.zeros((int(record["height"]), int(record["width"])), dtype=np.uint8)
        layers = []
        for ann in coco.imgToAnns[record["id"]]:
            class_index = self._class_of(ann, split)
            try:
                instance = coco.annToMask(ann).astype(bool)
            except Exception as exc:  # pycocotools raises several types for broken segmentations
                raise DataError(
                    f"coco: cannot rasterise annotation {ann.get('id')} of {image_id} in "
                    f"{self.annotation_path(split)}: {exc!r}; the segmentation is malformed"
                ) from exc
            if instance.shape != mask.shape:
                raise DataError(
                    f"coco: annotation {ann.get('id')} of {image_id} in {self.annotation_path(split)} is "
                    f"{instance.shape[1]}x{instance.shape[0]} but the image is {mask.shape[1]}x{mask.shape[0]}"
                )
            layers.append((int(instance.sum()), class_index, instance))
        for _, class_index, instance in sorted(layers, key=lambda layer: -layer[0]):  # stable for equal areas
            mask[instance] = class_index
        return mask

    def read_image(self, image_id: str) -> np.ndarray:
        path = self.image_path(image_id)
        if not path.is_file():
            raise DataError(
                f"coco: image file not found: {path}, although the annotations list it; extract "
                f"{path.parent.name}.zip from https://cocodataset.org/#download into {path.parent.parent}"
            )
        return read_image(path)

    # -- internals ------------------------------------------------------------------------------
    def _check_split(self, split: str) -> str:
        if split not in SPLIT_DIRS:
            raise DataError(f"coco: unknown split {split!r}; valid splits are {', '.join(map(repr, SPLIT_DIRS))}")
        return split

    def _coco(self, split: str) -> Any:
        if split not in self._cocos:
            self._cocos[split], self._digests[split] = _load_coco(self.annotation_path(split))
        return self._cocos[split]

    def _split_index(self, split: str) -> tuple[list[str], list[str], dict[str, int]]:
        """(annotated ids, skipped ids, id -> COCO image id), from the json only: no image file is touched."""
        if split not in self._index:
            coco = self._coco(self._check_split(split))
            prefix = f"COCO_{SPLIT_DIRS[split]}_"
            ids, skipped, stems = [], [], {}
            for coco_id, record in coco.imgs.items():
                _check_image_record(record, self.annotation_path(split))
                stem = Path(str(record.get("file_name", ""))).stem
                if not stem.startswith(prefix) or _ID_PATTERN.match(stem) is None:
                    raise DataError(
                        f"coco: image {coco_id} in {self.annotation_path(split)} has file_name "
                        f"{record.get('file_name')!r}, expected '{prefix}<12 digits>.jpg'; is this a COCO 2014 "
                        "instances file of the right split?"
                    )
                if stem in stems:  # one file listed as two images would be trained and scored twice
                    raise DataError(
                        f"coco: images {stems[stem]} and {coco_id} in {self.annotation_path(split)} both have "
                        f"file_name {record.get('file_name')!r}; each image must be listed once (download the "
                        "annotations again)"
                    )
                stems[stem] = coco_id
                (ids if coco.imgToAnns.get(coco_id) else skipped).append(stem)
            self._index[split] = (sorted(ids), sorted(skipped), stems)
        return self._index[split]

    def _image_record(self, image_id: str, split: str) -> dict:
        stems = self._split_index(split)[2]
        if image_id not in stems:
            raise DataError(
                f"coco: image {image_id!r} is not listed in {self.annotation_path(split)} (split {split!r})"
            )
        return self._coco(split).imgs[stems[image_id]]

    def _class_of(self, ann: dict, split: str) -> int:
        try:
            return self.category_index[ann["category_id"]]
        except KeyError:
            raise DataError(
                f"coco: annotation {ann.get('id')} in {self.annotation_path(split)} has category_id "
                f"{ann.get('category_id')!r}, which is not listed under 'categories'"
            ) from None

    @staticmethod
    def _check_cached(path: Path, record: dict) -> None:
        try:
            with Image.open(path) as img:
                size = img.size
        except Exception as exc:
            raise DataError(
                f"coco: cached mask {path} cannot be read ({exc}); delete it to rasterise it again"
            ) from exc
        expected = (int(record["width"]), int(record["height"]))
        if size != expected:
            raise DataError(
                f"coco: cached mask {path} is {size[0]}x{size[1]} but its image is {expected[0]}x{expected[1]} "
                "(width x height); the cache is stale or from another dataset: delete it to rasterise it again"
            )


def _check_image_record(record: Any, path: Path) -> None:
    """An ``images`` entry needs an id and a positive integer width and height (masks are rasterised at that size)."""
    problem = None
    if not isinstance(record, dict):
        problem = f"an entry of 'images' is {type(record).__name__}, not an object"
    else:
        for key in ("width", "height"):
            value = record.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 1 or value != int(value):
                problem = f"image {record.get('id')!r} has {key}={value!r}, expected a positive integer"
                break
    if problem:
        raise DataError(f"coco: malformed entry in {path}: {problem}; download the annotations again")


def _load_coco(path: Path) -> tuple[Any, str]:
    """A pycocotools ``COCO`` index of ``path``, with the json checked first so errors name the file, and a digest
    of the file's bytes (the key of the mask cache)."""
    from pycocotools.coco import COCO

    if not path.is_file():
        raise DataError(
            f"coco: annotation file not found: {path}; extract annotations_trainval2014.zip so that {path.name} "
            f"lies in {path.parent} ({_LAYOUT_HINT})"
        )
    try:
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"coco: annotation file {path} is not valid JSON ({exc}); download it again") from exc
    missing = [key for key in _REQUIRED_KEYS if not isinstance(data, dict) or key not in data]
    if missing:
        raise DataError(
            f"coco: annotation file {path} lacks the key(s) {missing}; expected a COCO instances file with "
            "'images', 'annotations' and 'categories' (instances_*.json, not captions or keypoints)"
        )
    coco = COCO()
    coco.dataset = data
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
            coco.createIndex()
    except (KeyError, TypeError) as exc:
        raise DataError(f"coco: malformed entry in {path}: missing or wrong field {exc!r}; download it again") from exc
    return coco, hashlib.blake2b(raw, digest_size=8).hexdigest()
