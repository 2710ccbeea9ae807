"""``check_source``: counts per split on a clean tree, and every problem of a broken one (not just the first)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_voc_tree

from caef.data.checks import check_source
from caef.data.voc import VOCSource


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return make_voc_tree(tmp_path_factory.mktemp("clean"))


def counts(report) -> dict[str, tuple[int, int, int]]:
    return {s.split: (s.images, s.masks, len(s.problems)) for s in report.splits}


def all_problems(report) -> list[str]:
    return report.problems + [p for s in report.splits for p in s.problems]


def test_clean_tree(clean: dict) -> None:
    report = check_source(VOCSource(clean["root"]), progress=False)
    assert report.ok, report.format()
    assert report.dataset == "voc" and report.num_classes == 21 and report.root == str(clean["voc"])
    assert counts(report) == {"test": (2, 0, 0), "train": (4, 4, 0), "train_aug": (8, 8, 0), "val": (3, 3, 0)}
    text = report.format()
    assert "21 classes" in text and "no problems found" in text
    assert any(line.split() == ["train_aug", "8", "8", "0"] for line in text.splitlines())


def test_only_requested_splits(clean: dict) -> None:
    report = check_source(VOCSource(clean["root"]), splits=["val"], progress=False)
    assert report.ok and counts(report) == {"val": (3, 3, 0)}


def test_unknown_split_is_a_problem_not_a_crash(clean: dict) -> None:
    report = check_source(VOCSource(clean["root"]), splits=["val", "trainval"], progress=False)
    assert not report.ok
    assert counts(report)["val"] == (3, 3, 0)
    (problem,) = next(s for s in report.splits if s.split == "trainval").problems
    assert "trainval.txt" in problem


def test_no_split_lists(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, drop_split=["train", "val", "train_aug", "test"])
    report = check_source(VOCSource(tree["root"]), progress=False)
    assert not report.ok and report.problems == [f"no split lists found under {tree['voc']}"]


def test_reports_every_fault(tmp_path: Path) -> None:
    tree = make_voc_tree(
        tmp_path,
        drop_image=["2007_000039"],  # train_aug
        corrupt_mask=["2007_000033"],  # val
        out_of_range_mask={"2007_000032": 42},  # train and train_aug
        size_mismatch=["2007_000042"],  # val
        no_class=["2009_000012"],  # train and train_aug
        truncate_image=["2008_000001"],  # test
    )
    voc = tree["voc"]
    report = check_source(VOCSource(tree["root"]), progress=False)
    assert not report.ok
    problems = all_problems(report)
    expected = {
        "missing image": [str(voc / "JPEGImages" / "2007_000039.jpg")],
        "corrupt mask": [str(voc / "SegmentationClass" / "2007_000033.png")],
        "out of range (train)": [str(voc / "SegmentationClass" / "2007_000032.png"), "[42]"],
        "out of range (train_aug)": [str(voc / "SegmentationClassAug" / "2007_000032.png"), "[42]"],
        "size mismatch": [
            str(voc / "JPEGImages" / "2007_000042.jpg"),
            str(voc / "SegmentationClass" / "2007_000042.png"),
        ],
        "no class (train)": ["'2009_000012'", "'train'", "no object class"],
        "no class (train_aug)": ["'2009_000012'", "'train_aug'", "no object class"],
        "truncated image": [str(voc / "JPEGImages" / "2008_000001.jpg"), "truncated"],
    }
    for fault, needles in expected.items():
        assert any(all(n in p for n in needles) for p in problems), f"{fault} not reported:\n{report.format()}"
    assert len(problems) == len(expected), report.format()
    # per split: images that decode, masks that decode (a size mismatch still decodes), problems
    assert counts(report) == {"test": (1, 0, 1), "train": (4, 3, 2), "train_aug": (7, 7, 3), "val": (3, 2, 2)}
    text = report.format()
    assert f"{len(expected)} problem(s):" in text
    for p in problems:
        assert f"  - {p}" in text


def test_reports_missing_mask_and_rgb_mask(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, drop_mask=["2007_000129"], rgb_mask=["2007_000063"])
    problems = all_problems(check_source(VOCSource(tree["root"]), progress=False))
    voc = tree["voc"]
    assert any("mask file not found" in p and str(voc / "SegmentationClass" / "2007_000129.png") in p for p in problems)
    assert any("'RGB'" in p and str(voc / "SegmentationClass" / "2007_000063.png") in p for p in problems)
    assert any("'RGB'" in p and str(voc / "SegmentationClassAug" / "2007_000063.png") in p for p in problems)


def test_missing_annotation_reported(tmp_path: Path) -> None:
    tree = make_voc_tree(tmp_path, drop_xml=["2007_000129"])
    report = check_source(VOCSource(tree["root"]), splits=["val"], progress=False)
    assert counts(report)["val"] == (3, 3, 1) and "'2007_000129'" in report.splits[0].problems[0]


def test_broken_annotation_does_not_hide_other_problems(tmp_path: Path) -> None:
    """One malformed XML (here of a detection-only image that no split lists) is reported, naming the file,
    and the label checks of every other image still run."""
    tree = make_voc_tree(tmp_path, malformed_xml=["2008_000002"], no_class=["2009_000012"])
    report = check_source(VOCSource(tree["root"]), progress=False)
    problems = all_problems(report)
    xml = str(tree["voc"] / "Annotations" / "2008_000002.xml")
    assert any(xml in p for p in problems), report.format()
    assert any("'2009_000012'" in p and "no object class" in p for p in problems), report.format()
