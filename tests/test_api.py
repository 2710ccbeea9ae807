"""caef's Python API on a tiny trained run: the results equal the stage commands' files, a CGNet checkpoint loads
after its run folder moved, label folders are scored, bad input is a one-line error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import caef
from caef.cam_files import load_cams
from caef.cli import main
from caef.data.datamodule import open_source
from caef.data.source import write_mask
from caef.errors import CaefError
from caef.stages.affinity import AffinityNetModule
from caef.stages.random_walk import propagate

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
slow = pytest.mark.slow  # the tests on the trained run share a fixture of about a minute (three stage commands)


def tiny_args(root: Path, config, run_dir: Path) -> list[str]:
    return [
        f"--run_dir={run_dir}", f"--data.root={root}", f"--data.synth.num_images={config.num_images}",
        f"--data.synth.size={config.size}", f"--data.synth.num_classes={config.num_classes}",
        f"--data.synth.seed={config.seed}", "--data.crop_size=48", "--data.resize_long=[40, 56]",
        "--data.batch_size=4", "--data.num_workers=0", "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        "--data.score_limit=4", "--trainer.check_val_every_n_epoch=1", "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--model.msf_scales=[1.0, 0.5]",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_synth, tiny_synth_config):
    """Classifier and CGNet trained for two steps each, the CGNet's CAMs exported: a run folder as the CLI leaves it."""
    torch.set_num_threads(1)
    run_dir = tmp_path_factory.mktemp("api") / "run"
    args = tiny_args(tiny_synth, tiny_synth_config, run_dir)
    assert main(["classifier", "fit", "--config", str(EXPERIMENTS / "classifier/demo.yaml"), *args]) == 0
    assert main(["cgnet", "fit", "--config", str(EXPERIMENTS / "cgnet/demo.yaml"), *args]) == 0
    ckpt = f"--ckpt_path={run_dir / 'cgnet' / 'last.ckpt'}"
    assert main(["cgnet", "predict", "--config", str(EXPERIMENTS / "cgnet/demo.yaml"), *args, ckpt]) == 0
    return run_dir


@pytest.fixture(scope="module")
def source(tiny_synth):
    return open_source("synthetic", tiny_synth)


def _image_and_classes(source, image_id: str) -> tuple[np.ndarray, list[int]]:
    return source.read_image(image_id), [int(i) + 1 for i in np.flatnonzero(source.label_of(image_id))]


@slow
def test_cams_equal_the_exported_cam_files(tiny_run, source):
    """The API example: load the CGNet from the run folder, CAMs of one image = `caef cgnet predict`'s file."""
    cgnet = caef.load(tiny_run, "cgnet")
    assert type(cgnet).__name__ == "CGNetModule" and not cgnet.training
    for image_id in source.split_ids("train_aug")[:3]:
        image, classes = _image_and_classes(source, image_id)
        cams = caef.cams(cgnet, image, classes=classes)
        assert cams.shape == (source.num_classes - 1, *image.shape[:2]) and cams.dtype == np.float32
        saved, saved_classes = load_cams(tiny_run / "cams" / "cgnet" / f"{image_id}.npz", source.num_classes)
        assert saved_classes.tolist() == classes
        # the file stores float16: maps in [0, 1] round to within 2^-11
        np.testing.assert_allclose(cams[saved_classes - 1], saved, atol=2**-11, rtol=0)
        absent = [c for c in range(1, source.num_classes) if c not in classes]
        assert not cams[[c - 1 for c in absent]].any()


@slow
def test_batches_pil_images_and_single_images_agree(tiny_run, source):
    classifier = caef.load(tiny_run / "classifier" / "last.ckpt")
    assert type(classifier).__name__ == "ClassifierModule"
    ids = [i for i in source.split_ids("train_aug") if source.read_image(i).shape == source.read_image(
        source.split_ids("train_aug")[0]).shape][:2]  # fmt: skip
    images = [source.read_image(i) for i in ids]
    batch = caef.cams(classifier, images, scales=[1.0], flip=False)
    assert batch.shape[0] == 2
    for image, maps in zip(images, batch):
        np.testing.assert_allclose(caef.cams(classifier, Image.fromarray(image), scales=[1.0], flip=False), maps,
                                   atol=1e-5)  # fmt: skip


