"""The VOC label cache is keyed on every annotation file, so an edit that keeps the old size and mtime (``cp -p``,
``rsync -a``, ``tar x``) or a rename rebuilds it instead of serving the old image-level labels."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import VOC_CLASS_NAMES, make_voc_tree

from caef.data.voc import VOCSource


def _label(*names: str) -> np.ndarray:
    label = np.zeros(len(VOC_CLASS_NAMES) - 1, dtype=np.uint8)
    for name in names:
        label[VOC_CLASS_NAMES.index(name) - 1] = 1
    return label


def _restore_times(path: Path, st: os.stat_result) -> None:
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture
def tree(tmp_path: Path) -> dict:
    tree = make_voc_tree(tmp_path)
    _ = VOCSource(tmp_path).class_labels  # build the cache
    assert (tree["voc"] / "caef_cache" / "cls_labels.npz").is_file()
    return tree


def test_same_size_edit_with_the_old_mtime_rebuilds(tree: dict) -> None:
    xml = tree["voc"] / "Annotations" / "2009_000012.xml"
    before = xml.stat()
    text = xml.read_text()
    xml.write_text(text.replace("<name>cat</name>", "<name>dog</name>"))  # same size
    _restore_times(xml, before)  # as `cp -p` / `rsync -a` / `tar x` leave it
    after = xml.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    np.testing.assert_array_equal(VOCSource(tree["root"]).label_of("2009_000012"), _label("dog"))


def test_cp_p_of_another_annotation_rebuilds(tree: dict) -> None:
    folder = tree["voc"] / "Annotations"
    shutil.copy2(folder / "2007_000039.xml", folder / "2009_000012.xml")  # keeps the older source mtime
    np.testing.assert_array_equal(VOCSource(tree["root"]).label_of("2009_000012"), _label("tvmonitor"))


def test_renamed_annotations_rebuild(tree: dict) -> None:
    folder = tree["voc"] / "Annotations"
    bird, cat = folder / "2007_000068.xml", folder / "2009_000012.xml"
    bird.rename(folder / "swap.xml")
    cat.rename(bird)
    (folder / "swap.xml").rename(cat)  # same names, sizes and mtimes as before; the labels swapped
    source = VOCSource(tree["root"])
    np.testing.assert_array_equal(source.label_of("2007_000068"), _label("cat"))
    np.testing.assert_array_equal(source.label_of("2009_000012"), _label("bird"))


def test_unchanged_tree_is_served_from_the_cache(tree: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(VOCSource, "parse_annotation", lambda self, image_id: pytest.fail("parsed " + image_id))
    labels = VOCSource(tree["root"]).class_labels
    assert labels.keys() == tree["labels"].keys()


def test_unreadable_cache_is_rebuilt(tree: dict) -> None:
    (tree["voc"] / "caef_cache" / "cls_labels.npz").write_bytes(b"PK\x03\x04 not a zip")
    np.testing.assert_array_equal(VOCSource(tree["root"]).label_of("2009_000012"), _label("cat"))


def test_coco_masks_follow_an_edited_annotation_json(tmp_path: Path) -> None:
    from reliability_helpers import make_coco_tree

    from caef.data.coco import COCOSource

    root = make_coco_tree(tmp_path / "coco")
    image = "COCO_val2014_000000000042"
    assert COCOSource(root).read_mask(image, "val")[0, 0] == 1  # person, rasterised and cached
    path = root / "annotations" / "instances_val2014.json"
    before = path.stat()
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 5  # the same box is now an airplane: same size, mtime kept
    path.write_text(json.dumps(data))
    _restore_times(path, before)
    assert COCOSource(root).read_mask(image, "val")[0, 0] == 2
