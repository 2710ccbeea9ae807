"""One family of LightningDataModules for every stage: which tree to read, and how each stage reads it.

``dataset`` picks the reader (``voc``, ``coco``, or ``synthetic``, the generated dataset in VOC layout that
is created under ``root`` on first use). Subclasses add what a stage needs: classification batches plus a
scoring split (classifier, CGNet), or image/mask batches (DeepLab).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import cv2
import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from caef.data.datasets import ClassificationDataset, InferenceDataset, SegmentationDataset, SizeBucketBatchSampler
from caef.data.source import SegmentationSource
from caef.data.synthetic import SynthConfig, generate, read_manifest
from caef.data.transforms import AugmentationConfig, eval_transform, reseed_augmentation, train_transform
from caef.errors import DataError

DatasetName = Literal["synthetic", "voc", "coco"]


def open_source(
    dataset: DatasetName, root: str | Path, cache_dir: str | Path | None = None, skip_bad: bool = False
) -> SegmentationSource:
    """The reader for ``dataset`` at ``root`` (errors name the path and how to obtain the data); ``skip_bad``
    leaves out list entries with missing or unreadable files (warned, listed in ``<cache_dir>/skipped/``)."""
    if dataset in ("voc", "synthetic"):
        from caef.data.voc import VOCSource

        return VOCSource(root, cache_dir=cache_dir, skip_bad=skip_bad)
    if dataset == "coco":
        from caef.data.coco import COCOSource

        return COCOSource(root, cache_dir=cache_dir, skip_bad=skip_bad)
    raise DataError(f"unknown dataset {dataset!r}: use one of synthetic, voc, coco")


def ensure_synthetic(root: str | Path, config: SynthConfig) -> None:
    """Generate the synthetic tree at ``root`` unless one with the same config is already there."""
    manifest = read_manifest(root)
    if manifest is not None and manifest.get("config") == asdict(config):
        return
    if manifest is not None:
        raise DataError(
            f"{root} holds a generated dataset with another config ({manifest.get('config')}); delete it or "
            f"point data.root elsewhere to generate one with {asdict(config)}"
        )
    generate(root, config)


def _worker_init(_: int) -> None:
    cv2.setNumThreads(0)  # OpenCV threads inside DataLoader workers oversubscribe the cores
    info = torch.utils.data.get_worker_info()  # its torch seed: base seed of this epoch (from the seeded RNG) + id
    reseed_augmentation(info.dataset, torch.initial_seed())


class WSSSDataModule(pl.LightningDataModule):
    """Shared settings: the dataset tree, loader sizes, and the generated dataset's recipe.

    Args:
        dataset: ``synthetic`` (generated under ``root`` if absent), ``voc`` or ``coco``.
        root: dataset root (VOC: the folder holding ``VOCdevkit``; COCO: holding ``train2014``, ``annotations``).
        cache_dir: where derived files (label cache, COCO masks) go; default inside the tree.
        batch_size: training batch size (per device).
        eval_batch_size: images per inference batch (equal-size images are batched together).
        num_workers: DataLoader worker processes.
        synth: recipe of the generated dataset (only with ``dataset=synthetic``).
        skip_bad: leave out list entries whose image or mask is missing or unreadable (warned, recorded in
            ``<cache_dir>/skipped/<split>.txt``) instead of stopping; default: stop at the first, naming it.
    """

    def __init__(
        self,
        dataset: DatasetName = "synthetic",
        root: str = "data/synth",
        cache_dir: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 2,
        synth: SynthConfig = SynthConfig(),
        skip_bad: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.dataset, self.root, self.cache_dir = dataset, root, cache_dir
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.synth = synth
        self.skip_bad = skip_bad
        self._source: SegmentationSource | None = None

    # -- the tree ----------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.dataset == "synthetic":
            ensure_synthetic(self.root, self.synth)

    @property
    def source(self) -> SegmentationSource:
        if self._source is None:
            if self.dataset == "synthetic":
                ensure_synthetic(self.root, self.synth)
            self._source = open_source(self.dataset, self.root, self.cache_dir, self.skip_bad)
        return self._source

    @property
    def num_classes(self) -> int:
        """Classes including background (known without reading the tree for the generated dataset)."""
        if self.dataset == "synthetic":
            return self.synth.num_classes + 1
        return self.source.num_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.source.class_names

    # -- loaders -----------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, **kwargs) -> DataLoader:
        """Training loaders (``shuffle``) start fresh workers every epoch: each is seeded from the torch RNG at that
        epoch's start, which checkpoints carry, so a resumed run augments exactly as the uninterrupted one."""
        return DataLoader(
            dataset,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0 and not kwargs.get("shuffle", False),
            worker_init_fn=_worker_init,
            **kwargs,
        )

    def _inference_loader(self, split: str, limit: int | None = None, with_labels: bool = True) -> DataLoader:
        """Whole images batched by size. Under DDP each rank gets its own share of the split, every image exactly
        once over all ranks (no padding, unlike Lightning's ``DistributedSampler``): scores count each image once
        and exported files are written once."""
        dataset = InferenceDataset(self.source, split, eval_transform(), limit=limit, with_labels=with_labels)
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        if 0 < len(dataset) < world_size:
            raise DataError(
                f"split {split!r} has {len(dataset)} image(s) to evaluate, fewer than the {world_size} processes: "
                "every process needs at least one; run this on fewer devices (or score more images)"
            )
        if world_size > 1:  # Lightning warns that its DistributedSampler repeats images: ours does not
            warnings.filterwarnings("ignore", message="Using `DistributedSampler` with the dataloaders")
        sampler = SizeBucketBatchSampler(
            dataset.image_sizes(), self.eval_batch_size, num_replicas=world_size, rank=rank
        )
        return self._loader(dataset, batch_sampler=sampler)


