"""Scenes of MNIST-family objects: the IDX reader, masks (holes filled, z-order, bounded occlusion), determinism,
the default Fashion-MNIST source and its error, and a tree that `caef data check` accepts."""

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from caef.cli import main
from caef.data.scenes import ScenesConfig, default_source, generate_scenes, object_mask, read_idx, render
from caef.data.scenes import idx as idx_module
from caef.data.scenes.idx import read_object_sets
from caef.errors import DataError

NAMES = "ring,square,bar"
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    """An IDX file written here from the format's definition (not with caef's reader)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes((0, 0, 0x08, array.ndim)) + np.array(array.shape, dtype=">u4").tobytes() + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def glyphs(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """28 px objects: a ring with a hole (0), a square filling the frame (1), a bar (2); grey levels vary."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    r = np.hypot(yy - 13.5, xx - 13.5)
    shapes = [(r > 6) & (r < 12), np.ones((28, 28), bool), (abs(xx - 13.5) < 4) & (yy > 2)]
    labels = np.arange(count) % 3
    images = np.stack([shapes[c] * rng.integers(150, 256) for c in labels]).astype(np.uint8)
    return images, labels.astype(np.uint8)


def write_source(folder: Path, gz: bool = True, sets: tuple[str, ...] = ("train", "t10k")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for k, prefix in enumerate(sets):
        images, labels = glyphs(30, seed=k)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return folder


def tiny(**overrides) -> ScenesConfig:
    values = {"num_images": 24, "size": 64, "min_scale": 24, "max_scale": 40, "class_names": NAMES}
    return ScenesConfig(**(values | overrides))


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return h.hexdigest()


# -- IDX -------------------------------------------------------------------------------------------
def test_idx_reads_gzip_and_plain_alike(tmp_path):
    images, labels = glyphs(7)
    for gz in (True, False):
        name = f"x-images-idx3-ubyte{'.gz' if gz else ''}"
        assert np.array_equal(read_idx(write_idx(tmp_path / name, images, gz), 3), images)
        assert np.array_equal(read_idx(write_idx(tmp_path / f"l{gz}", labels, gz), 1), labels)
    plain, packed = (
        read_object_sets(write_source(tmp_path / "p", gz=False)),
        read_object_sets(write_source(tmp_path / "g")),
    )
    assert set(plain) == set(packed) == {"train", "t10k"}
    assert np.array_equal(plain["train"].images, packed["train"].images)


@pytest.mark.parametrize(
    "content, expected",
    [
        (bytes((0, 0, 8, 1)) + (5).to_bytes(4, "big") + bytes(5), "not an IDX file"),  # a labels file read as images
        (b"\x89PNG\r\n\x1a\n" + bytes(20), "not an IDX file"),
        (bytes((0, 0, 8, 3)) + np.array([2, 28, 28], ">u4").tobytes() + bytes(100), "holds 100 bytes"),
        (b"", "not an IDX file"),
    ],
)
def test_bad_idx_is_a_one_line_error_naming_the_file(tmp_path, content, expected):
    for gz in (False, True):
        path = tmp_path / f"bad-images-idx3-ubyte{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(content) if gz else content)
        with pytest.raises(DataError, match=expected) as exc:
            read_idx(path, 3)
        assert "\n" not in str(exc.value) and str(path) in str(exc.value)


def test_images_and_labels_must_pair(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", glyphs(5)[0], gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", glyphs(4)[1], gz=False)
    with pytest.raises(DataError, match="5 images but .* 4 labels"):
        read_object_sets(tmp_path)


# -- the default source --------------------------------------------------------------------------------
def test_missing_fashion_mnist_names_both_ways(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(idx_module, "FASHION_MNIST_DIRS", (tmp_path / "a", tmp_path / "b"))
    with pytest.raises(DataError) as exc:
        default_source()
    message = str(exc.value)
    assert "\n" not in message
    assert "torchvision.datasets.FashionMNIST" in message and "apt-get install dataset-fashion-mnist" in message
    assert main(["data", "scenes", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("caef: error: Fashion-MNIST not found") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_default_source_finds_the_torchvision_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_source(tmp_path / "data/fashion-mnist/FashionMNIST/raw", sets=("train",))
    assert default_source() == Path("data/fashion-mnist/FashionMNIST/raw")
    assert Path("/usr/share/datasets/fashion-mnist") in idx_module.FASHION_MNIST_DIRS


# -- masks ---------------------------------------------------------------------------------------------------------
def test_mask_is_thresholded_with_holes_filled():
    glyph = np.zeros((28, 28), np.uint8)
    glyph[4:24, 4:24] = 200
    glyph[10:18, 10:18] = 5  # a dark hole inside the object: part of it
    glyph[0, 0] = 20  # below 0.1 * 255: not part of it
    mask = object_mask(glyph, threshold=0.1)
    assert mask[4:24, 4:24].all() and mask.sum() == 400
    assert not object_mask(glyph, threshold=0.9).any()


def test_later_objects_occlude_earlier_ones_within_the_bound(tmp_path):
    sets = read_object_sets(write_source(tmp_path / "src"))
    config = tiny(num_images=60, max_objects=3, min_scale=28, max_scale=40, min_visible=0.4)
    occluded = squares_on_top = 0
    for i in range(config.num_images):
        rgb, label, meta = render(config, i, sets["train"])
        assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8 and 1 <= len(meta) <= 3
        assert set(np.unique(label)) - {0} == {o["class"] for o in meta}
        for obj in meta:
            assert obj["visible"] >= 0.4
            occluded += obj["visible"] < 1
        top = meta[-1]  # painted last: nothing covers it, its whole mask carries its class
        assert top["visible"] == 1.0
        x0, y0, x1, y1 = (v - 1 for v in top["bbox"])
        if top["class"] == 2:  # a filled square: its box is all its class, over whatever lies below
            assert (label[y0 : y1 + 1, x0 : x1 + 1] == 2).all()
            squares_on_top += 1
    assert occluded > 0 and squares_on_top > 0  # the bound and the z-order were exercised, not vacuous


# -- the tree --------------------------------------------------------------------------------------------
def test_tree_is_deterministic_per_seed_and_passes_data_check(tmp_path):
    source = write_source(tmp_path / "src")
    voc = generate_scenes(tmp_path / "a", tiny(), source, progress=False)
    generate_scenes(tmp_path / "b", tiny(), source, progress=False)
    generate_scenes(tmp_path / "c", tiny(seed=1), source, progress=False)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b") != tree_digest(tmp_path / "c")
    assert (voc / "classes.txt").read_text().split() == NAMES.split(",")
    manifest = json.loads((tmp_path / "a" / "caef_scenes.json").read_text())
    assert manifest["source"]["train_aug_objects"] == "train" and manifest["source"]["val_objects"] == "t10k"
    meta = json.loads((tmp_path / "a" / "caef_meta/objects.json").read_text())
    val = (voc / "ImageSets/Segmentation/val.txt").read_text().split()
    assert all(o["source"] == ("t10k" if i in val else "train") for i, m in meta.items() for o in m["objects"])
    mask = np.array(Image.open(voc / "SegmentationClass" / f"{val[0]}.png"))
    assert Image.open(voc / "SegmentationClass" / f"{val[0]}.png").mode == "P" and mask.max() <= 3
    assert main(["data", "check", "--root", str(tmp_path / "a"), "--dataset", "voc"]) == 0
    # the CLI writes the same tree; rerunning replaces its own tree, a foreign folder is refused
    cli_args = ["data", "scenes", "--out", str(tmp_path / "cli"), "--source", str(source), "--num-images", "24"]
    cli_args += ["--size", "64", "--min-scale", "24", "--max-scale", "40", "--class-names", NAMES]
    assert main(cli_args) == 0 and main(cli_args) == 0
    assert tree_digest(tmp_path / "cli") == tree_digest(tmp_path / "b")  # "a" now holds the label cache too
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="refusing"):
        generate_scenes(tmp_path / "foreign", tiny(), source, progress=False)


def test_labels_beyond_the_class_names_are_an_error(tmp_path):
    source = write_source(tmp_path / "src")
    with pytest.raises(DataError, match="labels up to 2 but class_names='a,b' names 2 classes"):
        generate_scenes(tmp_path / "out", tiny(class_names="a,b"), source, progress=False)
    with pytest.raises(DataError, match="class_names"):
        generate_scenes(tmp_path / "out", tiny(class_names="T-shirt/top,b,c"), source, progress=False)
    assert ScenesConfig().names()[0] == "tshirt_top" and len(ScenesConfig().names()) == 10


def test_object_range_keeps_two_trees_objects_apart(tmp_path):
    """A pretraining tree and a scene tree drawn from disjoint ranges of the training set share no object; the
    range is recorded, and one outside the set fails before anything is written."""
    source = write_source(tmp_path / "src")
    generate_scenes(tmp_path / "low", tiny(objects_to=15), source, progress=False)
    generate_scenes(tmp_path / "high", tiny(objects_from=15, max_objects=1), source, progress=False)

    def train_objects(name):
        meta = json.loads((tmp_path / name / "caef_meta/objects.json").read_text())
        return {o["source_index"] for m in meta.values() if m["split"] == "train_aug" for o in m["objects"]}

    low, high = train_objects("low"), train_objects("high")
    assert low and high and max(low) < 15 <= min(high) and max(high) < 30
    manifest = json.loads((tmp_path / "high" / "caef_scenes.json").read_text())
    assert manifest["source"]["train_aug_object_range"] == [15, 30]
    with pytest.raises(DataError, match=r"objects 20\.\.40 are outside the 'train' IDX set of 30 objects"):
        generate_scenes(tmp_path / "bad", tiny(objects_from=20, objects_to=40), source, progress=False)
    assert not (tmp_path / "bad").exists()
    with pytest.raises(DataError, match="objects_from < objects_to"):
        tiny(objects_from=5, objects_to=5).validate()


def test_plain_background_is_one_colour_under_the_noise(tmp_path):
    sets = read_object_sets(write_source(tmp_path / "src"))
    for background, flat in (("plain", True), ("textured", False)):
        rgb, label, _ = render(tiny(background=background, noise=0.0), 3, sets["train"])
        spread = rgb[label == 0].astype(int).std(axis=0).max()
        assert (spread < 1.0) == flat, (background, spread)
    with pytest.raises(DataError, match="background must be one of textured, plain"):
        tiny(background="stripes").validate()


@pytest.mark.parametrize(
    "config", ["classifier/fashion", "classifier/fashion_objects", "affinity/fashion", "deeplab/fashion"]
)
def test_fashion_stage_configs_read_a_scene_tree(config, tmp_path):
    """The fashion configs read a scene tree as VOC (classes from its classes.txt); the CGNet's is covered with the
    other CAM-stage configs (tests/stages/test_stage_cli.py). The scenes' classifier loads its trunk from the
    single-object pretraining's checkpoint (a small-width caef trunk here)."""
    import torch

    from caef.models.cam_net import build_cam_net
    from caef.stage_cli import stage_cli

    generate_scenes(tmp_path / "tree", tiny(), write_source(tmp_path / "src"), progress=False)
    stage = config.split("/")[0]
    args = [
        "--config",
        f"experiments/{config}.yaml",
        f"--run_dir={tmp_path}",
        f"--data.root={tmp_path / 'tree'}",
    ]
    args += ["--trainer.logger=false", "--data.num_workers=0"]
    if config == "classifier/fashion":
        trunk = build_cam_net("resnet38", 11, width=0.0625)
        torch.nn.init.constant_(trunk.backbone.conv1a.weight, 0.5)
        torch.save({"state_dict": {f"net.{k}": v for k, v in trunk.state_dict().items()}}, tmp_path / "objects.ckpt")
        args.append(f"--model.pretrained={tmp_path / 'objects.ckpt'}")
    cli = stage_cli(stage, args, run=False)
    assert cli.model.hparams.num_classes == 4 and cli.datamodule.class_names[1:] == tuple(NAMES.split(","))
    if config == "classifier/fashion":
        assert (cli.model.net.backbone.conv1a.weight == 0.5).all()


def test_the_scenes_classifier_starts_from_the_pretraining_pipelines_checkpoint():
    """`make fashion` runs experiments/fashion_objects.yaml, then experiments/fashion.yaml: the scenes' classifier
    must name the checkpoint that pipeline writes, and the two trees' object ranges must not overlap."""
    import re

    import yaml

    from caef.pipeline_config import PipelineConfig
    from caef.run_layout import CHECKPOINT, layout_path

    objects = PipelineConfig.load(EXPERIMENTS / "fashion_objects.yaml")
    assert list(objects.stages) == ["classifier"]
    written = Path(objects.runs_root) / objects.name / layout_path(CHECKPOINT, "classifier")
    scenes_classifier = yaml.safe_load((EXPERIMENTS / "classifier/fashion.yaml").read_text())
    assert Path(scenes_classifier["model"]["pretrained"]) == written
    makefile = (EXPERIMENTS.parent / "Makefile").read_text()
    assert int(re.search(r"--out data/fashion --objects-to (\d+)", makefile)[1]) <= int(
        re.search(r"--objects-from (\d+)", makefile)[1]
    )
