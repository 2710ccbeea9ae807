"""CAM files and networks in the reference formats: IRN / PSA (OC-CSE) CAM dicts both ways, ResNet-38 networks as
PSA / OC-CSE .pth files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from caef.cam_files import load_cams, save_cams
from caef.cli import main
from caef.errors import CaefError
from caef.interchange import export_net, from_reference, to_reference
from caef.models.affinity_net import build_affinity_net
from caef.models.backbones.resnet38 import ResNet38
from caef.models.cam_net import build_cam_net
from caef.stages.cgnet import load_ordinary_classifier

SMALL = {"width": 0.0625}
NUM_CLASSES = 6


def write_caef_cams(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Three CAM files of odd sizes (one with no class); returns what load_cams reads back."""
    generator = torch.Generator().manual_seed(0)
    out = {}
    for image_id, (height, width), present in (("a", (37, 50), [1, 4]), ("b", (16, 16), [5]), ("c", (9, 7), [])):
        label = torch.zeros(NUM_CLASSES - 1)
        label[[c - 1 for c in present]] = 1
        save_cams(folder / f"{image_id}.npz", torch.rand(NUM_CLASSES - 1, height, width, generator=generator), label)
        out[image_id] = load_cams(folder / f"{image_id}.npz", NUM_CLASSES)
    return out


@pytest.mark.parametrize("fmt", ["irn", "psa"])
def test_cams_round_trip_bit_exactly(tmp_path, fmt):
    """caef -> reference -> caef: float16 widened to float32 and back is exact, so the files are equal bit for bit."""
    originals = write_caef_cams(tmp_path / "caef")
    assert main(["export", "cams", f"--format={fmt}", f"--cam-dir={tmp_path / 'caef'}", f"--out={tmp_path / fmt}"]) == 0
    assert sorted(p.name for p in (tmp_path / fmt).iterdir()) == ["a.npy", "b.npy", "c.npy"]
    assert main(["import", "cams", f"--format={fmt}", f"--in={tmp_path / fmt}", f"--out={tmp_path / 'back'}"]) == 0
    for image_id in originals:
        with (
            np.load(tmp_path / "back" / f"{image_id}.npz") as back,
            np.load(tmp_path / "caef" / f"{image_id}.npz") as ref,
        ):
            assert back["cams"].dtype == np.float16 and back["classes"].dtype == np.int16
            np.testing.assert_array_equal(back["classes"], ref["classes"])
            if fmt == "psa" and not len(ref["classes"]):  # an empty PSA dict has no size
                assert back["cams"].shape == (0, 0, 0)
                continue
            assert back["cams"].tobytes() == ref["cams"].tobytes() and back["cams"].shape == ref["cams"].shape


def test_psa_dict_keys_are_zero_based_foreground_indices(tmp_path):
    cams = np.random.default_rng(0).random((2, 5, 6)).astype(np.float16)
    data = to_reference(cams, np.array([1, 4]), "psa")
    assert list(data) == [0, 3] and data[3].dtype == np.float32 and data[3].shape == (5, 6)
    np.testing.assert_array_equal(data[3], cams[1].astype(np.float32))
    # what PSA's infer_aff.py / OC-CSE's evaluation.py do with it: tensor[key + 1] = value
    tensor = np.zeros((NUM_CLASSES, 5, 6), np.float32)
    for key, value in data.items():
        tensor[key + 1] = value
    assert tensor[4].max() > 0 and not tensor[2].any()


def test_irn_dict_has_keys_stride_4_cam_and_high_res():
    cams = np.zeros((1, 10, 13), np.float16)
    cams[0, 4:8, 8:12] = 1.0  # exactly the stride-4 cell (1, 2)
    data = to_reference(cams, np.array([3]), "irn")
    assert data["keys"].tolist() == [2] and data["keys"].dtype == np.int64
    assert isinstance(data["cam"], torch.Tensor) and tuple(data["cam"].shape) == (1, 3, 4)  # ceil(10/4), ceil(13/4)
    expected = torch.zeros(1, 3, 4)
    expected[0, 1, 2] = 1 / (1 + 1e-5)
    torch.testing.assert_close(data["cam"], expected)
    assert data["high_res"].shape == (1, 10, 13) and data["high_res"].dtype == np.float32
    cams_back, classes = from_reference(data, "irn", Path("x.npy"))
    assert classes.tolist() == [3] and cams_back.tobytes() == cams.tobytes()


