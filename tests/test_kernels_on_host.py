"""The CUDA kernels' own source (csrc/cuda/*.cuh), compiled for the host by
tests/kernels_on_host.cpp (a host thread per CUDA thread, tests/cuda_host/emulation.h),
against the float64 reference and torch: the rank cut and leverage scores from eigenpairs laid
out as cuSOLVER returns them, the pivot kernel, top-K and adaptive selection, the Gaussian
sketch and CholeskyQR of the randomized path. This runs wherever a C++20 compiler is, GPU or
not; the whole backend around these kernels (cuBLAS/cuSOLVER calls, buffers, the energy kernel)
runs on the host in tests/cuda_on_host.py, and only timing needs a GPU.

To look for races between a block's threads (a missing __syncthreads) or out-of-bounds
accesses, build the emulation with a sanitizer, preload its runtime and keep pytest from
capturing the report:

    KERNELS_ON_HOST_SANITIZE=thread OMP_NUM_THREADS=1 LD_PRELOAD=$(g++ -print-file-name=libtsan.so) \\
        python -m pytest -s tests/test_kernels_on_host.py
    KERNELS_ON_HOST_SANITIZE=address ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD=$(g++ -print-file-name=libasan.so) \\
        python -m pytest -s tests/test_kernels_on_host.py
"""

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from helpers import SPECTRUM, designed, low_rank, redundant_tokens
from svdprune_cuda import reference

pytestmark = pytest.mark.slow  # compiles the emulation first

ROOT = Path(__file__).resolve().parent.parent
# Rank-cut slack of the CUDA backend, which also marks numerically zero eigenvalues.
SLACK = {torch.float32: 1e-5, torch.float64: 1e-10}
ENERGY_PARTS = 4  # partial sums of ||X||_F^2 per image (64 in leverage.cu; any count works)
LEVERAGE_THREADS, SELECT_THREADS = 256, 512  # as launched by leverage.cu and select.cu


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        pytest.skip("needs a C++20 compiler")
    library = tmp_path_factory.mktemp("kernels_on_host") / "kernels_on_host.so"
    command = [compiler, "-std=c++20", "-O2", "-g", "-shared", "-fPIC", "-pthread", f"-I{ROOT / 'tests' / 'cuda_host'}", f"-I{ROOT / 'csrc' / 'cuda'}"]
    if sanitizer := os.environ.get("KERNELS_ON_HOST_SANITIZE"):
        command.append(f"-fsanitize={sanitizer}")
    subprocess.run([*command, str(ROOT / "tests" / "kernels_on_host.cpp"), "-o", str(library)], check=True)
    kernels = ctypes.CDLL(str(library))
    kernels.cholesky_drop_tolerance.restype = ctypes.c_double
    return kernels


def entry(kernels, name: str, dtype: torch.dtype):
    return getattr(kernels, f"{name}_{'double' if dtype == torch.float64 else 'float'}")


def address(tensor):
    return ctypes.c_void_p(tensor.data_ptr()) if tensor is not None else None


