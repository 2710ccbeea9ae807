"""COCOSource on a tiny COCO 2014 tree written on the fly in the real on-disk format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from caef.data.coco import COCOSource
from caef.data.source import voc_palette
from caef.errors import DataError

# non-contiguous ids, listed out of order: class indices follow ascending id -> person=1, airplane=2, toothbrush=3
CATEGORIES = [
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 5, "name": "airplane", "supercategory": "vehicle"},
]
T9, T25, T30 = "COCO_train2014_000000000009", "COCO_train2014_000000000025", "COCO_train2014_000000000030"
V42, V73 = "COCO_val2014_000000000042", "COCO_val2014_000000000073"


def rect(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    """A polygon covering pixels x0..x1-1, y0..y1-1 (pycocotools fills the integer-cornered box half-open)."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """The list-of-runs RLE real COCO uses for crowds: column-major, starting with a run of zeros."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def box(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def ann(ann_id: int, image_id: int, category_id: int, segmentation, iscrowd: int = 0) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "iscrowd": iscrowd,
        "area": 0.0,
        "bbox": [0, 0, 1, 1],
    }


def write_split(root: Path, folder: str, images: list[tuple[int, int, int]], annotations: list[dict]) -> None:
    (root / folder).mkdir(parents=True)
    records = []
    rng = np.random.default_rng(0)
    for coco_id, w, h in images:
        name = f"COCO_{folder}_{coco_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / folder / name, format="JPEG")
        records.append({"id": coco_id, "file_name": name, "width": w, "height": h})
    data = {"info": {}, "licenses": [], "images": records, "annotations": annotations, "categories": CATEGORIES}
    (root / "annotations").mkdir(exist_ok=True)
    (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(data))


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    write_split(
        root,
        "train2014",
        [(9, 40, 30), (25, 20, 24), (30, 16, 16)],
        [
            ann(1, 9, 1, rect(2, 3, 20, 15)),  # big person
            ann(2, 9, 5, rect(10, 5, 14, 9)),  # small airplane on top of the person
            ann(3, 9, 90, compressed_rle(box(30, 40, 20, 28, 30, 38))),  # toothbrush as compressed RLE
            ann(4, 25, 5, uncompressed_rle(box(24, 20, 0, 12, 0, 20)), 1),  # crowd of airplanes
        ],
    )  # image 30 has no annotation
    write_split(
        root,
        "val2014",
        [(42, 32, 20), (73, 24, 24)],
        [
            ann(10, 42, 90, rect(0, 0, 8, 4)),
            ann(11, 73, 1, rect(0, 0, 4, 4)),
            ann(12, 73, 5, rect(4, 4, 8, 8)),
        ],
    )
    return root


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# -- splits, classes, labels ------------------------------------------------------------------------
def test_split_counts_and_skipped(coco_root):
    source = COCOSource(coco_root)
    assert source.splits == ("train", "val")
    assert source.split_ids("train") == [T9, T25]
    assert source.skipped_ids("train") == [T30]
    assert source.split_ids("val") == [V42, V73]
    assert source.skipped_ids("val") == []


def test_class_names_and_category_mapping(coco_root):
    source = COCOSource(coco_root)
    assert source.class_names == ("background", "person", "airplane", "toothbrush")
    assert source.num_classes == 4
    assert source.category_index == {1: 1, 5: 2, 90: 3}


def test_labels_include_crowd(coco_root):
    source = COCOSource(coco_root)
    assert source.label_of(T9).tolist() == [1, 1, 1]
    assert source.label_of(T25).tolist() == [0, 1, 0]  # crowd only
    assert source.label_of(V42).tolist() == [0, 0, 1]
    assert source.label_of(V73).tolist() == [1, 1, 0]
    assert source.label_of(T9).dtype == np.uint8
    assert source.classification_ids("train") == [T9, T25]
    with pytest.raises(DataError, match=T30):
        source.label_of(T30)


def test_lazy_loading_and_image_paths(coco_root):
    (coco_root / "annotations" / "instances_train2014.json").unlink()
    source = COCOSource(coco_root)  # no json read yet, so a missing one is not an error here
    assert source.image_path(T9) == coco_root / "train2014" / f"{T9}.jpg"
    assert source.image_path(V42) == coco_root / "val2014" / f"{V42}.jpg"
    assert source.read_image(T9).shape == (30, 40, 3)
    assert source.split_ids("val") == [V42, V73]  # val alone does not need the train json
    with pytest.raises(DataError, match="not a COCO 2014 file stem"):
        source.image_path("000000000009")


# -- masks ------------------------------------------------------------------------------------------
def test_rasterised_mask_values(coco_root, tmp_path):
    source = COCOSource(coco_root, cache_dir=tmp_path / "cache")
    path = source.mask_path(T9, "train")
    assert path.parent.parent == tmp_path / "cache" / "masks" and path.name == f"{T9}.png"
    assert path.parent.name.startswith("train2014-")  # keyed on the json's content
    mask = source.read_mask(T9, "train")
    assert mask.shape == source.read_image(T9).shape[:2]
    expected = np.zeros((30, 40), dtype=np.uint8)
    expected[3:15, 2:20] = 1  # rectangle polygon: exactly these pixels
    expected[5:9, 10:14] = 2  # the smaller airplane stays on top of the person
    expected[20:28, 30:38] = 3  # compressed RLE
    np.testing.assert_array_equal(mask, expected)

    crowd = source.read_mask(T25, "train")
    np.testing.assert_array_equal(crowd, np.where(box(24, 20, 0, 12, 0, 20) == 1, 2, 0))


