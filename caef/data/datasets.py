"""Torch datasets over a :class:`SegmentationSource`, one per way a stage reads data.

- :class:`ClassificationDataset`: augmented image + multi-hot label (classifier, CGNet).
- :class:`InferenceDataset`: normalised image at original size + label (+ ground-truth mask); multi-scale and
  flip variants are built on the device in a batch (``caef.stages.cam_inference``), not here.
- :class:`SegmentationDataset`: augmented image + mask, from ground truth or a pseudo-label directory.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

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
    """Whole images at their original size, for CAM inference and scoring (``mask`` where the split has one).
    ``with_labels=False`` reads no image-level labels: a benchmark's test split has none (VOC 2012 ``test``)."""

    def __init__(
        self,
        source: SegmentationSource,
        split: str,
        transform: Callable[..., dict],
        with_masks: bool = True,
        limit: int | None = None,
        with_labels: bool = True,
    ):
        self.source, self.split, self.transform = source, split, transform
        self.ids = source.split_ids(split)[:limit]
        self.with_masks = with_masks and source.has_masks(split)
        self.with_labels = with_labels

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
        sample: Sample = {"id": image_id}
        if self.with_labels:
            sample["label"] = torch.from_numpy(self.source.label_of(image_id).astype(np.float32))
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


def shard_indices(indices: Sequence[int], num_replicas: int = 1, rank: int = 0) -> list[int]:
    """Rank ``rank``'s share of ``indices``: those at positions ``rank``, ``rank + num_replicas``, ...

    Unlike :class:`~torch.utils.data.distributed.DistributedSampler`, nothing is padded: over all ranks every
    index comes exactly once (shard lengths differ by at most one), so evaluation counts no image twice.
    """
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in [0, num_replicas), got rank={rank}, num_replicas={num_replicas}")
    return list(indices)[rank::num_replicas]


class SizeBucketBatchSampler(BatchSampler):
    """Batches of equal-size images (in first-seen order of sizes), so whole images batch without padding.

    Distributed (DDP) evaluation: each rank takes its own share of the items (:func:`shard_indices`, before
    bucketing): every item is seen by exactly one rank, none is repeated to even out the shards.

    Args:
        sizes: (height, width) of every item of the dataset.
        batch_size: most items per batch.
        indices: the items to batch (default: all), in order.
        num_replicas, rank: the number of processes and this one's global rank.
        sampler: for Lightning only, which rebuilds batch samplers around a sampler of its own under DDP
            (``use_distributed_sampler=True``, its default). Of a ``DistributedSampler`` (Lightning's repeats
            items to even out the ranks) only ``num_replicas`` and ``rank`` are taken; any other sampler
            (Lightning passes the loader's sequential one when predicting) is ignored.
        drop_last: must be False (every image is evaluated); an argument so that Lightning can set it.
    """

    def __init__(
        self,
        sizes: Sequence[tuple[int, int]],
        batch_size: int,
        indices: Sequence[int] | None = None,
        num_replicas: int = 1,
        rank: int = 0,
        sampler: Sampler | Iterable[int] | None = None,
        drop_last: bool = False,
    ):
        if drop_last:
            raise ValueError("SizeBucketBatchSampler keeps every item: drop_last must be False")
        if isinstance(sampler, DistributedSampler):
            num_replicas, rank = sampler.num_replicas, sampler.rank
        self.batch_size, self.drop_last = batch_size, drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.indices = shard_indices(range(len(sizes)) if indices is None else indices, num_replicas, rank)
        self.sampler = self.indices  # what samplers expose (Lightning reads it to tell whether a loader shuffles)
        buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index in self.indices:
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