class Eigenpairs:
    """What leverage.cu hands the kernels for a [B, N, D] batch (computed in float64, stored in
    `dtype`): eigenvalues of the smaller Gram matrix, ascending, `values` [B, count], and per
    image `count` columns of N entries, `vectors` [B, count, N]: the eigenvectors of X Xᵀ
    (N ≤ D), or for N > D what left_basis_kernel makes of X V from those of Xᵀ X: X V
    orthonormalised from the largest eigenvalue down, with the columns of eigenvalues at most
    the slack times the largest zeroed. Also ‖X‖_F² in ENERGY_PARTS partial sums and the
    solver's status per image."""

    def __init__(self, x: torch.Tensor, dtype: torch.dtype, failed=()):
        n, d = x.shape[-2:]
        if n <= d:
            values, vectors = torch.linalg.eigh(x @ x.mT)
        else:
            values, right = torch.linalg.eigh(x.mT @ x)
            vectors = torch.linalg.qr(x @ right.flip(-1))[0].flip(-1)
            vectors = vectors * (values > values[..., -1:] * SLACK[dtype])[..., None, :]
        self.dtype = dtype
        self.values = values.to(dtype).contiguous()
        self.vectors = vectors.mT.to(dtype).contiguous()
        self.batch, self.count, self.n = self.vectors.shape
        self.energy = torch.zeros(self.batch, ENERGY_PARTS, dtype=torch.float64)
        self.energy[:, 0] = self.energy[:, -1] = x.square().sum((-2, -1)) / 2
        self.info = torch.zeros(self.batch, dtype=torch.int32)
        self.info[list(failed)] = 1

    def rank_leverage(self, kernels, variance, threads=LEVERAGE_THREADS, resolvable=None):
        scores = torch.full((self.batch, self.n), -7.0, dtype=self.dtype)
        rank = torch.full((self.batch,), -7, dtype=torch.int64)
        entry(kernels, "rank_leverage", self.dtype)(
            address(self.values), ctypes.c_int64(self.count), address(self.vectors), ctypes.c_int64(self.n),
            address(self.energy), ctypes.c_int(ENERGY_PARTS), address(self.info), ctypes.c_double(variance),
            ctypes.c_double(SLACK[self.dtype]), ctypes.c_int64(self.count if resolvable is None else resolvable),
            address(scores), address(rank), ctypes.c_int(self.batch), ctypes.c_int(threads))
        return scores, rank

    def pivot(self, kernels, scores, budget, rows_in_shared, threads=LEVERAGE_THREADS):
        max_pivots = min(budget, self.count)
        workspace = None if rows_in_shared else torch.full((self.batch, max_pivots, self.n), float("nan"), dtype=self.dtype)
        out = torch.full((self.batch, self.n), -7.0, dtype=self.dtype)
        entry(kernels, "pivot", self.dtype)(
            address(self.values), ctypes.c_int64(self.count), address(self.vectors), ctypes.c_int(self.n),
            address(self.energy), ctypes.c_int(ENERGY_PARTS), address(self.info), ctypes.c_double(SLACK[self.dtype]),
            ctypes.c_int(max_pivots), ctypes.c_bool(rows_in_shared), address(workspace),
            address(scores), address(out), ctypes.c_int(self.batch), ctypes.c_int(threads))
        return out

    def reference_pivots(self, scores, budget):
        """reference.pivoted_tokens on these (possibly float32) eigenpairs, with eigenvalues at
        most slack times the largest counted as zero, as the kernel does."""
        picks = []
        for b in range(self.batch):
            v = self.values[b].flip(0).double()
            u = self.vectors[b].flip(0).mT
            sigma = torch.where(v > v[0] * SLACK[self.dtype], v, torch.zeros_like(v)).sqrt()
            picks.append(reference.pivoted_tokens(u, sigma, scores[b].double(), budget))
        return torch.stack(picks)


def select_top(kernels, scores, budget, threads=SELECT_THREADS):
    batch, n = scores.shape
    indices = torch.full((batch, budget), -7, dtype=torch.int64)
    entry(kernels, "select_top", scores.dtype)(address(scores), ctypes.c_int(n), ctypes.c_int(budget),
                                               address(indices), ctypes.c_int(batch), ctypes.c_int(threads))
    return indices


def select_adaptive(kernels, scores, rank, variance, min_tokens, max_tokens, threads=SELECT_THREADS):
    batch, n = scores.shape
    mask = torch.zeros((batch, n), dtype=torch.bool)
    count = torch.full((batch,), -7, dtype=torch.int64)
    entry(kernels, "select_adaptive", scores.dtype)(
        address(scores), address(rank), ctypes.c_int(n), ctypes.c_double(variance), ctypes.c_int64(min_tokens),
        ctypes.c_int64(max_tokens), address(mask), address(count), ctypes.c_int(batch), ctypes.c_int(threads))
    return mask, count


