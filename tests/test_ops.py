"""torch.ops.svdprune.* on every device against the float64 reference."""

import re

import pytest
import torch

import svdprune_cuda
from helpers import (
    DEVICES,
    DTYPES,
    METHODS,
    SPECTRUM,
    TORCH_DEVICES,
    assert_top_k,
    designed,
    lifted,
    run_on,
    score_tolerance,
)
from svdprune_cuda import reference

# The host build of the CUDA backend emulates every CUDA thread: it runs a subset of the larger
# cases (both Gram sides, every dtype and method stay covered) to keep CI within its budget.
HOST_SIZE_REASON = "subset of the large cases on the emulated CUDA backend"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "n,d", [*(pytest.param(576, d, marks=pytest.mark.slow) for d in (588, 1024, 4096)), (576, 64), (100, 588)]
)
def test_leverage_matches_reference(dtype, method, n, d, device):
    if device == "cuda_on_host" and min(n, d) > 100:
        pytest.skip(HOST_SIZE_REASON)
    x = designed(n, d, SPECTRUM, noise=1e-3).to(dtype)
    scores, rank = run_on(device, torch.ops.svdprune.leverage, x, 0.9, method)
    expected_scores, expected_rank = reference.leverage(x)
    assert scores.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rank.dtype == torch.int64 and rank.shape == ()
    assert rank.item() == expected_rank.item() == 3
    torch.testing.assert_close(scores.double(), expected_scores, atol=score_tolerance(dtype), rtol=0)
    torch.testing.assert_close(scores.sum().double(), rank.double(), atol=1e-3, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("budget", [pytest.param(64, marks=pytest.mark.slow), 32, pytest.param(16, marks=pytest.mark.slow)])
def test_select_exact_indices_on_separated_scores(method, budget, device):
    if device == "cuda_on_host" and budget != 32:
        pytest.skip(HOST_SIZE_REASON)
    x = designed(576, 1024, SPECTRUM, noise=1e-3, batch=3).float()
    indices, scores, rank = run_on(device, torch.ops.svdprune.select, x, budget, 0.9, method)
    expected_indices, expected_scores, expected_rank = reference.select(x, budget)
    ordered = torch.sort(expected_scores, descending=True).values
    assert (ordered[:, budget - 1] - ordered[:, budget]).min() > 1e-3, "test data must separate the K-th score"
    assert indices.dtype == torch.int64
    assert torch.equal(indices, expected_indices)
    assert torch.equal(rank, expected_rank)
    torch.testing.assert_close(scores.double(), expected_scores, atol=2e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("lift", [False, True], ids=["patches", "lifted4096"])
@pytest.mark.parametrize("method", METHODS)
def test_select_on_photos(photos, method, lift, dtype, device):
    for name, patches in photos.items():
        x = (lifted(patches) if lift else patches).to(dtype)
        expected_scores, expected_rank = reference.leverage(x)
        for budget in (64, 32, 16):
            indices, scores, rank = run_on(device, torch.ops.svdprune.select, x, budget, 0.9, method)
            assert rank.item() == expected_rank.item(), name
            torch.testing.assert_close(scores.double(), expected_scores, atol=2e-4, rtol=0)
            assert_top_k(indices, expected_scores, budget, tol=2e-4)
            expected = reference.select(x, budget)[0]
            overlap = len(set(indices.tolist()) & set(expected.tolist())) / budget
            assert overlap >= 0.95, (name, budget, overlap)


@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("method,tol", [("exact", 1e-4), ("randomized", 2e-3)])
def test_photos_batched_with_centering(photos, method, tol, device):
    # Centred photos keep 5-9 directions from a slowly decaying spectrum: the hardest case
    # for the randomized sketch, whose scores then carry an error of order 1e-3.
    x = torch.stack(list(photos.values()))
    indices, scores, rank = run_on(device, torch.ops.svdprune.select, x, 32, 0.9, method, True)
    expected_indices, expected_scores, expected_rank = reference.select(x, 32, center=True)
    assert torch.equal(rank, expected_rank)
    torch.testing.assert_close(scores.double(), expected_scores, atol=tol, rtol=0)
    assert_top_k(indices, expected_scores, 32, tol=tol)
    for got, want in zip(indices, expected_indices):
        assert len(set(got.tolist()) & set(want.tolist())) >= 0.95 * 32


@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_equals_unbatched(dtype):
    x = designed(200, 300, SPECTRUM, noise=1e-2, batch=4).to(dtype)
    batched = torch.ops.svdprune.select(x, 20)
    for b in range(4):
        single = torch.ops.svdprune.select(x[b], 20)
        for out_batched, out_single in zip(batched, single):
            assert torch.equal(out_batched[b], out_single)


@pytest.mark.parametrize("device", DEVICES)
def test_noncontiguous_input_gives_the_same_result(device):
    x = designed(300, 200, SPECTRUM, noise=1e-2, batch=2).float()
    transposed = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    strided = torch.zeros(2, 300, 400)
    strided[..., ::2] = x
    for view in (transposed, strided[..., ::2]):
        assert not view.is_contiguous()
        for method in METHODS:
            for got, want in zip(run_on(device, torch.ops.svdprune.select, view, 16, 0.9, method),
                                 run_on(device, torch.ops.svdprune.select, x, 16, 0.9, method)):
                assert torch.equal(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n,d", [(64, 32), (128, 256), (256, 128)])
def test_zero_image(method, n, d, device):
    x = torch.zeros(2, n, d)
    x[1] = designed(n, d, SPECTRUM).float()
    indices, scores, rank = run_on(device, torch.ops.svdprune.select, x, 8, 0.9, method)
    assert rank[0] == 0 and rank[1] == 3
    assert torch.equal(scores[0], torch.zeros(n))
    assert torch.equal(indices[0], torch.arange(8))
    mask, count, _, _ = run_on(device, torch.ops.svdprune.select_adaptive, x, 0.9, 2, -1, method)
    assert count[0] == 2 and torch.equal(mask[0], torch.arange(n) < 2)


@pytest.mark.parametrize("device", DEVICES)
def test_ties_go_to_the_lower_index(device):
    # Zero rows have leverage exactly 0 (D < N: U = X V / sigma), so the rows beyond the
    # non-zero ones are picked in index order.
    x = torch.zeros(100, 8)
    nonzero = torch.tensor([3, 10, 42, 77, 90])
    x[nonzero] = torch.randn(5, 8, generator=torch.Generator().manual_seed(0))
    indices, scores, _ = run_on(device, torch.ops.svdprune.select, x, 9, 1.0)
    assert torch.equal(scores[torch.tensor([i for i in range(100) if i not in nonzero.tolist()])], torch.zeros(95))
    assert indices.tolist() == [0, 1, 2, 3, 4, 10, 42, 77, 90]
    assert indices.tolist() == reference.select(x, 9, 1.0)[0].tolist()


@pytest.mark.parametrize("method", METHODS)
def test_variance_one_gives_the_numerical_rank(method):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(576, 5, generator=generator) @ torch.randn(5, 1024, generator=generator)
    _, rank = torch.ops.svdprune.leverage(x, 1.0, method)
    assert rank.item() == 5 == reference.leverage(x, 1.0)[1].item()


@pytest.mark.slow
def test_energy_is_exact_enough_for_a_tight_cut():
    # A float32 dot product over 576 x 4096 entries is off by ~1e-4 relative (by an amount that
    # depends on the thread count); on this spectrum the cut at 0.999 passes 14 directions by 1e-4
    # of the energy, so the total must be accumulated in double.
    x = designed(576, 4096, torch.logspace(0, -2, 20).tolist(), seed=1).float()
    assert reference.leverage(x, 0.999)[1].item() == 15
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            for method in METHODS:
                assert torch.ops.svdprune.leverage(x, 0.999, method)[1].item() == 15, (count, method)
    finally:
        torch.set_num_threads(threads)


# One strong direction, twelve near 1e-2 and a floor of 250 near 2e-3 (log-spaced within
# 1e0..1e-3): at variance 0.999 the cut falls after the twelve, at sigma_k / sigma_1 = 1e-2, and
# the floor holds just under 0.1 % of the energy. Left singular vectors formed as X V / sigma, or
# from a sketch as Y W / sqrt(lambda), carry the eigensolver's rounding amplified by
# sigma_1 / sigma_i there and are not orthonormal: their scores missed the rank by up to 2e-3.
DEEP_CUT = [1.0, *torch.logspace(-1.9, -2.0, 12).tolist(), *torch.logspace(-2.66, -2.76, 250).tolist()]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n,d", [(576, 300), (300, 576)])
def test_scores_at_a_deep_cut_sum_to_the_rank(method, n, d, device):
    x = designed(n, d, DEEP_CUT, batch=2).float()
    indices, scores, rank = run_on(device, torch.ops.svdprune.select, x, 16, 0.999, method)
    expected_indices, expected_scores, expected_rank = reference.select(x, 16, 0.999)
    assert rank.tolist() == expected_rank.tolist() == [13, 13]
    # The scores are the diagonal of the projector onto a k-dimensional subspace, so they sum to k
    # however that subspace is rounded; the float32 Gram matrix rounds it by up to about 1e-3 here.
    torch.testing.assert_close(scores.double().sum(-1), rank.double(), atol=1e-4, rtol=0)
    torch.testing.assert_close(scores.double(), expected_scores, atol=2e-3, rtol=0)
    assert_top_k(indices, expected_scores, 16, tol=2e-3)
    assert torch.equal(indices, expected_indices)  # the 16th and 17th scores are more than 4e-3 apart


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rank_follows_variance(dtype):
    x = designed(300, 400, SPECTRUM).to(dtype)
    energy = torch.tensor(SPECTRUM) ** 2
    cumulative = torch.cumsum(energy, 0) / energy.sum()
    for variance in (0.5, 0.8, 0.95, 0.99):
        expected = int((cumulative < variance).sum()) + 1
        assert torch.ops.svdprune.leverage(x, variance)[1].item() == expected


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "min_tokens,max_tokens", [(1, -1), *(pytest.param(*case, marks=pytest.mark.slow) for case in [(40, -1), (1, 10), (0, 576)])]
)
def test_select_adaptive_matches_reference(method, min_tokens, max_tokens, device):
    if device == "cuda_on_host" and (min_tokens, max_tokens) in ((40, -1), (1, 10)):
        pytest.skip(HOST_SIZE_REASON)
    x = designed(576, 1024, SPECTRUM, noise=1e-3, batch=2).float()
    mask, count, scores, rank = run_on(device, torch.ops.svdprune.select_adaptive, x, 0.9, min_tokens, max_tokens, method)
    expected_mask, expected_count, expected_scores, _ = reference.select_adaptive(x, 0.9, min_tokens, max_tokens)
    assert mask.dtype == torch.bool and count.dtype == torch.int64
    assert torch.equal(count, expected_count)
    assert torch.equal(mask.sum(-1), count)
    assert torch.equal(mask, expected_mask)
    # The kept tokens are the highest-leverage ones.
    for m, s in zip(mask, expected_scores):
        if (~m).any():
            assert s[m].min() >= s[~m].max()


@pytest.mark.parametrize("device", DEVICES)
def test_select_adaptive_unbatched_and_clamped(device):
    x = designed(64, 128, SPECTRUM).float()
    mask, count, scores, rank = run_on(device, torch.ops.svdprune.select_adaptive, x, 0.9, 1, 4)
    assert mask.shape == (64,) and count.shape == () and scores.shape == (64,) and rank.shape == ()
    assert count.item() <= 4 and mask.sum() == count


@pytest.mark.parametrize("device", DEVICES)
def test_randomized_is_deterministic_and_per_image(device):
    # Noise 1e-3 keeps the rank at 3, well inside the sketch. (At noise 1e-2 the rank is about 190:
    # the CPU falls back to the exact solver, CUDA saturates at the sketch width, and saturated
    # scores legitimately move with the seed.)
    x = designed(576, 1024, SPECTRUM, noise=1e-3, batch=2).float()
    first = run_on(device, torch.ops.svdprune.leverage, x, 0.9, "randomized", False, 7)
    again = run_on(device, torch.ops.svdprune.leverage, x, 0.9, "randomized", False, 7)
    swapped = run_on(device, torch.ops.svdprune.leverage, x.flip(0), 0.9, "randomized", False, 7)
    other_seed = run_on(device, torch.ops.svdprune.leverage, x, 0.9, "randomized", False, 8)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert torch.equal(first[1], swapped[1].flip(0)) and torch.equal(first[1], other_seed[1])
    assert first[1].tolist() == reference.leverage(x, 0.9)[1].tolist() == [3, 3]
    # cuBLAS's batched GEMMs may round an image differently at another batch position.
    torch.testing.assert_close(first[0], swapped[0].flip(0), atol=1e-6 if device == "cuda" else 0.0, rtol=0)
    torch.testing.assert_close(first[0], other_seed[0], atol=1e-5, rtol=0)


def test_randomized_falls_back_to_exact_on_flat_spectra():
    x = torch.randn(576, 1024, generator=torch.Generator().manual_seed(0))
    randomized = torch.ops.svdprune.leverage(x, 0.9, "randomized")
    exact = torch.ops.svdprune.leverage(x, 0.9, "exact")
    assert randomized[1].item() > 100
    assert torch.equal(randomized[0], exact[0]) and torch.equal(randomized[1], exact[1])


@pytest.mark.slow
def test_randomized_sketches_only_where_cheaper_than_exact():
    x = designed(576, 4096, SPECTRUM, noise=1e-3).float()
    # A 32-column sketch for the rank-3 leverage basis costs less than the exact solver: it runs,
    # and its float32 rounding differs from the exact path's.
    _, exact_scores, _ = torch.ops.svdprune.select(x, 64, 0.9, "exact")
    _, randomized_scores, _ = torch.ops.svdprune.select(x, 64, 0.9, "randomized")
    assert not torch.equal(randomized_scores, exact_scores)
    torch.testing.assert_close(randomized_scores, exact_scores, atol=1e-4, rtol=0)
    # A 64-token pivoting basis needs a 128-column sketch, costlier than the exact solver.
    exact_pivoted = torch.ops.svdprune.select(x, 64, 0.9, "exact", False, 0, "pivoted")
    randomized_pivoted = torch.ops.svdprune.select(x, 64, 0.9, "randomized", False, 0, "pivoted")
    assert all(torch.equal(got, want) for got, want in zip(randomized_pivoted, exact_pivoted))


@pytest.mark.slow
def test_auto_method_matches_reference():
    x = designed(576, 1024, SPECTRUM, noise=1e-3).float()
    indices, _, rank = torch.ops.svdprune.select(x, 32, 0.9, "auto")
    assert torch.equal(indices, reference.select(x, 32)[0]) and rank.item() == 3


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_wrappers_forward_to_the_ops(device):
    x = designed(128, 64, SPECTRUM, batch=2).float().to(device)
    for got, want in zip(svdprune_cuda.select(x, 10, 0.8, "exact", True), torch.ops.svdprune.select(x, 10, 0.8, "exact", True)):
        assert torch.equal(got, want)
    for got, want in zip(svdprune_cuda.leverage(x), torch.ops.svdprune.leverage(x)):
        assert torch.equal(got, want)
    for got, want in zip(svdprune_cuda.select_adaptive(x, max_tokens=50), torch.ops.svdprune.select_adaptive(x, 0.9, 1, 50)):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    "op,args",
    [
        (torch.ops.svdprune.leverage.default, (0.9, "exact", False, 0)),
        (torch.ops.svdprune.leverage.default, (0.9, "randomized", True, 3)),
        (torch.ops.svdprune.select.default, (6, 0.9, "exact", False, 0)),
        (torch.ops.svdprune.select_adaptive.default, (0.9, 1, -1, "exact", False, 0)),
    ],
)
@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(op, args, batched, requires_grad, device):
    # With features that require grad, opcheck also checks the Autograd registration.
    x = designed(96, 160, SPECTRUM, batch=2 if batched else None).float().to(device).requires_grad_(requires_grad)
    torch.library.opcheck(op, (x, *args))


def test_torch_compile_fullgraph():
    def keep_tokens(features):
        indices, _, _ = torch.ops.svdprune.select(features, 16)
        return torch.gather(features, 1, indices[..., None].expand(-1, -1, features.shape[-1]))

    x = designed(64, 48, SPECTRUM, batch=2).float()
    compiled = torch.compile(keep_tokens, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), keep_tokens(x))


