"""``skip_bad``: list entries whose image, annotation or mask is missing or unreadable are left out of the splits
with a warning, and recorded (``source.skipped_entries`` and ``<cache_dir>/skipped/<split>.txt``); without it every
such entry is an error (tests/reliability/test_bad_inputs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_voc_tree
from reliability_helpers import make_coco_tree, run_caef, tiny_classifier_args

from caef.data.coco import COCOSource
from caef.data.datasets import ClassificationDataset, InferenceDataset
from caef.data.transforms import AugmentationConfig, eval_transform, train_transform
from caef.data.voc import VOCSource
from caef.errors import DataError, DataWarning

#: train_aug entries broken in five ways, and the files each reason must name (relative to VOC2012)
BROKEN = {
    "2007_000039": "JPEGImages/2007_000039.jpg",  # missing image
    "2010_000002": "JPEGImages/2010_000002.jpg",  # truncated image
    "2007_000032": "SegmentationClassAug/2007_000032.png",  # corrupt mask
    "2007_000068": "Annotations/2007_000068.xml",  # malformed annotation
}
FAULTS = dict(
    drop_image=["2007_000039"], truncate_image=["2010_000002"], corrupt_mask=["2007_000032"],
    malformed_xml=["2007_000068"], no_class=["2009_000012"],
)  # fmt: skip


def drain(dataset) -> list[str]:
    return [dataset[i]["id"] for i in range(len(dataset))]


def test_bad_entries_are_skipped_warned_and_recorded(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, **FAULTS)
    voc, listed = tree["voc"], tree["ids"]["train_aug"]
    assert VOCSource(tree["root"]).split_ids("train_aug") == listed  # off by default: nothing is dropped

    source = VOCSource(tree["root"], skip_bad=True)
    with pytest.warns(DataWarning, match=r"skipped 4 of 8 entries of split 'train_aug' \(skip_bad\)") as record:
        ids = source.split_ids("train_aug")
    assert ids == [i for i in listed if i not in BROKEN]
    record_file = voc / "caef_cache" / "skipped" / "train_aug.txt"
    assert str(record_file) in str(record[0].message)
    assert set(source.skipped_entries["train_aug"]) == set(BROKEN)
    for image_id, file in BROKEN.items():
        assert str(voc / file) in source.skipped_entries["train_aug"][image_id], image_id

    # a classification split also drops the image without a class
    with pytest.warns(DataWarning, match=r"skipped 1 of 4 .*'2009_000012': no object class"):
        classification = ClassificationDataset(
            source, "train_aug", train_transform(AugmentationConfig(crop_size=32, resize_long=None))
        )
    assert sorted(drain(classification)) == sorted(set(ids) - {"2009_000012"})
    assert sorted(drain(InferenceDataset(source, "train_aug", eval_transform()))) == sorted(ids)  # masks read too
    lines = record_file.read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == sorted([*BROKEN, "2009_000012"])
    assert all(len(line.split("\t")) == 2 for line in lines)


def test_size_and_value_problems_are_skipped_too(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, size_mismatch=["2007_000042"], out_of_range_mask={"2007_000129": 99})
    source = VOCSource(tree["root"], skip_bad=True)
    with pytest.warns(DataWarning, match="skipped 2 of 3 entries of split 'val'"):
        assert source.split_ids("val") == ["2007_000033"]
    reasons = source.skipped_entries["val"]
    assert "must match" in reasons["2007_000042"] and "[99]" in reasons["2007_000129"]


def test_nothing_left_is_an_error(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, drop_image=["2007_000033", "2007_000042", "2007_000129"])
    with pytest.raises(DataError, match=r"every one of the 3 entries of split 'val' is unusable") as err:
        VOCSource(tree["root"], skip_bad=True).split_ids("val")
    assert str(tree["voc"] / "JPEGImages" / "2007_000033.jpg") in str(err.value)


def test_coco_skips_missing_and_truncated_images(tmp_path: Path) -> None:
    root = make_coco_tree(tmp_path / "coco")
    missing = root / "train2014" / "COCO_train2014_000000000009.jpg"
    missing.unlink()
    source = COCOSource(root, skip_bad=True)
    with pytest.warns(DataWarning, match="skipped 1 of 2 entries of split 'train'"):
        assert source.split_ids("train") == ["COCO_train2014_000000000025"]
    assert str(missing) in source.skipped_entries["train"]["COCO_train2014_000000000009"]
    assert COCOSource(root).split_ids("train") == ["COCO_train2014_000000000009", "COCO_train2014_000000000025"]


def test_datamodule_option(tmp_path: Path) -> None:
    from caef.data.datamodule import ClassificationDataModule

    tree = make_voc_tree(tmp_path, **FAULTS)
    dm = ClassificationDataModule(
        dataset="voc", root=str(tree["root"]), skip_bad=True, batch_size=1, num_workers=0, crop_size=32
    )
    with pytest.warns(DataWarning):
        ids = [i for batch in dm.train_dataloader() for i in batch["id"]]
    assert sorted(ids) == sorted(set(tree["ids"]["train_aug"]) - set(BROKEN) - {"2009_000012"})
    assert set(dm.source.skipped_entries["train_aug"]) == {*BROKEN, "2009_000012"}


def test_cli_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tree = make_voc_tree(tmp_path / "data", **FAULTS)
    args = tiny_classifier_args(tree["root"], "--data.skip_bad=true", "--trainer.callbacks=[]")
    with pytest.warns(DataWarning):
        code, _, err = run_caef([*args, f"--run_dir={tmp_path / 'run'}"], capsys)
    assert code == 0, err
