"""AffinityNet data: seed label grids (PSA's rule, crop padding, joint flip), missing seeds, the datamodule."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from caef.data.affinity import AffinityDataModule, AffinityDataset
from caef.data.datamodule import open_source
from caef.data.source import write_mask
from caef.data.synthetic import SynthConfig, generate
from caef.data.transforms import AugmentationConfig, train_transform
from caef.errors import DataError

SYNTH = SynthConfig(num_images=12, size=48, seed=3, num_classes=3)
GRID = SYNTH.size // 8  # 6 x 6 cells of 8 x 8 pixels

# Hand-written seeds, one value per 8x8 cell (so sampling a cell's centre is unambiguous): the low-alpha map has
# classes 1 and 2 on the left and background on the right; the high-alpha map has background at the bottom only.
LOW_CELLS = np.zeros((GRID, GRID), np.uint8)
LOW_CELLS[:, :2], LOW_CELLS[:3, 2] = 1, 2
HIGH_CELLS = np.full((GRID, GRID), 3, np.uint8)
HIGH_CELLS[4:] = 0
HIGH_CELLS[0, 0] = 255  # an ignore cell in one map stays ignored


def expected_label(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """PSA's rule written out: foreground from low, background from high, 255 for the rest and for 255 inputs."""
    label = np.where(high == 0, 0, np.where(low == 0, 255, low))
    label[(low == 255) | (high == 255)] = 255
    return label


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("aff") / "tree"
    generate(root, SYNTH, progress=False)
    source = open_source("synthetic", root)
    seeds = root.parent / "seeds"
    cell = np.ones((8, 8), np.uint8)
    for image_id in source.split_ids("train_aug"):
        write_mask(seeds / "low" / f"{image_id}.png", np.kron(LOW_CELLS, cell))
        write_mask(seeds / "high" / f"{image_id}.png", np.kron(HIGH_CELLS, cell))
    return {"root": root, "source": source, "seeds": seeds}


def dataset(tree: dict, crop: int = 48, resize_long=None, flip: bool = False, jitter=None, **kw) -> AffinityDataset:
    transform = train_transform(AugmentationConfig(crop, resize_long, flip, jitter))
    return AffinityDataset(tree["source"], "train_aug", kw.get("seed_dir", tree["seeds"]), transform)


def test_seed_rule_on_the_stride_8_grid(tree: dict) -> None:
    item = dataset(tree)[0]
    assert item["image"].shape == (3, 48, 48) and item["label"].dtype == torch.long
    np.testing.assert_array_equal(item["label"].numpy(), expected_label(LOW_CELLS, HIGH_CELLS))
    assert item["label"][5, 5] == 0 and item["label"][1, 4] == 255  # high bg -> 0, low bg elsewhere -> 255


def test_flip_moves_image_and_both_seed_maps_together(tree: dict) -> None:
    data, expected = dataset(tree, flip=True), expected_label(LOW_CELLS, HIGH_CELLS)
    plain = dataset(tree)[0]["image"]
    seen = set()
    for _ in range(12):
        item = data[0]
        flipped = not torch.equal(item["image"], plain)
        if flipped:
            torch.testing.assert_close(item["image"], plain.flip(-1))
        np.testing.assert_array_equal(item["label"].numpy(), expected[:, ::-1] if flipped else expected)
        seen.add(flipped)
    assert seen == {False, True}


