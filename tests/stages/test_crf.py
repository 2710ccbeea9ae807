"""Dense-CRF seeds: the CRF call equals pydensecrf used directly, the alpha direction, sharding, resume, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from caef.cam_files import save_cams
from caef.data.datamodule import open_source
from caef.data.source import read_mask
from caef.data.synthetic import SynthConfig, generate
from caef.errors import DataError
from caef.stages.crf import (
    CRFSeedConfig,
    background_score,
    crf_labels,
    dense_crf,
    main,
    parse_shard,
    run_crf_seeds,
)

SPLIT = "train_aug"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crf") / "tree"
    generate(root, SynthConfig(num_images=12, size=48, num_classes=3), progress=False)
    return root


@pytest.fixture(scope="module")
def cam_dir(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fake CAMs of the right size for every train_aug image (smooth blobs, so the CRF has something to do)."""
    source = open_source("synthetic", tree)
    out = tmp_path_factory.mktemp("cams")
    gen = torch.Generator().manual_seed(0)
    for image_id in source.split_ids(SPLIT):
        height, width = source.read_image(image_id).shape[:2]
        coarse = torch.rand(source.num_classes - 1, 1, 6, 6, generator=gen)
        cams = torch.nn.functional.interpolate(coarse, (height, width), mode="bilinear")[:, 0]
        cams = cams / cams.amax(dim=(1, 2), keepdim=True)
        save_cams(out / f"{image_id}.npz", cams, torch.from_numpy(source.label_of(image_id)))
    return out