def test_inductor_keeps_the_ops_out_of_its_cuda_graphs():
    # torch.compile(mode="reduce-overhead") runs cudagraph-unsafe ops between its CUDA graphs: the
    # exact path's eigensolver is not known to run under capture (see csrc/ops.cpp).
    from torch._inductor.utils import is_cudagraph_unsafe_fx_node

    def keep_tokens(features):
        mask = torch.ops.svdprune.select_adaptive(features)[0]
        scores = torch.ops.svdprune.leverage(features)[0]
        return torch.ops.svdprune.select(features, 16)[0], mask, scores

    graph = torch.fx.experimental.proxy_tensor.make_fx(keep_tokens)(designed(64, 48, SPECTRUM).float())
    ops = {str(node.target): is_cudagraph_unsafe_fx_node(node) for node in graph.graph.nodes if node.op == "call_function"}
    assert {op: unsafe for op, unsafe in ops.items() if op.startswith("svdprune.")} == {
        "svdprune.select.default": True,
        "svdprune.select_adaptive.default": True,
        "svdprune.leverage.default": True,
    }


def test_meta_tensors_use_the_fake_kernels():
    x = torch.empty(3, 576, 1024, device="meta", dtype=torch.float16)
    indices, scores, rank = torch.ops.svdprune.select(x, 64)
    assert indices.shape == (3, 64) and scores.shape == (3, 576) and scores.dtype == torch.float32
    assert rank.shape == (3,)
    mask, count, _, _ = torch.ops.svdprune.select_adaptive(x[0])
    assert mask.shape == (576,) and mask.dtype == torch.bool and count.shape == ()


