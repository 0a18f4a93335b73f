"""CUDA microbenchmark of `select` against torch.linalg.svd, torch.svd_lowrank and CuPy.

    .venv/bin/python -m pytest benchmarks/bench_select_cuda.py --benchmark-json=benchmarks/results/cuda.json
    .venv/bin/python benchmarks/summarize.py benchmarks/results/cuda.json
    ... -k "not (B8 or (B64 and (linalg or cupy)))"   # scripts/gpu_check.sh's shorter grid

Skipped without a GPU. N=576, D in {1024, 4096}, B in {1, 8, 64}, fp16 and fp32, the same photo
features as the CPU benchmark (repeated to fill the batch). Each implementation is checked
against the float64 reference before it is timed; every timed call ends with a synchronize, so
a round is the latency of one call from launch to finished results. "(CUDA graph)" rows replay
a captured call, which removes the CPU's launch overhead. "pivoted" rows are
select(strategy="pivoted"), to show its cost next to the paper's top-K leverage.
"""

import pytest
import torch

import svdprune_cuda
from common import BUDGET, PHOTOS, VARIANCE, check, features, leverage_top_k, svd_lowrank_pipeline, svd_pipeline

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        not torch._C._dispatch_has_kernel_for_dispatch_key("svdprune::select", "CUDA"),
        reason="svdprune_cuda was built without its CUDA kernels",
    ),
]


def cupy_pipeline(x: torch.Tensor, budget: int) -> torch.Tensor:
    """CuPy's batched SVD on the float32 features (zero-copy through DLPack), then the same cut and top-K."""
    import cupy

    x = x.float().contiguous()
    u, s, _ = cupy.linalg.svd(cupy.from_dlpack(x), full_matrices=False)
    return leverage_top_k(torch.from_dlpack(u), torch.from_dlpack(s), x.square().sum((-2, -1)), budget)


def svdprune_select(method: str, strategy: str = "leverage"):
    return lambda x, k: svdprune_cuda.select(x, k, VARIANCE, method=method, strategy=strategy, check_finite=False)[0]


def captured(run):
    """`run` recorded in a CUDA graph on its first call (after a warm-up), replayed afterwards.
    The graph keeps reading the input tensor it was captured with."""
    graph, out = None, None

    def replay(x, budget):
        nonlocal graph, out
        if graph is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    run(x, budget)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = run(x, budget)
        graph.replay()
        return out

    return replay


IMPLEMENTATIONS = {
    "svdprune exact": svdprune_select("exact"),
    "svdprune randomized": svdprune_select("randomized"),
    "svdprune exact (CUDA graph)": svdprune_select("exact"),
    "svdprune randomized (CUDA graph)": svdprune_select("randomized"),
    "svdprune exact pivoted": svdprune_select("exact", "pivoted"),
    "svdprune randomized pivoted": svdprune_select("randomized", "pivoted"),
    "torch.linalg.svd pipeline": svd_pipeline,
    "torch.svd_lowrank pipeline": svd_lowrank_pipeline,
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
@pytest.mark.parametrize("dim", [1024, 4096], ids=lambda dim: f"D{dim}")
@pytest.mark.parametrize("batch", [1, 8, 64], ids=lambda batch: f"B{batch}")
def test_select_cuda(benchmark, implementation, dtype, dim, batch):
    if implementation.startswith("cupy"):
        pytest.importorskip("cupy")
    photos = features(len(PHOTOS), dim)
    x = photos.repeat((batch + len(PHOTOS) - 1) // len(PHOTOS), 1, 1)[:batch]
    x = x.to("cuda", dtype)
    run = IMPLEMENTATIONS[implementation]
    if implementation.endswith("(CUDA graph)"):
        run = captured(run)  # a graph per parametrisation: it is bound to this x
    # The batch repeats the photos, so its first len(PHOTOS) images cover every distinct input.
    quality = check(implementation, x[: len(PHOTOS)].cpu(), synchronized(run)(x, BUDGET)[: len(PHOTOS)].cpu())
    benchmark.group = f"N=576 D={dim} B={batch} {str(dtype).removeprefix('torch.')} {torch.cuda.get_device_name()}"
    benchmark.extra_info.update(implementation=implementation, dim=dim, batch=batch, check=quality)
    # Full SVDs of 64 images take seconds: a few rounds give a stable median.
    slow = implementation in ("torch.linalg.svd pipeline", "cupy batched svd") and batch > 1
    benchmark.pedantic(synchronized(run), args=(x, BUDGET), rounds=3 if slow else 20, warmup_rounds=1 if slow else 3)
