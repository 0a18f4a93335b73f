"""The CUDA pivot kernel's own source (csrc/cuda/pivot.cuh), compiled for the host by
tests/pivot_kernel_host.cpp, run on eigenpairs laid out as cuSOLVER returns them and checked
against the float64 reference. This runs wherever a C++20 compiler is, GPU or not; on a GPU the
kernel's place in the pipeline is checked by the CUDA cases of test_pivoted.py.

To look for races between a block's threads (a missing __syncthreads) or out-of-bounds accesses,
build the emulation with a sanitizer and preload its runtime:

    PIVOT_KERNEL_SANITIZE=thread OMP_NUM_THREADS=1 LD_PRELOAD=$(g++ -print-file-name=libtsan.so) \\
        python -m pytest -s tests/test_pivot_kernel.py
    PIVOT_KERNEL_SANITIZE=address ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD=$(g++ -print-file-name=libasan.so) \\
        python -m pytest -s tests/test_pivot_kernel.py
"""

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from svdprune_cuda import reference
from test_ops import SPECTRUM, designed

ROOT = Path(__file__).resolve().parent.parent
# Rank-cut slack of the CUDA backend, which also marks numerically zero eigenvalues.
SLACK = {torch.float32: 1e-5, torch.float64: 1e-10}
ENERGY_PARTS = 4  # partial sums of ||X||_F^2 per image (64 in leverage.cu; any count works)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        pytest.skip("needs a C++20 compiler")
    library = tmp_path_factory.mktemp("pivot_kernel") / "pivot_kernel_host.so"
    command = [compiler, "-std=c++20", "-O2", "-g", "-shared", "-fPIC", "-pthread", f"-I{ROOT / 'csrc' / 'cuda'}"]
    if sanitizer := os.environ.get("PIVOT_KERNEL_SANITIZE"):
        command.append(f"-fsanitize={sanitizer}")
    subprocess.run([*command, str(ROOT / "tests" / "pivot_kernel_host.cpp"), "-o", str(library)], check=True)
    return ctypes.CDLL(str(library))


def eigenpairs(x: torch.Tensor):
    """What leverage.cu hands pivot_kernel for a [B, N, D] batch: eigenvalues of the smaller Gram
    matrix, ascending [B, count], and per image `count` columns of N entries, [B, count, N]:
    the eigenvectors of X Xᵀ (N ≤ D), or X V from those of Xᵀ X (N > D, divided by sigma in the
    kernel). Computed in float64."""
    n, d = x.shape[-2:]
    if n <= d:
        values, vectors = torch.linalg.eigh(x @ x.mT)
    else:
        values, right = torch.linalg.eigh(x.mT @ x)
        vectors = x @ right
    return values, vectors.mT.contiguous(), n > d


def pivot_scores(kernel, x, budget, dtype, rows_in_shared, threads=256, failed=()):
    """pivot_kernel's output [B, N] for `x` ([B, N, D] float64), with its inputs in `dtype`,
    and the leverage scores it was given."""
    values, vectors, divide = eigenpairs(x)
    batch, count, n = vectors.shape
    values, vectors = values.to(dtype).contiguous(), vectors.to(dtype).contiguous()
    energy = torch.zeros(batch, ENERGY_PARTS, dtype=torch.float64)
    energy[:, 0] = x.square().sum((-2, -1)) / 2
    energy[:, -1] = x.square().sum((-2, -1)) / 2
    info = torch.zeros(batch, dtype=torch.int32)
    info[list(failed)] = 1
    scores = reference.leverage(x)[0].to(dtype).contiguous()
    max_pivots = min(budget, count)
    workspace = None if rows_in_shared else torch.full((batch, max_pivots, n), float("nan"), dtype=dtype)
    out = torch.full((batch, n), -7.0, dtype=dtype)
    run = kernel.pivot_double if dtype == torch.float64 else kernel.pivot_float
    address = lambda t: ctypes.c_void_p(t.data_ptr()) if t is not None else None  # noqa: E731
    run(address(values), ctypes.c_int64(count), address(vectors), ctypes.c_int(n), address(energy),
        ctypes.c_int(ENERGY_PARTS), address(info), ctypes.c_double(SLACK[dtype]), ctypes.c_bool(divide),
        ctypes.c_int(max_pivots), ctypes.c_bool(rows_in_shared), address(workspace), address(scores), address(out),
        ctypes.c_int(batch), ctypes.c_int(threads))
    return out, scores, (values, vectors, divide)


def top(priority: torch.Tensor, budget: int) -> torch.Tensor:
    """select_top of the pivot scores: the `budget` highest (ties to the lower index), ascending."""
    order = torch.sort(priority, dim=-1, descending=True, stable=True).indices[..., :budget]
    return torch.sort(order, dim=-1).values


