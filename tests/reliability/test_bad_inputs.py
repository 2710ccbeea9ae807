"""Every bad dataset input fails through the public entry points (the datamodules, the ``caef`` command) with an
error that names the file or key and says how to fix it. The readers' own unit tests are in tests/data; these
check that the message survives the way a user meets it: a DataLoader (also in a worker process), the CLI's
one-line ``caef: error:`` with exit code 2, jsonargparse's errors for config keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_voc_tree
from reliability_helpers import (
    EXPERIMENTS,
    assert_actionable,
    caef_error_line,
    make_coco_tree,
    run_caef,
    tiny_classifier_args,
)

from caef.data.datamodule import ClassificationDataModule, SegmentationDataModule
from caef.errors import DataError


def classification(root: Path, **kwargs) -> ClassificationDataModule:
    options = dict(batch_size=2, eval_batch_size=3, num_workers=0, crop_size=32, resize_long=(40, 56))
    return ClassificationDataModule(dataset="voc", root=str(root), **{**options, **kwargs})


def drain(loader) -> int:
    return sum(len(batch["id"]) for batch in loader)


ACTIONS = {
    "train": lambda root: drain(classification(root).train_dataloader()),  # train_aug, augmented
    "score": lambda root: drain(classification(root).val_dataloader()),  # train, whole images + masks
    "segmentation": lambda root: drain(
        SegmentationDataModule(
            dataset="voc", root=str(root), batch_size=2, num_workers=0, crop_size=32
        ).train_dataloader()
    ),  # train_aug on ground truth
}

# (make_voc_tree faults, action, the files named (relative to VOC2012) and words the message must hold)
CASES = {
    "missing image (checked before training)": (
        {"drop_image": ["2007_000039"]}, "train",
        ["JPEGImages/2007_000039.jpg", "ImageSets/Segmentation/train_aug.txt"], ["not found"],
    ),
    "missing image in the scoring split": (
        {"drop_image": ["2007_000032"]}, "score", ["JPEGImages/2007_000032.jpg"], [],
    ),
    "missing mask": ({"drop_mask": ["2007_000063"]}, "score", ["SegmentationClass/2007_000063.png"], ["not found"]),
    "missing mask (segmentation)": (
        {"drop_mask": ["2008_000015"]}, "segmentation", ["SegmentationClassAug/2008_000015.png"], ["not found"],
    ),
    "truncated JPEG": ({"truncate_image": ["2007_000039"]}, "train", ["JPEGImages/2007_000039.jpg"], ["truncated"]),
    "corrupt PNG mask": (
        {"corrupt_mask": ["2007_000032"]}, "score", ["SegmentationClass/2007_000032.png"], ["corrupt"],
    ),
    "mask values out of range": (
        {"out_of_range_mask": {"2008_000008": 42}}, "score", ["SegmentationClass/2008_000008.png"],
        ["[42]", "0..20"],
    ),
    "RGB mask": ({"rgb_mask": ["2009_000012"]}, "score", ["SegmentationClass/2009_000012.png"], ["'RGB'"]),
    "image/mask size mismatch": (
        {"size_mismatch": ["2007_000063"]}, "score",
        ["JPEGImages/2007_000063.jpg", "SegmentationClass/2007_000063.png"], ["36x48", "40x48"],
    ),
    "image/mask size mismatch (segmentation)": (
        {"size_mismatch": ["2010_000002"]}, "segmentation",
        ["JPEGImages/2010_000002.jpg", "SegmentationClassAug/2010_000002.png"], ["must match"],
    ),
    "no class in a classification split": (
        {"no_class": ["2008_000015"]}, "train", ["ImageSets/Segmentation/train_aug.txt"],
        ["'2008_000015'", "no object class"],
    ),
    "malformed annotation XML": (
        {"malformed_xml": ["2007_000068"]}, "train", ["Annotations/2007_000068.xml"], ["cannot parse"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_bad_voc_entry_through_the_datamodule(tmp_path: Path, case: str) -> None:
    faults, action, files, words = CASES[case]
    tree = make_voc_tree(tmp_path, **faults)
    with pytest.raises(DataError) as err:
        ACTIONS[action](tree["root"])
    message = assert_actionable(str(err.value), *(tree["voc"] / f for f in files), *words)
    assert "\n" not in message


@pytest.mark.parametrize("dataset", ["voc", "coco"])
def test_missing_dataset_root_through_the_datamodule(tmp_path: Path, dataset: str) -> None:
    missing = tmp_path / "not_extracted"
    dm = ClassificationDataModule(dataset=dataset, root=str(missing), num_workers=0)
    with pytest.raises(DataError) as err:
        _ = dm.num_classes  # what the CLI asks first (linked into model.num_classes)
    assert "download" in assert_actionable(str(err.value), missing).lower()


def test_missing_dataset_root_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "data"
    code, _, err = run_caef([*tiny_classifier_args(missing), f"--run_dir={tmp_path / 'run'}"], capsys)
    line = assert_actionable(caef_error_line(code, err), missing, "VOCtrainval_11-May-2012.tar")
    assert "root not found" in line
    assert not (tmp_path / "run").exists()  # nothing started


def test_error_in_a_dataloader_worker_stays_one_line(tmp_path: Path) -> None:
    """torch re-raises a worker's exception with the worker's whole traceback as its message; a CaefError keeps the
    original message (plus where it was raised), so the CLI can still print one line."""
    tree = make_voc_tree(tmp_path, truncate_image=["2007_000039"])
    dm = classification(tree["root"], num_workers=1)
    with pytest.raises(DataError) as err:
        drain(dm.train_dataloader())
    message = assert_actionable(str(err.value), tree["voc"] / "JPEGImages" / "2007_000039.jpg", "truncated")
    assert "\n" not in message and "Traceback" not in message
    assert message.endswith("(raised in DataLoader worker process 0)")


def test_corrupt_image_through_the_cli_in_a_worker(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tree = make_voc_tree(tmp_path / "data", truncate_image=["2010_000002"])
    args = tiny_classifier_args(tree["root"], "--data.num_workers=1", "--trainer.callbacks=[]")
    code, _, err = run_caef([*args, f"--run_dir={tmp_path / 'run'}"], capsys)
    line = caef_error_line(code, err)
    assert_actionable(line, tree["voc"] / "JPEGImages" / "2010_000002.jpg", "truncated", "worker process")


def test_no_class_image_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tree = make_voc_tree(tmp_path / "data", no_class=["2009_000012", "2008_000015"])
    args = tiny_classifier_args(tree["root"], "--trainer.callbacks=[]")
    code, _, err = run_caef([*args, f"--run_dir={tmp_path / 'run'}"], capsys)
    line = caef_error_line(code, err)
    assert_actionable(line, "'2008_000015'", "'2009_000012'", tree["voc"] / "ImageSets/Segmentation/train_aug.txt")


# -- malformed COCO json ----------------------------------------------------------------------------
def _truncate(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def _edit(change):
    def apply(path: Path) -> None:
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))

    return apply


COCO_FAULTS = {
    "truncated": (_truncate, "not valid JSON"),
    "not JSON at all": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe"), "not valid JSON"),
    "missing key": (_edit(lambda d: d.pop("annotations")), "lacks the key(s) ['annotations']"),
    "image without width": (_edit(lambda d: d["images"][0].pop("width")), "width=None"),
    "image with a string height": (_edit(lambda d: d["images"][1].update(height="24")), "height='24'"),
    "annotation without image_id": (_edit(lambda d: d["annotations"][0].pop("image_id")), "'image_id'"),
    "category without id": (_edit(lambda d: d["categories"][0].pop("id")), "KeyError('id')"),
    "images is not a list": (_edit(lambda d: d.update(images=None)), "malformed entry"),
}


@pytest.mark.parametrize("fault", list(COCO_FAULTS))
def test_malformed_coco_json_through_the_datamodule(tmp_path: Path, fault: str) -> None:
    root = make_coco_tree(tmp_path / "coco")
    path = root / "annotations" / "instances_train2014.json"
    corrupt, words = COCO_FAULTS[fault]
    corrupt(path)
    dm = ClassificationDataModule(
        dataset="coco", root=str(root), train_split="train", score_split="val", num_workers=0, crop_size=16
    )
    with pytest.raises(DataError) as err:
        _ = dm.num_classes
        drain(dm.train_dataloader())
    assert_actionable(str(err.value), path, words)


def test_malformed_coco_json_through_data_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = make_coco_tree(tmp_path / "coco")
    path = root / "annotations" / "instances_val2014.json"
    _truncate(path)
    code, _, err = run_caef(["data", "check", "--root", str(root), "--dataset", "coco"], capsys)
    # the class list needs both jsons, so nothing can be checked: a one-line error, not a report
    assert_actionable(caef_error_line(code, err), path, "not valid JSON")


# -- config keys (jsonargparse's own errors) --------------------------------------------------------
@pytest.mark.parametrize(
    "flag, words",
    [
        ("--model.nonexistent=1", ["unrecognized arguments", "--model.nonexistent=1"]),
        ("--model.lr=abc", ['"model.lr"', "float", "abc"]),
        ("--data.batch_size=two", ['"data.batch_size"', "int", "two"]),
        ("--model.optimizer=adam", ['"model.optimizer"', "adam"]),
    ],
    ids=["unknown key", "wrong type", "wrong type (int)", "not a choice"],
)
def test_bad_config_flag_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture, flag: str, words) -> None:
    args = ["classifier", "fit", "--config", str(EXPERIMENTS / "classifier/demo.yaml"), f"--run_dir={tmp_path}", flag]
    code, _, err = run_caef(args, capsys)
    assert code == 2
    message = err[err.index("error:") :]
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    assert "caef classifier fit --help" in err  # how to see the valid keys
    assert not any(tmp_path.iterdir())


def test_unknown_key_in_a_config_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  backbone: resnet38\n  learning_rate: 0.1\n")
    code, _, err = run_caef(["classifier", "fit", "--config", str(config), f"--run_dir={tmp_path / 'run'}"], capsys)
    assert code == 2
    assert "learning_rate" in err[err.index("error:") :], err
