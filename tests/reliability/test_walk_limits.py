"""The random walk on large images: grids above the dense limit walk a sparse matrix (the same product up to float
order) without ever building the dense ``(N, N)`` one; images above ``max_walk_pixels`` stop before the network
runs, with one line naming the image, its size and the limit."""

from __future__ import annotations

import pytest
import torch

import caef.stages.random_walk as rw
from caef.callbacks.pseudo_label_writer import PseudoLabelWriter
from caef.errors import CaefError


def inputs(grid: tuple[int, int], classes: int = 2, channels: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    height, width = grid[0] * 8 - 3, grid[1] * 8 - 5  # padded up to the grid, as real images are
    cams = torch.rand(classes, height, width, generator=gen)
    return cams, torch.randn(channels, *grid, generator=gen) * 0.3


@pytest.mark.parametrize("crop", [True, False])
def test_sparse_walk_matches_the_dense_walk(crop: bool) -> None:
    cams, features = inputs((12, 17))
    dense = rw.walked_scores(cams, features, radius=5, crop=crop)
    sparse = rw.walked_scores(cams, features, radius=5, crop=crop, dense_nodes=0)
    assert torch.allclose(sparse, dense, rtol=1e-4, atol=1e-7)
    assert torch.equal(sparse.argmax(0), dense.argmax(0))
    assert torch.equal(
        rw.walked_scores(cams, features, crop=crop), dense
    )  # small grids keep PSA's dense walk, bit for bit


def test_grid_above_the_dense_limit_never_builds_a_dense_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("dense (N, N) matrix built")

    monkeypatch.setattr(rw, "dense_affinity", refuse)
    monkeypatch.setattr(rw, "transition_matrix", refuse)
    grid = (130, 130)  # 16,900 nodes: a 1.1 GB dense matrix, squared 8 times
    assert grid[0] * grid[1] > rw.DENSE_WALK_NODES
    cams, features = inputs(grid, classes=1, channels=4)
    scores = rw.walked_scores(cams, features, logt=4)
    assert scores.shape == (2, *cams.shape[1:]) and torch.isfinite(scores).all()


def _batch(image_id: str, height: int, width: int) -> dict:
    return {"id": [image_id], "image": torch.zeros(1, 1, 1, 1).expand(1, 3, height, width)}  # no pixels allocated


@pytest.mark.parametrize("limit, size", [(None, (20_000, 15_000)), (400, (21, 20))])
def test_image_above_the_limit_stops_before_the_network_runs(tmp_path, limit, size) -> None:
    kwargs = {} if limit is None else {"max_walk_pixels": limit}
    writer = PseudoLabelWriter(cam_dir=str(tmp_path), output_dir=str(tmp_path / "out"), **kwargs)
    height, width = size
    with pytest.raises(CaefError) as err:
        writer.on_predict_batch_start(None, None, _batch("2011_003271", height, width), 0)
    message = str(err.value)
    for word in ("'2011_003271'", f"{width}x{height}", str(limit or rw.MAX_WALK_PIXELS), "max_walk_pixels"):
        assert word in message, message
    writer.on_predict_batch_start(None, None, _batch("ok", 20, 20), 0)  # within the limit: nothing raised


@pytest.mark.slow
def test_a_4000x3000_image_walks_in_sparse_form() -> None:
    grid = (375, 500)  # PSA's dense matrix would be 140 GB
    cams, features = inputs(grid, classes=1, channels=8)
    scores = rw.walked_scores(cams, features)
    assert scores.shape == (2, *cams.shape[1:]) and torch.isfinite(scores).all()
