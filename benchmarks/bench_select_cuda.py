"""CUDA microbenchmark of `select` against torch.linalg.svd, torch.svd_lowrank and CuPy.

    .venv/bin/python -m pytest benchmarks/bench_select_cuda.py --benchmark-json=benchmarks/results/cuda.json
    .venv/bin/python benchmarks/summarize.py benchmarks/results/cuda.json

Skipped without a GPU. N=576, D in {1024, 4096}, B in {1, 8, 64}, fp16 and fp32, the same photo
features as the CPU benchmark (repeated to fill the batch). Each implementation is checked
against the float64 reference before it is timed; every timed call ends with a synchronize.
"""

import pytest
import torch

import svdprune_cuda
from bench_select_cpu import BUDGET, PHOTOS, VARIANCE, check, features, leverage_top_k, svd_lowrank_pipeline, svd_pipeline

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        not torch._C._dispatch_has_kernel_for_dispatch_key("svdprune::select", "CUDA"),
        reason="svdprune_cuda was built without its CUDA kernels",
    ),
]


def cupy_pipeline(x: torch.Tensor, budget: int) -> torch.Tensor:
    """CuPy's batched SVD (cuSOLVER gesvdj) on the float32 features, then the same cut and top-K."""
    cupy = pytest.importorskip("cupy")
    u, s, _ = cupy.linalg.svd(cupy.asarray(x.float()), full_matrices=False)
    return leverage_top_k(torch.as_tensor(u, device=x.device), torch.as_tensor(s, device=x.device),
                          x.float().square().sum((-2, -1)), budget)


IMPLEMENTATIONS = {
    "svdprune exact": lambda x, k: svdprune_cuda.select(x, k, VARIANCE, method="exact", check_finite=False)[0],
    "svdprune randomized": lambda x, k: svdprune_cuda.select(x, k, VARIANCE, method="randomized", check_finite=False)[0],
    "torch.linalg.svd pipeline": lambda x, k: svd_pipeline(x.float(), k),
    "torch.svd_lowrank pipeline": lambda x, k: svd_lowrank_pipeline(x.float(), k),
    "cupy batched svd": cupy_pipeline,
}


def synchronized(run):
    def call(*args):
        out = run(*args)
        torch.cuda.synchronize()
        return out

    return call


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("dim", [1024, 4096])
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_select_cuda(benchmark, implementation, dtype, dim, batch):
    photos = features(len(PHOTOS), dim)
    x = photos.repeat((batch + len(PHOTOS) - 1) // len(PHOTOS), 1, 1)[:batch]
    x = x.to("cuda", dtype)
    run = IMPLEMENTATIONS[implementation]
    quality = check(implementation, x.cpu(), run(x, BUDGET).cpu())
    benchmark.group = f"N=576 D={dim} B={batch} {str(dtype).removeprefix('torch.')} {torch.cuda.get_device_name()}"
    benchmark.extra_info.update(implementation=implementation, dim=dim, batch=batch, check=quality)
    benchmark.pedantic(synchronized(run), args=(x, BUDGET), rounds=20, warmup_rounds=3)