CASES = {  # [B, N, D] float64 features and a budget
    "redundant N>D": (redundant_tokens()[0][None], 16),
    "redundant N<D": (redundant_tokens()[0][:20].repeat(1, 3)[None], 7),
    "rank 5, budget beyond it": (low_rank()[None], 16),
    "designed batch": (designed(160, 320, SPECTRUM, noise=1e-3, batch=2).double(), 32),
}
DTYPES = [torch.float32, torch.float64]


# --- rank cut and leverage scores


def expected_leverage(x: torch.Tensor, variance: float, dtype: torch.dtype):
    """reference.leverage with the rank-cut slack of `dtype` (so, in float32, variance = 1 cuts
    at the float32 numerical rank) and, when N > D, without the directions whose squared
    singular value is at most that slack times the largest: X V has no meaningful column there,
    and left_basis_kernel zeroes them."""
    u, sigma, total = reference.spectrum(x)
    energy = sigma.square()
    below = (energy.cumsum(-1) < (variance * total * (1 - SLACK[dtype]))[:, None]).sum(-1)
    rank = torch.where(total > 0, (below + 1).clamp(max=energy.shape[-1]), 0)
    keep = torch.arange(energy.shape[-1]) < rank[:, None]
    if x.shape[-2] > x.shape[-1]:
        keep &= energy > energy[:, :1] * SLACK[dtype]
    return (u.square() * keep[:, None, :]).sum(-1), rank


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variance", [0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("case", list(CASES))
def test_rank_and_scores_match_the_reference(kernels, case, variance, dtype):
    x, _ = CASES[case]
    scores, rank = Eigenpairs(x, dtype).rank_leverage(kernels, variance)
    expected_scores, expected_rank = expected_leverage(x, variance, dtype)
    assert torch.equal(rank, expected_rank)
    torch.testing.assert_close(scores.double(), expected_scores, atol=1e-5 if dtype == torch.float32 else 1e-9, rtol=0)
    if dtype == torch.float64:  # the reference itself, unchanged, in float64
        assert torch.equal(rank, reference.leverage(x, variance)[1])


def test_rank_of_a_spectrum_longer_than_a_warp(kernels):
    # 576 eigenvalues: each lane of the scanning warp owns a segment of 18; the cut lands in
    # several lanes' segments as the variance grows.
    x = designed(576, 640, torch.linspace(1.0, 0.01, 200).tolist(), noise=1e-4).double()[None]
    pairs = Eigenpairs(x, torch.float64)
    for variance in (0.2, 0.5, 0.8, 0.95, 1.0):
        assert torch.equal(pairs.rank_leverage(kernels, variance)[1], reference.leverage(x, variance)[1]), variance


def test_zero_nonfinite_or_failed_images(kernels):
    x = designed(100, 150, SPECTRUM, noise=1e-3, batch=4).double()
    x[0] = 0.0
    pairs = Eigenpairs(x, torch.float64, failed=[2])
    pairs.energy[3, 1] = float("nan")  # as a NaN or Inf in the features leaves it
    scores, rank = pairs.rank_leverage(kernels, 0.9)
    assert rank.tolist() == [0, 3, 0, 0]
    assert torch.equal(scores[0], torch.zeros(100)) and torch.isfinite(scores[1]).all()
    assert torch.isnan(scores[2]).all() and torch.isnan(scores[3]).all()


