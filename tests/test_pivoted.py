"""select(..., strategy="pivoted"): greedy column pivoting on the leading singular vectors."""

import pytest
import scipy.linalg
import torch

from svdprune import images
from svdprune_cuda import reference

METHODS = ["exact", "randomized"]


def redundant_tokens() -> tuple[torch.Tensor, list[int]]:
    """Tokens 5 and 9 point the same way (9 is redundant), 12 and 30 along other axes; the rest is
    faint noise. Leverage keeps both 5 and 9; pivoting keeps 5, 12 and 30."""
    x = 1e-3 * torch.randn(64, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[5, 0], x[9, 0], x[12, 1], x[30, 2] = 3.0, 2.9, 1.0, 0.5
    return x, [5, 12, 30]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
def test_pivoting_skips_redundant_tokens(dtype, method):
    x, expected = redundant_tokens()
    x = x.to(dtype)
    indices, _, _ = torch.ops.svdprune.select(x, 3, 0.9, method, False, 0, "pivoted")
    assert indices.tolist() == expected
    assert reference.select(x, 3, strategy="pivoted")[0].tolist() == expected
    leverage = torch.ops.svdprune.select(x, 3, 0.9, method)[0]
    assert {5, 9} <= set(leverage.tolist())


def test_reference_follows_lapack_column_pivoting():
    x, _ = redundant_tokens()
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    _, _, permutation = scipy.linalg.qr(u[:, :8].T.numpy(), pivoting=True)
    scores, _ = reference.leverage(x)
    assert reference.pivoted_tokens(u, s, scores, 8).tolist() == sorted(permutation[:8].tolist())


@pytest.mark.parametrize("budget", [3, 16])
def test_rank_deficient_input_fills_up_by_leverage(budget):
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(200, 5, generator=generator, dtype=torch.float64) @ torch.randn(5, 300, generator=generator, dtype=torch.float64)
    indices, scores, rank = torch.ops.svdprune.select(x, budget, 0.9, "exact", False, 0, "pivoted")
    expected, expected_scores, expected_rank = reference.select(x, budget, strategy="pivoted")
    assert torch.equal(indices, expected)
    assert torch.equal(rank, expected_rank)
    torch.testing.assert_close(scores, expected_scores, atol=1e-9, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_zero_image_takes_the_first_tokens(method):
    indices, _, rank = torch.ops.svdprune.select(torch.zeros(2, 32, 8), 4, 0.9, method, False, 0, "pivoted")
    assert torch.equal(indices, torch.arange(4).expand(2, 4)) and torch.equal(rank, torch.zeros(2, dtype=torch.int64))


@pytest.fixture(scope="module")
def photo_features():
    photos = images.load_photos(["astronaut", "coffee", "chelsea", "hubble"])
    return [images.lift(images.to_patches(photo), 1024).float() for photo in photos.values()]


def test_photos_match_the_reference(photo_features):
    batch = torch.stack(photo_features)
    for budget in (64, 32, 16):
        indices, _, _ = torch.ops.svdprune.select(batch, budget, 0.9, "exact", False, 0, "pivoted")
        expected = reference.select(batch, budget, strategy="pivoted")[0]
        for got, want in zip(indices, expected):
            assert torch.all(got[1:] > got[:-1])
            assert len(set(got.tolist()) & set(want.tolist())) >= 0.9 * budget


def test_randomized_pivoting_spans_as_well_as_the_reference(photo_features):
    # Greedy pivoting amplifies small differences in the basis into different (equally good)
    # picks, so the randomized basis is held to the quality of its choice, not to the indices.
    for x in photo_features:
        for budget in (64, 32, 16):
            indices, _, _ = torch.ops.svdprune.select(x, budget, 0.9, "randomized", False, 0, "pivoted")
            expected = reference.select(x, budget, strategy="pivoted")[0]
            assert span_residual(x, indices) <= 1.05 * span_residual(x, expected)


def span_residual(x: torch.Tensor, indices: torch.Tensor) -> float:
    """‖X − X P_S‖_F / ‖X‖_F with P_S the projector onto the row space of the kept tokens."""
    x = x.double()
    kept = x[indices]
    projected = x @ torch.linalg.pinv(kept) @ kept
    return float((x - projected).norm() / x.norm())


def test_pivoted_tokens_span_the_image_better_than_top_leverage(photo_features):
    for budget in (64, 16):
        pivoted = [span_residual(x, torch.ops.svdprune.select(x, budget, 0.9, "exact", False, 0, "pivoted")[0]) for x in photo_features]
        leverage = [span_residual(x, torch.ops.svdprune.select(x, budget)[0]) for x in photo_features]
        assert sum(pivoted) < sum(leverage), (budget, pivoted, leverage)


@pytest.mark.parametrize("batched", [False, True])
def test_opcheck(batched):
    x, _ = redundant_tokens()
    x = torch.stack([x, x.flip(0)]) if batched else x
    torch.library.opcheck(torch.ops.svdprune.select.default, (x.float(), 5, 0.9, "exact", False, 0, "pivoted"))


def test_unknown_strategy():
    with pytest.raises(RuntimeError, match=r"strategy must be 'leverage' or 'pivoted', got 'qr'"):
        torch.ops.svdprune.select(torch.randn(16, 8), 4, 0.9, "exact", False, 0, "qr")
