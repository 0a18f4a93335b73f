"""select(..., strategy="pivoted"): greedy column pivoting on the leading singular vectors,
on every device against the float64 reference."""

import pytest
import scipy.linalg
import torch

from helpers import DEVICES, METHODS, SPECTRUM, TORCH_DEVICES, designed, low_rank, needs_cuda, redundant_tokens, run_on
from svdprune.testing import images
from svdprune_cuda import reference


def select_pivoted(x: torch.Tensor, budget: int, method: str, device: str) -> tuple[torch.Tensor, ...]:
    """select(strategy="pivoted") on `device`, outputs back on the CPU."""
    return run_on(device, torch.ops.svdprune.select, x, budget, 0.9, method, False, 0, "pivoted")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
def test_pivoting_skips_redundant_tokens(dtype, method, device):
    x, expected = redundant_tokens()
    x = x.to(dtype)
    indices, _, _ = select_pivoted(x, 3, method, device)
    assert indices.tolist() == expected
    assert reference.select(x, 3, strategy="pivoted")[0].tolist() == expected
    leverage = run_on(device, torch.ops.svdprune.select, x, 3, 0.9, method)[0]
    assert {5, 9} <= set(leverage.tolist())


def test_reference_follows_lapack_column_pivoting():
    x, _ = redundant_tokens()
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    _, _, permutation = scipy.linalg.qr(u[:, :8].T.numpy(), pivoting=True)
    scores, _ = reference.leverage(x)
    assert reference.pivoted_tokens(u, s, scores, 8).tolist() == sorted(permutation[:8].tolist())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_zero_image_takes_the_first_tokens(method, device):
    indices, _, rank = select_pivoted(torch.zeros(2, 32, 8), 4, method, device)
    assert torch.equal(indices, torch.arange(4).expand(2, 4)) and torch.equal(rank, torch.zeros(2, dtype=torch.int64))