class ClassificationDataModule(WSSSDataModule):
    """Classifier and CGNet: augmented image-level batches to train, whole images with masks to score CAMs.

    Args:
        train_split: split the CAM networks train on (VOC: ``train_aug``).
        score_split: split CAMs are scored on every validation (VOC: ``train``, as the reference does).
        predict_split: split CAMs are exported for (VOC: ``train_aug``, a superset of ``train``).
        score_limit: score only the first N images of ``score_split`` (quick runs).
        crop_size, resize_long, flip, color_jitter: training augmentation (reference defaults).
    """

    def __init__(
        self,
        dataset: DatasetName = "synthetic",
        root: str = "data/synth",
        cache_dir: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 2,
        synth: SynthConfig = SynthConfig(),
        skip_bad: bool = False,
        train_split: str = "train_aug",
        score_split: str = "train",
        predict_split: str = "train_aug",
        score_limit: int | None = None,
        crop_size: int = 384,
        resize_long: tuple[int, int] | None = (256, 448),
        flip: bool = True,
        color_jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.1),
    ):
        super().__init__(dataset, root, cache_dir, batch_size, eval_batch_size, num_workers, synth, skip_bad)
        self.train_split, self.score_split, self.predict_split = train_split, score_split, predict_split
        self.score_limit = score_limit
        self.augmentation = AugmentationConfig(crop_size, resize_long, flip, color_jitter)

    def train_dataloader(self) -> DataLoader:
        dataset = ClassificationDataset(self.source, self.train_split, train_transform(self.augmentation))
        return self._loader(dataset, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._inference_loader(self.score_split, self.score_limit)

    def test_dataloader(self) -> DataLoader:
        return self._inference_loader(self.score_split)

    def predict_dataloader(self) -> DataLoader:
        return self._inference_loader(self.predict_split)


class SegmentationDataModule(WSSSDataModule):
    """DeepLab: image/mask batches from ground truth or from a pseudo-label directory; scored on ``val_split``.

    Args:
        train_split: training split (VOC: ``train_aug``).
        val_split: evaluation split (VOC: ``val``).
        label_dir: directory of ``<id>.png`` pseudo labels; None trains on ground truth (the upper bound).
        predict_split: split ``caef deeplab predict`` labels (VOC: ``test``, whose masks are the evaluation
            server's); its images need no masks.
    """

    def __init__(
        self,
        dataset: DatasetName = "synthetic",
        root: str = "data/synth",
        cache_dir: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 8,
        num_workers: int = 2,
        synth: SynthConfig = SynthConfig(),
        skip_bad: bool = False,
        train_split: str = "train_aug",
        val_split: str = "val",
        label_dir: str | None = None,
        crop_size: int = 321,
        resize_long: tuple[int, int] | None = None,
        flip: bool = True,
        color_jitter: tuple[float, float, float, float] | None = None,
        predict_split: str = "test",
    ):
        super().__init__(dataset, root, cache_dir, batch_size, eval_batch_size, num_workers, synth, skip_bad)
        self.train_split, self.val_split, self.label_dir = train_split, val_split, label_dir
        self.predict_split = predict_split
        self.augmentation = AugmentationConfig(crop_size, resize_long, flip, color_jitter)

    def train_dataloader(self) -> DataLoader:
        dataset = SegmentationDataset(self.source, self.train_split, train_transform(self.augmentation), self.label_dir)
        return self._loader(dataset, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._inference_loader(self.val_split)

    def test_dataloader(self) -> DataLoader:
        return self._inference_loader(self.val_split)

    def predict_dataloader(self) -> DataLoader:  # segmentation needs no image-level labels (test has none)
        return self._inference_loader(self.predict_split, with_labels=False)


def trainer_class_names(trainer: Any, num_classes: int) -> list[str]:
    """The class names of the trainer's datamodule (``class_0``... when it has none, or not ``num_classes``)."""
    datamodule = getattr(trainer, "datamodule", None)
    names = list(getattr(datamodule, "class_names", []) or [])
    return names if len(names) == num_classes else [f"class_{i}" for i in range(num_classes)]
