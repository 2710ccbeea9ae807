"""PSA's random walk: dense affinity, transition orientation, repeated squaring, and a toy propagation."""

import pytest
import torch

from caef.data.affinity_labels import pair_offsets, pairwise_affinity
from caef.stages.random_walk import (
    _power,
    dense_affinity,
    pair_indices,
    propagate,
    random_walk,
    transition_matrix,
)


def grid_distance2(height, width):
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    return (ys[:, None] - ys[None]) ** 2 + (xs[:, None] - xs[None]) ** 2


@pytest.mark.parametrize("crop", [True, False])
def test_dense_affinity_structure(crop):
    torch.manual_seed(0)
    features = torch.randn(3, 7, 11)
    aff = dense_affinity(features, radius=3, crop=crop)
    assert aff.shape == (77, 77)
    assert torch.equal(aff, aff.T)
    assert torch.equal(aff.diagonal(), torch.ones(77))
    d2 = grid_distance2(7, 11)
    assert (aff[d2 >= 9] == 0).all()
    flat = features.reshape(3, -1)
    expected = torch.exp(-(flat[:, :, None] - flat[:, None, :]).abs().mean(0))
    within = (aff > 0) & (d2 > 0)
    assert torch.allclose(aff[within], expected[within])
    if not crop:  # every pair within the radius is there
        assert torch.equal(within, (d2 > 0) & (d2 < 9))


def test_dense_affinity_crop_is_psa_training_layout():
    """crop=True scatters exactly the pairs (and values) AffinityNet is trained on."""
    torch.manual_seed(1)
    features = torch.randn(4, 9, 13)
    src, dst = pair_indices(9, 13, radius=5, crop=True)
    assert len(src) == 34 * (9 - 4) * (13 - 8)
    aff = dense_affinity(features, radius=5, crop=True)
    assert torch.allclose(aff[src, dst], pairwise_affinity(features[None], 5).reshape(-1))
    # PSA's crop leaves the first r-1 nodes of the top row and the bottom corners without pairs
    degree = (aff > 0).sum(0) - 1
    assert (degree.view(9, 13)[0, :4] == 0).all() and degree.view(9, 13)[8, 0] == 0
    assert (dense_affinity(features, 5, crop=False) > 0).sum(0).min() > 1


def test_pair_indices_full_count():
    src, dst = pair_indices(6, 7, radius=3, crop=False)
    expected = sum(max(0, 6 - dy) * max(0, 7 - abs(dx)) for dy, dx in pair_offsets(3))
    assert len(src) == len(dst) == expected == len(set(zip(src.tolist(), dst.tolist())))


def test_transition_matrix_is_column_stochastic():
    aff = dense_affinity(torch.randn(2, 5, 6), radius=3, crop=False)
    trans = transition_matrix(aff, beta=8)
    assert torch.allclose(trans.sum(0), torch.ones(30))
    assert torch.allclose(trans, aff**8 / (aff**8).sum(0, keepdim=True))


def random_column_stochastic(n, generator):
    sym = torch.rand(n, n, generator=generator, dtype=torch.float64)
    sym = (sym + sym.T) / 2
    return sym, sym / sym.sum(0, keepdim=True)


@pytest.mark.parametrize("logt", [3, 8])
def test_random_walk_equals_matrix_power(logt):
    gen = torch.Generator().manual_seed(0)
    _, trans = random_column_stochastic(30, gen)
    cam = torch.rand(4, 30, generator=gen, dtype=torch.float64)
    expected = cam @ torch.linalg.matrix_power(trans, 2**logt)
    assert torch.allclose(random_walk(cam, trans, logt), expected, rtol=1e-9, atol=1e-12)