def left_basis(kernels, x, dtype, variance, max_pivots, threads=LEVERAGE_THREADS, failed=(), energy=None):
    """left_basis_kernel on X V for a [B, N, D] batch with N > D, from the eigenpairs of Xᵀ X
    (float64, stored in `dtype`), as leverage.cu runs it. Returns X V before and after, both
    [B, N, count] with the columns in the eigenvalues' ascending order, and the eigenvalues."""
    values, right = torch.linalg.eigh(x.mT @ x)
    values = values.to(dtype).contiguous()
    before = (x @ right).to(dtype)
    vectors = before.mT.contiguous()  # each image column-major, as cuBLAS leaves it
    batch, count, n = vectors.shape
    if energy is None:
        energy = torch.zeros(batch, ENERGY_PARTS, dtype=torch.float64)
        energy[:, 0] = x.square().sum((-2, -1))
    info = torch.zeros(batch, dtype=torch.int32)
    info[list(failed)] = 1
    coefficients = torch.full((batch, count), float("nan"), dtype=torch.float64)
    entry(kernels, "left_basis", dtype)(
        address(values), ctypes.c_int64(count), address(vectors), ctypes.c_int64(n), address(energy),
        ctypes.c_int(ENERGY_PARTS), address(info), ctypes.c_double(variance), ctypes.c_double(SLACK[dtype]),
        ctypes.c_int64(count), ctypes.c_int64(max_pivots), address(coefficients), ctypes.c_int(batch),
        ctypes.c_int(threads))
    return before, vectors.mT, values


@pytest.mark.parametrize("threads", [32, 256, 512])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variance,max_pivots", [(0.9, 0), (0.9, 10), (1.0, 16)])
def test_left_basis_is_orthonormal_with_the_spans_of_x_v(kernels, dtype, variance, max_pivots, threads):
    # Three directions at variance 0.9, six above the float32 and float64 floors (the noise is
    # below the float32 one): the leading max(rank, max_pivots) columns, from the largest
    # eigenvalue down, become Householder QR's Q of the same columns (up to signs) where the
    # eigenvalue is above the floor, zero where it is not; the other columns are left alone.
    x = designed(300, 80, SPECTRUM, noise=1e-4, batch=2).double()
    before, after, values = left_basis(kernels, x, dtype, variance, max_pivots, threads)
    rank = expected_leverage(x, variance, dtype)[1]
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for b in range(2):
        columns = max(int(rank[b]), max_pivots)
        kept = min(columns, int((values[b] > values[b, -1] * SLACK[dtype]).sum()))
        assert kept == min(columns, 6 if dtype == torch.float32 else 80)
        descending = after[b].flip(-1)
        q = torch.linalg.qr(before[b].flip(-1)[:, :kept].double())[0]
        signs = torch.sign((q * descending[:, :kept].double()).sum(0))
        torch.testing.assert_close(descending[:, :kept].double() * signs, q, atol=tolerance, rtol=0)
        assert torch.equal(descending[:, kept:columns], torch.zeros_like(descending[:, kept:columns]))
        assert torch.equal(descending[:, columns:], before[b].flip(-1)[:, columns:])


def test_left_basis_leaves_zero_nonfinite_or_failed_images_alone(kernels):
    x = designed(100, 40, SPECTRUM, noise=1e-3, batch=4).double()
    x[0] = 0.0
    energy = torch.zeros(4, ENERGY_PARTS, dtype=torch.float64)
    energy[:, 0] = x.square().sum((-2, -1))
    energy[3, 1] = float("nan")  # as a NaN or Inf in the features leaves it
    before, after, _ = left_basis(kernels, x, torch.float64, 0.9, 8, failed=[2], energy=energy)
    for b in (0, 2, 3):
        assert torch.equal(after[b], before[b])
    assert not torch.equal(after[1], before[1])


# --- pivot kernel


@pytest.mark.parametrize("rows_in_shared", [True, False], ids=["shared", "global"])
@pytest.mark.parametrize("case", list(CASES))
def test_pivots_in_float64_match_the_reference(kernels, case, rows_in_shared):
    x, budget = CASES[case]
    scores = reference.leverage(x)[0]
    out = Eigenpairs(x, torch.float64).pivot(kernels, scores, budget, rows_in_shared)
    assert torch.equal(select_top(kernels, out, budget), reference.select(x, budget, strategy="pivoted")[0])
    unpicked = out != float("inf")
    assert torch.equal(out[unpicked], scores[unpicked])  # the other tokens keep their leverage


