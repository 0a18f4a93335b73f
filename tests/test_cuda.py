"""torch.ops.svdprune.* on CUDA against the float64 reference and the CPU kernels.

Skipped where no GPU is visible or the extension was built without its CUDA kernels.
"""

import pytest
import torch

import svdprune_cuda
from helpers import DTYPES, METHODS, SPECTRUM, assert_top_k, designed, integer_low_rank, needs_cuda
from svdprune_cuda import reference

pytestmark = [pytest.mark.gpu, needs_cuda]


def sketch_width() -> int:
    """Width of the CUDA randomized sketch for N = 576, D >= 576: the CPU's widest sketch, 128,
    where its Cholesky factorisation fits in shared memory (sm_80 and later), else 64 (see
    sketch_width in csrc/cuda/leverage.cu)."""
    shared = getattr(torch.cuda.get_device_properties(), "shared_memory_per_block_optin", 48 * 1024)
    return 128 if shared >= 128 * 129 // 2 * 8 + 128 * 12 else 64


def cuda(x: torch.Tensor) -> torch.Tensor:
    return x.to("cuda")


def on_cpu(outputs):
    return tuple(t.cpu() for t in outputs)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("n,d", [(96, 160), (160, 96)])
def test_batch_of_256_matches_reference(method, n, d):
    x = designed(n, d, SPECTRUM, noise=1e-3, batch=256).float()
    indices, scores, rank = on_cpu(torch.ops.svdprune.select(cuda(x), 16, 0.9, method))
    expected_scores, expected_rank = reference.leverage(x)
    assert torch.equal(rank, expected_rank)
    torch.testing.assert_close(scores.double(), expected_scores, atol=2e-4, rtol=0)
    assert_top_k(indices, expected_scores, 16, tol=2e-4)
    mask, count, _, _ = on_cpu(torch.ops.svdprune.select_adaptive(cuda(x), 0.9, 1, -1, method))
    expected_mask, expected_count, _, _ = reference.select_adaptive(x, 0.9, 1, -1)
    assert torch.equal(count, expected_count) and torch.equal(mask, expected_mask)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_batched_and_unbatched_agree(dtype, method):
    # cuBLAS may pick different kernels for different batch sizes, so only rounding may differ.
    x = cuda(designed(300, 400, SPECTRUM, noise=1e-2, batch=4).to(dtype))
    indices, scores, rank = torch.ops.svdprune.select(x, 20, 0.9, method)
    for b in range(4):
        single_indices, single_scores, single_rank = torch.ops.svdprune.select(x[b], 20, 0.9, method)
        assert torch.equal(single_indices, indices[b]) and torch.equal(single_rank, rank[b])
        torch.testing.assert_close(single_scores, scores[b], atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("d", [1024, 40])
def test_rank_deficient_input_gives_the_numerical_rank(method, d, dtype):
    # In float64 the randomized path's CholeskyQR must drop the sketch's dependent columns
    # (see kDropTolerance in csrc/cuda/randomized.cuh).
    generator = torch.Generator().manual_seed(3)
    x = (torch.randn(576, 5, generator=generator) @ torch.randn(5, d, generator=generator)).to(dtype)
    scores, rank = on_cpu(torch.ops.svdprune.leverage(cuda(x), 1.0, method))
    expected_scores, expected_rank = reference.leverage(x, 1.0)
    assert rank.item() == 5 == expected_rank.item()
    torch.testing.assert_close(scores.double(), expected_scores, atol=2e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rank_follows_variance(dtype):
    x = cuda(designed(300, 400, SPECTRUM).to(dtype))
    energy = torch.tensor(SPECTRUM) ** 2
    cumulative = torch.cumsum(energy, 0) / energy.sum()
    for variance in (0.5, 0.8, 0.95, 0.99):
        expected = int((cumulative < variance).sum()) + 1
        for method in METHODS:
            assert torch.ops.svdprune.leverage(x, variance, method)[1].item() == expected


@pytest.mark.parametrize("n,d", [(2048, 48), (5000, 32)])
def test_many_tokens(n, d):
    # 5000 tokens sort in 64 KiB of shared memory, past the default per-block limit.
    x = designed(n, d, SPECTRUM, noise=1e-3).float()
    indices, scores, rank = on_cpu(torch.ops.svdprune.select(cuda(x), 64))
    expected_scores, expected_rank = reference.leverage(x)
    assert rank.item() == expected_rank.item()
    torch.testing.assert_close(scores.double(), expected_scores, atol=2e-4, rtol=0)
    assert_top_k(indices, expected_scores, 64, tol=2e-4)
    mask, count, _, _ = on_cpu(torch.ops.svdprune.select_adaptive(cuda(x)))
    assert torch.equal(count, reference.select_adaptive(x)[1])
    assert mask.sum() == count


def test_randomized_rank_saturates_at_the_sketch_width_on_flat_spectra():
    # Documented CUDA behaviour: deciding to fall back to the exact solver would need a host
    # synchronisation, so an image whose rank exceeds the sketch gets the sketch's estimate.
    x = cuda(torch.randn(576, 1024, generator=torch.Generator().manual_seed(0)))
    _, exact_rank = torch.ops.svdprune.leverage(x, 0.9, "exact")
    scores, rank = torch.ops.svdprune.leverage(x, 0.9, "randomized")
    assert exact_rank.item() > 100
    assert rank.item() == sketch_width()
    torch.testing.assert_close(scores.sum().item(), float(sketch_width()), atol=1e-2, rtol=0)


def test_auto_method_matches_reference():
    x = designed(576, 1024, SPECTRUM, noise=1e-3).float()
    indices, _, rank = on_cpu(torch.ops.svdprune.select(cuda(x), 32, 0.9, "auto"))
    assert torch.equal(indices, reference.select(x, 32)[0]) and rank.item() == 3


@pytest.mark.parametrize("method", METHODS)
def test_cpu_and_cuda_agree(method):
    x = designed(576, 1024, SPECTRUM, noise=1e-3, batch=2).float()
    cpu_indices, cpu_scores, cpu_rank = torch.ops.svdprune.select(x, 32, 0.9, method)
    indices, scores, rank = on_cpu(torch.ops.svdprune.select(cuda(x), 32, 0.9, method))
    assert torch.equal(indices, cpu_indices) and torch.equal(rank, cpu_rank)
    torch.testing.assert_close(scores, cpu_scores, atol=2e-4, rtol=0)
    cpu_mask, cpu_count, _, _ = torch.ops.svdprune.select_adaptive(x, 0.9, 1, -1, method)
    mask, count, _, _ = on_cpu(torch.ops.svdprune.select_adaptive(cuda(x), 0.9, 1, -1, method))
    assert torch.equal(count, cpu_count) and torch.equal(mask, cpu_mask)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input(method, bad):
    x = designed(256, 512, SPECTRUM, batch=2).float()
    x[1, 7, 3] = bad
    x = cuda(x)
    with pytest.raises(ValueError, match="features contains NaN or Inf"):
        svdprune_cuda.select(x, 16, method=method)
    # Without the wrapper's check the kernels neither fail nor hang: the image gets rank 0 and
    # NaN scores, the other image is unaffected, and the selection is still 16 distinct tokens.
    indices, scores, rank = on_cpu(torch.ops.svdprune.select(x, 16, 0.9, method))
    assert rank[1] == 0 and torch.isnan(scores[1]).all()
    assert rank[0] == 3 and torch.isfinite(scores[0]).all()
    assert len(set(indices[1].tolist())) == 16 and 0 <= indices[1].min() and indices[1].max() < 256
    mask, count, _, _ = on_cpu(torch.ops.svdprune.select_adaptive(x, 0.9, 1, -1, method))
    assert count[1] == 1 and mask[1].sum() == 1


@pytest.mark.parametrize("method", METHODS)
def test_image_beyond_the_float32_range_is_rescaled(method):
    # ||X||_F^2 of the first image is beyond float32: it is scaled by a power of two first, as on the CPU.
    x = designed(64, 600, SPECTRUM, noise=1e-3, batch=2).to(torch.bfloat16)
    x[0] *= 2.0**100
    indices, scores, rank = on_cpu(torch.ops.svdprune.select(cuda(x), 8, 0.9, method))
    expected_scores, expected_rank = reference.leverage(x)
    assert torch.equal(rank, expected_rank)
    torch.testing.assert_close(scores.double(), expected_scores, atol=2e-4, rtol=0)
    assert_top_k(indices, expected_scores, 8, tol=2e-4)



@pytest.mark.parametrize("method", METHODS)
def test_a_16_bit_gram_on_tensor_cores_keeps_the_numerical_rank(method):
    # The tensor cores' float32 accumulation truncates, leaving trace(G) short of ‖X‖_F² by about
    # the whole rank slack at D = 8192: the cut is measured against trace(G), so variance 1 still
    # finds rank 5 (exact integers: bfloat16 holds X, float32 its products).
    x = integer_low_rank(576, 8192, 5, batch=2).bfloat16()
    expected_scores, expected_rank = reference.leverage(x, 1.0)
    assert expected_rank.tolist() == [5, 5]
    scores, rank = on_cpu(torch.ops.svdprune.leverage(cuda(x), 1.0, method))
    assert torch.equal(rank, expected_rank)
    torch.testing.assert_close(scores.double(), expected_scores, atol=1e-3, rtol=0)


@pytest.mark.parametrize("ratio,variance", [(0.9995, 0.25), (0.998, 0.42)])
def test_a_randomized_rank_without_spare_sketch_columns_is_unresolved(ratio, variance):
    # Exact ranks 116 and 119, just below the 128-column sketch: a cut among the least-converged
    # Ritz values would overshoot, so the rank is reported as unresolved (the sketch width).
    x = designed(576, 1024, (ratio ** torch.arange(576.0)).tolist()).float()
    assert 128 - 16 < reference.leverage(x, variance)[1].item() < 128 - 8
    _, rank = torch.ops.svdprune.leverage(cuda(x), variance, "randomized")
    assert rank.item() == sketch_width() == 128


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("exponent", [30, -30])
def test_images_within_the_cpus_unscaled_range_match_the_reference(method, dtype, exponent):
    # Within 2^±32 the CPU leaves the scale to LAPACK; CUDA normalises every image before cuSOLVER,
    # whose Gram entries here would otherwise lie near 2^±60.
    x = designed(256, 512, SPECTRUM, noise=1e-3, batch=2).to(dtype) * 2.0**exponent
    indices, scores, rank = on_cpu(torch.ops.svdprune.select(cuda(x), 16, 0.9, method))
    expected_scores, expected_rank = reference.leverage(x)
    assert torch.equal(rank, expected_rank)
    torch.testing.assert_close(scores.double(), expected_scores, atol=2e-3, rtol=0)
    assert_top_k(indices, expected_scores, 16, tol=2e-3)

# The exact path's eigensolver works on a tokens × tokens Gram matrix here (N < D): its size is
# what decides which cuSOLVER algorithm runs inside the captured call. Beyond the sizes known to
# capture, the op raises instead. "relaxed" lets a library call allocate while the stream is captured.
@pytest.mark.parametrize("capture_error_mode", ["global", "relaxed"])
@pytest.mark.parametrize("tokens", [128, 256, 576])
@pytest.mark.parametrize("method", METHODS)
def test_cuda_graph_capture_and_replay(method, tokens, capture_error_mode):
    first = designed(tokens, 1024, SPECTRUM, noise=1e-3, batch=2, seed=0).half()
    second = designed(tokens, 1024, SPECTRUM, noise=1e-3, batch=2, seed=1).half()
    static = cuda(first)
    # Warm up on a side stream, as torch.cuda.graphs asks: handles and workspaces get created.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            torch.ops.svdprune.select(static, 16, 0.9, method)
            torch.ops.svdprune.select_adaptive(static, 0.9, 1, -1, method)
    torch.cuda.current_stream().wait_stream(side)
    if method == "exact" and tokens > svdprune_cuda._C.build_info()["max_captured_eigen_size"]:
        message = rf"^svdprune: method='exact' at N={tokens}, D=1024 solves a .* run the op outside the graph$"
        with pytest.raises(RuntimeError, match=message):
            with torch.cuda.graph(torch.cuda.CUDAGraph(), capture_error_mode=capture_error_mode):
                torch.ops.svdprune.select(static, 16, 0.9, method)
        return
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode=capture_error_mode):
        captured = torch.ops.svdprune.select(static, 16, 0.9, method)
        captured_adaptive = torch.ops.svdprune.select_adaptive(static, 0.9, 1, -1, method)
    for data in (first, second, first):
        static.copy_(cuda(data))
        graph.replay()
        torch.cuda.synchronize()
        eager = torch.ops.svdprune.select(static, 16, 0.9, method)
        eager_adaptive = torch.ops.svdprune.select_adaptive(static, 0.9, 1, -1, method)
        for got, want in zip((*captured, *captured_adaptive), (*eager, *eager_adaptive)):
            assert torch.equal(got, want)
        assert torch.equal(captured[0].cpu(), reference.select(data, 16)[0])


@pytest.mark.parametrize("method", METHODS)
def test_torch_compile_fullgraph(method):
    def keep_tokens(features):
        indices, _, _ = torch.ops.svdprune.select(features, 16, 0.9, method)
        return torch.gather(features, 1, indices[..., None].expand(-1, -1, features.shape[-1]))

    x = cuda(designed(576, 1024, SPECTRUM, noise=1e-3, batch=2).half())
    compiled = torch.compile(keep_tokens, fullgraph=True)
    assert torch.equal(compiled(x), keep_tokens(x))


# The ops are tagged cudagraph_unsafe: inductor runs them between its CUDA graphs, so the exact
# path's eigensolver is never captured.
@pytest.mark.parametrize("method", METHODS)
def test_torch_compile_reduce_overhead(method):
    def keep_tokens(features):
        indices, _, _ = torch.ops.svdprune.select(features, 16, 0.9, method)
        return 2 * torch.gather(features, 1, indices[..., None].expand(-1, -1, features.shape[-1]))

    compiled = torch.compile(keep_tokens, mode="reduce-overhead")
    for seed in range(3):  # recorded, then replayed
        x = cuda(designed(576, 1024, SPECTRUM, noise=1e-3, batch=2, seed=seed).half())
        assert torch.equal(compiled(x), keep_tokens(x))


def test_meta_and_fake_shapes_match_the_cuda_outputs():
    x = cuda(designed(96, 160, SPECTRUM, batch=3).half())
    indices, scores, rank = torch.ops.svdprune.select(x, 12)
    meta = torch.ops.svdprune.select(x.to("meta"), 12)
    for real, fake in zip((indices, scores, rank), meta):
        assert real.shape == fake.shape and real.dtype == fake.dtype


def test_empty_batch():
    x = torch.empty(0, 16, 8, device="cuda")
    indices, scores, rank = torch.ops.svdprune.select(x, 4)
    assert indices.shape == (0, 4) and scores.shape == (0, 16) and rank.shape == (0,)
