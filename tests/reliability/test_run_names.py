"""Case 14: run names are plain names (a name cannot escape the runs root or be it), and result files follow the
user's umask (colleagues can read them where the umask lets them)."""

from __future__ import annotations

import os
import stat

import pytest

from caef.errors import CaefError
from caef.io import save_npz, write_json
from caef.pipeline_cli import main as pipeline_main
from tests.reliability.reliability_helpers import EXPERIMENTS


@pytest.mark.parametrize("name", ["../../x", "", "a/b", "..", ".", ".hidden", " "])
def test_a_run_name_that_is_not_a_plain_name_is_a_one_line_error(tmp_path, name):
    runs = tmp_path / "deep" / "runs"
    with pytest.raises(CaefError) as info:
        pipeline_main([str(EXPERIMENTS / "demo.yaml"), f"--name={name}", f"--runs_root={runs}", "--dry_run"])
    message = str(info.value)
    assert "\n" not in message and "plain" in message and "--name" in message
    assert list(tmp_path.rglob("*")) == []  # nothing written anywhere


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_result_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        write_json(tmp_path / "summary.json", {"a": 1})
        save_npz(tmp_path / "x.npz", a=__import__("numpy").zeros(2))
    finally:
        os.umask(old)
    for name in ("summary.json", "x.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "x.npz"]  # no temp file left