@slow
def test_cgnet_checkpoint_loads_after_its_run_folder_moved(tiny_run, tmp_path, source, tiny_synth, tiny_synth_config):
    """The CGNet checkpoint carries its frozen OC: neither the API nor `caef cgnet predict` needs the OC's file."""
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(tiny_run / "cgnet", moved / "cgnet")  # no classifier/ beside it
    checkpoint = torch.load(moved / "cgnet" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["hyper_parameters"]["ordinary_classifier"] == "embedded"
    assert checkpoint["ordinary_classifier_source"] == str(tiny_run / "classifier" / "last.ckpt")
    cgnet = caef.load(moved, "cgnet")
    original = caef.load(tiny_run, "cgnet")
    for name, tensor in original.state_dict().items():
        assert torch.equal(cgnet.state_dict()[name], tensor), name
    image, classes = _image_and_classes(source, source.split_ids("train_aug")[0])
    np.testing.assert_array_equal(caef.cams(cgnet, image, classes), caef.cams(original, image, classes))
    args = tiny_args(tiny_synth, tiny_synth_config, moved)
    ckpt = f"--ckpt_path={moved / 'cgnet' / 'last.ckpt'}"
    assert main(["cgnet", "predict", "--config", str(EXPERIMENTS / "cgnet/demo.yaml"), *args, ckpt]) == 0
    first = source.split_ids("train_aug")[0]
    np.testing.assert_array_equal(
        load_cams(moved / "cams" / "cgnet" / f"{first}.npz", source.num_classes)[0],
        load_cams(tiny_run / "cams" / "cgnet" / f"{first}.npz", source.num_classes)[0],
    )


@slow
def test_pseudo_label_is_the_random_walk_of_the_given_classes(tiny_run, source):
    torch.manual_seed(0)
    affinity = AffinityNetModule(
        num_classes=source.num_classes, backbone_options={"width": 0.0625}, radius=2,
        init_checkpoint=str(tiny_run / "cgnet" / "last.ckpt"),
    ).eval()  # fmt: skip
    cgnet = caef.load(tiny_run, "cgnet")
    image, classes = _image_and_classes(source, source.split_ids("train_aug")[0])
    cams = caef.cams(cgnet, image, classes)
    label = caef.pseudo_label(affinity, image, cams, classes, beta=4, logt=2)
    assert label.shape == image.shape[:2] and set(np.unique(label)) <= {0, *classes}
    x = caef.api.images_to_tensor(image)[0]
    features = affinity.predict_step({"image": x, "id": ["x"]}, 0)["features"][0]
    ids = torch.tensor(classes)
    expected = propagate(torch.from_numpy(cams)[ids - 1], ids, features, alpha=16.0, beta=4, logt=2, radius=2)
    np.testing.assert_array_equal(label, expected.numpy())


@slow
def test_summary_and_label_folders_are_read_and_scored(tiny_run, tmp_path, source, tiny_synth):
    summary = caef.read_summary(tiny_run)
    assert 0 <= summary["oc_cam_miou"] <= 100 and 0 <= summary["cgnet_cam_miou"] <= 100
    ids = source.split_ids("train")[:5]
    for image_id in ids:
        write_mask(tmp_path / "truth" / f"{image_id}.png", source.read_mask(image_id, "train"), source.palette)
        write_mask(tmp_path / "background" / f"{image_id}.png", np.zeros_like(source.read_mask(image_id, "train")))
    perfect = caef.score_labels(tmp_path / "truth", "synthetic", tiny_synth, split="train")
    assert perfect["miou"] == 100.0 and perfect["images"] == 5
    background = caef.score_labels(tmp_path / "background", "synthetic", tiny_synth, split="train")
    assert background["iou"]["background"] < 1 and background["miou"] < 50
    np.testing.assert_array_equal(caef.read_labels(tmp_path / "truth" / f"{ids[0]}.png"),
                                  source.read_mask(ids[0], "train"))  # fmt: skip
    assert json.loads((tiny_run / "summary.json").read_text()) == summary


def test_bad_input_is_a_one_line_error(tmp_path):
    from caef.stages.classifier import ClassifierModule

    classifier = ClassifierModule(num_classes=4, backbone_options={"width": 0.0625}).eval()
    with pytest.raises(CaefError, match=r"image 0 is a float64 array of shape \(8, 8, 3\)"):
        caef.cams(classifier, np.zeros((8, 8, 3)))
    with pytest.raises(CaefError, match="one size"):
        caef.cams(classifier, [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8)])
    with pytest.raises(CaefError, match="class ids \\[9\\] out of range"):
        caef.cams(classifier, np.zeros((8, 8, 3), np.uint8), classes=[9])
    with pytest.raises(CaefError, match=f"checkpoint not found: {tmp_path / 'deeplab' / 'last.ckpt'}"):
        caef.load(tmp_path, "deeplab")
    with pytest.raises(CaefError, match="no summary"):
        caef.read_summary(tmp_path)


def test_checkpoints_load_without_the_files_that_initialised_them(tmp_path):
    """AffinityNet's init_checkpoint and a trunk's pretrained file only initialise training: loading a trained
    checkpoint reads neither (they are typically absolute paths on another machine)."""
    import lightning.pytorch as pl

    from caef.stages.deeplab import DeepLabModule

    torch.manual_seed(0)
    modules = {
        "affinity": AffinityNetModule(num_classes=4, backbone_options={"width": 0.0625}, radius=2),
        "deeplab": DeepLabModule(num_classes=4, backbone="resnet38", backbone_options={"width": 0.0625}),
    }
    gone = {"affinity": {"init_checkpoint": "/gone/cgnet/last.ckpt"}, "deeplab": {"pretrained": "/gone/r38.params"}}
    for stage, module in modules.items():
        hparams = {**dict(module.hparams), **gone[stage]}
        (tmp_path / stage).mkdir()
        torch.save({"hyper_parameters": hparams, "state_dict": module.state_dict(),
                    "pytorch-lightning_version": pl.__version__}, tmp_path / stage / "last.ckpt")  # fmt: skip
        loaded = caef.load(tmp_path, stage)
        assert type(loaded) is type(module)
        for name, tensor in module.state_dict().items():
            assert torch.equal(loaded.state_dict()[name], tensor), name
