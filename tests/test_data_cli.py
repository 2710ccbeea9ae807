"""``caef data check`` / ``caef data synth`` and the top-level usage, through ``caef.cli.main``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import make_voc_tree

from caef.cli import main
from caef.data.synthetic import MANIFEST


def table_rows(out: str) -> dict[str, list[str]]:
    """``split: [images, masks, problems]`` from the printed table."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split() == ["split", "images", "masks", "problems"])
    rows = {}
    for line in lines[start + 1 :]:
        parts = line.split()
        if len(parts) != 4 or not all(p.isdigit() for p in parts[1:]):
            break
        rows[parts[0]] = parts[1:]
    return rows


def test_check_clean_voc_tree(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tree = make_voc_tree(tmp_path)
    assert main(["data", "check", "--root", str(tree["root"]), "--dataset", "voc"]) == 0
    out = capsys.readouterr().out
    assert f"voc at {tree['voc']}: 21 classes" in out
    assert table_rows(out) == {
        "test": ["2", "0", "0"], "train": ["4", "4", "0"], "train_aug": ["8", "8", "0"], "val": ["3", "3", "0"],
    }  # fmt: skip
    assert "no problems found" in out


def test_check_selected_splits_and_devkit_root(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tree = make_voc_tree(tmp_path)
    root = tree["root"] / "VOCdevkit"
    assert main(["data", "check", "--root", str(root), "--split", "val", "--split", "train"]) == 0  # voc is default
    assert table_rows(capsys.readouterr().out) == {"val": ["3", "3", "0"], "train": ["4", "4", "0"]}


def test_check_broken_voc_tree(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tree = make_voc_tree(tmp_path, drop_image=["2007_000129"], size_mismatch=["2007_000032"])
    assert main(["data", "check", "--root", str(tree["root"]), "--dataset", "voc", "--split", "val"]) == 1
    out = capsys.readouterr().out
    assert table_rows(out) == {"val": ["2", "3", "1"]}
    assert "1 problem(s):" in out and str(tree["voc"] / "JPEGImages" / "2007_000129.jpg") in out
    assert main(["data", "check", "--root", str(tree["root"]), "--dataset", "voc"]) == 1
    out = capsys.readouterr().out
    assert "3 problem(s):" in out  # val: the missing image; train and train_aug: the size mismatch
    assert str(tree["voc"] / "SegmentationClassAug" / "2007_000032.png") in out


def test_check_missing_root(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "data"
    assert main(["data", "check", "--root", str(missing), "--dataset", "voc"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("caef: error: VOC dataset root not found") and str(missing) in err


def test_synth_then_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_dir = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out_dir), "--num-images", "12", "--size", "48", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert "wrote synthetic VOC tree: 12 images 48x48" in out and str(out_dir / "VOCdevkit" / "VOC2012") in out
    assert (out_dir / MANIFEST).is_file()
    assert main(["data", "check", "--root", str(out_dir), "--dataset", "synthetic"]) == 0
    out = capsys.readouterr().out
    assert table_rows(out) == {"train": ["3", "3", "0"], "train_aug": ["10", "10", "0"], "val": ["2", "2", "0"]}
    assert "7 classes" in out and "no problems found" in out  # 6 foreground classes by default


def test_synth_refuses_a_foreign_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"not ours")
    assert main(["data", "synth", "--out", str(tmp_path / "photos"), "--num-images", "4", "--size", "32"]) == 2
    assert "refusing to generate" in capsys.readouterr().err
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"not ours"


def test_data_usage_errors(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check"])  # --root is required
    assert exit_info.value.code == 2 and "--root" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "check" in out and "synth" in out


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["help"], []])
def test_top_level_help(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: caef COMMAND")
    for command in ("classifier", "cgnet", "data"):
        assert f"\n  {command} " in out


def test_unknown_command(capsys: pytest.CaptureFixture) -> None:
    assert main(["segment-anything"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'segment-anything'" in err and "classifier" in err


def test_wandb_is_sandboxed(tmp_path: Path) -> None:
    """The autouse fixture of conftest: W&B off, its folders outside the repository, ``tmp_path`` left empty."""
    from caef.wandb_mode import configure_wandb_mode

    assert os.environ["WANDB_MODE"] == "disabled" and configure_wandb_mode() == "disabled"
    repo = Path(__file__).resolve().parents[1]
    for var in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        folder = Path(os.environ[var])
        assert folder.is_dir() and not folder.resolve().is_relative_to(repo)
    assert list(tmp_path.iterdir()) == []