# (op, features, the op's arguments after them, its whole message after "svdprune: ")
BAD_INPUTS = [
    ("select", torch.randn(16), (4,), "features must be [N, D] or [B, N, D], got shape [16]"),
    ("select", torch.randn(1, 2, 16, 8), (4,), "features must be [N, D] or [B, N, D], got shape [1, 2, 16, 8]"),
    ("select", torch.ones(16, 8, dtype=torch.int32), (4,),
     "features must be float16, bfloat16, float32 or float64, got Int"),
    ("leverage", torch.ones(16, 8, dtype=torch.complex64), (),
     "features must be float16, bfloat16, float32 or float64, got ComplexFloat"),
    ("leverage", torch.randn(0, 8), (), "features must have at least one token (N > 0), got shape [0, 8]"),
    ("leverage", torch.randn(2, 16, 0), (), "features must have at least one feature (D > 0), got shape [2, 16, 0]"),
    ("select", torch.randn(16, 8), (0,), "budget must be in [1, N=16], got 0"),
    ("select", torch.randn(16, 8), (17,), "budget must be in [1, N=16], got 17"),
    ("select", torch.randn(16, 8), (4, 0.0), "variance must be in (0, 1], got 0"),
    ("leverage", torch.randn(16, 8), (1.5,), "variance must be in (0, 1], got 1.5"),
    ("leverage", torch.randn(16, 8), (float("nan"),), "variance must be in (0, 1], got nan"),
    ("select", torch.randn(16, 8), (4, 0.9, "svd"), "method must be 'exact', 'randomized' or 'auto', got 'svd'"),
    ("select", torch.randn(16, 8), (4, 0.9, "exact", False, 0, "qr"),
     "strategy must be 'leverage' or 'pivoted', got 'qr'"),
    ("select_adaptive", torch.randn(16, 8), (0.9, 5, 3), "min_tokens (5) must not exceed max_tokens (3)"),
    ("select_adaptive", torch.randn(16, 8), (0.9, 1, 17), "max_tokens must be -1 or in [1, N=16], got 17"),
    ("select_adaptive", torch.randn(16, 8), (0.9, -1, -1), "min_tokens must be in [0, N=16], got -1"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op,features,arguments,message", BAD_INPUTS)
def test_bad_input_raises_a_clear_error(device, op, features, arguments, message):
    with pytest.raises(RuntimeError, match=f"^svdprune: {re.escape(message)}$"):
        run_on(device, getattr(torch.ops.svdprune, op), features, *arguments)


def _nan_image():
    x = torch.randn(16, 8)
    x[3, 4] = float("nan")
    return x


def _inf_image():
    x = torch.randn(2, 16, 8)
    x[1, 0, 0] = float("inf")
    return x


# The CUDA kernels leave the check to svdprune_cuda's wrappers (it needs a device-to-host copy).
@pytest.mark.parametrize("call", [lambda: torch.ops.svdprune.select(_nan_image(), 4),
                                  lambda: torch.ops.svdprune.leverage(_inf_image(), 0.9, "randomized")])
def test_nan_or_inf_features_raise_on_the_cpu(call):
    with pytest.raises(RuntimeError, match="^svdprune: features contains NaN or Inf$"):
        call()