@pytest.mark.parametrize("rows_in_shared", [True, False], ids=["shared", "global"])
@pytest.mark.parametrize("case", list(CASES))
def test_pivots_in_float32_match_the_reference_on_the_same_basis(kernels, case, rows_in_shared):
    # Float32 eigenvectors of noise-level eigenvalues are not determined by X, so the kernel is
    # held to the reference's pivoting of the very basis it was given.
    x, budget = CASES[case]
    pairs = Eigenpairs(x, torch.float32)
    scores = reference.leverage(x)[0].float()
    out = pairs.pivot(kernels, scores, budget, rows_in_shared)
    assert torch.equal(select_top(kernels, out, budget), pairs.reference_pivots(scores, budget))


def test_pivots_skip_the_redundant_token(kernels):
    x, expected = redundant_tokens()
    x = x[None]
    out = Eigenpairs(x, torch.float32).pivot(kernels, reference.leverage(x)[0].float(), 3, True)
    assert select_top(kernels, out, 3).tolist() == [expected]


@pytest.mark.parametrize("dtype", DTYPES)
def test_pivot_ties_go_to_the_lower_index(kernels, dtype):
    # Tokens 3, 40 and 259 are the same vector: with 256 threads, 3 and 259 are one thread's,
    # 40 is another warp's. Token 10 (a unit row of U) goes first, then the three-way tie must
    # go to 3.
    x = torch.zeros(1, 300, 8, dtype=torch.float64)
    x[0, [3, 40, 259], 0] = 1.0
    x[0, 10, 1] = 0.5
    out = Eigenpairs(x, dtype).pivot(kernels, reference.leverage(x)[0].to(dtype), 2, True)
    assert select_top(kernels, out, 2).tolist() == [[3, 10]] == reference.select(x, 2, strategy="pivoted")[0].tolist()


@pytest.mark.parametrize("threads", [32, 64, 512])
def test_pivots_with_any_block_size(kernels, threads):
    # Fewer tokens than threads, and warps that hold no token at all.
    x = designed(100, 150, SPECTRUM, noise=1e-3, batch=2).double()
    out = Eigenpairs(x, torch.float64).pivot(kernels, reference.leverage(x)[0], 10, True, threads=threads)
    assert torch.equal(select_top(kernels, out, 10), reference.select(x, 10, strategy="pivoted")[0])


def test_zero_or_failed_images_pick_no_pivot(kernels):
    x = designed(100, 150, SPECTRUM, noise=1e-3, batch=3).double()
    x[0] = 0.0
    scores = reference.leverage(x)[0]
    out = Eigenpairs(x, torch.float64, failed=[2]).pivot(kernels, scores, 8, True)
    assert torch.equal(out[0], scores[0]) and select_top(kernels, out, 8)[0].tolist() == list(range(8))
    assert (out[1] == float("inf")).sum() == 8
    assert torch.equal(out[2], scores[2])


# --- top-K and adaptive selection


