"""The datamodules: batches of each stage, the generated tree made on demand, size-bucketed inference batches."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_voc_tree, write_palette_png

import caef.data.datamodule as datamodule_module
from caef.data.datamodule import ClassificationDataModule, SegmentationDataModule, ensure_synthetic, open_source
from caef.data.datasets import SizeBucketBatchSampler
from caef.data.synthetic import MANIFEST, SynthConfig, class_names
from caef.errors import DataError

SMALL = SynthConfig(num_images=6, size=32, seed=1, num_classes=2)


def classification(root: Path, synth: SynthConfig, **kwargs) -> ClassificationDataModule:
    defaults = {"batch_size": 4, "eval_batch_size": 5, "num_workers": 0, "crop_size": 32, "resize_long": (40, 64)}
    return ClassificationDataModule(dataset="synthetic", root=str(root), synth=synth, **{**defaults, **kwargs})


def split_ids(root: Path, split: str) -> list[str]:
    return (root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


# -- ClassificationDataModule on the generated tree -----------------------------------------------
def test_classification_train_batches(tiny_synth: Path, tiny_synth_config: SynthConfig) -> None:
    dm = classification(tiny_synth, tiny_synth_config)
    dm.prepare_data()
    loader = dm.train_dataloader()
    train_aug = split_ids(tiny_synth, "train_aug")
    assert len(loader) == len(train_aug) // 4  # drop_last
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (4, tiny_synth_config.num_classes) and batch["label"].dtype == torch.float32
    assert set(batch["label"].unique().tolist()) <= {0.0, 1.0} and (batch["label"].sum(1) >= 1).all()
    assert set(batch["id"]) <= set(train_aug)
    for image_id, label in zip(batch["id"], batch["label"]):
        np.testing.assert_array_equal(label.numpy(), dm.source.label_of(image_id))


def test_classification_val_and_predict_batches(tiny_synth: Path, tiny_synth_config: SynthConfig) -> None:
    dm = classification(tiny_synth, tiny_synth_config)
    size = tiny_synth_config.size
    train, train_aug = split_ids(tiny_synth, "train"), split_ids(tiny_synth, "train_aug")
    for loader, ids in (
        (dm.val_dataloader(), train),
        (dm.test_dataloader(), train),
        (dm.predict_dataloader(), train_aug),
    ):
        seen = []
        for batch in loader:
            b = len(batch["id"])
            assert 1 <= b <= 5
            assert batch["image"].shape == (b, 3, size, size) and batch["image"].dtype == torch.float32
            assert batch["mask"].shape == (b, size, size) and batch["mask"].dtype == torch.int64
            assert set(batch["mask"].unique().tolist()) <= {0, 1, 2, 3, 255}
            assert batch["label"].shape == (b, 3)
            seen += batch["id"]
        assert seen == ids  # every image once, list order (one size bucket)
    limited = classification(tiny_synth, tiny_synth_config, score_limit=3).val_dataloader()
    assert [i for batch in limited for i in batch["id"]] == train[:3]


def test_masks_in_batches_match_the_files(tiny_synth: Path, tiny_synth_config: SynthConfig) -> None:
    from PIL import Image

    dm = classification(tiny_synth, tiny_synth_config, eval_batch_size=4)
    batch = next(iter(dm.val_dataloader()))
    for image_id, mask in zip(batch["id"], batch["mask"]):
        png = tiny_synth / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{image_id}.png"
        with Image.open(png) as img:
            np.testing.assert_array_equal(mask.numpy(), np.asarray(img))


def test_num_classes_without_touching_the_tree(tmp_path: Path) -> None:
    root = tmp_path / "not_yet"
    dm = classification(root, SynthConfig(num_classes=7))
    assert dm.num_classes == 8
    assert not root.exists() and dm._source is None


def test_class_names(tiny_synth: Path, tiny_synth_config: SynthConfig) -> None:
    dm = classification(tiny_synth, tiny_synth_config)
    assert dm.class_names == ("background", *class_names(3)) and dm.num_classes == 4


def test_synthetic_generated_once_then_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "synth"
    dm = classification(root, SMALL)
    dm.prepare_data()
    manifest = root / MANIFEST
    assert manifest.is_file() and (root / "VOCdevkit" / "VOC2012" / "JPEGImages").is_dir()
    files = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}

    def no_regeneration(*args, **kwargs):
        raise AssertionError("the tree was generated again")

    monkeypatch.setattr(datamodule_module, "generate", no_regeneration)
    again = classification(root, SMALL)
    again.prepare_data()
    assert again.source.num_classes == 3 and len(again.source.split_ids("val")) == 1
    for path, mtime in files.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was rewritten"


def test_source_access_generates_without_prepare_data(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    dm = classification(root, SMALL)
    assert len(dm.source.split_ids("train_aug")) == 5
    assert (root / MANIFEST).is_file()


def test_synthetic_config_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "synth"
    classification(root, SMALL).prepare_data()
    other = dataclasses.replace(SMALL, seed=2)
    with pytest.raises(DataError, match="another config") as err:
        classification(root, other).prepare_data()
    assert str(root) in str(err.value) and "delete it" in str(err.value)
    with pytest.raises(DataError, match="another config"):
        ensure_synthetic(root, other)


def test_open_source_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'cityscapes': use one of synthetic, voc, coco"):
        open_source("cityscapes", tmp_path)  # type: ignore[arg-type]


def test_worker_processes(tiny_synth: Path, tiny_synth_config: SynthConfig) -> None:
    dm = classification(tiny_synth, tiny_synth_config, num_workers=1)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32)


# -- SizeBucketBatchSampler -----------------------------------------------------------------------
def test_size_bucket_sampler_groups_equal_sizes() -> None:
    sizes = [(40, 56), (48, 40), (40, 56), (40, 56), (48, 40), (33, 33), (40, 56), (40, 56), (48, 40), (40, 56)]
    sampler = SizeBucketBatchSampler(sizes, batch_size=3)
    batches = list(sampler)
    assert len(sampler) == len(batches)
    for batch in batches:
        assert 1 <= len(batch) <= 3 and len({sizes[i] for i in batch}) == 1
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(sizes)))  # each index exactly once
    assert batches == [[0, 2, 3], [6, 7, 9], [1, 4, 8], [5]]  # sizes in first-seen order, indices in order
    assert list(sampler) == batches  # re-iterable, same order each epoch


def test_size_bucket_sampler_subset_of_indices() -> None:
    rng = np.random.default_rng(0)
    sizes = [tuple(s) for s in rng.choice([(10, 10), (10, 12), (12, 10)], 50).tolist()]
    indices = range(1, 50, 2)  # e.g. one rank's shard
    batches = list(SizeBucketBatchSampler(sizes, batch_size=4, indices=indices))
    flat = [i for batch in batches for i in batch]
    assert Counter(flat) == Counter(indices)
    for batch in batches:
        assert len({sizes[i] for i in batch}) == 1 and len(batch) <= 4
    per_size = Counter(sizes[i] for i in indices)
    assert len(batches) == sum(-(-n // 4) for n in per_size.values())  # only each bucket's last batch is short


# -- SegmentationDataModule -----------------------------------------------------------------------
def segmentation(root: Path, synth: SynthConfig, **kwargs) -> SegmentationDataModule:
    defaults = {"batch_size": 4, "eval_batch_size": 4, "num_workers": 0, "crop_size": 48}
    return SegmentationDataModule(dataset="synthetic", root=str(root), synth=synth, **{**defaults, **kwargs})


def test_segmentation_on_ground_truth(tiny_synth: Path, tiny_synth_config: SynthConfig) -> None:
    dm = segmentation(tiny_synth, tiny_synth_config)
    loader = dm.train_dataloader()
    assert len(loader) == len(split_ids(tiny_synth, "train_aug")) // 4
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 48, 48) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 48, 48) and batch["mask"].dtype == torch.int64
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2, 3}  # no padding (crop < image), no band in this tree
    val = list(dm.val_dataloader())
    assert [i for b in val for i in b["id"]] == split_ids(tiny_synth, "val")
    assert val[0]["mask"].shape[1:] == (64, 64)


def test_segmentation_on_pseudo_labels(tiny_synth: Path, tiny_synth_config: SynthConfig, tmp_path: Path) -> None:
    labels = tmp_path / "pseudo"
    train = split_ids(tiny_synth, "train")
    for n, image_id in enumerate(train):
        write_palette_png(labels / f"{image_id}.png", np.full((64, 64), 1 + n % 3, np.uint8))
    dm = segmentation(tiny_synth, tiny_synth_config, train_split="train", label_dir=str(labels), batch_size=2)
    seen = 0
    for batch in dm.train_dataloader():
        for image_id, mask in zip(batch["id"], batch["mask"]):
            assert mask.unique().tolist() == [1 + train.index(image_id) % 3]  # the pseudo label, not the GT
            seen += 1
    assert seen == len(train) // 2 * 2


def test_segmentation_missing_label_dir(tiny_synth: Path, tiny_synth_config: SynthConfig, tmp_path: Path) -> None:
    missing = tmp_path / "no_labels_here"
    dm = segmentation(tiny_synth, tiny_synth_config, label_dir=str(missing))
    with pytest.raises(DataError, match="pseudo-label directory not found") as err:
        dm.train_dataloader()
    assert str(missing) in str(err.value) and "pseudo-label stage" in str(err.value)


def test_segmentation_missing_pseudo_label_file(
    tiny_synth: Path, tiny_synth_config: SynthConfig, tmp_path: Path
) -> None:
    (tmp_path / "pseudo").mkdir()
    dm = segmentation(tiny_synth, tiny_synth_config, train_split="train", label_dir=str(tmp_path / "pseudo"))
    with pytest.raises(DataError, match="mask file not found") as err:
        next(iter(dm.train_dataloader()))
    assert str(tmp_path / "pseudo") in str(err.value)


def test_segmentation_split_without_masks(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path)
    dm = SegmentationDataModule(dataset="voc", root=str(tree["root"]), num_workers=0, train_split="test", crop_size=32)
    with pytest.raises(DataError, match="split 'test' has no ground-truth masks; pass a label_dir"):
        dm.train_dataloader()


# -- the VOC reader through the datamodules -------------------------------------------------------
def test_voc_classification_datamodule(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path)
    dm = ClassificationDataModule(
        dataset="voc", root=str(tree["root"]), batch_size=2, eval_batch_size=3, num_workers=0, crop_size=32,
        resize_long=(40, 56),
    )  # fmt: skip
    dm.prepare_data()  # nothing to generate for VOC
    assert dm.num_classes == 21 and dm.class_names[15] == "person"
    train = next(iter(dm.train_dataloader()))
    assert train["image"].shape == (2, 3, 32, 32) and train["label"].shape == (2, 20)
    for image_id, label in zip(train["id"], train["label"]):
        np.testing.assert_array_equal(label.numpy(), tree["labels"][image_id])

    for loader, split, masks in (
        (dm.val_dataloader(), "train", tree["masks"]),
        (dm.predict_dataloader(), "train_aug", tree["aug_masks"]),
    ):
        seen = []
        for batch in loader:
            h, w = tree["sizes"][batch["id"][0]]
            assert all(tree["sizes"][i] == (h, w) for i in batch["id"])  # one size per batch
            assert batch["image"].shape == (len(batch["id"]), 3, h, w) and len(batch["id"]) <= 3
            for image_id, mask, label in zip(batch["id"], batch["mask"], batch["label"]):
                np.testing.assert_array_equal(mask.numpy(), masks[image_id])  # original size, 255 band kept
                np.testing.assert_array_equal(label.numpy(), tree["labels"][image_id])
            seen += batch["id"]
        assert sorted(seen) == sorted(tree["ids"][split])


def test_voc_segmentation_datamodule(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path)
    dm = SegmentationDataModule(dataset="voc", root=str(tree["root"]), batch_size=2, num_workers=0, crop_size=36)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 36, 36) and batch["mask"].shape == (2, 36, 36)
    assert set(batch["mask"].unique().tolist()) <= {0, *range(1, 21), 255}
    val_ids = [i for b in dm.val_dataloader() for i in b["id"]]
    assert sorted(val_ids) == sorted(tree["ids"]["val"])
