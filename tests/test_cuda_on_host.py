"""The CUDA backend run on the host (tests/cuda_on_host.py): first the host stand-ins for cuBLAS,
cuSOLVER and the 16-bit types, each against a formula written from the library's documentation
(never against the backend, so that a misread layout cannot pass by being misread twice), then
what only this build can show about the backend: solver batches, handles and graph capture,
unresolved sketch ranks, invalid images, real photos. The op tests of test_ops.py and
test_pivoted.py run on this build too (device "cuda_on_host")."""

import math
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cuda_on_host
from helpers import SPECTRUM, designed, integer_low_rank, lifted
from svdprune_cuda import reference

pytestmark = pytest.mark.slow  # compiles the CUDA backend for the host first

CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_COMPUTE_64F = 68, 69, 70
CUBLAS_STATUS_INVALID_VALUE, CUBLAS_STATUS_NOT_SUPPORTED = 7, 15
CUSOLVER_STATUS_INVALID_VALUE = 3


@pytest.fixture(scope="module")
def host():
    return cuda_on_host.extension()


# --- the stand-ins


def gemm_by_the_book(transa, transb, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc, stride_c, batch):
    """cuBLAS documentation of cublasGemmStridedBatchedEx, element by element on flat lists:
    C_i = alpha op(A_i) op(B_i) + beta C_i, column-major, X_i starting at X + i * strideX."""
    a, b, out = a.tolist(), b.tolist(), c.tolist()
    for i in range(batch):
        for row in range(m):
            for col in range(n):
                total = 0.0
                for p in range(k):
                    a_value = a[i * stride_a + (p + row * lda if transa else row + p * lda)]
                    b_value = b[i * stride_b + (col + p * ldb if transb else p + col * ldb)]
                    total += a_value * b_value
                at = i * stride_c + row + col * ldc
                out[at] = alpha * total + (beta * out[at] if beta != 0 else 0.0)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("transa,transb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize(
    "in_dtype,out_dtype,compute",
    [
        (torch.float16, torch.float32, CUBLAS_COMPUTE_32F),
        (torch.bfloat16, torch.float32, CUBLAS_COMPUTE_32F),
        (torch.float32, torch.float32, CUBLAS_COMPUTE_32F_PEDANTIC),
        (torch.float64, torch.float64, CUBLAS_COMPUTE_64F),
    ],
)
def test_gemm_stand_in_follows_the_documentation(host, transa, transb, in_dtype, out_dtype, compute):
    m, n, k, batch = 3, 4, 5, 2
    lda, ldb, ldc = (k if transa else m) + 2, (n if transb else k) + 1, m + 3  # padded leading dimensions
    stride_a, stride_b, stride_c = lda * (m if transa else k) + 1, ldb * (k if transb else n), ldc * n + 2
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(stride_a * batch, generator=generator).to(in_dtype)
    b = torch.randn(stride_b * batch, generator=generator).to(in_dtype)
    for alpha, beta in ((1.0, 0.0), (0.5, -2.0)):
        c = torch.randn(stride_c * batch, generator=generator).to(out_dtype)
        if beta == 0:
            c[0] = float("nan")  # not read with beta = 0
        expected = gemm_by_the_book(transa, transb, m, n, k, alpha, a.double(), lda, stride_a, b.double(), ldb,
                                    stride_b, beta, c.double(), ldc, stride_c, batch)
        status = host.gemm_strided_batched(transa, transb, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c,
                                           ldc, stride_c, batch, compute)
        assert status == 0
        torch.testing.assert_close(c.double(), expected, atol=1e-5 if out_dtype == torch.float32 else 1e-12, rtol=0)


def test_gemm_stand_in_broadcasts_a_zero_stride(host):
    a = torch.randn(6, dtype=torch.float64)  # one 2×3 matrix for both images
    b = torch.randn(2 * 12, dtype=torch.float64)
    c = torch.zeros(2 * 8, dtype=torch.float64)
    assert host.gemm_strided_batched(False, False, 2, 4, 3, 1.0, a, 2, 0, b, 3, 12, 0.0, c, 2, 8, 2, CUBLAS_COMPUTE_64F) == 0
    expected = gemm_by_the_book(False, False, 2, 4, 3, 1.0, a, 2, 0, b, 3, 12, 0.0, c, 2, 8, 2)
    torch.testing.assert_close(c, expected, atol=1e-12, rtol=0)


