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


@pytest.mark.parametrize("crf", [False, True])
def test_writer_labels_are_the_walk_or_its_crf(tmp_path, tree, crf):
    """The writer's label is the random walk's argmax, or with ``crf`` the dense CRF of its per-pixel normalised
    scores on the image (the same call as ``caef crf``)."""
    from types import SimpleNamespace

    from caef.callbacks.pseudo_label_writer import PseudoLabelWriter
    from caef.stages.crf import dense_crf
    from caef.stages.random_walk import propagate, walked_scores

    source = VOCSource(tree)
    cam_dir = tmp_path / "cams"
    write_blurred_gt_cams(source, "train_aug", cam_dir)
    image_id = source.split_ids("train_aug")[0]
    size = CONFIG.size
    features = torch.rand(8, -(-size // 8), -(-size // 8), generator=torch.Generator().manual_seed(0))
    writer = PseudoLabelWriter(cam_dir=str(cam_dir), output_dir=str(tmp_path / "pseudo"), alpha=1, logt=4, crf=crf)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(num_classes=source.num_classes, source=source))
    module = SimpleNamespace(hparams=SimpleNamespace(radius=5))
    batch = {"image": torch.zeros(1, 3, size, size)}
    writer.write_on_batch_end(trainer, module, {"id": [image_id], "features": [features]}, None, batch, 0, 0)
    written = read_mask(tmp_path / "pseudo" / f"{image_id}.png", source.num_classes)

    from caef.cam_files import load_cams

    cams, classes = load_cams(cam_dir / f"{image_id}.npz", source.num_classes, size=(size, size))
    cams, classes = torch.from_numpy(cams), torch.from_numpy(classes)
    if not crf:
        expected = propagate(cams, classes, features, alpha=1, logt=4).numpy()
    else:
        scores = walked_scores(cams, features, alpha=1, logt=4).numpy().clip(1e-8, None)
        marginals = dense_crf(source.read_image(image_id), scores / scores.sum(axis=0, keepdims=True))
        expected = np.concatenate([[0], classes.numpy()])[marginals.argmax(axis=0)]
    np.testing.assert_array_equal(written, expected)
    assert set(np.unique(written).tolist()) <= {0} | {int(c) for c in classes}
