"""Token-selection baselines: exact indices on hand-made inputs."""

import math

import pytest
import torch

import svdprune_cuda
from svdprune import baselines


def unit_vectors(degrees):
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1)


# ----------------------------------------------------------------------------- random


def test_random_is_a_seeded_permutation_prefix():
    x = torch.zeros(10, 3)
    expected = torch.sort(torch.randperm(10, generator=torch.Generator().manual_seed(7))[:4]).values
    assert torch.equal(baselines.random_tokens(x, 4, seed=7), expected)
    assert torch.equal(baselines.random_tokens(x, 4, seed=7), baselines.random_tokens(x, 4, seed=7))


def test_random_batch_draws_differ_per_image():
    indices = baselines.random_tokens(torch.zeros(4, 50, 2), 10, seed=0)
    assert indices.shape == (4, 10)
    assert all(len(set(row.tolist())) == 10 for row in indices)
    assert len({tuple(row.tolist()) for row in indices}) > 1


# ----------------------------------------------------------------------------- uniform grid


@pytest.mark.parametrize(
    "budget, lines",
    [(16, [3, 9, 15, 21]), (64, [1, 4, 7, 10, 13, 16, 19, 22]), (576, list(range(24)))],
)
def test_uniform_grid_square_budgets_are_lattices(budget, lines):
    expected = sorted(r * 24 + c for r in lines for c in lines)
    assert baselines.uniform_grid(torch.zeros(576, 1), budget).tolist() == expected


def test_uniform_grid_other_budgets_spread_rows_evenly():
    # 32 on 24 x 24: 6 rows (2, 6, ..., 22) of 6, 6, 5, 5, 5, 5 points
    indices = baselines.uniform_grid(torch.zeros(576, 1), 32)
    rows = (indices // 24).tolist()
    assert sorted(set(rows)) == [2, 6, 10, 14, 18, 22]
    assert [rows.count(r) for r in (2, 6, 10, 14, 18, 22)] == [6, 6, 5, 5, 5, 5]
    assert (indices[indices // 24 == 10] % 24).tolist() == [2, 7, 12, 16, 21]


def test_uniform_grid_rectangular_grid():
    # 2 x 3 grid, 2 points: one row (index 1), columns int(0.75)=0 and int(2.25)=2
    assert baselines.uniform_grid(torch.zeros(6, 1), 2, grid=(2, 3)).tolist() == [3, 5]


@pytest.mark.parametrize("budget", [1, 5, 37, 100, 333, 575])
def test_uniform_grid_any_budget_gives_distinct_ascending(budget):
    indices = baselines.uniform_grid(torch.zeros(2, 576, 1), budget)
    assert indices.shape == (2, budget)
    assert (indices.diff(dim=-1) > 0).all()


def test_uniform_grid_needs_a_grid():
    with pytest.raises(ValueError, match="grid"):
        baselines.uniform_grid(torch.zeros(10, 1), 2)
    with pytest.raises(ValueError, match="grid"):
        baselines.uniform_grid(torch.zeros(10, 1), 2, grid=(3, 3))


# ----------------------------------------------------------------------------- L2 norm


def test_l2_norm_hand_made_with_tie():
    x = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0], [-3.0, 0.0], [0.0, 0.0]])
    assert baselines.l2_norm(x, 1).tolist() == [1]  # tie between 1 and 3 goes to 1
    assert baselines.l2_norm(x, 2).tolist() == [1, 3]
    assert baselines.l2_norm(x, 3).tolist() == [1, 2, 3]


# ----------------------------------------------------------------------------- CLS attention


def hand_made_attention():
    attention = torch.full((2, 4, 4), 0.25)
    attention[0, 0] = torch.tensor([0.1, 0.5, 0.2, 0.2])
    attention[1, 0] = torch.tensor([0.1, 0.1, 0.6, 0.2])
    return attention  # CLS row averaged over heads, patches only: [0.3, 0.4, 0.2]


