"""`caef conformance` on stand-in reference trees written here (same module names, tiny functions): it reports PASS
for a faithful stand-in, FAIL for a wrong one or one that does not run, and explains a bad PATH. The official
repositories are not needed (nor used) by the test suite."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from caef.cli import main as caef_main
from caef.conformance import main

AFFINITY_LABELS = '''
import numpy as np
import torch


class ExtractAffinityLabelInRadius:
    """Pairs within the radius on a square label grid: (bg_pos, fg_pos, neg), each (P, L) float."""

    def __init__(self, cropsize, radius=5):
        self.size, self.floor = cropsize, radius - 1
        self.offsets = [(0, x) for x in range(1, radius)]
        near = [(y, x) for y in range(1, radius) for x in range(1 - radius, radius)]
        self.offsets += [(y, x) for y, x in near if x * x + y * y < radius ** 2]

    def __call__(self, label):
        r, h, w = self.floor, self.size - self.floor, self.size - 2 * self.floor
        src = label[:h, r:r + w].reshape(-1)[None]
        dst = np.stack([label[dy:dy + h, r + dx:r + dx + w].reshape(-1) for dy, dx in self.offsets])
        valid, same = (src < 255) & (dst < 255), src == dst
        parts = (same & (src == 0), same & (src != 0) & valid, ~same & valid)
        return tuple(torch.from_numpy(p.astype(np.float32)) for p in {order})
'''

CRF = """
import numpy as np
from PIL import Image


def _crf_with_alpha(cam_dict, name, alpha=10):
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    img = np.ascontiguousarray(np.uint8(Image.open("./data/VOC2012/JPEGImages/" + name + ".jpg")))
    v = np.array(list(cam_dict.values()))
    probs = np.concatenate([np.power(1 - v.max(0, keepdims=True), {alpha}), v])
    d = dcrf.DenseCRF2D(img.shape[1], img.shape[0], len(probs))
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.copy(img), compat=10)
    q = np.array(d.inference(10)).reshape(probs.shape)
    out = {{0: q[0]}}
    for i, key in enumerate(cam_dict):
        out[key + 1] = q[i + 1]
    return out
"""


def stand_in_trees(root: Path, faithful: bool = True) -> tuple[Path, Path]:
    """OC-CSE and PSA look-alikes holding only what the two cheap checks import."""
    occse, psa = root / "OC-CSE", root / "psa"
    files = {
        occse / "networks" / "resnet38d.py": "",
        occse / "tools" / "imutils.py": CRF.format(alpha="alpha" if faithful else "alpha + 3"),
        psa / "network" / "resnet38d.py": "",
        psa / "voc12" / "data.py": AFFINITY_LABELS.format(order="parts" if faithful else "parts[::-1]"),
    }
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return occse, psa


def test_faithful_stand_ins_pass_and_the_json_says_so(tmp_path, capsys):
    occse, psa = stand_in_trees(tmp_path)
    out = tmp_path / "conformance.json"
    code = main(["--occse", str(occse), "--psa", str(psa), "--only", "affinity_labels,crf_seeds", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    report = json.loads(out.read_text())
    assert report["passed"] is True and report["occse"]["path"] == str(occse.resolve())
    names = [row["component"] for row in report["rows"]]
    assert names == [f"affinity labels, radius {r}" for r in (3, 5, 7)] + [
        f"CRF seeds, alpha {a}" for a in (4, 6, 24, 32)
    ]
    assert {row["status"] for row in report["rows"]} == {"PASS"}
    assert "| affinity labels, radius 5 | label agreement | 100.00 % | >= 100.00 % | PASS |" in printed
    assert "numpy.load allow_pickle=True" in printed and report["patches"]  # the patches are listed
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def test_wrong_stand_ins_fail_and_say_which(tmp_path, capsys):
    occse, psa = stand_in_trees(tmp_path, faithful=False)
    code = main(["--occse", str(occse), "--psa", str(psa), "--only", "affinity_labels,crf_seeds"])
    printed = capsys.readouterr().out
    assert code == 1
    assert "| affinity labels, radius 5 | label agreement (bg, fg, neg) |" in printed
    assert "FAIL: affinity labels, radius 3" in printed
    failed = [line for line in printed.splitlines() if line.endswith("| FAIL |")]
    assert len(failed) == 3 + 4  # every radius (bg and neg swapped), every alpha (alpha off by 3)


def test_a_reference_that_does_not_run_is_a_fail_row_not_a_crash(tmp_path, capsys):
    occse, psa = stand_in_trees(tmp_path)  # no Net_er / Net_cl / resnet38_cls in the stand-ins
    assert main(["--occse", str(occse), "--psa", str(psa), "--only", "resnet38,affinity_labels"]) == 1
    printed = capsys.readouterr().out
    assert "| resnet38 | error (AttributeError" in printed and "| FAIL |" in printed
    assert "| affinity labels, radius 7 | label agreement | 100.00 % | >= 100.00 % | PASS |" in printed


@pytest.mark.parametrize(
    ("which", "make", "message"),
    [
        (
            "occse",
            lambda p: p / "nowhere",
            "--occse .*nowhere: no such folder; clone OC-CSE there first .*KAIST-vilab/OC-CSE",
        ),
        ("psa", lambda p: p, "--psa .* is not a clone of PSA \\(no network/resnet38d.py\\).*github.com/jiwoon-ahn/psa"),
        ("occse", None, "--occse is not set: give a local clone of OC-CSE \\(git clone https://github.com/KAIST-vilab"),
    ],
)
def test_a_bad_path_is_a_one_line_error_saying_where_to_get_the_code(tmp_path, capsys, which, make, message):
    occse, psa = stand_in_trees(tmp_path / "trees")
    paths = {"occse": occse, "psa": psa}
    if make is None:
        del paths[which]
    else:
        paths[which] = make(tmp_path)
    argv = ["conformance", *[arg for key, value in paths.items() for arg in (f"--{key}", str(value))]]
    assert caef_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("caef: error: ")
    assert __import__("re").search(message, err), err


def test_unknown_component_is_named(tmp_path, capsys):
    occse, psa = stand_in_trees(tmp_path)
    assert caef_main(["conformance", "--occse", str(occse), "--psa", str(psa), "--only", "resnet39"]) == 2
    assert "--only: unknown component(s) resnet39; choose from resnet38, cgnet" in capsys.readouterr().err