def reference_on(basis, scores, budget, dtype):
    """reference.pivoted_tokens on the kernel's own eigenpairs (its input dtype), image by image,
    with eigenvalues at most slack times the largest counted as zero, as the kernel does."""
    values, vectors, divide = basis
    picks = []
    for b in range(values.shape[0]):
        v = values[b].flip(0).double()
        u = vectors[b].flip(0).mT
        if divide:
            u = u / v.clamp_min(torch.finfo(torch.float64).tiny).sqrt().to(u.dtype)
        sigma = torch.where(v > v[0] * SLACK[dtype], v, torch.zeros_like(v)).sqrt()
        picks.append(reference.pivoted_tokens(u, sigma, scores[b].double(), budget))
    return torch.stack(picks)


def redundant_tokens() -> torch.Tensor:
    x = 1e-3 * torch.randn(64, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[5, 0], x[9, 0], x[12, 1], x[30, 2] = 3.0, 2.9, 1.0, 0.5
    return x


def low_rank() -> torch.Tensor:
    generator = torch.Generator().manual_seed(4)
    factors = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in ((200, 5), (5, 300))]
    return factors[0] @ factors[1]


CASES = {
    "redundant N>D": (redundant_tokens()[None], 16),
    "redundant N<D": (redundant_tokens()[:20].repeat(1, 3)[None], 7),
    "rank 5, budget beyond it": (low_rank()[None], 16),
    "designed batch": (designed(160, 320, SPECTRUM, noise=1e-3, batch=2).double(), 32),
}


@pytest.mark.parametrize("rows_in_shared", [True, False], ids=["shared", "global"])
@pytest.mark.parametrize("case", list(CASES))
def test_float64_matches_the_reference(kernel, case, rows_in_shared):
    x, budget = CASES[case]
    out, scores, _ = pivot_scores(kernel, x, budget, torch.float64, rows_in_shared)
    assert torch.equal(top(out, budget), reference.select(x, budget, strategy="pivoted")[0])
    unpicked = out != float("inf")
    assert torch.equal(out[unpicked], scores[unpicked])  # the other tokens keep their leverage


@pytest.mark.parametrize("rows_in_shared", [True, False], ids=["shared", "global"])
@pytest.mark.parametrize("case", list(CASES))
def test_float32_matches_the_reference_on_the_same_basis(kernel, case, rows_in_shared):
    # Float32 eigenvectors of noise-level eigenvalues are not determined by X, so the kernel is
    # held to the reference's pivoting of the very basis it was given.
    x, budget = CASES[case]
    out, scores, basis = pivot_scores(kernel, x, budget, torch.float32, rows_in_shared)
    assert torch.equal(top(out, budget), reference_on(basis, scores, budget, torch.float32))


def test_pivots_skip_the_redundant_token(kernel):
    out, _, _ = pivot_scores(kernel, redundant_tokens()[None], 3, torch.float32, True)
    assert top(out, 3).tolist() == [[5, 12, 30]]


@pytest.mark.parametrize("threads", [32, 64, 512])
def test_any_block_size(kernel, threads):
    # Fewer tokens than threads, and warps that hold no token at all.
    x = designed(100, 150, SPECTRUM, noise=1e-3, batch=2).double()
    out, _, _ = pivot_scores(kernel, x, 10, torch.float64, True, threads=threads)
    assert torch.equal(top(out, 10), reference.select(x, 10, strategy="pivoted")[0])


def test_zero_or_failed_images_pick_nothing(kernel):
    x = designed(100, 150, SPECTRUM, noise=1e-3, batch=3).double()
    x[0] = 0.0
    out, scores, _ = pivot_scores(kernel, x, 8, torch.float64, True, failed=[2])
    assert torch.equal(out[0], scores[0]) and top(out, 8)[0].tolist() == list(range(8))
    assert (out[1] == float("inf")).sum() == 8
    assert torch.equal(out[2], scores[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_go_to_the_lower_index(kernel, dtype):
    # Tokens 3, 40 and 259 are the same vector: with 256 threads, 3 and 259 are one thread's,
    # 40 is another warp's. Token 10 (a unit row of U) goes first, then the three-way tie must
    # go to 3.
    x = torch.zeros(1, 300, 8, dtype=torch.float64)
    x[0, [3, 40, 259], 0] = 1.0
    x[0, 10, 1] = 0.5
    out, _, _ = pivot_scores(kernel, x, 2, dtype, True)
    assert top(out, 2).tolist() == [[3, 10]] == reference.select(x, 2, strategy="pivoted")[0].tolist()