def expected_top(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """Highest first, NaN after every number, ties to the lower index; ascending indices."""
    keyed = torch.where(torch.isnan(scores), torch.full_like(scores, -float("inf")), scores)
    order = torch.sort(keyed, dim=-1, descending=True, stable=True).indices
    # -inf and NaN both sort last; among them the numbers (-inf) go before the NaNs.
    nan_last = torch.sort(torch.isnan(torch.gather(scores, -1, order)).to(torch.int8), dim=-1, stable=True).indices
    return torch.sort(torch.gather(order, -1, nan_last)[..., :budget], dim=-1).values


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,budget", [(576, 64), (576, 576), (100, 1), (100, 37), (1, 1), (513, 16)])
def test_select_top_matches_a_stable_sort(kernels, n, budget, dtype):
    # Scores on a coarse grid, so that many tie, plus +inf (pivots) and NaN (a failed image).
    generator = torch.Generator().manual_seed(n + budget)
    scores = torch.randint(0, 8, (3, n), generator=generator).to(dtype) / 8
    scores[1, torch.randperm(n, generator=generator)[: n // 5]] = float("inf")
    scores[2, torch.randperm(n, generator=generator)[: n // 3]] = float("nan")
    scores[2, 0] = -float("inf")
    assert torch.equal(select_top(kernels, scores, budget), expected_top(scores, budget))


def test_select_top_with_any_block_size(kernels):
    scores = torch.rand(2, 300, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for threads in (32, 96, 1024):
        assert torch.equal(select_top(kernels, scores, 50, threads=threads), expected_top(scores, 50))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variance", [0.5, 0.9, 1.0])
@pytest.mark.parametrize("min_tokens,max_tokens", [(1, 576), (40, 576), (1, 10), (0, 576)])
def test_select_adaptive_matches_the_reference(kernels, min_tokens, max_tokens, variance, dtype):
    x = torch.cat([designed(576, 640, SPECTRUM, noise=1e-3, batch=2), torch.zeros(1, 576, 640)]).double()
    scores, rank = reference.leverage(x, variance)
    scores = scores.to(dtype)
    mask, count = select_adaptive(kernels, scores, rank, variance, min_tokens, max_tokens)
    expected_count = reference.adaptive_count(scores, rank, variance, min_tokens, max_tokens)
    assert torch.equal(count, expected_count)
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    expected_mask = torch.zeros_like(mask).scatter_(-1, order, torch.arange(576).expand_as(order) < count[:, None])
    assert torch.equal(mask, expected_mask)


@pytest.mark.parametrize("dtype", DTYPES)
def test_select_adaptive_stops_where_the_sum_reaches_the_target_exactly(kernels, dtype):
    # Scores 0.5 (exact in binary) on tokens 10..17, rank 4, variance 0.5: the target 2.0 is
    # reached exactly by the 4th token, so 4 tokens are kept, not 5.
    scores = torch.zeros(1, 40, dtype=dtype)
    scores[0, 10:18] = 0.5
    rank = torch.tensor([4])
    mask, count = select_adaptive(kernels, scores, rank, 0.5, 1, 40)
    assert count.tolist() == [4] == reference.adaptive_count(scores, rank, 0.5, 1, 40).tolist()
    assert mask[0].nonzero().flatten().tolist() == [10, 11, 12, 13]


# --- randomized range finder: Gaussian sketch, CholeskyQR


PHILOX_KNOWN_ANSWERS = [  # Random123's kat_vectors for Philox4x32-10: counter, key, output
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", PHILOX_KNOWN_ANSWERS)
def test_philox_gives_the_random123_known_answers(kernels, counter, key, expected):
    out = (ctypes.c_uint32 * 4)()
    kernels.philox((ctypes.c_uint32 * 4)(*counter), (ctypes.c_uint32 * 2)(*key), out)
    assert tuple(out) == expected


def gaussian(kernels, count, seed, dtype=torch.float64, blocks=4, threads=64):
    out = torch.full((count,), float("nan"), dtype=dtype)
    entry(kernels, "gaussian", dtype)(address(out), ctypes.c_int64(count), ctypes.c_uint64(seed), ctypes.c_int(blocks),
                                      ctypes.c_int(threads))
    return out


def test_sketch_is_standard_normal_and_a_function_of_seed_and_position(kernels):
    z = gaussian(kernels, 200_000, seed=7)
    # Bounds at about 4.5 standard errors for 200 000 draws.
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert abs((z.abs() > 2).double().mean() - 0.0455) < 0.002  # P(|z| > 2) of a standard normal
    # Entry i depends on (seed, i) only: not on the launch, the count or the dtype.
    assert torch.equal(gaussian(kernels, 1000, seed=7, blocks=1, threads=32), z[:1000])
    assert torch.equal(gaussian(kernels, 1000, seed=7, dtype=torch.float32), z[:1000].float())
    for other_seed in (8, 7 + 2**32):  # both halves of the seed are used
        assert not torch.equal(gaussian(kernels, 1000, seed=other_seed), z[:1000])


def test_widen_copies_float_into_double(kernels):
    x = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    out = torch.full((1000,), float("nan"), dtype=torch.float64)
    kernels.widen(address(x), address(out), ctypes.c_int64(1000), ctypes.c_int(3), ctypes.c_int(64))
    assert torch.equal(out, x.double())


def cholesky_qr(kernels, y, threads=256, rows_per_block=128, refill_pass=0, seed=0):
    """One pass of leverage.cu's orthonormalize on y [B, rows, width]: the Gram matrices in double
    (cuBLAS there), cholesky_kernel, then solve_rows_kernel on y (dropped columns refilled for
    refill_pass > 0). Returns Q [B, rows, width] in y's dtype, L [B, width, width] and the
    kept-column flags [B, width]."""
    batch, rows, width = y.shape
    tolerance = kernels.cholesky_drop_tolerance(ctypes.c_bool(y.dtype == torch.float64))
    gram = (y.double().mT @ y.double()).contiguous()  # symmetric: its column-major layout is itself
    keep = torch.full((batch, width), -1, dtype=torch.int32)
    kernels.cholesky(address(gram), ctypes.c_int(width), ctypes.c_double(tolerance), address(keep), ctypes.c_int(batch),
                     ctypes.c_int(threads))
    columns = y.mT.contiguous()  # each image column-major, as cuBLAS leaves it
    entry(kernels, "solve_rows", y.dtype)(address(columns), address(gram), address(keep), ctypes.c_int64(rows),
                                          ctypes.c_int(width), ctypes.c_uint32(refill_pass), ctypes.c_uint64(seed),
                                          ctypes.c_int(batch), ctypes.c_int(rows_per_block))
    return columns.mT, gram.mT.tril(), keep


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,width", [(300, 8), (576, 32), (576, 128)])
def test_cholesky_qr_orthonormalises(kernels, rows, width, dtype):
    y = torch.randn(2, rows, width, generator=torch.Generator().manual_seed(width)).to(dtype)
    q, lower, keep = cholesky_qr(kernels, y)
    y = y.double()
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    assert torch.equal(keep, torch.ones_like(keep))
    torch.testing.assert_close(lower, torch.linalg.cholesky(y.mT @ y), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(q.double().mT @ q.double(), torch.eye(width).expand(2, -1, -1).double(), atol=tolerance, rtol=0)
    torch.testing.assert_close(q.double() @ lower.mT, y, atol=tolerance * 10, rtol=0)


def test_cholesky_qr_drops_dependent_zero_and_nan_columns(kernels):
    y = torch.randn(1, 200, 12, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y[0, :, 5] = 2 * y[0, :, 2] - y[0, :, 0]  # in the span of earlier columns
    y[0, :, 9] = 0.0
    y[0, 17, 3] = float("nan")
    q, lower, keep = cholesky_qr(kernels, y)
    assert keep[0].tolist() == [1, 1, 1, 0, 1, 0, 1, 1, 1, 0, 1, 1]
    assert torch.isfinite(q).all()
    dropped = keep[0] == 0
    assert torch.equal(q[0][:, dropped], torch.zeros(200, 3, dtype=torch.float64))
    kept = q[0][:, ~dropped]
    torch.testing.assert_close(kept.mT @ kept, torch.eye(9, dtype=torch.float64), atol=1e-10, rtol=0)
    # Without the NaN column the rest is spanned: Q Lᵀ reproduces every finite column.
    finite = torch.isfinite(y[0]).all(0)
    torch.testing.assert_close((q[0] @ lower[0].mT)[:, finite], y[0][:, finite], atol=1e-9, rtol=0)


def test_cholesky_qr_refills_dropped_columns_with_fresh_gaussian_ones(kernels):
    # A dropped column that stayed zero would stay zero through every later power iteration.
    y = torch.randn(2, 200, 12, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y[:, :, 5] = 2 * y[:, :, 2] - y[:, :, 0]
    y[:, :, 9] = 0.0
    q, _, keep = cholesky_qr(kernels, y, refill_pass=3, seed=11)
    assert keep[0].tolist() == keep[1].tolist() == [1, 1, 1, 1, 1, 0, 1, 1, 1, 0, 1, 1]
    refilled = q[:, :, [5, 9]]
    assert torch.equal(refilled[0], refilled[1]), "the same columns for every image"
    assert abs(refilled.mean()) < 0.2 and abs(refilled.std() - 1) < 0.2  # 400 standard normal draws
    kept = keep[0] == 1
    assert torch.equal(q[:, :, kept], cholesky_qr(kernels, y)[0][:, :, kept])
    for other in (dict(refill_pass=4, seed=11), dict(refill_pass=3, seed=12)):
        assert not torch.equal(cholesky_qr(kernels, y, **other)[0][:, :, [5, 9]], refilled)
    assert torch.equal(cholesky_qr(kernels, y, refill_pass=3, seed=11)[0], q)


def test_unresolved_rank_is_reported_as_the_sketch_width(kernels):
    # A sketch of `count` columns resolves ranks up to `resolvable`; beyond, the rank is `count`,
    # while every eigenvalue carries energy (the noise gives each direction some).
    x = designed(100, 150, torch.linspace(1.0, 0.5, 20).tolist(), noise=1e-3).double()[None]
    pairs = Eigenpairs(x, torch.float64)
    rank = reference.leverage(x, 0.9)[1].item()
    assert 10 < rank < 20
    assert pairs.rank_leverage(kernels, 0.9, resolvable=rank)[1].item() == rank
    scores, saturated = pairs.rank_leverage(kernels, 0.9, resolvable=rank - 1)
    assert saturated.item() == pairs.count
    torch.testing.assert_close(scores.sum(), torch.tensor(float(pairs.count), dtype=torch.float64))


def test_a_rank_beyond_resolvable_is_kept_when_an_eigenvalue_carries_no_energy(kernels):
    # A sketch with a direction outside X's range (a zero Ritz value) spans all of it: its
    # Ritz values are the eigenvalues, so a rank-deficient image keeps its exact rank.
    x = designed(100, 150, torch.linspace(1.0, 0.5, 20).tolist()).double()[None]
    pairs = Eigenpairs(x, torch.float64)
    rank = reference.leverage(x, 0.9)[1].item()
    assert pairs.rank_leverage(kernels, 0.9, resolvable=rank - 1)[1].item() == rank


@pytest.mark.parametrize("dtype", DTYPES)
def test_cholesky_qr_keeps_the_rank_of_a_rank_deficient_block(kernels, dtype):
    # A sketch of a rank-5 image: 32 columns in 5 directions. Exactly 5 are kept, orthonormal.
    # (With a float64 drop tolerance at double's rounding level, 1e-24, 9 were kept and QᵀQ
    # was off from the identity by 1.)
    generator = torch.Generator().manual_seed(1)
    y = torch.randn(300, 5, generator=generator, dtype=torch.float64) @ torch.randn(5, 32, generator=generator, dtype=torch.float64)
    q, _, keep = cholesky_qr(kernels, y[None].to(dtype))
    assert keep.sum() == 5
    kept = q[0][:, keep[0] == 1].double()
    tolerance = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(kept.mT @ kept, torch.eye(5, dtype=torch.float64), atol=tolerance, rtol=0)


def test_cholesky_qr_with_any_block_size(kernels):
    y = torch.randn(2, 300, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    first = cholesky_qr(kernels, y)
    for threads, rows_per_block in ((32, 32), (96, 7), (512, 300)):
        for got, want in zip(cholesky_qr(kernels, y, threads, rows_per_block), first):
            assert torch.equal(got, want)