def direct_crf(image, probs, t=10):
    """pydensecrf written out as the reference's ``crf_inference`` calls it."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    h, w = image.shape[:2]
    d = dcrf.DenseCRF2D(w, h, probs.shape[0])
    d.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    d.addPairwiseGaussian(sxy=3, compat=3)
    d.addPairwiseBilateral(sxy=80, srgb=13, rgbim=np.copy(image), compat=10)
    return np.array(d.inference(t)).reshape((probs.shape[0], h, w))


def test_dense_crf_equals_direct_pydensecrf_call():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    image.flags.writeable = False  # as an array from PIL
    probs = rng.random((3, 24, 32)).astype(np.float32)
    probs /= probs.sum(axis=0)
    out = dense_crf(image, probs)
    assert out.shape == (3, 24, 32)
    np.testing.assert_array_equal(out, direct_crf(image, probs))
    np.testing.assert_array_equal(dense_crf(image, probs, iterations=3), direct_crf(image, probs, t=3))


def test_background_score_known_values():
    cams = np.array([[[0.5, 0.0], [1.0, 0.25]], [[0.2, 0.1], [0.0, 0.75]]], dtype=np.float32)
    np.testing.assert_allclose(background_score(cams, 2), [[0.25, 0.81], [0.0, 0.0625]])
    np.testing.assert_allclose(background_score(cams, 1), [[0.5, 0.9], [0.0, 0.25]])
    np.testing.assert_array_equal(background_score(np.zeros((0, 3, 4), np.float32), 4), np.ones((3, 4)))


def test_crf_labels_only_background_or_given_classes():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    cams = rng.random((2, 24, 40)).astype(np.float32)
    labels = crf_labels(image, cams, np.array([2, 5]), alpha=4)
    assert labels.dtype == np.uint8 and labels.shape == (24, 40)
    assert set(np.unique(labels)) <= {0, 2, 5} and len(np.unique(labels)) > 1
    assert not crf_labels(image, cams[:0], np.array([], np.int64), alpha=4).any()  # no class: all background


def test_high_alpha_gives_more_foreground():
    """bg = (1 - cam) ** alpha: a larger alpha makes the background score smaller, so foreground grows."""
    image = np.full((48, 48, 3), 128, np.uint8)
    cams = np.zeros((1, 48, 48), np.float32)
    cams[0, 8:40, 8:40] = 0.15  # a weak ring around a certain core
    cams[0, 16:32, 16:32] = 1.0
    low, high = (crf_labels(image, cams, np.array([2]), alpha) for alpha in (4, 32))
    assert (low[16:32, 16:32] == 2).all() and (high[16:32, 16:32] == 2).all()
    assert (high[8:40, 8:40] == 2).all() and (high == 2).sum() == 32 * 32
    assert (low == 2).sum() == 16 * 16  # the weak ring is background at low alpha
    # monotone on a smooth blob over a textured image: each foreground contains the previous one
    yy, xx = np.mgrid[:48, :48]
    blob = np.exp(-((yy - 24) ** 2 + (xx - 20) ** 2) / 128.0)[None].astype(np.float32)
    textured = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    masks = [crf_labels(textured, blob, np.array([1]), alpha) == 1 for alpha in (1, 4, 16, 64)]
    for smaller, larger in zip(masks, masks[1:]):
        assert (smaller <= larger).all() and larger.sum() > smaller.sum()


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_sharded_run_equals_unsharded(tree, cam_dir, tmp_path):
    source = open_source("synthetic", tree)
    ids = source.split_ids(SPLIT)
    whole = run_crf_seeds(source, SPLIT, cam_dir, tmp_path / "whole", workers=1, progress=False)
    assert whole["processed"] == len(ids) and whole["skipped"] == 0
    counts = [
        run_crf_seeds(source, SPLIT, cam_dir, tmp_path / "sharded", shard=(i, 2), workers=2, progress=False)
        for i in range(2)
    ]
    assert [c["processed"] for c in counts] == [len(ids[0::2]), len(ids[1::2])]
    assert all(c["skipped"] == 0 for c in counts)  # shards are disjoint
    expected = {f"{kind}/{i}.png" for kind in ("low", "high") for i in ids}
    assert set(_files(tmp_path / "whole")) == expected
    assert _files(tmp_path / "sharded") == _files(tmp_path / "whole")
    low = read_mask(tmp_path / "whole" / "low" / f"{ids[0]}.png", source.num_classes)  # a valid class-index PNG
    assert low.shape == source.read_image(ids[0]).shape[:2]


def test_resume_skips_done_and_ignores_leftover_tmp(tree, cam_dir, tmp_path):
    source = open_source("synthetic", tree)
    ids = source.split_ids(SPLIT)
    run_crf_seeds(source, SPLIT, cam_dir, tmp_path, workers=1, progress=False)
    before = _files(tmp_path)
    again = run_crf_seeds(source, SPLIT, cam_dir, tmp_path, workers=1, progress=False)
    assert (again["processed"], again["skipped"]) == (0, len(ids))
    # an interrupted write leaves only a temporary file: that id is not done
    (tmp_path / "high" / f"{ids[1]}.png").unlink()
    (tmp_path / "high" / f".{ids[1]}.abc123.tmp.png").write_bytes(b"partial")
    third = run_crf_seeds(source, SPLIT, cam_dir, tmp_path, workers=1, progress=False)
    assert (third["processed"], third["skipped"]) == (1, len(ids) - 1)
    after = _files(tmp_path)
    assert {k: v for k, v in after.items() if ".tmp" not in k} == before


def test_wrong_size_or_missing_cam_file_names_the_file(tree, cam_dir, tmp_path):
    source = open_source("synthetic", tree)
    ids = source.split_ids(SPLIT)
    bad = tmp_path / "cams"
    bad.mkdir()
    for image_id in ids:
        (bad / f"{image_id}.npz").write_bytes((cam_dir / f"{image_id}.npz").read_bytes())
    save_cams(bad / f"{ids[2]}.npz", torch.rand(2, 24, 24), torch.tensor([1, 1]))
    with pytest.raises(DataError, match=rf"{ids[2]}\.npz.*24x24"):
        run_crf_seeds(source, SPLIT, bad, tmp_path / "out", workers=1, progress=False)
    (bad / f"{ids[2]}.npz").unlink()
    with pytest.raises(DataError, match=rf"not found.*{ids[2]}\.npz"):  # raised in a pool worker
        run_crf_seeds(source, SPLIT, bad, tmp_path / "out", workers=2, progress=False)


@pytest.mark.parametrize("text", ["3/2", "a/b", "1", "-1/2", "0/0", "1/2/3", ""])
def test_bad_shard_strings(text):
    with pytest.raises(ValueError, match=r"'i/n'.*0 <= i < n"):
        parse_shard(text)


def test_good_shard_strings_and_config_checks():
    assert parse_shard("0/1") == (0, 1) and parse_shard("3/4") == (3, 4)
    with pytest.raises(ValueError, match="low_alpha"):
        CRFSeedConfig(low_alpha=32, high_alpha=4).validate()


def test_main_writes_seeds_and_prints_summary(tree, cam_dir, tmp_path, capsys):
    argv = ["--dataset", "synthetic", "--root", str(tree), "--cam-dir", str(cam_dir), "--out-dir", str(tmp_path)]
    assert main([*argv, "--shard", "1/3", "--workers", "1", "--low-alpha", "6", "--high-alpha", "24"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    n = len(open_source("synthetic", tree).split_ids(SPLIT)[1::3])
    assert len(lines) == 2 and lines[1].split()[:4] == [SPLIT, "1/3", str(n), "0"]
    assert len(list((tmp_path / "low").glob("*.png"))) == n
    with pytest.raises(SystemExit):
        main([*argv, "--shard", "a/b"])
    assert "'i/n'" in capsys.readouterr().err
