"""AffinityNet targets and loss against brute-force loops written from PSA's description."""

import pytest
import torch

from caef.data.affinity_labels import (
    affinity_loss,
    cropped_size,
    downsample_labels,
    downsample_scores,
    extract_affinity_labels,
    pair_offsets,
    pairwise_affinity,
    seed_label_map,
)


def label_map():
    """6x10: background, class 2 on the left, class 5 on the right, an unsure (255) patch."""
    label = torch.zeros(6, 10, dtype=torch.long)
    label[1:5, 1:4] = 2
    label[2:6, 6:9] = 5
    label[0:2, 7:10] = 255
    label[4, 4] = 255
    return label


def brute_force_counts(label, radius):
    """Count pairs with a plain loop over offsets and source pixels of PSA's crop."""
    r = radius
    h, w = label.shape
    offsets = [(0, dx) for dx in range(1, r)]
    offsets += [(dy, dx) for dy in range(1, r) for dx in range(1 - r, r) if dy * dy + dx * dx < r * r]
    counts = {"bg": 0, "fg": 0, "neg": 0}
    for dy, dx in offsets:
        for y in range(0, h - (r - 1)):
            for x in range(r - 1, w - (r - 1)):
                a, b = int(label[y, x]), int(label[y + dy, x + dx])
                if a == 255 or b == 255:
                    continue
                if a == b == 0:
                    counts["bg"] += 1
                elif a == b:
                    counts["fg"] += 1
                else:
                    counts["neg"] += 1
    return counts


def test_pair_offsets_match_psa():
    offsets = pair_offsets(5)
    assert len(offsets) == 34
    assert offsets[:4] == [(0, 1), (0, 2), (0, 3), (0, 4)]
    assert len(set(offsets)) == 34 and all(dy > 0 or dx > 0 for dy, dx in offsets)
    # r = 3: (0, 1), (0, 2) and dy = 1, 2 with dx = -2..2 (2^2 + 2^2 = 8 < 9)
    assert pair_offsets(3) == [(0, 1), (0, 2)] + [(dy, dx) for dy in (1, 2) for dx in range(-2, 3)]


@pytest.mark.parametrize("radius", [2, 3, 4])
def test_extract_affinity_labels_counts(radius):
    label = label_map()
    bg, fg, neg = extract_affinity_labels(label, radius)
    h, w = cropped_size(6, 10, radius)
    assert bg.shape == fg.shape == neg.shape == (len(pair_offsets(radius)), h, w)
    assert bg.dtype == torch.bool
    expected = brute_force_counts(label, radius)
    assert {"bg": int(bg.sum()), "fg": int(fg.sum()), "neg": int(neg.sum())} == expected
    assert expected["bg"] > 0 and expected["fg"] > 0 and expected["neg"] > 0
    assert not (bg & fg).any() and not (bg & neg).any() and not (fg & neg).any()


def test_extract_affinity_labels_batched_and_layout():
    labels = torch.stack([label_map(), label_map().flip(-1), torch.full((6, 10), 255)])
    bg, fg, neg = extract_affinity_labels(labels, 3)
    for i, label in enumerate(labels):
        single = extract_affinity_labels(label, 3)
        assert all(torch.equal(b[i], s) for b, s in zip((bg, fg, neg), single))
    assert not (bg[2] | fg[2] | neg[2]).any()
    # pair (p, y, x) joins source (y, x + r1) with (y + dy, x + r1 + dx)
    label = label_map()
    bg, fg, neg = extract_affinity_labels(label, 3)
    for p, (dy, dx) in enumerate(pair_offsets(3)):
        a, b = label[1, 2 + 2], label[1 + dy, 2 + 2 + dx]
        assert bool(neg[p, 1, 2]) == bool(a != b and a != 255 and b != 255)


def test_small_grid_raises():
    with pytest.raises(ValueError, match="too small"):
        extract_affinity_labels(torch.zeros(4, 20, dtype=torch.long), 5)


def test_seed_label_map_rule():
    low = torch.tensor([[0, 0, 3, 3], [1, 1, 255, 0]])
    high = torch.tensor([[0, 3, 0, 3], [1, 0, 255, 255]])
    assert seed_label_map(low, high).tolist() == [[0, 255, 0, 3], [1, 0, 255, 255]]
    batched = seed_label_map(torch.stack([low, low]), torch.stack([high, high]))
    assert batched.shape == (2, 2, 4) and torch.equal(batched[1], seed_label_map(low, high))
    assert low.tolist()[0] == [0, 0, 3, 3]  # inputs untouched


