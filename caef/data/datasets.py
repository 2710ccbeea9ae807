"""Torch datasets over a :class:`SegmentationSource`, one per way a stage reads data.

- :class:`ClassificationDataset`: augmented image + multi-hot label (classifier, CGNet).
- :class:`InferenceDataset`: normalised image at original size + label (+ ground-truth mask); multi-scale and
  flip variants are built on the device in a batch (``caef.stages.cam_inference``), not here.
- :class:`SegmentationDataset`: augmented image + mask, from ground truth or a pseudo-label directory.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from caef.data.source import SegmentationSource, check_same_size, read_mask
from caef.errors import DataError

Sample = dict[str, Any]


class ClassificationDataset(Dataset):
    """Image-level supervision: every id must carry at least one class (checked up front)."""

    def __init__(self, source: SegmentationSource, split: str, transform: Callable[..., dict]):
        self.source, self.split, self.transform = source, split, transform
        self.ids = source.classification_ids(split)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        image = self.transform(image=self.source.read_image(image_id))["image"]
        label = torch.from_numpy(self.source.label_of(image_id).astype(np.float32))
        return {"id": image_id, "image": image, "label": label}


class InferenceDataset(Dataset):
    """Whole images at their original size, for CAM inference and scoring (``mask`` where the split has one)."""

    def __init__(
        self,
        source: SegmentationSource,
        split: str,
        transform: Callable[..., dict],
        with_masks: bool = True,
        limit: int | None = None,
    ):
        self.source, self.split, self.transform = source, split, transform
        self.ids = source.split_ids(split)[:limit]
        self.with_masks = with_masks and source.has_masks(split)

    def __len__(self) -> int:
        return len(self.ids)

    def image_sizes(self) -> list[tuple[int, int]]:
        """(height, width) per item, from the image headers (cheap: no pixel decoding)."""
        sizes = []
        for image_id in self.ids:
            path = self.source.image_path(image_id)
            if not path.is_file():
                raise DataError(f"image file not found: {path} (is the dataset complete? run `caef data check`)")
            try:
                with Image.open(path) as img:
                    sizes.append((img.height, img.width))
            except OSError as exc:
                raise DataError(f"cannot read image {path}: {exc} (the file is corrupt; re-extract it)") from exc
        return sizes

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        image = self.source.read_image(image_id)
        sample: Sample = {"id": image_id, "label": torch.from_numpy(self.source.label_of(image_id).astype(np.float32))}
        if self.with_masks:
            mask = self.source.read_mask(image_id, self.split)
            check_same_size(image, mask, self.source.image_path(image_id), self.source.mask_path(image_id, self.split))
            sample["mask"] = torch.from_numpy(mask.astype(np.int64))
        sample["image"] = self.transform(image=image)["image"]
        return sample


class SegmentationDataset(Dataset):
    """Image + class-index mask; ``label_dir`` (``<id>.png`` each) replaces ground truth with pseudo labels."""

    def __init__(
        self,
        source: SegmentationSource,
        split: str,
        transform: Callable[..., dict],
        label_dir: str | Path | None = None,
    ):
        self.source, self.split, self.transform = source, split, transform
        self.label_dir = Path(label_dir) if label_dir is not None else None
        self.ids = source.split_ids(split)
        if self.label_dir is None and not source.has_masks(split):
            raise DataError(
                f"{source.name} split {split!r} has no ground-truth masks; pass a label_dir of pseudo labels"
            )
        if self.label_dir is not None and not self.label_dir.is_dir():
            raise DataError(f"pseudo-label directory not found: {self.label_dir} (run the pseudo-label stage first)")

    def __len__(self) -> int:
        return len(self.ids)

    def mask_path(self, image_id: str) -> Path:
        if self.label_dir is not None:
            return self.label_dir / f"{image_id}.png"
        path = self.source.mask_path(image_id, self.split)
        assert path is not None
        return path

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        image = self.source.read_image(image_id)
        mask_path = self.mask_path(image_id)
        mask = read_mask(mask_path, self.source.num_classes)
        check_same_size(image, mask, self.source.image_path(image_id), mask_path)
        out = self.transform(image=image, mask=mask)
        return {"id": image_id, "image": out["image"], "mask": out["mask"].long()}


class SizeBucketBatchSampler(Sampler[list[int]]):
    """Batches of equal-size images (in first-seen order of sizes), so whole images batch without padding."""

    def __init__(self, sizes: Sequence[tuple[int, int]], batch_size: int, indices: Sequence[int] | None = None):
        self.batch_size = batch_size
        buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index in range(len(sizes)) if indices is None else indices:
            buckets[tuple(sizes[index])].append(index)
        self.batches = [
            bucket[start : start + batch_size]
            for bucket in buckets.values()
            for start in range(0, len(bucket), batch_size)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
