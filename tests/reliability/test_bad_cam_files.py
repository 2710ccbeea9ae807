"""A CAM file of the wrong shape or classes, truncated or not a CAM file at all, met by ``caef crf`` (the first
stage that reads them): exit code 2 and one line naming the file and how to redo it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import assert_actionable, caef_error_line, run_caef

from caef.data.voc import VOCSource

SPLIT = "train_aug"


def write_npz(path: Path, **arrays) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def good(size: tuple[int, int], classes=(1, 3)) -> dict:
    return {"cams": np.random.default_rng(0).random((len(classes), *size)).astype(np.float16),
            "classes": np.array(classes, np.int16)}  # fmt: skip


def _nan(size):
    arrays = good(size)
    arrays["cams"][0, 0, 0] = np.nan
    return arrays


#: fault -> (writer of the first image's CAM file given its (H, W) size, words the message must hold)
FAULTS = {
    "class id 0 and too large": (lambda p, s: write_npz(p, **good(s, (0, 7))), ["class ids [0, 7]", "1..3"]),
    "duplicate class ids": (lambda p, s: write_npz(p, **good(s, (2, 2))), ["class ids [2, 2]", "distinct"]),
    "size of another image": (lambda p, s: write_npz(p, **good((24, 32))), ["is 32x24 but its image is", "re-run"]),
    "cams and classes disagree": (
        lambda p, s: write_npz(p, cams=good(s)["cams"], classes=np.array([1], np.int16)),
        ["expected (K, H, W) and (K,)"],
    ),
    "float class ids": (
        lambda p, s: write_npz(p, cams=good(s)["cams"], classes=np.array([1.0, 2.0])),
        ["dtype float64"],
    ),
    "NaN values": (lambda p, s: write_npz(p, **_nan(s)), ["NaN or infinite"]),
    "missing array": (lambda p, s: write_npz(p, cams=good(s)["cams"]), ["lacks the array(s) ['classes']"]),
    "truncated": (
        lambda p, s: (write_npz(p, **good(s)), p.write_bytes(p.read_bytes()[:100])),
        ["cannot read CAM file", "truncated"],
    ),
    "not an npz": (lambda p, s: p.write_text("cams"), ["cannot read CAM file"]),
    "missing": (lambda p, s: None, ["CAM file not found", "caef cgnet predict"]),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_bad_cam_file_through_caef_crf(tmp_path, capsys, tiny_synth, fault):
    source = VOCSource(tiny_synth)
    ids = source.split_ids(SPLIT)
    cam_dir, out_dir = tmp_path / "cams", tmp_path / "seeds"
    cam_dir.mkdir()
    path = cam_dir / f"{ids[0]}.npz"
    write, words = FAULTS[fault]
    write(path, source.read_image(ids[0]).shape[:2])
    args = ["crf", "--dataset", "synthetic", "--root", str(tiny_synth), "--split", SPLIT, "--cam-dir", str(cam_dir),
            "--out-dir", str(out_dir), "--shard", f"0/{len(ids)}", "--workers", "1"]  # fmt: skip
    code, _, err = run_caef(args, capsys)
    assert_actionable(caef_error_line(code, err), path, *words)
    assert not list(out_dir.rglob("*.png"))
