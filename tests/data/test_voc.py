"""VOCSource on a tiny PASCAL VOC 2012 (+ SBD aug) tree written by ``tests/helpers.make_voc_tree``."""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
from pathlib import Path

import numpy as np
import pytest
from helpers import VOC_CLASS_NAMES, make_voc_tree, write_palette_png
from PIL import Image

from caef.data.datasets import ClassificationDataset, InferenceDataset, SegmentationDataset
from caef.data.transforms import AugmentationConfig, eval_transform, train_transform
from caef.data.voc import VOC_CLASSES, VOCSource, resolve_voc_root
from caef.errors import DataError

#: words of a message that tells the user what to do about the problem
FIX_HINT = re.compile(
    r"run `caef data check`|re-?extract|re-?download|download|To get it|remove|delete|add it|expected|must|should|"
    r"known:|pass a|regenerate|instead of"
)


def assert_actionable(exc: pytest.ExceptionInfo, *names: object) -> str:
    """The message names every given path/key and says how to fix the problem."""
    message = str(exc.value)
    for name in names:
        assert str(name) in message, f"{name!s} not named in: {message}"
    assert FIX_HINT.search(message), f"no hint how to fix in: {message}"
    return message


@pytest.fixture(scope="module")
def voc(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A clean tree shared by the read-only tests of this module (label cache written on first use)."""
    return make_voc_tree(tmp_path_factory.mktemp("voc"))


@pytest.fixture
def fresh(tmp_path: Path) -> dict:
    """A clean tree of its own, for tests that modify it."""
    return make_voc_tree(tmp_path)


# -- layout ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["parent", "devkit", "voc2012"])
def test_root_resolution(voc: dict, where: str) -> None:
    root = {"parent": voc["root"], "devkit": voc["root"] / "VOCdevkit", "voc2012": voc["voc"]}[where]
    assert resolve_voc_root(root) == voc["voc"]
    source = VOCSource(root)
    assert source.voc_dir == voc["voc"] and source.root == voc["voc"]
    assert source.image_path("2007_000032") == voc["voc"] / "JPEGImages" / "2007_000032.jpg"


def test_counts_per_split(voc: dict) -> None:
    source = VOCSource(voc["root"])
    assert set(source.splits) == {"train", "val", "train_aug", "test"}
    for split, ids in voc["ids"].items():
        assert source.split_ids(split) == ids
    assert [len(source.split_ids(s)) for s in ("train_aug", "train", "val", "test")] == [8, 4, 3, 2]
    assert set(source.split_ids("train")) <= set(source.split_ids("train_aug"))


def test_class_names_and_num_classes(voc: dict) -> None:
    source = VOCSource(voc["root"])
    assert source.class_names == VOC_CLASS_NAMES == VOC_CLASSES
    assert source.num_classes == 21


def test_labels_from_xml(voc: dict) -> None:
    source = VOCSource(voc["root"])
    for image_id, expected in voc["labels"].items():  # split images, test images and the detection-only one
        np.testing.assert_array_equal(source.label_of(image_id), expected, err_msg=image_id)
        assert source.label_of(image_id).dtype == np.uint8 and source.label_of(image_id).shape == (20,)
    # a 'difficult' chair still counts as present; a repeated class is one label
    chair, dog, bottle = (VOC_CLASS_NAMES.index(n) - 1 for n in ("chair", "dog", "bottle"))
    assert source.label_of("2007_000063")[[chair, dog]].tolist() == [1, 1]
    assert source.label_of("2008_000015").sum() == 1 and source.label_of("2008_000015")[bottle] == 1
    assert not source.label_of("2008_000001").any()  # a test image: annotation without objects


def test_label_cache_written_and_reused(fresh: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    voc = fresh["voc"]
    cache = voc / "caef_cache" / "cls_labels.npz"
    assert not cache.exists()
    first = VOCSource(fresh["root"]).class_labels
    assert cache.is_file()
    with np.load(cache) as data:
        assert sorted(data["ids"].tolist()) == sorted(fresh["labels"])
        assert data["class_names"].tolist() == list(VOC_CLASS_NAMES[1:])

    parsed: list[str] = []
    original = VOCSource.parse_annotation

    def counting(self: VOCSource, image_id: str) -> np.ndarray:
        parsed.append(image_id)
        return original(self, image_id)

    monkeypatch.setattr(VOCSource, "parse_annotation", counting)
    again = VOCSource(fresh["root"]).class_labels
    assert parsed == []  # served from the cache
    assert again.keys() == first.keys()
    for image_id in first:
        np.testing.assert_array_equal(again[image_id], fresh["labels"][image_id])

    # a new annotation (the folder changes) invalidates the cache
    (voc / "Annotations" / "2011_000001.xml").write_text(
        (voc / "Annotations" / "2007_000039.xml").read_text().replace("2007_000039", "2011_000001")
    )
    future = cache.stat().st_mtime + 5
    os.utime(voc / "Annotations", (future, future))
    labels = VOCSource(fresh["root"]).class_labels
    assert "2011_000001" in parsed and labels["2011_000001"][VOC_CLASS_NAMES.index("tvmonitor") - 1] == 1


def test_label_cache_in_cache_dir(voc: dict, tmp_path: Path) -> None:
    source = VOCSource(voc["root"], cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(source.label_of("2007_000032"), voc["labels"]["2007_000032"])
    assert (tmp_path / "cache" / "cls_labels.npz").is_file()


def test_read_only_tree_still_works(fresh: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    voc = fresh["voc"]
    dirs = [voc, *(p for p in voc.rglob("*") if p.is_dir())]
    for d in dirs:
        d.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    real_mkstemp = tempfile.mkstemp

    def read_only_fs(*args, **kwargs):  # root ignores permission bits: refuse writes into the tree like EROFS
        directory = kwargs.get("dir")
        if directory is not None and Path(directory).resolve().is_relative_to(voc.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(directory))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only_fs)
    try:
        for _ in range(2):  # no cache is written, so labels are parsed every time, and correctly
            source = VOCSource(fresh["root"])
            for image_id, expected in fresh["labels"].items():
                np.testing.assert_array_equal(source.label_of(image_id), expected)
        assert not (voc / "caef_cache" / "cls_labels.npz").exists()
        assert source.read_mask("2007_000032", "train").shape == (40, 56)
    finally:
        for d in dirs:
            d.chmod(0o755)


def test_classes_txt_overrides_names(fresh: dict) -> None:
    _ = VOCSource(fresh["root"]).class_labels  # cache the labels under the standard names first
    names = [*reversed(VOC_CLASS_NAMES[1:]), "zebra"]
    (fresh["voc"] / "classes.txt").write_text("\n".join(names) + "\n\n")
    source = VOCSource(fresh["root"])
    assert source.class_names == ("background", *names) and source.num_classes == 22
    for image_id, expected in fresh["labels"].items():  # labels follow the new order (cache not reused)
        present = {VOC_CLASS_NAMES[i + 1] for i in np.flatnonzero(expected)}
        assert {names[i] for i in np.flatnonzero(source.label_of(image_id))} == present, image_id


@pytest.mark.parametrize(
    "text", ["", "\n\n", "cat\ndog\ncat\n", "background\ncat\n"], ids=["empty", "blank", "duplicate", "background"]
)
def test_invalid_classes_txt(fresh: dict, text: str) -> None:
    path = fresh["voc"] / "classes.txt"
    path.write_text(text)
    with pytest.raises(DataError, match="distinct foreground class names") as err:
        VOCSource(fresh["root"])
    assert_actionable(err, path)


def test_mask_paths(voc: dict) -> None:
    source, root = VOCSource(voc["root"]), voc["voc"]
    assert source.mask_path("2007_000032", "train_aug") == root / "SegmentationClassAug" / "2007_000032.png"
    assert source.mask_path("2007_000032", "train") == root / "SegmentationClass" / "2007_000032.png"
    assert source.mask_path("2007_000033", "val") == root / "SegmentationClass" / "2007_000033.png"
    assert source.mask_path("2008_000001", "test") is None
    assert source.has_masks("train_aug") and source.has_masks("val") and not source.has_masks("test")
    with pytest.raises(DataError, match="'test' has no ground-truth masks"):
        source.read_mask("2008_000001", "test")


def test_palette_is_voc(voc: dict) -> None:
    palette = VOCSource(voc["root"]).palette
    assert palette.shape == (256, 3) and palette.dtype == np.uint8
    assert palette[0].tolist() == [0, 0, 0]
    assert palette[1].tolist() == [128, 0, 0]  # aeroplane
    assert palette[2].tolist() == [0, 128, 0]  # bicycle
    assert palette[15].tolist() == [192, 128, 128]  # person
    assert palette[20].tolist() == [0, 64, 128]  # tvmonitor
    assert palette[255].tolist() == [224, 224, 192]  # void / ignore


def test_masks_read_as_class_indices(voc: dict) -> None:
    source = VOCSource(voc["root"])
    for image_id in voc["ids"]["train"] + voc["ids"]["val"]:
        mask = source.read_mask(image_id, "val" if image_id in voc["ids"]["val"] else "train")
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, voc["masks"][image_id])
    for image_id in voc["ids"]["train_aug"]:
        np.testing.assert_array_equal(source.read_mask(image_id, "train_aug"), voc["aug_masks"][image_id])
    band = source.read_mask("2007_000032", "train")
    assert set(np.unique(band).tolist()) == {0, 1, 15, 255}  # aeroplane, person, void band
    assert 255 not in source.read_mask("2007_000032", "train_aug")  # SBD masks have no band


def test_read_image(voc: dict) -> None:
    source = VOCSource(voc["root"])
    image = source.read_image("2007_000063")
    assert image.shape == (48, 40, 3) and image.dtype == np.uint8


def test_segmentation_aug_list_with_path_pairs(fresh: dict) -> None:
    """SBD lists in ImageSets/SegmentationAug often hold ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png``."""
    voc = fresh["voc"]
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").unlink()
    aug = voc / "ImageSets" / "SegmentationAug"
    aug.mkdir()
    (aug / "train_aug.txt").write_text(
        "".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in fresh["ids"]["train_aug"])
    )
    source = VOCSource(fresh["root"])
    assert "train_aug" in source.splits
    assert source.split_ids("train_aug") == fresh["ids"]["train_aug"]
    assert source.read_image(fresh["ids"]["train_aug"][0]).shape[2] == 3


def test_segmentation_aug_list_with_plain_ids(fresh: dict) -> None:
    voc = fresh["voc"]
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").rename(voc / "ImageSets" / "x")
    (voc / "ImageSets" / "SegmentationAug").mkdir()
    (voc / "ImageSets" / "x").rename(voc / "ImageSets" / "SegmentationAug" / "train_aug.txt")
    assert VOCSource(fresh["root"]).split_ids("train_aug") == fresh["ids"]["train_aug"]


# -- bad input ------------------------------------------------------------------------------------
def test_missing_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "VOCdevkit"
    with pytest.raises(DataError, match="VOC dataset root not found") as err:
        VOCSource(missing)
    message = assert_actionable(err, missing)
    assert "VOCtrainval_11-May-2012.tar" in message and "SegmentationClassAug" in message


def test_root_without_voc_tree(tmp_path: Path) -> None:
    (tmp_path / "VOCdevkit" / "VOC2012" / "Annotations").mkdir(parents=True)  # JPEGImages not extracted
    with pytest.raises(DataError, match="no VOC2012 tree under") as err:
        VOCSource(tmp_path)
    assert_actionable(err, tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages")


def test_missing_split_list(voc: dict) -> None:
    source = VOCSource(voc["root"])
    with pytest.raises(DataError, match="split list 'trainval' not found") as err:
        source.split_ids("trainval")
    message = assert_actionable(err, voc["voc"] / "ImageSets" / "Segmentation" / "trainval.txt")
    assert "Available splits: test, train, train_aug, val" in message


def test_missing_train_aug_points_to_sbd(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, drop_split=["train_aug"])
    with pytest.raises(DataError, match="split list 'train_aug' not found") as err:
        VOCSource(tree["root"]).split_ids("train_aug")
    assert "SBD" in assert_actionable(err, tree["voc"] / "ImageSets" / "Segmentation" / "train_aug.txt")


def test_empty_split_list(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, empty_split=["val"])
    with pytest.raises(DataError, match="is empty") as err:
        VOCSource(tree["root"]).split_ids("val")
    assert_actionable(err, tree["voc"] / "ImageSets" / "Segmentation" / "val.txt")


def test_missing_image(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, drop_image=["2007_000039"])
    with pytest.raises(DataError, match="image file not found") as err:
        VOCSource(tree["root"]).read_image("2007_000039")
    assert_actionable(err, tree["voc"] / "JPEGImages" / "2007_000039.jpg")


def test_missing_image_in_inference_sizes(tmp_path: Path) -> None:
    """The datamodule reads image sizes up front (``InferenceDataset.image_sizes``): same quality of message."""
    tree = make_voc_tree(tmp_path, drop_image=["2007_000042"])
    dataset = InferenceDataset(VOCSource(tree["root"]), "val", eval_transform())
    with pytest.raises(DataError) as err:
        dataset.image_sizes()
    assert_actionable(err, tree["voc"] / "JPEGImages" / "2007_000042.jpg")


def test_truncated_jpeg(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, truncate_image=["2007_000039"])
    with pytest.raises(DataError, match="cannot read image") as err:
        VOCSource(tree["root"]).read_image("2007_000039")
    assert "truncated" in assert_actionable(err, tree["voc"] / "JPEGImages" / "2007_000039.jpg")


def test_missing_mask(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, drop_mask=["2007_000033"])
    with pytest.raises(DataError, match="mask file not found") as err:
        VOCSource(tree["root"]).read_mask("2007_000033", "val")
    assert_actionable(err, tree["voc"] / "SegmentationClass" / "2007_000033.png")


def test_corrupt_mask(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, corrupt_mask=["2007_000033"])
    with pytest.raises(DataError, match="cannot read mask") as err:
        VOCSource(tree["root"]).read_mask("2007_000033", "val")
    assert_actionable(err, tree["voc"] / "SegmentationClass" / "2007_000033.png")


@pytest.mark.parametrize("value", [21, 77, 254])
def test_mask_values_out_of_range(tmp_path: Path, value: int) -> None:
    tree = make_voc_tree(tmp_path, out_of_range_mask={"2007_000032": value})
    source = VOCSource(tree["root"])
    for split, folder in (("train", "SegmentationClass"), ("train_aug", "SegmentationClassAug")):
        with pytest.raises(DataError, match=rf"values \[{value}\] outside the class range 0\.\.20") as err:
            source.read_mask("2007_000032", split)
        assert_actionable(err, tree["voc"] / folder / "2007_000032.png")


def test_greyscale_mask_accepted(fresh: dict) -> None:
    path = fresh["voc"] / "SegmentationClass" / "2007_000032.png"
    grey = Image.frombytes("L", (56, 40), fresh["masks"]["2007_000032"].tobytes())
    grey.save(path)
    np.testing.assert_array_equal(
        VOCSource(fresh["root"]).read_mask("2007_000032", "train"), fresh["masks"]["2007_000032"]
    )


def test_rgb_mask(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, rgb_mask=["2007_000032"])
    with pytest.raises(DataError, match="has PIL mode 'RGB'; expected a palette") as err:
        VOCSource(tree["root"]).read_mask("2007_000032", "train")
    assert_actionable(err, tree["voc"] / "SegmentationClass" / "2007_000032.png")


def test_size_mismatch_inference_dataset(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, size_mismatch=["2007_000042"])
    source = VOCSource(tree["root"])
    dataset = InferenceDataset(source, "val", eval_transform())
    index = dataset.ids.index("2007_000042")
    dataset[0]  # the other images are fine
    with pytest.raises(DataError, match="is 40x48 but its mask .* is 36x48") as err:
        dataset[index]
    assert_actionable(
        err, tree["voc"] / "JPEGImages" / "2007_000042.jpg", tree["voc"] / "SegmentationClass" / "2007_000042.png"
    )


def test_size_mismatch_segmentation_dataset(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, size_mismatch=["2008_000008"])
    dataset = SegmentationDataset(
        VOCSource(tree["root"]), "train_aug", train_transform(AugmentationConfig(crop_size=32, resize_long=None))
    )
    with pytest.raises(DataError, match="is 56x40 but its mask .* is 52x40") as err:
        dataset[dataset.ids.index("2008_000008")]
    assert_actionable(err, tree["voc"] / "SegmentationClassAug" / "2008_000008.png")


def test_size_mismatch_pseudo_label(fresh: dict, tmp_path: Path) -> None:
    labels = tmp_path / "pseudo"
    for image_id in fresh["ids"]["train"]:
        h, w = fresh["sizes"][image_id]
        write_palette_png(labels / f"{image_id}.png", np.zeros((h, w + (image_id == "2009_000012")), np.uint8))
    dataset = SegmentationDataset(
        VOCSource(fresh["root"]), "train", train_transform(AugmentationConfig(crop_size=32, resize_long=None)), labels
    )
    with pytest.raises(DataError, match="must match") as err:
        dataset[dataset.ids.index("2009_000012")]
    assert_actionable(err, labels / "2009_000012.png")


def test_no_class_image_in_classification_split(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, no_class=["2009_000012"])
    source = VOCSource(tree["root"])
    transform = train_transform(AugmentationConfig(crop_size=32, resize_long=None))
    with pytest.raises(DataError, match="'2009_000012' in split 'train' has no object class") as err:
        ClassificationDataset(source, "train", transform)
    assert_actionable(err, "2009_000012", tree["voc"])
    assert len(ClassificationDataset(source, "val", transform)) == 3  # other splits are unaffected


def test_missing_annotation(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, drop_xml=["2007_000039"])
    source = VOCSource(tree["root"])
    with pytest.raises(DataError, match="no annotation for image '2007_000039'") as err:
        source.label_of("2007_000039")
    assert_actionable(err, "2007_000039")
    np.testing.assert_array_equal(source.label_of("2007_000032"), tree["labels"]["2007_000032"])


def test_xml_naming_unknown_class(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, unknown_class={"2007_000039": "tv/monitor"})
    source = VOCSource(tree["root"])
    with pytest.raises(DataError, match="names unknown class 'tv/monitor'") as err:
        source.label_of("2007_000039")
    message = assert_actionable(err, tree["voc"] / "Annotations" / "2007_000039.xml")
    assert "tvmonitor" in message  # the known names are listed
    np.testing.assert_array_equal(source.label_of("2007_000032"), tree["labels"]["2007_000032"])  # others unaffected


def test_malformed_xml(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, malformed_xml=["2007_000039"])
    with pytest.raises(DataError, match="cannot parse annotation") as err:
        VOCSource(tree["root"]).label_of("2007_000039")
    assert_actionable(err, tree["voc"] / "Annotations" / "2007_000039.xml")


def test_malformed_xml_of_unlisted_image_does_not_block_the_others(tmp_path: Path) -> None:
    """Real VOC's Annotations/ holds ~17k files, most for images no segmentation list names: one bad file among
    them must not make every image's label unreadable."""
    tree = make_voc_tree(tmp_path, malformed_xml=["2008_000002"])  # the detection-only image
    source = VOCSource(tree["root"])
    for image_id in tree["ids"]["train_aug"]:
        np.testing.assert_array_equal(source.label_of(image_id), tree["labels"][image_id])
    with pytest.raises(DataError, match="cannot parse annotation"):
        source.label_of("2008_000002")