def test_downsample_labels_centre_sampling():
    label = torch.arange(20 * 13).view(20, 13)
    grid = downsample_labels(label, 8)
    assert grid.shape == (3, 2)
    assert grid.tolist() == [[label[4, 4], label[4, 12]], [label[12, 4], label[12, 12]], [label[19, 4], label[19, 12]]]
    assert downsample_labels(label[None].expand(2, -1, -1), 8).shape == (2, 3, 2)


def test_downsample_scores_block_mean_argmax():
    scores = torch.zeros(1, 3, 10, 12)
    scores[0, 0] = 0.6
    scores[0, 2, :4, :4] = 1.0  # 16 of 64 pixels of cell (0, 0): mean 0.25 < 0.6
    scores[0, 1, 8:, :] = 1.0  # bottom 2 rows: cell (1, *) of the zero-padded 16x16 -> mean 1.0*2/8 vs 0.6*2/8
    scores[0, :, 8:, 8:] = 0.0  # no score at all: 255
    label = downsample_scores(scores, 8)
    assert label.tolist() == [[[0, 0], [1, 255]]]
    scores[0, 2, :8] = 0.7
    assert downsample_scores(scores, 8, classes=torch.tensor([0, 4, 9])).tolist() == [[[9, 9], [4, 255]]]


def test_loss_terms_and_gradient():
    torch.manual_seed(0)
    label = label_map()[None].expand(2, -1, -1)
    features = torch.randn(2, 6, 6, 10, requires_grad=True)
    aff = pairwise_affinity(features, 3)
    assert aff.shape == (2, 12, 6 - 2, 10 - 4) and (aff > 0).all() and (aff <= 1).all()
    bg, fg, neg = extract_affinity_labels(label, 3)
    loss, parts = affinity_loss(aff, bg, fg, neg)
    assert torch.isfinite(loss)
    expected_bg = -torch.log(aff[bg] + 1e-5).mean()
    expected_neg = -torch.log(1 + 1e-5 - aff[neg]).mean()
    assert torch.allclose(parts["bg"], expected_bg, rtol=1e-4)
    assert torch.allclose(parts["neg"], expected_neg, rtol=1e-4)
    assert torch.allclose(loss, parts["bg"] / 4 + parts["fg"] / 4 + parts["neg"] / 2)
    assert parts["bg_count"] == bg.sum()
    loss.backward()
    assert features.grad is not None and features.grad.abs().sum() > 0


def test_loss_zero_count_terms_are_zero():
    label = torch.zeros(1, 6, 10, dtype=torch.long)  # background only: no fg, no neg pairs
    features = torch.randn(1, 3, 6, 10, requires_grad=True)
    loss, parts = affinity_loss(pairwise_affinity(features, 3), *extract_affinity_labels(label, 3))
    assert parts["fg"] == 0 and parts["neg"] == 0 and parts["bg"] > 0
    loss.backward()
    assert torch.isfinite(features.grad).all()
    empty = torch.full((1, 6, 10), 255)
    loss, _ = affinity_loss(pairwise_affinity(features, 3), *extract_affinity_labels(empty, 3))
    assert loss == 0


@pytest.mark.parametrize("radius", [2, 3, 5])
def test_pairwise_affinity_equals_the_stacked_pairs_and_their_gradient(radius):
    """Offset by offset (no (B, C, P, h', w') copies): the same values as all shifted pairs stacked, and its
    hand-written backward agrees with autograd through the stacked formula and with finite differences."""
    from caef.data.affinity_labels import shifted_pairs

    torch.manual_seed(radius)
    features = torch.randn(2, 5, 2 * radius + 1, 2 * radius + 3, dtype=torch.double, requires_grad=True)
    weights = torch.rand_like(pairwise_affinity(features, radius))
    src, dst = shifted_pairs(features, radius)
    stacked = torch.exp(-(dst - src).abs().mean(dim=1))
    (expected,) = torch.autograd.grad((stacked * weights).sum(), features)
    aff = pairwise_affinity(features, radius)
    (grad,) = torch.autograd.grad((aff * weights).sum(), features)
    assert torch.allclose(aff, stacked, rtol=0, atol=1e-12)
    assert torch.allclose(grad, expected, atol=1e-12)
    assert torch.autograd.gradcheck(lambda f: pairwise_affinity(f, radius), (features,))