def test_crop_padding_is_ignored(tree: dict, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    ones = np.ones((SYNTH.size, SYNTH.size), np.uint8)  # every image cell is class 1 in both maps
    for image_id in tree["source"].split_ids("train_aug"):
        for kind in ("low", "high"):
            write_mask(seeds / kind / f"{image_id}.png", ones)
    data = dataset(tree, crop=64, seed_dir=seeds)
    for index in range(4):
        label = data[index]["label"]
        assert label.shape == (8, 8)
        valid = label != 255
        assert int(valid.sum()) == GRID * GRID and set(label[valid].tolist()) == {1}
        rows, cols = valid.any(1).nonzero().squeeze(1), valid.any(0).nonzero().squeeze(1)
        assert len(rows) == len(cols) == GRID and bool(valid[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all())


def test_augmented_labels_stay_in_range(tree: dict) -> None:
    data = dataset(tree, crop=32, resize_long=(40, 72), flip=True, jitter=(0.3, 0.3, 0.3, 0.1))
    for index in range(len(data)):
        item = data[index]
        assert item["image"].shape == (3, 32, 32) and item["label"].shape == (4, 4)
        assert set(item["label"].unique().tolist()) <= {0, 1, 2, 3, 255}


def test_missing_seeds_are_named(tree: dict, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    shutil.copytree(tree["seeds"], seeds)
    victim = seeds / "high" / f"{tree['source'].split_ids('train_aug')[2]}.png"
    victim.unlink()
    with pytest.raises(DataError, match=f"1 seed file.*{victim.name}.*caef crf"):
        dataset(tree, seed_dir=seeds)
    shutil.rmtree(seeds / "low")
    with pytest.raises(DataError, match=f"{seeds / 'low'} not found.*caef crf"):
        dataset(tree, seed_dir=seeds)


def test_seed_removed_after_start_is_named(tree: dict, tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    shutil.copytree(tree["seeds"], seeds)
    data = dataset(tree, seed_dir=seeds)
    victim = seeds / "low" / f"{data.ids[0]}.png"
    victim.unlink()
    with pytest.raises(DataError, match=f"seed file not found: .*{victim.name}.*caef crf"):
        data[0]


def datamodule(tree: dict, **kwargs) -> AffinityDataModule:
    defaults = {"batch_size": 4, "eval_batch_size": 3, "num_workers": 0, "crop_size": 32, "resize_long": (40, 56)}
    defaults["seed_dir"] = str(tree["seeds"])
    return AffinityDataModule(dataset="synthetic", root=str(tree["root"]), synth=SYNTH, **{**defaults, **kwargs})


def test_datamodule_train_and_predict_batches(tree: dict) -> None:
    dm = datamodule(tree)
    assert dm.num_classes == SYNTH.num_classes + 1
    train_ids = tree["source"].split_ids("train_aug")
    loader = dm.train_dataloader()
    assert len(loader) == len(train_ids) // 4
    batch = next(iter(loader))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].shape == (4, 4, 4)
    assert batch["label"].dtype == torch.long and set(batch["id"]) <= set(train_ids)
    seen = []
    for batch in dm.predict_dataloader():
        assert batch["image"].shape[1:] == (3, SYNTH.size, SYNTH.size) and len(batch["id"]) <= 3
        seen += batch["id"]
    assert sorted(seen) == sorted(train_ids)


def test_datamodule_needs_a_seed_dir_to_train(tree: dict) -> None:
    dm = datamodule(tree, seed_dir=None)
    with pytest.raises(DataError, match="data.seed_dir is not set.*--data.seed_dir"):
        dm.train_dataloader()
    assert len(dm.predict_dataloader()) >= 1  # exporting features needs no seeds


@pytest.mark.parametrize("config", ["voc.yaml", "coco.yaml"])
def test_voc_and_coco_affinity_recipe_is_psas_no_resize(config: str) -> None:
    """PSA's train_aff.py: no resize, ColorJitter(0.3, 0.3, 0.3, 0.1), joint 448 crop padded black, joint flip."""
    import yaml

    path = Path(__file__).resolve().parents[2] / "experiments" / "affinity" / config
    data = yaml.safe_load(path.read_text())["data"]
    assert data["resize_long"] is None
    assert data["crop_size"] == 448 and data["crop_fill"] == "black"
    assert data["color_jitter"] == [0.3, 0.3, 0.3, 0.1]
    assert data.get("flip", True) is True
    defaults = AffinityDataModule()
    assert defaults.augmentation == AugmentationConfig(448, None, True, (0.3, 0.3, 0.3, 0.1), "black")


def test_psa_recipe_keeps_the_image_scale_and_pads_black(tree: dict, tmp_path: Path) -> None:
    """Without a resize a crop larger than the image holds the image at its own size; the padding is a black
    pixel (0 before normalisation) with ignored seeds, as PSA's RandomCrop container."""
    seeds = tmp_path / "seeds"
    for image_id in tree["source"].split_ids("train_aug"):
        for kind in ("low", "high"):
            write_mask(seeds / kind / f"{image_id}.png", np.ones((SYNTH.size, SYNTH.size), np.uint8))
    transform = train_transform(AugmentationConfig(64, None, False, None, "black"))
    item = AffinityDataset(tree["source"], "train_aug", seeds, transform)[0]
    valid = item["label"] != 255
    assert int(valid.sum()) == GRID * GRID  # the whole 48 px image, unscaled, inside the 64 px crop
    black = -torch.tensor((0.485, 0.456, 0.406)) / torch.tensor((0.229, 0.224, 0.225))
    is_black = (item["image"] - black[:, None, None]).abs().amax(0) < 1e-5
    assert int(is_black.sum()) == 64 * 64 - SYNTH.size * SYNTH.size