def float64_features(name: str) -> torch.Tensor:
    if name == "rank 5":
        return low_rank()
    return designed(576, 1024, SPECTRUM, noise=1e-3, batch=2).double()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "features,budget",
    [("rank 5", 3), ("rank 5", 16), *(pytest.param("designed", budget, marks=pytest.mark.slow) for budget in (64, 32, 16))],
)
def test_float64_matches_the_reference(features, budget, device):
    # rank 5, budget 16: five pivots, then the rest of the budget by leverage. designed: three
    # strong directions plus noise; the trailing basis vectors are noise, yet in float64 each
    # greedy step has a clear winner. On CUDA, 64 rows of 576 float64 coordinates exceed a
    # block's shared memory and take the global-memory path; 32 and 16 stay in shared memory.
    x = float64_features(features)
    indices, scores, rank = select_pivoted(x, budget, "exact", device)
    expected, expected_scores, expected_rank = reference.select(x, budget, strategy="pivoted")
    assert torch.equal(indices, expected)
    assert torch.equal(rank, expected_rank)
    torch.testing.assert_close(scores, expected_scores, atol=1e-9, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_both_gram_sides_match_the_reference(device):
    # N ≤ D: the eigenvectors of X Xᵀ are U. N > D: U = X V / sigma from those of Xᵀ X.
    x, _ = redundant_tokens()
    for features, budget in ((x[:20].repeat(1, 3), 7), (x, 16)):
        indices, _, _ = select_pivoted(features, budget, "exact", device)
        assert torch.equal(indices, reference.select(features, budget, strategy="pivoted")[0])


@pytest.fixture(scope="module")
def photo_features():
    photos = images.load_photos(["astronaut", "coffee", "chelsea", "hubble"])
    return [images.lift(images.to_patches(photo), 1024).float() for photo in photos.values()]


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_photos_match_the_reference(photo_features, device):
    batch = torch.stack(photo_features)
    for budget in (64, 32, 16):
        indices, _, _ = select_pivoted(batch, budget, "exact", device)
        expected = reference.select(batch, budget, strategy="pivoted")[0]
        for got, want in zip(indices, expected):
            assert torch.all(got[1:] > got[:-1])
            assert len(set(got.tolist()) & set(want.tolist())) >= 0.9 * budget


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_randomized_pivoting_spans_as_well_as_the_reference(photo_features, device):
    # Greedy pivoting amplifies small differences in the basis into different (equally good)
    # picks, so the randomized basis is held to the quality of its choice, not to the indices.
    for x in photo_features:
        for budget in (64, 32, 16):
            indices, _, _ = select_pivoted(x, budget, "randomized", device)
            expected = reference.select(x, budget, strategy="pivoted")[0]
            assert span_residual(x, indices) <= 1.05 * span_residual(x, expected)


def span_residual(x: torch.Tensor, indices: torch.Tensor) -> float:
    """‖X − X P_S‖_F / ‖X‖_F with P_S the projector onto the row space of the kept tokens."""
    x = x.double()
    kept = x[indices]
    projected = x @ torch.linalg.pinv(kept) @ kept
    return float((x - projected).norm() / x.norm())


@pytest.mark.slow
def test_pivoted_tokens_span_the_image_better_than_top_leverage(photo_features):
    for budget in (64, 16):
        pivoted = [span_residual(x, torch.ops.svdprune.select(x, budget, 0.9, "exact", False, 0, "pivoted")[0]) for x in photo_features]
        leverage = [span_residual(x, torch.ops.svdprune.select(x, budget)[0]) for x in photo_features]
        assert sum(pivoted) < sum(leverage), (budget, pivoted, leverage)


@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("batched", [False, True])
def test_opcheck(batched, device):
    x, _ = redundant_tokens()
    x = torch.stack([x, x.flip(0)]) if batched else x
    torch.library.opcheck(torch.ops.svdprune.select.default, (x.float().to(device), 5, 0.9, "exact", False, 0, "pivoted"))


@pytest.mark.parametrize("device", DEVICES)
def test_unknown_strategy(device):
    with pytest.raises(RuntimeError, match=r"strategy must be 'leverage' or 'pivoted', got 'qr'"):
        run_on(device, torch.ops.svdprune.select, torch.randn(16, 8), 4, 0.9, "exact", False, 0, "qr")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", METHODS)
def test_cuda_graph_capture_and_replay(method):
    first = designed(576, 1024, SPECTRUM, noise=1e-3, batch=2, seed=0).half().cuda()
    second = designed(576, 1024, SPECTRUM, noise=1e-3, batch=2, seed=1).half().cuda()
    static = first.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            torch.ops.svdprune.select(static, 32, 0.9, method, False, 0, "pivoted")
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = torch.ops.svdprune.select(static, 32, 0.9, method, False, 0, "pivoted")
    for data in (first, second, first):
        static.copy_(data)
        graph.replay()
        torch.cuda.synchronize()
        eager = torch.ops.svdprune.select(static, 32, 0.9, method, False, 0, "pivoted")
        for got, want in zip(captured, eager):
            assert torch.equal(got, want)


@pytest.mark.gpu
@needs_cuda
def test_torch_compile_fullgraph():
    def keep_tokens(features):
        indices, _, _ = torch.ops.svdprune.select(features, 16, 0.9, "randomized", False, 0, "pivoted")
        return torch.gather(features, 1, indices[..., None].expand(-1, -1, features.shape[-1]))

    x = designed(576, 1024, SPECTRUM, noise=1e-3, batch=2).half().cuda()
    assert torch.equal(torch.compile(keep_tokens, fullgraph=True)(x), keep_tokens(x))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("method", METHODS)
def test_non_finite_image_is_filled_by_position_without_failing(method):
    # Without the wrappers' check the kernels neither fail nor hang: the image with a NaN picks
    # no pivot (rank 0, NaN scores) and still gets `budget` tokens; the other image is unaffected.
    x = designed(256, 512, SPECTRUM, batch=2).float()
    x[1, 7, 3] = float("nan")
    indices, scores, rank = select_pivoted(x, 16, method, "cuda")
    assert rank[1] == 0 and torch.isnan(scores[1]).all()
    assert torch.equal(indices[1], torch.arange(16))  # NaN scores rank last, ties to the lower index
    assert torch.equal(indices[0], select_pivoted(x[:1], 16, method, "cuda")[0][0])
