"""CAMs -> CRF seeds -> AffinityNet fit -> random-walk pseudo labels, through the real commands."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from caef.cam_files import save_cams
from caef.cli import main
from caef.data.source import read_mask
from caef.data.synthetic import SynthConfig, generate
from caef.data.voc import VOCSource
from caef.stages.crf import CRFSeedConfig, run_crf_seeds

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
CONFIG = SynthConfig(num_images=12, size=80, seed=3, num_classes=3)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("pseudo") / "tree"
    generate(root, CONFIG, progress=False)
    return root


def write_blurred_gt_cams(source, split, cam_dir):
    """CAM files made from blurred ground truth: a stand-in for the CGNet's CAMs."""
    for image_id in source.split_ids(split):
        mask = source.read_mask(image_id, split)
        label = torch.from_numpy(source.label_of(image_id).astype(np.float32))
        maps = np.stack([gaussian_filter((mask == c + 1).astype(np.float32), 3) for c in range(len(label))])
        maps /= maps.max(axis=(1, 2), keepdims=True) + 1e-5
        save_cams(cam_dir / f"{image_id}.npz", torch.from_numpy(maps), label)


def test_seeds_affinity_and_pseudo_labels(tmp_path, tree):
    source = VOCSource(tree)
    run_dir = tmp_path / "run"
    write_blurred_gt_cams(source, "train_aug", run_dir / "cams" / "cgnet")
    cam_dir, seed_dir = run_dir / "cams" / "cgnet", run_dir / "seeds"
    counts = run_crf_seeds(source, "train_aug", cam_dir, seed_dir, CRFSeedConfig(), workers=1, progress=False)
    assert counts["processed"] == len(source.split_ids("train_aug"))
    common = [
        "--config", str(EXPERIMENTS / "affinity/demo.yaml"), f"--run_dir={run_dir}", f"--data.root={tree}",
        f"--data.synth.num_images={CONFIG.num_images}", f"--data.synth.size={CONFIG.size}",
        f"--data.synth.seed={CONFIG.seed}", f"--data.synth.num_classes={CONFIG.num_classes}",
        "--data.crop_size=72", "--data.resize_long=null", "--data.batch_size=2", "--data.num_workers=0",
        "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.logger=false",
    ]  # fmt: skip
    assert main(["affinity", "fit", *common]) == 0
    ckpt = run_dir / "affinity" / "last.ckpt"
    assert ckpt.is_file()
    assert main(["affinity", "predict", *common, f"--ckpt_path={ckpt}"]) == 0
    labels = sorted((run_dir / "pseudo").glob("*.png"))
    assert [p.stem for p in labels] == sorted(source.split_ids("train_aug"))
    for path in labels[:4]:
        label = read_mask(path, source.num_classes)
        present = set(np.unique(label).tolist())
        allowed = {0} | {int(c) + 1 for c in np.nonzero(source.label_of(path.stem))[0]}
        assert label.shape == (CONFIG.size, CONFIG.size) and present <= allowed
    # resume: a second predict keeps the existing labels (same bytes)
    before = labels[0].read_bytes()
    assert main(["affinity", "predict", *common, f"--ckpt_path={ckpt}"]) == 0
    assert labels[0].read_bytes() == before
