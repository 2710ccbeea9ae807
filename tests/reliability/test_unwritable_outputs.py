"""An output folder that cannot be written fails early, before any work, with a message naming it.

Tests run as root, which ignores permission bits, so an unwritable folder is simulated by a path under a regular
file (``<file>/sub``); the permission-bit variant runs only as a normal user.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from helpers import make_voc_tree
from reliability_helpers import assert_actionable, caef_error_line, run_caef, tiny_classifier_args

from caef.callbacks import CAMWriter
from caef.errors import CaefError, check_writable_dir

as_root = pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")


@pytest.fixture
def blocker(tmp_path: Path) -> Path:
    """A regular file: nothing can be created under it."""
    path = tmp_path / "results.txt"
    path.write_text("not a folder\n")
    return path


def test_check_writable_dir(tmp_path: Path, blocker: Path) -> None:
    made = check_writable_dir(tmp_path / "a" / "b", "output folder")
    assert made.is_dir() and not any(made.iterdir())  # created, probe file removed
    for target in (blocker, blocker / "sub", blocker / "sub" / "deeper"):
        with pytest.raises(CaefError) as err:
            check_writable_dir(target, "--out-dir")
        message = assert_actionable(str(err.value), "--out-dir", target, f"{blocker} is a file, not a folder")
        assert "choose another folder" in message


@as_root
def test_check_writable_dir_without_permission(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(CaefError, match="Permission denied") as err:
            check_writable_dir(locked / "out", "--out-dir")
        assert_actionable(str(err.value), locked / "out")
    finally:
        locked.chmod(0o755)


def test_crf_out_dir_under_a_file(tmp_path, capsys, tiny_synth, blocker):
    """Checked before the first CAM file is read: the (empty) CAM folder would otherwise be the first error."""
    (tmp_path / "cams").mkdir()
    args = ["crf", "--dataset", "synthetic", "--root", str(tiny_synth), "--cam-dir", str(tmp_path / "cams"),
            "--out-dir", str(blocker / "seeds"), "--workers", "1"]  # fmt: skip
    code, _, err = run_caef(args, capsys)
    line = caef_error_line(code, err)
    assert_actionable(line, "--out-dir", blocker / "seeds" / "low", f"{blocker} is a file")


def test_cam_writer_output_dir_under_a_file(blocker: Path) -> None:
    writer = CAMWriter(output_dir=str(blocker / "cams"))
    with pytest.raises(CaefError) as err:
        writer.setup(None, None, "predict")  # before the first batch is predicted
    assert_actionable(str(err.value), "output_dir", blocker / "cams", f"{blocker} is a file")


def test_run_dir_under_a_file(tmp_path, capsys, blocker):
    tree = make_voc_tree(tmp_path / "data")
    code, _, err = run_caef([*tiny_classifier_args(tree["root"]), f"--run_dir={blocker / 'run'}"], capsys)
    assert_actionable(caef_error_line(code, err), "--run_dir", blocker / "run", f"{blocker} is a file")
