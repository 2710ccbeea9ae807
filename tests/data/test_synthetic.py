"""The generated VOC-layout dataset: layout, consistency of images/XML/masks, determinism, safety, head statistics."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from caef.data.source import voc_palette
from caef.data.synthetic import SynthConfig, class_names, describe, generate, read_manifest, read_meta
from caef.errors import DataError

CONFIG = SynthConfig(num_images=40, size=64, seed=3, num_classes=5, max_objects=3)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tree"
    voc = generate(out, CONFIG, progress=False)
    assert voc == out / "VOCdevkit" / "VOC2012"
    return out


def _ids(voc: Path, split: str) -> list[str]:
    return (voc / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_splits(tree: Path) -> None:
    voc = tree / "VOCdevkit" / "VOC2012"
    train_aug, train, val = (_ids(voc, s) for s in ("train_aug", "train", "val"))
    assert len(val) == 8 and len(train_aug) == 32 and len(train) == round(0.3 * 32)
    assert not set(train_aug) & set(val) and set(train) <= set(train_aug)
    all_ids = sorted(train_aug + val)
    assert all_ids == [f"synth_{i:06d}" for i in range(CONFIG.num_images)]
    for sub, ext in (
        ("JPEGImages", "jpg"),
        ("Annotations", "xml"),
        ("SegmentationClass", "png"),
        ("SegmentationClassAug", "png"),
    ):
        assert sorted(p.stem for p in (voc / sub).glob(f"*.{ext}")) == all_ids, sub
    assert (voc / "classes.txt").read_text().split("\n")[:-1] == list(class_names(5))
    manifest = read_manifest(tree)
    assert manifest["format_version"] == 1 and manifest["config"] == dataclasses.asdict(CONFIG)
    assert manifest["counts"]["images"] == 40 and manifest["counts"]["val"] == 8 and manifest["counts"]["train"] == 10
    meta = read_meta(tree)
    assert sum(len(m["objects"]) for m in meta.values()) == manifest["counts"]["objects"]
    assert {i for i, m in meta.items() if m["split"] == "val"} == set(val)
    assert not list(tree.parent.glob(".tree.*")), "temporary directories left behind"


def test_images_xml_masks_agree(tree: Path) -> None:
    voc = tree / "VOCdevkit" / "VOC2012"
    names = (voc / "classes.txt").read_text().split()
    meta = read_meta(tree)
    for image_id, info in meta.items():
        root = ET.parse(voc / "Annotations" / f"{image_id}.xml").getroot()
        assert root.findtext("filename") == f"{image_id}.jpg"
        w, h, d = (int(root.findtext(f"size/{k}")) for k in ("width", "height", "depth"))
        objects = root.findall("object")
        assert objects and len(objects) == len(info["objects"])
        xml_classes = set()
        for node, obj in zip(objects, info["objects"]):
            assert node.findtext("name") == obj["name"] == names[obj["class"] - 1]
            assert node.findtext("pose") == "Unspecified" and node.findtext("difficult") == "0"
            box = [int(node.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            assert box == obj["bbox"] and 1 <= box[0] <= box[2] <= w and 1 <= box[1] <= box[3] <= h
            xml_classes.add(names.index(node.findtext("name")) + 1)
        with Image.open(voc / "SegmentationClass" / f"{image_id}.png") as img:
            assert img.mode == "P"
            palette = np.asarray(img.getpalette(), dtype=np.uint8).reshape(-1, 3)
            mask = np.asarray(img)
        assert np.array_equal(palette, voc_palette()[: len(palette)])
        assert mask.max() <= CONFIG.num_classes
        assert set(np.unique(mask).tolist()) - {0} == xml_classes
        aug = voc / "SegmentationClassAug" / f"{image_id}.png"
        assert aug.read_bytes() == (voc / "SegmentationClass" / f"{image_id}.png").read_bytes()
        with Image.open(voc / "JPEGImages" / f"{image_id}.jpg") as jpg:
            assert jpg.format == "JPEG" and jpg.mode == "RGB" and jpg.size == (w, h) == mask.shape[::-1] and d == 3


def test_same_seed_identical_bytes_other_seed_differs(tree: Path, tmp_path: Path) -> None:
    generate(tmp_path / "again", CONFIG, progress=False)
    assert _files(tmp_path / "again") == _files(tree)
    generate(tmp_path / "other", dataclasses.replace(CONFIG, seed=4), progress=False)
    a, b = _files(tmp_path / "other"), _files(tree)
    assert a.keys() == b.keys()
    jpgs = [k for k in a if k.endswith(".jpg")]
    assert all(a[k] != b[k] for k in jpgs)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_images", 1),
        ("size", 8),
        ("seed", -1),
        ("num_classes", 0),
        ("num_classes", 255),
        ("max_objects", 0),
        ("val_fraction", 0.0),
        ("val_fraction", 1.0),
        ("score_fraction", 0.0),
        ("hidden_part_prob", 1.5),
        ("ignore_border", -1),
        ("body_contrast", float("nan")),
        ("num_images", 2.5),
        ("jpeg_quality", 101),
    ],
)
def test_config_validation_names_field(field: str, value: object, tmp_path: Path) -> None:
    config = dataclasses.replace(SynthConfig(), **{field: value})
    with pytest.raises(ValueError, match=field):
        config.validate()
    with pytest.raises(ValueError, match=field):
        generate(tmp_path / "x", config, progress=False)
    assert not (tmp_path / "x").exists()


def test_val_fraction_leaving_empty_split_rejected() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        SynthConfig(num_images=3, val_fraction=0.1).validate()
    SynthConfig().validate()


def test_refuses_foreign_directory_but_replaces_previous_tree(tmp_path: Path) -> None:
    small = SynthConfig(num_images=4, size=32, seed=1)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        generate(foreign, small, progress=False)
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"]
    assert read_manifest(foreign) is None
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(DataError, match="file"):
        generate(afile, small, progress=False)

    empty = tmp_path / "empty"
    empty.mkdir()
    generate(empty, small, progress=False)
    assert read_manifest(empty)["counts"]["images"] == 4
    generate(empty, dataclasses.replace(small, num_images=6), progress=False)  # regenerating replaces the tree
    assert read_manifest(empty)["counts"]["images"] == 6
    assert len(list((empty / "VOCdevkit/VOC2012/JPEGImages").iterdir())) == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "empty", "foreign"]


def test_head_drawn_for_about_one_minus_hidden_prob(tree: Path, tmp_path: Path) -> None:
    objects = [o for m in read_meta(tree).values() for o in m["objects"]]
    assert len(objects) >= CONFIG.num_images
    drawn = np.mean([o["head"] for o in objects])
    assert abs(drawn - (1 - CONFIG.hidden_part_prob)) < 0.15
    for obj in objects:
        if not obj["head"]:
            assert obj["head_visible"] == 0 and obj["head_bbox"] is None
        elif obj["head_bbox"] is not None:
            hb, b = obj["head_bbox"], obj["bbox"]
            assert b[0] <= hb[0] <= hb[2] <= b[2] and b[1] <= hb[1] <= hb[3] <= b[3]
    for p, expected in ((0.0, True), (1.0, False)):
        generate(tmp_path / str(p), SynthConfig(num_images=6, size=64, hidden_part_prob=p), progress=False)
        assert {o["head"] for m in read_meta(tmp_path / str(p)).values() for o in m["objects"]} == {expected}


def test_head_is_the_saturated_cue(tree: Path) -> None:
    """Head pixels are far more saturated than the rest of the object (the easy, discriminative part)."""
    voc = tree / "VOCdevkit" / "VOC2012"
    head_sat, body_sat = [], []
    for image_id, info in read_meta(tree).items():
        rgb = np.asarray(Image.open(voc / "JPEGImages" / f"{image_id}.jpg"), dtype=np.float32)
        sat = rgb.max(-1) - rgb.min(-1)
        mask = np.asarray(Image.open(voc / "SegmentationClass" / f"{image_id}.png"))
        for obj in info["objects"]:
            if obj["head_visible"] >= 20:
                x0, y0, x1, y1 = obj["head_bbox"]
                inner = np.zeros(mask.shape, bool)
                inner[y0 - 1 : y1, x0 - 1 : x1] = True
                head_sat.append(sat[inner & (mask == obj["class"])].mean())
                body_sat.append(sat[~inner & (mask == obj["class"])].mean())
    assert len(head_sat) >= 10
    diff = np.array(head_sat) - np.array(body_sat)  # 0..255 scale; JPEG chroma subsampling blurs small heads
    assert np.median(diff) > 25 and np.mean(diff > 0) > 0.85


def test_ignore_border_band(tmp_path: Path) -> None:
    config = SynthConfig(num_images=5, size=64, seed=2, ignore_border=2)
    voc = generate(tmp_path / "band", config, progress=False)
    plain = generate(tmp_path / "plain", dataclasses.replace(config, ignore_border=0), progress=False)
    for image_id in _ids(voc, "train_aug") + _ids(voc, "val"):
        band = np.asarray(Image.open(voc / "SegmentationClass" / f"{image_id}.png"))
        ref = np.asarray(Image.open(plain / "SegmentationClass" / f"{image_id}.png"))
        assert (band == 255).any() and not (ref == 255).any()
        keep = band != 255
        assert np.array_equal(band[keep], ref[keep])  # the band only replaces pixels, never relabels them
        assert set(np.unique(band).tolist()) - {255} == set(np.unique(ref).tolist())


def test_class_names_and_describe() -> None:
    for n in (1, 6, 20, 254):
        names = class_names(n)
        assert len(names) == len(set(names)) == n
    assert class_names(6)[:3] == ("stripes_0", "dots_0", "zigzag_0")
    text = describe(SynthConfig())
    assert "1000 images" in text and "6 classes" in text and "\n" not in text


def test_read_manifest_absent(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None
    (tmp_path / "caef_synth.json").write_text("{broken")
    with pytest.raises(DataError, match="caef_synth.json"):
        read_manifest(tmp_path)
