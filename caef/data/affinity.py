"""AffinityNet data: augmented images with their seed label grid (training), whole images (feature export).

The seeds are the two CRF label maps of ``caef crf`` (``<seed_dir>/low/<id>.png`` and ``<seed_dir>/high/<id>.png``).
Image and both maps are augmented together by one albumentations pipeline (the maps stacked as one two-channel
mask: same crop and flip, crop padding 255). The defaults are PSA's ``train_aff.py`` recipe: no resize, colour jitter
(0.3, 0.3, 0.3, 0.1), a joint random 448 crop padded with black pixels, a joint horizontal flip. Each map is then
sampled on the stride-8 grid of the crop and they are combined by PSA's rule
(:func:`caef.data.affinity_labels.seed_label_map`): foreground from ``low``, background from ``high``, everything
else 255. PSA averages the CRF *scores* over each 8x8 cell instead; caef keeps hard labels
(see :func:`caef.data.affinity_labels.downsample_labels`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from caef.data.affinity_labels import downsample_labels, seed_label_map
from caef.data.datamodule import DatasetName, WSSSDataModule
from caef.data.datasets import Sample
from caef.data.source import SegmentationSource, check_same_size, read_mask
from caef.data.synthetic import SynthConfig
from caef.data.transforms import AugmentationConfig, train_transform
from caef.errors import DataError

SEED_KINDS = ("low", "high")


class AffinityDataset(Dataset):
    """Items ``{"id", "image" (3, S, S) float, "label" (ceil(S/stride), ceil(S/stride)) long}``, S the crop size.

    Every seed file of the split is checked up front, so a missing one fails at start-up rather than mid-epoch.
    """

    def __init__(
        self,
        source: SegmentationSource,
        split: str,
        seed_dir: str | Path,
        transform: Callable[..., dict],
        stride: int = 8,
    ):
        self.source, self.split, self.transform, self.stride = source, split, transform, stride
        self.seed_dir = Path(seed_dir)
        self.ids = source.split_ids(split)
        for kind in SEED_KINDS:
            if not (self.seed_dir / kind).is_dir():
                raise DataError(
                    f"seed folder {self.seed_dir / kind} not found; run `caef crf --split {split} "
                    f"--out-dir {self.seed_dir} ...` on the CGNet's CAMs first (it writes low/ and high/)"
                )
        missing = [p for image_id in self.ids for p in self.seed_paths(image_id) if not p.is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} seed file(s) missing, e.g. {missing[0]}; run `caef crf --split {split} "
                f"--out-dir {self.seed_dir} ...` for every image of the split (it resumes where it stopped)"
            )

    def __len__(self) -> int:
        return len(self.ids)

    def seed_paths(self, image_id: str) -> tuple[Path, Path]:
        return tuple(self.seed_dir / kind / f"{image_id}.png" for kind in SEED_KINDS)

    def read_seeds(self, image_id: str, image: np.ndarray) -> np.ndarray:
        """``(H, W, 2)`` uint8: the low and high seed maps, checked against the image size."""
        masks = []
        for path in self.seed_paths(image_id):
            if not path.is_file():
                raise DataError(f"seed file not found: {path}; run `caef crf` to write the seeds of {self.split}")
            mask = read_mask(path, self.source.num_classes)
            check_same_size(image, mask, self.source.image_path(image_id), path)
            masks.append(mask)
        return np.stack(masks, axis=-1)

    def __getitem__(self, index: int) -> Sample:
        image_id = self.ids[index]
        image = self.source.read_image(image_id)
        out = self.transform(image=image, mask=self.read_seeds(image_id, image))
        seeds = torch.as_tensor(np.asarray(out["mask"])).long().permute(2, 0, 1)  # (2, S, S), padding 255
        low, high = downsample_labels(seeds, self.stride)
        return {"id": image_id, "image": out["image"], "label": seed_label_map(low, high)}


class AffinityDataModule(WSSSDataModule):
    """AffinityNet: seed-labelled crops to train, whole images of ``predict_split`` to export features.

    Args:
        train_split: split AffinityNet trains on (VOC: ``train_aug``).
        predict_split: split whose features are exported for the random walk (VOC: ``train_aug``).
        seed_dir: folder holding ``low/`` and ``high/`` seed PNGs from ``caef crf --out-dir``; needed for ``fit``
            only: pass ``--data.seed_dir=runs/<name>/seeds``.
        stride: output stride of the features (8 for every caef backbone).
        crop_size, resize_long, flip, color_jitter, crop_fill: training augmentation (defaults: PSA's, crop 448 padded
            black, no resize; the CPU demo resizes its 128 px images).
    """

    def __init__(
        self,
        dataset: DatasetName = "synthetic",
        root: str = "data/synth",
        cache_dir: str | None = None,
        batch_size: int = 8,
        eval_batch_size: int = 1,
        num_workers: int = 2,
        synth: SynthConfig = SynthConfig(),
        skip_bad: bool = False,
        train_split: str = "train_aug",
        predict_split: str = "train_aug",
        seed_dir: str | None = None,
        stride: int = 8,
        crop_size: int = 448,
        resize_long: tuple[int, int] | None = None,
        flip: bool = True,
        color_jitter: tuple[float, float, float, float] | None = (0.3, 0.3, 0.3, 0.1),
        crop_fill: Literal["mean", "black"] = "black",
    ):
        super().__init__(dataset, root, cache_dir, batch_size, eval_batch_size, num_workers, synth, skip_bad)
        self.train_split, self.predict_split, self.seed_dir, self.stride = train_split, predict_split, seed_dir, stride
        self.augmentation = AugmentationConfig(crop_size, resize_long, flip, color_jitter, crop_fill)

    def train_dataset(self) -> AffinityDataset:
        if not self.seed_dir:
            raise DataError(
                "data.seed_dir is not set: pass --data.seed_dir=<folder with low/ and high/ seed PNGs>, the "
                "--out-dir of `caef crf` (e.g. runs/<name>/seeds)"
            )
        transform = train_transform(self.augmentation)
        return AffinityDataset(self.source, self.train_split, self.seed_dir, transform, self.stride)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset(), batch_size=self.batch_size, shuffle=True, drop_last=True)

    def predict_dataloader(self) -> DataLoader:
        return self._inference_loader(self.predict_split)