def test_small_on_top_regardless_of_json_order(coco_root, tmp_path):
    path = coco_root / "annotations" / "instances_val2014.json"
    edit_json(path, annotations=[ann(20, 42, 5, rect(2, 1, 5, 3)), ann(21, 42, 90, rect(0, 0, 8, 4))])
    mask = COCOSource(coco_root, cache_dir=tmp_path).read_mask(V42, "val")
    assert (mask[1:3, 2:5] == 2).all()
    assert (mask[0, :8] == 3).all() and mask[:4, :8][mask[:4, :8] != 2].min() == 3
    assert (mask[4:] == 0).all()


def test_mask_png_is_palette_with_voc_colours(coco_root):
    source = COCOSource(coco_root)
    path = source.mask_path(V73, "val")
    assert path.parent.parent == coco_root / "caef_cache" / "masks"  # default cache_dir
    assert path.parent.name.startswith("val2014-")
    with Image.open(path) as img:
        assert img.mode == "P"
        palette = np.asarray(img.getpalette(), dtype=np.uint8).reshape(-1, 3)
    np.testing.assert_array_equal(palette, voc_palette()[: len(palette)])
    assert source.has_masks("val")
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_cache_reused_not_rewritten(coco_root, tmp_path):
    source = COCOSource(coco_root, cache_dir=tmp_path)
    path = source.mask_path(T9, "train")
    os.utime(path, (1_000_000, 1_000_000))
    assert source.mask_path(T9, "train") == path
    assert COCOSource(coco_root, cache_dir=tmp_path).mask_path(T9, "train") == path
    assert path.stat().st_mtime == 1_000_000


def test_prepare_masks_fills_only_missing(coco_root, tmp_path):
    source = COCOSource(coco_root, cache_dir=tmp_path)
    first = source.mask_path(T9, "train")
    os.utime(first, (1_000_000, 1_000_000))
    assert source.prepare_masks("train", progress=False) == 1  # T25 only; skipped T30 gets none
    assert sorted(p.name for p in first.parent.iterdir()) == [f"{T9}.png", f"{T25}.png"]
    assert first.stat().st_mtime == 1_000_000
    assert source.prepare_masks("train", progress=False) == 0
    assert source.prepare_masks("val", progress=False) == 2


# -- bad input --------------------------------------------------------------------------------------
def test_missing_root(tmp_path):
    with pytest.raises(DataError) as err:
        COCOSource(tmp_path / "nowhere")
    message = str(err.value)
    for part in (str(tmp_path / "nowhere"), "data/coco", "train2014/", "val2014/", "annotations/", "cocodataset.org"):
        assert part in message


def test_missing_annotation_json(coco_root):
    path = coco_root / "annotations" / "instances_val2014.json"
    path.unlink()
    with pytest.raises(DataError, match="annotation file not found") as err:
        COCOSource(coco_root).split_ids("val")
    assert str(path) in str(err.value) and "annotations_trainval2014.zip" in str(err.value)


def test_invalid_json(coco_root):
    path = coco_root / "annotations" / "instances_train2014.json"
    path.write_text('{"images": [')
    with pytest.raises(DataError, match="not valid JSON") as err:
        COCOSource(coco_root).split_ids("train")
    assert str(path) in str(err.value) and "Expecting value" in str(err.value)


@pytest.mark.parametrize("key", ["images", "annotations", "categories"])
def test_json_missing_key(coco_root, key):
    path = coco_root / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    del data[key]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=f"lacks the key.*'{key}'") as err:
        COCOSource(coco_root).split_ids("train")
    assert str(path) in str(err.value)


def test_unknown_split(coco_root):
    source = COCOSource(coco_root)
    for call in (source.split_ids, source.skipped_ids, lambda s: source.mask_path(T9, s), source.prepare_masks):
        with pytest.raises(DataError, match="unknown split 'test'; valid splits are 'train', 'val'"):
            call("test")


def test_missing_image_file(coco_root):
    path = coco_root / "train2014" / f"{T25}.jpg"
    path.unlink()
    source = COCOSource(coco_root)
    assert T25 in source.split_ids("train")  # listing does not stat files
    with pytest.raises(DataError, match="image file not found") as err:
        source.read_image(T25)
    assert str(path) in str(err.value) and "train2014.zip" in str(err.value)


def test_categories_must_match(coco_root):
    edit_json(coco_root / "annotations" / "instances_val2014.json", categories=CATEGORIES[:2])
    with pytest.raises(DataError, match="different categories") as err:
        _ = COCOSource(coco_root).class_names
    assert "instances_train2014.json" in str(err.value) and "instances_val2014.json" in str(err.value)


def test_cached_mask_of_wrong_size(coco_root, tmp_path):
    source = COCOSource(coco_root, cache_dir=tmp_path)
    path = source.cached_mask_path(T9, "train")
    path.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((10, 10), dtype=np.uint8), mode="P").save(path)
    with pytest.raises(DataError, match="is 10x10 but its image is 40x30") as err:
        source.mask_path(T9, "train")
    assert str(path) in str(err.value) and "delete it" in str(err.value)


def test_unknown_category_and_unlisted_image(coco_root, tmp_path):
    edit_json(coco_root / "annotations" / "instances_val2014.json", annotations=[ann(30, 42, 7, rect(0, 0, 2, 2))])
    source = COCOSource(coco_root, cache_dir=tmp_path)
    with pytest.raises(DataError, match="category_id 7"):
        source.mask_path(V42, "val")
    with pytest.raises(DataError, match="not listed in .*instances_train2014.json"):
        source.mask_path("COCO_train2014_000000000099", "train")


def test_file_name_of_other_release(coco_root):
    path = coco_root / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["images"][0]["file_name"] = "000000000042.jpg"  # COCO 2017 naming
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="COCO 2014 instances file") as err:
        COCOSource(coco_root).split_ids("val")
    assert str(path) in str(err.value)
