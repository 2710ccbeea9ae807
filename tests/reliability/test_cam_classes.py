"""A CAM file must carry exactly its image's labelled classes: CAMs of another image or dataset with as many
classes pass every other check, so ``caef crf`` and the random-walk writer compare them with the image's label."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from reliability_helpers import assert_actionable, caef_error_line, run_caef

from caef.callbacks.pseudo_label_writer import PseudoLabelWriter
from caef.cam_files import load_cams, save_cams
from caef.data.voc import VOCSource
from caef.errors import DataError

SPLIT = "train_aug"


def other_classes(source: VOCSource, image_id: str) -> np.ndarray:
    """A label of the same image with one labelled class swapped for an unlabelled one (same count, in range)."""
    label = source.label_of(image_id).copy()
    on, off = np.flatnonzero(label), np.flatnonzero(label == 0)
    label[on[0]], label[off[0]] = 0, 1
    return label


def write_cams(path: Path, label: np.ndarray, size: tuple[int, int]) -> None:
    maps = torch.rand(len(label), *size, generator=torch.Generator().manual_seed(0))
    save_cams(path, maps, torch.from_numpy(label.astype(np.float32)))


def test_load_cams_checks_the_labelled_classes(tmp_path: Path, tiny_synth: Path) -> None:
    source = VOCSource(tiny_synth)
    image_id = source.split_ids(SPLIT)[0]
    size = source.read_image(image_id).shape[:2]
    path = tmp_path / f"{image_id}.npz"
    write_cams(path, source.label_of(image_id), size)
    _, classes = load_cams(path, source.num_classes, size, source.label_of(image_id), source.class_names)
    assert classes.tolist() == (np.flatnonzero(source.label_of(image_id)) + 1).tolist()
    wrong = other_classes(source, image_id)
    write_cams(path, wrong, size)
    with pytest.raises(DataError) as err:
        load_cams(path, source.num_classes, size, source.label_of(image_id), source.class_names)
    held = (np.flatnonzero(wrong) + 1).tolist()
    labelled = (np.flatnonzero(source.label_of(image_id)) + 1).tolist()
    assert_actionable(str(err.value), path, f"{held[0]} {source.class_names[held[0]]}", "re-run")
    assert f"labelled [{labelled[0]} {source.class_names[labelled[0]]}" in str(err.value)


def test_caef_crf_refuses_cams_of_other_classes(tmp_path: Path, capsys, tiny_synth: Path) -> None:
    source = VOCSource(tiny_synth)
    ids = source.split_ids(SPLIT)[:2]
    cam_dir, out_dir = tmp_path / "cams", tmp_path / "seeds"
    write_cams(cam_dir / f"{ids[0]}.npz", other_classes(source, ids[0]), source.read_image(ids[0]).shape[:2])
    args = ["crf", "--dataset", "synthetic", "--root", str(tiny_synth), "--split", SPLIT, "--cam-dir", str(cam_dir),
            "--out-dir", str(out_dir), "--shard", f"0/{len(source.split_ids(SPLIT))}", "--workers", "1"]  # fmt: skip
    code, _, err = run_caef(args, capsys)
    message = assert_actionable(caef_error_line(code, err), cam_dir / f"{ids[0]}.npz", "but its image is labelled")
    assert message.count("[") >= 2  # both class lists
    assert not list(out_dir.rglob("*.png"))  # no seed of wrong classes


def test_random_walk_writer_refuses_cams_of_other_classes(tmp_path: Path, tiny_synth: Path) -> None:
    source = VOCSource(tiny_synth)
    image_id = source.split_ids(SPLIT)[0]
    height, width = source.read_image(image_id).shape[:2]
    write_cams(tmp_path / "cams" / f"{image_id}.npz", other_classes(source, image_id), (height, width))
    writer = PseudoLabelWriter(cam_dir=str(tmp_path / "cams"), output_dir=str(tmp_path / "pseudo"), radius=2)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(num_classes=source.num_classes, source=source))
    grid = (-(-height // 8), -(-width // 8))
    prediction = {"id": [image_id], "features": torch.rand(1, 4, *grid)}
    batch = {"image": torch.zeros(1, 3, height, width)}
    with pytest.raises(DataError, match="but its image is labelled"):
        writer.write_on_batch_end(trainer, None, prediction, None, batch, 0, 0)
    assert not (tmp_path / "pseudo").exists()


def test_thresholded_cam_score_refuses_cams_of_other_classes(tmp_path: Path, tiny_synth: Path) -> None:
    """The reported ``thresholded_cam_miou`` is a number in the summary: it must not score another image's CAMs."""
    from caef.stages.label_scoring import score_label_maps

    source = VOCSource(tiny_synth)
    split = "train"
    image_id = source.split_ids(split)[0]
    write_cams(tmp_path / f"{image_id}.npz", other_classes(source, image_id), source.read_image(image_id).shape[:2])
    with pytest.raises(DataError, match="but its image is labelled"):
        score_label_maps(source, split, cam_dir=tmp_path, cam_threshold=0.3, progress=False)