def test_cls_attention_hand_made():
    attention = hand_made_attention()
    assert baselines.cls_attention(attention, 1).tolist() == [1]
    assert baselines.cls_attention(attention, 2).tolist() == [0, 1]
    assert baselines.cls_attention(attention.unsqueeze(0).repeat(2, 1, 1, 1), 2).tolist() == [[0, 1], [0, 1]]


def test_cls_attention_cls_last():
    # Move the CLS token to the end: same patches, same answer.
    order = [1, 2, 3, 0]
    moved = hand_made_attention()[:, order][:, :, order]
    assert baselines.cls_attention(moved, 2, cls_index=-1).tolist() == [0, 1]


def test_cls_attention_bad_input():
    with pytest.raises(ValueError, match="attention"):
        baselines.cls_attention(torch.zeros(4, 4), 1)
    with pytest.raises(ValueError, match="budget"):
        baselines.cls_attention(hand_made_attention(), 4)


# ----------------------------------------------------------------------------- max-min diversity


def test_max_min_diversity_hand_made():
    # Angles 0, 10, 90, 180, 100 degrees. The most isolated is 180 (nearest: 100, 80 degrees away);
    # farthest from it is 0; then 90 (cosine distance 1 from both) beats 100 (0.83 from 180).
    x = unit_vectors([0, 10, 90, 180, 100])
    assert baselines.max_min_diversity(x, 1).tolist() == [3]
    assert baselines.max_min_diversity(x, 2).tolist() == [0, 3]
    assert baselines.max_min_diversity(x, 3).tolist() == [0, 2, 3]


def test_max_min_diversity_is_scale_invariant_and_skips_duplicates():
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert baselines.max_min_diversity(x, 3).tolist() == [0, 1, 2]


def divprune_loop(x, budget):
    # The greedy as DivPrune writes it: recompute each token's distance to the kept set every step.
    unit = torch.nn.functional.normalize(x.to(torch.float64), dim=-1)
    distance = 1 - unit @ unit.T
    kept = [int(torch.topk(distance, 2, dim=0, largest=False).values[1].argmax())]
    for _ in range(1, budget):
        kept.append(int(distance[kept].min(dim=0).values.argmax()))
    return sorted(kept)


def test_max_min_diversity_matches_divprune_loop():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 60, 8, generator=generator)
    batched = baselines.max_min_diversity(x, 12)
    for image, indices in zip(x, batched):
        assert indices.tolist() == divprune_loop(image, 12)


# ----------------------------------------------------------------------------- SVD-Prune


def test_svd_prune_matches_reference():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 40, 12, generator=generator, dtype=torch.float64)
    expected = svdprune_cuda.reference.select(x, 8, variance=0.9)[0]
    assert torch.equal(baselines.svd_prune(x, 8, variance=0.9), expected)


# ----------------------------------------------------------------------------- common contract


FEATURE_BASELINES = ["random", "uniform_grid", "l2_norm", "max_min_diversity", "svd_prune"]


@pytest.mark.parametrize("name", FEATURE_BASELINES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contract_shapes_and_order(name, dtype):
    x = torch.randn(3, 36, 5, generator=torch.Generator().manual_seed(2)).to(dtype)
    select = baselines.BASELINES[name]
    batched = select(x, 6)
    assert batched.dtype == torch.int64 and batched.shape == (3, 6)
    assert (batched.diff(dim=-1) > 0).all()
    if name != "random":  # random draws differ per image by design
        for image, indices in zip(x, batched):
            assert torch.equal(select(image, 6), indices)


@pytest.mark.parametrize("name", FEATURE_BASELINES)
def test_contract_bad_arguments(name):
    select = baselines.BASELINES[name]
    if name != "svd_prune":  # the op reports its own argument errors
        for budget in (0, 37, 2.5):
            with pytest.raises(ValueError, match="budget"):
                select(torch.zeros(36, 2), budget)
        with pytest.raises(ValueError, match="features"):
            select(torch.zeros(36), 2)
    else:
        with pytest.raises(Exception, match="budget"):
            select(torch.zeros(36, 2), 37)
