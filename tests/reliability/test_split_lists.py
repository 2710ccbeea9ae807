"""Split lists: an id listed twice, or an id the list format cannot hold (a space, a dot, a path), is an error that
names the list and the line(s), in the readers and in ``caef data check``; SBD's path pairs keep working."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_voc_tree
from reliability_helpers import assert_actionable, run_caef

from caef.data.voc import VOCSource
from caef.errors import DataError

TRAIN = ["2007_000032", "2007_000063", "2008_000008", "2009_000012"]  # make_voc_tree's train list


@pytest.fixture
def tree(tmp_path: Path) -> dict:
    tree = make_voc_tree(tmp_path)
    tree["list"] = tree["voc"] / "ImageSets" / "Segmentation" / "train.txt"
    return tree


def _write(tree: dict, lines: list[str]) -> Path:
    tree["list"].write_text("\n".join(lines) + "\n")
    return tree["list"]


def test_duplicate_id_is_an_error_naming_both_lines(tree: dict) -> None:
    path = _write(tree, [*TRAIN, "", TRAIN[1]])  # line 6 repeats line 2
    with pytest.raises(DataError) as err:
        VOCSource(tree["root"]).split_ids("train")
    message = assert_actionable(str(err.value), path, repr(TRAIN[1]))
    assert "lines 2 and 6" in message


def test_data_check_reports_every_duplicate(tree: dict, capsys: pytest.CaptureFixture) -> None:
    path = _write(tree, [*TRAIN, TRAIN[0], TRAIN[3]])
    code, out, _ = run_caef(["data", "check", "--root", str(tree["root"]), "--split", "train"], capsys)
    assert code == 1 and "no problems found" not in out
    assert "lines 1 and 5" in out and "lines 4 and 6" in out and str(path) in out


@pytest.mark.parametrize(
    "line, what",
    [
        ("2007 000039", "not an image/mask path pair"),  # a space: no such id, and not a path pair
        ("2007_000039.v2", "cannot name an image"),  # a dot: used to be cut to 2007_000039
        ("2007_000039.jpg", "cannot name an image"),
        ("JPEGImages/2007_000039", "cannot name an image"),
        ("a b c", "3 fields"),
        ("/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000033.png", "not an image/mask path pair"),
    ],
)
def test_ids_the_format_cannot_hold_name_the_list_and_line(tree: dict, line: str, what: str) -> None:
    path = _write(tree, [*TRAIN, line])
    with pytest.raises(DataError, match=what) as err:
        VOCSource(tree["root"]).split_ids("train")
    assert_actionable(str(err.value), path, "line 5")


def test_sbd_path_pairs_keep_working(tree: dict) -> None:
    _write(tree, [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in TRAIN])
    assert VOCSource(tree["root"]).split_ids("train") == TRAIN


def test_coco_image_listed_twice_is_an_error(tmp_path: Path) -> None:
    import json

    from reliability_helpers import make_coco_tree

    from caef.data.coco import COCOSource

    root = make_coco_tree(tmp_path / "coco")
    path = root / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    data["images"].append({**data["images"][0], "id": 77})
    data["annotations"].append({**data["annotations"][0], "id": 99, "image_id": 77})
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="both have file_name") as err:
        COCOSource(root).split_ids("train")
    assert_actionable(str(err.value), path, "9 and 77")