def test_bad_reference_files_name_the_file(tmp_path):
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "x.npy", {"cam": np.zeros((1, 2, 2))}, allow_pickle=True)
    with pytest.raises(CaefError, match=r"x\.npy has entries \['cam'\], expected keys and high_res"):
        main_raising(["import", "cams", "--format=irn", f"--in={tmp_path / 'in'}", f"--out={tmp_path / 'o'}"])
    (tmp_path / "in" / "x.npy").write_bytes(b"garbage")
    with pytest.raises(CaefError, match=r"cannot read .*x\.npy"):
        main_raising(["import", "cams", "--format=psa", f"--in={tmp_path / 'in'}", f"--out={tmp_path / 'o'}"])
    with pytest.raises(CaefError, match="no caef CAM files"):
        main_raising(["export", "cams", "--format=psa", f"--cam-dir={tmp_path / 'none'}", f"--out={tmp_path / 'o'}"])


def main_raising(args):
    from caef.interchange import export_main, import_main

    return (export_main if args[0] == "export" else import_main)(args[1:])


def save_checkpoint(path: Path, hparams: dict, state: dict) -> Path:
    torch.save({"hyper_parameters": hparams, "state_dict": state}, path)
    return path


@pytest.mark.parametrize("fmt", ["psa", "occse"])
def test_exported_cam_network_loads_into_the_reference_loader_with_identical_outputs(tmp_path, fmt):
    torch.manual_seed(0)
    cgnet, oc = build_cam_net("resnet38", NUM_CLASSES, **SMALL).eval(), build_cam_net("resnet38", NUM_CLASSES, **SMALL)
    state = {f"net.{k}": v for k, v in cgnet.state_dict().items()}
    state |= {f"ordinary_classifier.{k}": v for k, v in oc.eval().state_dict().items()}
    hparams = {"backbone": "resnet38", "num_classes": NUM_CLASSES, "backbone_options": SMALL}
    ckpt = save_checkpoint(tmp_path / "last.ckpt", hparams, state)
    x = torch.randn(2, 3, 40, 48)
    for network, reference in (("main", cgnet), ("oc", oc)):
        out = tmp_path / f"{network}.pth"
        args = ["export", "net", f"--format={fmt}", f"--ckpt={ckpt}", f"--network={network}", f"--out={out}"]
        assert main(args) == 0
        saved = torch.load(out, weights_only=True)
        assert "fc8.weight" in saved and "conv1a.weight" in saved and "bn7.running_var" in saved
        assert not any(k.startswith(("net.", "backbone.", "classifier.")) for k in saved)
        loaded = load_ordinary_classifier(out, NUM_CLASSES, "resnet38", SMALL).eval()  # caef's PSA/OC-CSE loader
        with torch.no_grad():
            assert torch.equal(loaded(x), reference(x))


def test_exported_affinity_net_has_psa_names(tmp_path):
    torch.manual_seed(0)
    net = build_affinity_net("resnet38", **SMALL)
    hparams = {"backbone": "resnet38", "num_classes": NUM_CLASSES, "backbone_options": SMALL}
    ckpt = save_checkpoint(tmp_path / "aff.ckpt", hparams, {f"net.{k}": v for k, v in net.state_dict().items()})
    assert export_net(ckpt, tmp_path / "aff.pth", "psa") == len(net.state_dict())
    saved = torch.load(tmp_path / "aff.pth", weights_only=True)
    assert {"f8_3.weight", "f8_4.weight", "f8_5.weight", "f9.weight", "conv1a.weight"} <= set(saved)
    trunk = ResNet38(**SMALL, pretrained=tmp_path / "aff.pth")  # caef's reference-format trunk loader
    for key, value in trunk.state_dict().items():
        assert torch.equal(value, net.backbone.state_dict()[key]), key
    with pytest.raises(CaefError, match="OC-CSE has no AffinityNet"):
        export_net(ckpt, tmp_path / "x.pth", "occse")
    other = save_checkpoint(tmp_path / "r50.ckpt", {**hparams, "backbone": "resnet50"}, {})
    with pytest.raises(CaefError, match="only run ResNet-38"):
        export_net(other, tmp_path / "x.pth", "psa")
