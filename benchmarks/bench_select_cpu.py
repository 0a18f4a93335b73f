"""CPU microbenchmark of `select` against SVD pipelines built from torch.linalg.

    .venv/bin/python -m pytest benchmarks/bench_select_cpu.py --benchmark-json=benchmarks/results/cpu.json
    .venv/bin/python benchmarks/summarize.py benchmarks/results/cpu.json

Inputs are LLaVA-shaped (N=576 tokens) feature matrices of real photographs: 14×14 patches
lifted to D features by a fixed random GELU layer (svdprune.testing.images.lift), float32. Every
implementation is checked against the float64 reference before it is timed. `pivoted` rows
are select(strategy="pivoted"), timed to show its cost next to the paper's top-K leverage.
"""

import pytest
import torch

import svdprune_cuda
from svdprune.testing import images
from svdprune_cuda import reference

BUDGET = 64
VARIANCE = 0.9
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble", "china", "flower", "camera"]


def leverage_top_k(u: torch.Tensor, s: torch.Tensor, total: torch.Tensor, budget: int) -> torch.Tensor:
    rank = reference.rank_from_spectrum(s.double(), total.double(), VARIANCE)
    keep = torch.arange(s.shape[-1], device=s.device) < rank.unsqueeze(-1)
    scores = (u.square() * keep.unsqueeze(-2)).sum(-1)
    top = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :budget]
    return torch.sort(top, dim=-1).values


def svd_pipeline(x: torch.Tensor, budget: int) -> torch.Tensor:
    """The textbook pipeline: full thin SVD (LAPACK gesdd on CPU), rank cut, leverage, top-K, in float32."""
    x = x.float()
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    return leverage_top_k(u, s, x.square().sum((-2, -1)), budget)


def svd_lowrank_pipeline(x: torch.Tensor, budget: int) -> torch.Tensor:
    """torch.svd_lowrank with 96 columns and 3 power iterations (enough for the rank-68 hubble photo)."""
    x = x.float()
    torch.manual_seed(0)
    u, s, _ = torch.svd_lowrank(x, q=96, niter=3)
    return leverage_top_k(u, s, x.square().sum((-2, -1)), budget)


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


def span_residual(x: torch.Tensor, indices: torch.Tensor) -> float:
    """‖X − X P_S‖_F / ‖X‖_F, P_S the projector onto the row space of the kept tokens."""
    x = x.double()
    kept = x[indices]
    return float((x - x @ torch.linalg.pinv(kept) @ kept).norm() / x.norm())


def check(implementation: str, x: torch.Tensor, got: torch.Tensor) -> float:
    """Top-K overlap with the reference (leverage), or for pivoted selections the span residual
    relative to the reference's pivoted choice (greedy pivots may differ yet span as well)."""
    if "pivoted" in implementation:
        expected = reference.select(x, BUDGET, VARIANCE, strategy="pivoted")[0]
        ratio = max(span_residual(a, g) / span_residual(a, e) for a, g, e in zip(x, got, expected))
        assert ratio <= 1.05, f"{implementation}: span residual {ratio:.3f}× the reference's"
        return ratio
    expected = reference.select(x, BUDGET, VARIANCE)[0]
    overlap = min(len(set(g.tolist()) & set(e.tolist())) / BUDGET for g, e in zip(got, expected))
    assert overlap >= 0.95, f"{implementation}: top-{BUDGET} overlap {overlap:.2f} with the reference"
    return overlap

_FEATURES: dict[tuple[int, int], torch.Tensor] = {}


def features(batch: int, dim: int) -> torch.Tensor:
    if (batch, dim) not in _FEATURES:
        photos = images.load_photos(PHOTOS[:batch])
        lifted = [images.lift(images.to_patches(photo), dim) for photo in photos.values()]
        _FEATURES[(batch, dim)] = torch.stack(lifted).float()
    return _FEATURES[(batch, dim)]


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