def test_gemm_stand_in_refuses_what_cublas_refuses(host):
    x, y = torch.zeros(64), torch.zeros(64, dtype=torch.float64)
    args = lambda lda, compute, c=x: (False, False, 2, 2, 2, 1.0, x, lda, 4, x, 2, 4, 0.0, c, 2, 4, 1, compute)
    assert host.gemm_strided_batched(*args(2, CUBLAS_COMPUTE_32F)) == 0
    assert host.gemm_strided_batched(*args(1, CUBLAS_COMPUTE_32F)) == CUBLAS_STATUS_INVALID_VALUE  # lda < m
    assert host.gemm_strided_batched(*args(2, CUBLAS_COMPUTE_64F)) == CUBLAS_STATUS_NOT_SUPPORTED  # float data
    assert host.gemm_strided_batched(*args(2, CUBLAS_COMPUTE_32F, y)) == CUBLAS_STATUS_NOT_SUPPORTED  # double C


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lower", [True, False], ids=["lower", "upper"])
def test_eigensolver_stand_in_follows_the_documentation(host, dtype, lower):
    n, lda, batch = 5, 7, 3
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(lda * n * batch, generator=generator, dtype=torch.float64)
    # Matrix i, element (r, c) at a[i * lda * n + r + c * lda]; only the `uplo` triangle is read.
    def element(flat, i, r, c):
        return flat[i * lda * n + r + c * lda]
    read = lambda r, c: r >= c if lower else r <= c
    symmetric = torch.zeros(batch, n, n, dtype=torch.float64)
    for i in range(batch):
        for r in range(n):
            for c in range(n):
                if read(r, c):
                    symmetric[i, r, c] = symmetric[i, c, r] = element(a, i, r, c)
                else:
                    a[i * lda * n + r + c * lda] = float("nan")  # never read
    a = a.to(dtype)
    symmetric = symmetric.to(dtype).double()
    padding = [i * lda * n + r + c * lda for i in range(batch) for c in range(n) for r in range(n, lda)]
    before = a[padding].clone()
    w = torch.full((batch * n,), -7.0, dtype=dtype)
    info = torch.full((batch,), -7, dtype=torch.int32)
    assert host.syev_batched(a, n, lda, w, info, lower, batch) == 0
    assert info.tolist() == [0] * batch
    tolerance = 1e-4 if dtype == torch.float32 else 1e-10
    for i in range(batch):
        values = w[i * n:(i + 1) * n].double()
        assert torch.all(values[1:] >= values[:-1]), "ascending"
        torch.testing.assert_close(values, torch.linalg.eigvalsh(symmetric[i]), atol=tolerance, rtol=0)
        vectors = torch.tensor([[element(a, i, r, c) for c in range(n)] for r in range(n)], dtype=torch.float64)
        torch.testing.assert_close(symmetric[i] @ vectors, vectors * values, atol=tolerance * 10, rtol=0)  # column j: eigenvector j
        torch.testing.assert_close(vectors.mT @ vectors, torch.eye(n, dtype=torch.float64), atol=tolerance, rtol=0)
    assert torch.equal(a[padding], before), "rows past n of each column are left alone"


def test_eigensolver_stand_in_reports_per_matrix_and_limits_the_batch(host):
    n = 3
    a = torch.eye(n).repeat(3, 1, 1).flatten().clone()
    a[n * n + 4] = float("nan")  # matrix 1
    w, info = torch.zeros(3 * n), torch.zeros(3, dtype=torch.int32)
    assert host.syev_batched(a, n, n, w, info, True, 3) == 0
    assert info.tolist() == [0, 1, 0]
    assert torch.equal(w[:n], torch.ones(n)) and torch.equal(w[2 * n:], torch.ones(n))
    big = torch.zeros(16385)
    assert host.syev_batched(big, 1, 1, big.clone(), torch.zeros(16385, dtype=torch.int32), True, 16385) == CUSOLVER_STATUS_INVALID_VALUE
    assert host.syev_batched(big, 1, 1, big.clone(), torch.zeros(16385, dtype=torch.int32), True, 16384) == 0


