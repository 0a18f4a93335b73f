"""CPU microbenchmark of `select` against SVD pipelines built from torch.linalg.

    .venv/bin/python -m pytest benchmarks/bench_select_cpu.py --benchmark-json=benchmarks/results/cpu.json
    .venv/bin/python benchmarks/summarize.py benchmarks/results/cpu.json

Inputs are LLaVA-shaped (N=576 tokens) feature matrices of real photographs: 14×14 patches
lifted to D features by a fixed random GELU layer (svdprune.testing.images.lift), float32. Every
implementation is checked against the float64 reference before it is timed. `pivoted` rows
are select(strategy="pivoted"), timed to show its cost next to the paper's top-K leverage.
"""

import pytest

import svdprune_cuda
from common import BUDGET, VARIANCE, check, features, svd_lowrank_pipeline, svd_pipeline

IMPLEMENTATIONS = {
    "svdprune exact": lambda x, k: svdprune_cuda.select(x, k, VARIANCE, method="exact")[0],
    "svdprune randomized": lambda x, k: svdprune_cuda.select(x, k, VARIANCE, method="randomized")[0],
    "svdprune exact pivoted": lambda x, k: svdprune_cuda.select(x, k, VARIANCE, method="exact", strategy="pivoted")[0],
    "svdprune randomized pivoted": lambda x, k: svdprune_cuda.select(
        x, k, VARIANCE, method="randomized", strategy="pivoted"
    )[0],
    "torch.linalg.svd pipeline": svd_pipeline,
    "torch.svd_lowrank pipeline": svd_lowrank_pipeline,
}


@pytest.mark.parametrize("implementation", list(IMPLEMENTATIONS))
@pytest.mark.parametrize("dim", [1024, 4096])
@pytest.mark.parametrize("batch", [1, 8])
def test_select_cpu(benchmark, implementation, dim, batch):
    x = features(batch, dim)
    run = IMPLEMENTATIONS[implementation]
    quality = check(implementation, x, run(x, BUDGET))
    benchmark.group = f"N=576 D={dim} B={batch} float32"
    benchmark.extra_info.update(implementation=implementation, dim=dim, batch=batch, check=quality)
    benchmark.pedantic(run, args=(x, BUDGET), rounds=7, warmup_rounds=1)
