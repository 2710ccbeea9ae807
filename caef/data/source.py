"""What every dataset tree offers the rest of caef: split lists, image and mask paths, image-level labels.

VOC, COCO and the generated dataset each implement :class:`SegmentationSource`; the torch datasets,
datamodules and ``caef data check`` are written once against it.
"""

from __future__ import annotations

import abc
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from caef.errors import DataError

IGNORE_INDEX = 255


def voc_palette(num_entries: int = 256) -> np.ndarray:
    """The PASCAL VOC colour map (bit-interleaved), shape ``(num_entries, 3)`` uint8; entry 255 is the ignore colour."""
    palette = np.zeros((num_entries, 3), dtype=np.uint8)
    for index in range(num_entries):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette[index] = (r, g, b)
    return palette


class SegmentationSource(abc.ABC):
    """A dataset tree on disk. Class index 0 is background; image-level labels cover classes ``1..C-1``."""

    #: short name used in messages and manifests
    name: str = "dataset"

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- what a subclass provides ---------------------------------------------------------------
    @property
    @abc.abstractmethod
    def class_names(self) -> tuple[str, ...]:
        """All class names, background first."""

    @property
    @abc.abstractmethod
    def splits(self) -> tuple[str, ...]:
        """Names of the splits this tree provides."""

    @abc.abstractmethod
    def split_ids(self, split: str) -> list[str]:
        """Image ids of ``split`` in list order; raises :class:`DataError` for an unknown or missing split."""

    @abc.abstractmethod
    def image_path(self, image_id: str) -> Path:
        """Path of the RGB image of ``image_id``."""

    @abc.abstractmethod
    def mask_path(self, image_id: str, split: str) -> Path | None:
        """Path of the ground-truth class-index mask of ``image_id`` in ``split``, or None where the split has none."""

    @abc.abstractmethod
    def _load_class_labels(self) -> dict[str, np.ndarray]:
        """Multi-hot image-level labels (uint8, length ``num_classes - 1``) per image id."""

    # -- shared behaviour -----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names)

    @property
    def palette(self) -> np.ndarray:
        return voc_palette()

    @cached_property
    def class_labels(self) -> dict[str, np.ndarray]:
        return self._load_class_labels()

    def has_masks(self, split: str) -> bool:
        ids = self.split_ids(split)
        return bool(ids) and self.mask_path(ids[0], split) is not None

    def label_of(self, image_id: str) -> np.ndarray:
        try:
            return self.class_labels[image_id]
        except KeyError:
            raise DataError(
                f"{self.name}: no image-level label for image id {image_id!r} under {self.root}; "
                "its annotation is missing (add it, or remove the id from the split list)"
            ) from None

    def classification_ids(self, split: str) -> list[str]:
        """Ids of ``split`` checked for use as a classification split: each must carry at least one class."""
        ids = self.split_ids(split)
        for image_id in ids:
            if not self.label_of(image_id).any():
                raise DataError(
                    f"{self.name}: image {image_id!r} in split {split!r} has no object class, so it cannot "
                    f"train a multi-label classifier; remove it from the split list under {self.root} "
                    "(or fix its annotation)"
                )
        return ids

    def read_image(self, image_id: str) -> np.ndarray:
        return read_image(self.image_path(image_id))

    def read_mask(self, image_id: str, split: str) -> np.ndarray:
        path = self.mask_path(image_id, split)
        if path is None:
            raise DataError(f"{self.name}: split {split!r} has no ground-truth masks (image {image_id!r})")
        return read_mask(path, self.num_classes)


def read_image(path: str | Path) -> np.ndarray:
    """An RGB image as ``(H, W, 3)`` uint8, or a :class:`DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file not found: {path} (is the dataset complete? run `caef data check`)")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as exc:  # PIL raises several types for truncated/corrupt files
        raise DataError(f"cannot read image {path}: {exc} (the file is corrupt or truncated; re-extract it)") from exc


def read_mask(path: str | Path, num_classes: int) -> np.ndarray:
    """A class-index mask (palette or grey PNG) as ``(H, W)`` uint8, values checked against ``{0..C-1, 255}``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask file not found: {path} (is the dataset complete? run `caef data check`)")
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise DataError(
                    f"mask {path} has PIL mode {img.mode!r}; expected a palette ('P') or greyscale ('L') PNG "
                    "of class indices"
                )
            mask = np.asarray(img)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"cannot read mask {path}: {exc} (the file is corrupt or truncated; re-extract or regenerate it)"
        ) from exc
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX)
    if bad.any():
        values = sorted(int(v) for v in np.unique(mask[bad]))[:10]
        raise DataError(
            f"mask {path} has values {values} outside the class range 0..{num_classes - 1} (and 255 = ignore); "
            "is it a colour PNG instead of class indices, or from another dataset?"
        )
    return mask


def check_same_size(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path | None) -> None:
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
            f"{mask.shape[1]}x{mask.shape[0]} (width x height); they must match"
        )


def write_mask(path: str | Path, mask: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write a class-index mask as a palette PNG (VOC convention), atomically."""
    from caef.io import atomic_path

    img = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    img.putpalette((voc_palette() if palette is None else palette).reshape(-1).tolist())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