@pytest.mark.parametrize("dtype,convert", [(torch.float16, "half_to_float"), (torch.bfloat16, "bfloat16_to_float")])
def test_16_bit_conversions_are_exact_for_every_value(host, dtype, convert):
    values = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype).float()
    got = torch.tensor([getattr(host, convert)(bits) for bits in range(65536)])
    nan = torch.isnan(values)
    assert torch.equal(torch.isnan(got), nan)
    assert torch.equal(got[~nan], values[~nan])
    assert torch.equal(torch.signbit(got[~nan]), torch.signbit(values[~nan]))


def bfloat16_by_the_book(bits: int) -> int:
    """cuda_bf16.h's __float2bfloat16_rn of the float32 with these bits: the nearer of the two
    bfloat16 numbers around it (its upper 16 bits, and the next one away from zero, which past
    the largest finite one is 2^128 and encoded as Inf), the one with an even last bit on a tie;
    ±0 and ±Inf as they are, NaN to a NaN."""
    (value,) = struct.unpack("<f", struct.pack("<I", bits))
    if math.isnan(value):
        return -1
    if math.isinf(value):
        return bits >> 16
    lower = bits >> 16
    widen = lambda b: struct.unpack("<f", struct.pack("<I", b << 16))[0]
    upper_value = math.copysign(2.0**128, value) if (lower + 1) & 0x7F80 == 0x7F80 else widen(lower + 1)
    below, above = abs(value - widen(lower)), abs(upper_value - value)
    return lower if below < above or (below == above and lower % 2 == 0) else lower + 1


def test_float_to_bfloat16_stand_in_rounds_to_nearest_even(host):
    generator = torch.Generator().manual_seed(2)
    random_bits = torch.randint(0, 2**32, (20000,), generator=generator, dtype=torch.int64).tolist()
    # Ties and near-ties (low halves 0x7FFF, 0x8000, 0x8001 on even and odd upper halves), the
    # largest finite values and beyond, subnormals, zeros, infinities and NaNs.
    special = [
        high << 16 | low
        for high in (0x0000, 0x0001, 0x0080, 0x3F80, 0x3F81, 0x7F7E, 0x7F7F, 0x8000, 0xBF81, 0xFF7F)
        for low in (0x0000, 0x0001, 0x7FFF, 0x8000, 0x8001, 0xFFFF)
    ] + [0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF]
    for bits in random_bits + special:
        got = host.float_to_bfloat16(bits)
        want = bfloat16_by_the_book(bits)
        if want == -1:
            assert got & 0x7F80 == 0x7F80 and got & 0x007F != 0, hex(bits)  # a NaN
        else:
            assert got == want, (hex(bits), hex(got), hex(want))


# --- the backend on the host


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_batches_go_through_several_eigensolver_calls(host, method):
    # cusolverDnXsyevBatched fails on batches of about 32k matrices: calls take at most 16384.
    x = designed(96, 160, SPECTRUM, noise=1e-3, batch=7).float()
    expected = cuda_on_host.select(x, 16, 0.9, method)
    host.syev_calls()
    host.set_max_solver_batch(3)
    host.set_max_syev_batch(3)
    try:
        got = cuda_on_host.select(x, 16, 0.9, method)
        assert host.syev_calls() == [3, 3, 1]
    finally:
        host.set_max_solver_batch(16384)
        host.set_max_syev_batch(16384)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    assert torch.equal(got[2], reference.leverage(x)[1])


CAPTURE = """
import sys, torch
sys.path.insert(0, {tests!r})
import cuda_on_host
host = cuda_on_host.extension()
x = torch.randn(2, 40, 24, generator=torch.Generator().manual_seed(0))
host.set_capturing(True)
try:
    cuda_on_host.leverage(x)
    raise SystemExit("a first call under capture created a solver handle")
except RuntimeError as error:
    assert "run the op once on this device before capturing" in str(error), error
host.set_capturing(False)
expected = cuda_on_host.leverage(x)
host.set_capturing(True)
assert all(torch.equal(a, b) for a, b in zip(cuda_on_host.leverage(x), expected))  # warmed up
host.set_capturing(False)
# torch.cuda.graph captures on a stream of its own, after a warm-up on another: the capture
# adopts the idle handle, as no handle may be created while capturing.
host.set_stream(7)
host.set_capturing(True)
assert all(torch.equal(a, b) for a, b in zip(cuda_on_host.leverage(x), expected))
assert host.live_solver_handles() == 1
host.set_capturing(False)
host.set_stream(0)
host.set_capturing(True)
host.set_syev_host_workspace_bytes(64)
try:
    cuda_on_host.leverage(x)
    raise SystemExit("a host workspace was used under capture")
except RuntimeError as error:
    assert "needs a host workspace" in str(error), error
host.set_capturing(False)
assert all(torch.equal(a, b) for a, b in zip(cuda_on_host.leverage(x), expected))
print("ok")
"""