def test_a_sharp_walk_drops_its_subnormal_entries_and_keeps_its_labels():
    """beta = 32 sends far pairs' transition entries below float32's smallest normal, where CPU products crawl;
    the walk zeroes them, which moves the walked scores by < 1e-36 and no argmax."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(16, 16, 16, generator=gen) * 3
    trans = transition_matrix(dense_affinity(features, radius=5), beta=32)
    subnormal = (trans > 0) & (trans < torch.finfo(torch.float32).tiny)
    assert subnormal.any()  # the case the cleaning is for
    cam = torch.rand(3, 256, generator=gen)
    walked = random_walk(cam, trans, 6)
    exact = (cam.double() @ torch.linalg.matrix_power(trans.double(), 64)).float()
    assert (walked - exact).abs().max() < 1e-30
    assert torch.equal(walked.argmax(dim=0), exact.argmax(dim=0))
    power = _power(trans, 6)
    assert not ((power > 0) & (power < torch.finfo(torch.float32).tiny)).any()


def test_random_walk_invariants():
    """PSA's cam @ T averages: constants stay, the degree-weighted mass stays; T @ cam.T keeps the plain mass."""
    gen = torch.Generator().manual_seed(2)
    sym, trans = random_column_stochastic(30, gen)
    cam = torch.rand(3, 30, generator=gen, dtype=torch.float64)
    walked = random_walk(cam, trans, 4)
    ones = torch.ones(1, 30, dtype=torch.float64)
    assert torch.allclose(random_walk(ones, trans, 4), ones)
    degree = sym.sum(1)
    assert torch.allclose(walked @ degree, cam @ degree)
    assert (walked.amax(1) <= cam.amax(1)).all() and (walked.amin(1) >= cam.amin(1)).all()
    column_walk = torch.linalg.matrix_power(trans, 16) @ cam.T  # the other orientation: a Markov chain on mass
    assert torch.allclose(column_walk.sum(0), cam.sum(1))


def test_propagate_shapes_and_values():
    torch.manual_seed(4)
    cams = torch.rand(2, 45, 77)
    classes = torch.tensor([4, 11], dtype=torch.int16)
    label = propagate(cams, classes, torch.randn(8, 6, 10), logt=4)
    assert label.shape == (45, 77) and label.dtype == torch.long
    assert set(label.unique().tolist()) <= {0, 4, 11}
    empty = propagate(torch.zeros(0, 45, 77), torch.zeros(0, dtype=torch.long), torch.randn(8, 6, 10), logt=2)
    assert (empty == 0).all()
    with pytest.raises(ValueError, match="features"):
        propagate(cams, classes, torch.randn(8, 5, 10))


@pytest.mark.parametrize("crop", [True, False])
def test_propagate_spreads_seed_over_its_region(crop):
    """Features constant on two halves: each seed fills its half, including pixels where its CAM was 0.

    With PSA's crop some border nodes have no pair (grid (0, 0..3), (6, 0), (7, 0..1), (6..7, 15)) and keep their
    own CAM, so there the known answer is checked on the rows whose bilinear neighbours are all connected.
    """
    features = torch.zeros(4, 8, 16)
    features[:, :, 8:] = 5.0  # cross-region affinity exp(-5)**8: the halves do not talk
    cams = torch.zeros(2, 64, 128)
    cams[0, :, 8:56] = 1.0  # class 3: 3/4 of the left half, away from both of its sides
    cams[1, :, 72:120] = 1.0  # class 7: 3/4 of the right half
    label = propagate(cams, torch.tensor([3, 7]), features, crop=crop)
    before = torch.tensor([3, 7])[cams.argmax(0)].masked_fill(cams.amax(0) < 1, 0)
    assert (before[:, :8] == 0).all() and (before[:, 120:] == 0).all()
    rows = slice(16, 40) if crop else slice(None)
    assert (label[rows, :56] == 3).all()
    assert (label[rows, 72:] == 7).all()
    assert set(label[:, 56:72].unique().tolist()) <= {0, 3, 7}
    if crop:
        assert label[4, 4] == 0  # isolated node (0, 0) keeps its own (background) CAM
