"""Shared by the reliability tests: what a good error looks like, the ``caef`` command in-process, a tiny COCO tree.

A good error names the file or key and says how to fix it; through the ``caef`` command it is one line,
``caef: error: ...``, with exit code 2 and no traceback.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from caef.cli import main

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"

#: words of a message that tells the user what to do about the problem
FIX_HINT = re.compile(
    r"run `caef data check`|`caef data check`|re-?extract|re-?download|download|To get it|remove|delete|add it|"
    r"expected|must|should|known:|pass a|regenerate|instead of|choose another|use one|re-run|retrain|copy it|"
    r"Lower the|set model\.|make them equal|fix|use a |give a |point |run "
)


def assert_actionable(message: str, *names: object) -> str:
    """``message`` names every given path/key and says how to fix the problem."""
    for name in names:
        assert str(name) in message, f"{name!s} not named in: {message}"
    assert FIX_HINT.search(message), f"no hint how to fix in: {message}"
    return message


def run_caef(args: Sequence[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``caef ARGS`` in this process: (exit code, stdout, stderr); a SystemExit (argument errors) gives its code."""
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def caef_error_line(code: int, err: str) -> str:
    """The single ``caef: error: ...`` line of a failed command (exit code 2, no traceback), without the prefix."""
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("caef: error: ")]
    assert len(lines) == 1, f"expected one error line in:\n{err}"
    return lines[0].removeprefix("caef: error: ")


def tiny_classifier_args(root: Path, *extra: str, dataset: str = "voc") -> list[str]:
    """``caef classifier fit`` on a tiny tree: the demo config, shrunk to a few 32 px batches on the CPU."""
    return [
        "classifier", "fit", "--config", str(EXPERIMENTS / "classifier" / "demo.yaml"),
        f"--data.dataset={dataset}", f"--data.root={root}", "--data.crop_size=32", "--data.resize_long=[40, 56]",
        "--data.batch_size=2", "--data.eval_batch_size=2", "--data.num_workers=0", "--trainer.max_epochs=1",
        "--trainer.logger=false", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
        "--model.msf_scales=[1.0]", *extra,
    ]  # fmt: skip


# -- a tiny MS-COCO 2014 tree -----------------------------------------------------------------------
COCO_CATEGORIES = [{"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}]
#: split folder -> images (coco id, width, height) and annotations (id, image id, category id, polygon box)
_COCO_SPLITS = {
    "train2014": ([(9, 40, 30), (25, 20, 24)], [(1, 9, 1, (2, 3, 20, 15)), (2, 25, 5, (0, 0, 10, 10))]),
    "val2014": ([(42, 32, 20)], [(10, 42, 1, (0, 0, 8, 4))]),
}


def coco_json(folder: str) -> dict:
    images, annotations = _COCO_SPLITS[folder]
    return {
        "images": [
            {"id": i, "file_name": f"COCO_{folder}_{i:012d}.jpg", "width": w, "height": h} for i, w, h in images
        ],
        "annotations": [
            {
                "id": a,
                "image_id": i,
                "category_id": c,
                "iscrowd": 0,
                "area": 1.0,
                "bbox": [0, 0, 1, 1],
                "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
            }
            for a, i, c, (x0, y0, x1, y1) in annotations
        ],  # fmt: skip
        "categories": COCO_CATEGORIES,
    }


def make_coco_tree(root: Path) -> Path:
    """``root/{train2014,val2014}/*.jpg`` and ``root/annotations/instances_*.json``; returns ``root``."""
    rng = np.random.default_rng(0)
    for folder, (images, _) in _COCO_SPLITS.items():
        (root / folder).mkdir(parents=True)
        for coco_id, w, h in images:
            pixels = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / folder / f"COCO_{folder}_{coco_id:012d}.jpg", format="JPEG")
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{folder}.json").write_text(json.dumps(coco_json(folder)))
    return root