def test_graph_capture_needs_a_warm_up_and_no_host_workspace(host):
    # A fresh process: the solver handle pool starts empty there.
    tests = str(Path(__file__).resolve().parent)
    out = subprocess.run([sys.executable, "-c", CAPTURE.format(tests=tests)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_an_eigenproblem_beyond_the_captured_sizes_raises_before_the_solver_under_capture(host):
    limit = host.max_captured_eigen_size
    generator = torch.Generator().manual_seed(0)
    within = torch.randn(2, limit, 2 * limit, generator=generator)  # a limit × limit Gram matrix
    beyond = torch.randn(2, limit + 1, 2 * limit + 2, generator=generator)
    expected_within = cuda_on_host.select(within, 8)  # outside capture, which also creates a solver handle
    expected_sketch = cuda_on_host.select(beyond, 8, 0.9, "randomized")  # a 32-column sketch
    n, d = limit + 1, 2 * limit + 2
    too_large = (
        f"^svdprune: method='{{method}}' at N={n}, D={d} solves a {n}x{n} eigenproblem, which cuSOLVER is not known "
        f"to run under CUDA graph capture \\(up to {limit}x{limit} is\\): {{instead}}$"
    )
    instead = "use method='randomized', or run the op outside the graph"
    host.set_capturing(True)
    try:
        host.syev_calls()
        for method in ("exact", "auto"):  # auto is exact on CUDA
            for call in (
                lambda: cuda_on_host.select(beyond, 8, 0.9, method),
                lambda: cuda_on_host.select_adaptive(beyond, 0.9, 1, -1, method),
                lambda: cuda_on_host.leverage(beyond, 0.9, method),
            ):
                with pytest.raises(RuntimeError, match=too_large.format(method=method, instead=instead)):
                    call()
        # Pivoting 17 tokens needs a sketch of 34 columns or more: the exact path it takes instead is too large.
        pivoted = (
            "strategy='pivoted' with budget=17 takes the exact path (its sketch must be twice as wide as the budget): "
            "run the op outside the graph"
        )
        with pytest.raises(RuntimeError, match=too_large.format(method="randomized", instead=re.escape(pivoted))):
            cuda_on_host.select(beyond, 17, 0.9, "randomized", strategy="pivoted")
        assert host.syev_calls() == []  # raised before the solver was called
        for got, want in zip(cuda_on_host.select(within, 8), expected_within):
            assert torch.equal(got, want)
        for got, want in zip(cuda_on_host.select(beyond, 8, 0.9, "randomized"), expected_sketch):
            assert torch.equal(got, want)
    finally:
        host.set_capturing(False)


def test_solver_handles_are_pooled_not_per_thread(host):
    import threading

    x = torch.randn(2, 40, 24, generator=torch.Generator().manual_seed(0))
    cuda_on_host.leverage(x)
    handles = host.live_solver_handles()
    threads = [threading.Thread(target=cuda_on_host.leverage, args=(x,)) for _ in range(4)]
    for t in threads:
        t.start()
        t.join()  # one after the other: each short-lived thread borrows the same idle handle
    assert host.live_solver_handles() == handles == 1


def test_a_solver_handle_serves_one_stream_whatever_the_threads(host):
    # A handle goes back to the pool when the host call returns, while its eigensolver may still
    # run on the GPU: a call on another stream must not take it (cuSOLVER's cuBLAS calls are not
    # deterministic for one handle on parallel streams); a later call on the same stream may.
    import threading

    x = torch.randn(2, 40, 24, generator=torch.Generator().manual_seed(0))
    expected = cuda_on_host.leverage(x)
    results = {1: [], 2: []}

    def on_stream(stream):
        host.set_stream(stream)
        for _ in range(3):
            results[stream].append(cuda_on_host.leverage(x))

    threads = [threading.Thread(target=on_stream, args=(stream,)) for stream in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bindings = host.solver_handle_streams()
    assert all(len(streams) == 1 for streams in bindings), bindings
    assert {1, 2} <= {stream for streams in bindings for stream in streams}
    for got in results[1] + results[2]:
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_randomized_reports_an_unresolved_rank_as_the_sketch_width_and_auto_is_exact():
    # Noise: the variance cut needs far more directions than a 128-column sketch resolves.
    x = torch.randn(512, 600, generator=torch.Generator().manual_seed(0))
    exact_scores, exact_rank = cuda_on_host.leverage(x, 0.9, "exact")
    assert exact_rank.item() == reference.leverage(x)[1].item() > 128
    _, rank = cuda_on_host.leverage(x, 0.9, "randomized")
    assert rank.item() == 128
    auto_scores, auto_rank = cuda_on_host.leverage(x, 0.9, "auto")
    assert torch.equal(auto_rank, exact_rank) and torch.equal(auto_scores, exact_scores)
    # A rank the sketch resolves is the exact one.
    y = designed(512, 600, SPECTRUM, noise=1e-3).float()
    assert cuda_on_host.leverage(y, 0.9, "randomized")[1].item() == reference.leverage(y)[1].item() == 3


@pytest.mark.parametrize("dtype,largest", [(torch.float32, 2048), (torch.float64, 1024)])
def test_the_largest_n_follows_the_devices_shared_memory(host, dtype, largest):
    # With 16 KiB of shared memory a block (plus the 1 KiB kept for static shared memory), the
    # sort of an image's scores fits 2,048 float32 or 1,024 float64 scores (with their indices).
    device_limit = host.set_shared_memory_per_block(17 * 1024)
    try:
        x = torch.randn(1, largest, 8, generator=torch.Generator().manual_seed(0), dtype=dtype)
        indices, _, _ = cuda_on_host.select(x, 4)
        assert torch.equal(indices, reference.select(x, 4)[0])
        too_many = torch.randn(1, largest + 1, 8, dtype=dtype)
        message = f"N must be at most {largest} for the CUDA selection kernels on this device .*got N={largest + 1}"
        with pytest.raises(RuntimeError, match=message):
            cuda_on_host.select(too_many, 4)
        with pytest.raises(RuntimeError, match=message):
            cuda_on_host.select_adaptive(too_many)
    finally:
        host.set_shared_memory_per_block(device_limit)


@pytest.mark.parametrize("ratio,variance", [(0.9995, 0.25), (0.998, 0.42)])
def test_a_randomized_rank_without_spare_sketch_columns_is_unresolved(ratio, variance):
    # Slowly decaying spectra whose exact rank (116, 119) lies just below the 128-column sketch:
    # the trailing Ritz values run low, so a cut among them would overshoot the exact rank (124
    # and 123 here). Ranks within the oversampling margin are reported as unresolved, as the CPU hands
    # them to the exact solver.
    x = designed(576, 1024, (ratio ** torch.arange(576.0)).tolist()).float()
    exact_rank = reference.leverage(x, variance)[1].item()
    assert 128 - 16 < exact_rank < 128 - 8
    _, rank = cuda_on_host.leverage(x, variance, "randomized")
    assert rank.item() == 128


def test_a_randomized_rank_within_the_margin_is_exact_when_the_sketch_spans_the_image():
    # Rank 124 < 128: the sketch spans X's range, its Ritz values are the eigenvalues, and a rank
    # within the oversampling margin (123 at variance 0.99) is the exact one.
    x = designed(576, 1024, torch.linspace(1.0, 0.9, 124).tolist()).float()
    scores, rank = cuda_on_host.leverage(x, 0.99, "randomized")
    expected_scores, expected_rank = reference.leverage(x, 0.99)
    assert rank.item() == expected_rank.item() > 120
    torch.testing.assert_close(scores.double(), expected_scores, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_a_16_bit_gram_that_falls_short_of_the_energy_keeps_the_numerical_rank(host, method):
    # Tensor cores' truncating accumulation leaves trace(G) short of ‖X‖_F² (by some 1e-5 of it
    # at D = 8192): measured against ‖X‖_F², the cut at variance 1 would never be reached.
    x = integer_low_rank(64, 512, 5, batch=2).bfloat16()
    expected_scores, expected_rank = reference.leverage(x, 1.0)
    assert expected_rank.tolist() == [5, 5]
    previous = host.set_tensor_core_shortfall(2e-5)
    try:
        scores, rank = cuda_on_host.leverage(x, 1.0, method)
    finally:
        host.set_tensor_core_shortfall(previous)
    assert torch.equal(rank, expected_rank)
    torch.testing.assert_close(scores.double(), expected_scores, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["exact", "randomized"])
@pytest.mark.parametrize("exponent", [30, -30])
def test_every_image_reaches_the_eigensolver_normalised(host, method, exponent):
    # Within 2^±32 the CPU leaves an image's scale to LAPACK, which scales what it is given;
    # cuSOLVER documents no such scaling, so CUDA hands it the Gram matrix of X scaled to a
    # largest |entry| in [1, 2): entries between 1 and 4 D (or, for the sketch, N D).
    n, d = 64, 96
    x = designed(n, d, SPECTRUM, noise=1e-3, batch=2).float() * 2.0**exponent
    host.syev_largest_entries()
    scores, rank = cuda_on_host.leverage(x, 0.9, method)
    largest = host.syev_largest_entries()
    assert largest and all(0.5 <= entry <= 4 * n * d for entry in largest), largest
    expected_scores, expected_rank = reference.leverage(x)
    assert torch.equal(rank, expected_rank)
    torch.testing.assert_close(scores.double(), expected_scores, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["exact", "randomized"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_nan_and_inf_images_are_marked_invalid_and_huge_ones_rescaled(method, dtype):
    # The CPU raises on NaN/Inf (see test_ops.py); CUDA cannot without a host synchronisation, so
    # such an image gets rank 0 and NaN scores, and select falls back to the first tokens. An image
    # whose squares leave float32 is multiplied by a power of two first, as on the CPU.
    x = designed(64, 600, SPECTRUM, noise=1e-3, batch=4).to(dtype)
    x[0, 3, 4] = float("nan")
    x[1, 0, 0] = float("inf")
    x[2] = x[3] * 2.0**100
    indices, scores, rank = cuda_on_host.select(x, 8, 0.9, method)
    assert rank.tolist() == [0, 0, 3, 3]
    assert torch.isnan(scores[:2]).all() and torch.isfinite(scores[2:]).all()
    torch.testing.assert_close(scores[2], scores[3], atol=1e-6, rtol=0)
    assert torch.equal(indices[2], indices[3])
    assert torch.equal(indices[:2], torch.arange(8).expand(2, -1))
    mask, count, _, _ = cuda_on_host.select_adaptive(x, 0.9, 2, -1, method)
    assert count[:2].tolist() == [2, 2]
    assert torch.equal(cuda_on_host.select(x, 8, 0.9, method, 0, "pivoted")[0][:2], torch.arange(8).expand(2, -1))


def test_rank_deficient_input_gives_the_numerical_rank():
    generator = torch.Generator().manual_seed(3)
    for d in (1024, 40):
        x = torch.randn(576, 5, generator=generator) @ torch.randn(5, d, generator=generator)
        for method in ("exact", "randomized"):
            scores, rank = cuda_on_host.leverage(x, 1.0, method)
            expected_scores, expected_rank = reference.leverage(x, 1.0)
            assert rank.item() == 5 == expected_rank.item(), (d, method)
            torch.testing.assert_close(scores.double(), expected_scores, atol=2e-4, rtol=0)


def test_lifted_photos_give_the_reference_top_k_and_rank(photos):
    for name, patches in photos.items():
        x = lifted(patches)
        expected_scores, expected_rank = reference.leverage(x)
        ranking = torch.sort(expected_scores, descending=True, stable=True).indices  # reference.select's rule
        for budget in (64, 32, 16):
            indices, scores, rank = cuda_on_host.select(x, budget)
            assert rank.item() == expected_rank.item(), name
            torch.testing.assert_close(scores.double(), expected_scores, atol=2e-4, rtol=0)
            assert torch.equal(indices, torch.sort(ranking[:budget]).values), (name, budget)
