"""What the benchmark scripts share: the machine a number was measured on, and the span
residual of a selection (how much of an image its kept tokens cannot express).

The scripts run as files (``python benchmarks/<script>.py``, ``pytest benchmarks/...``), which
puts this folder first on ``sys.path``; pytest's configuration puts it there for the tests.
"""

from __future__ import annotations

import hashlib
import os
import platform

import torch

from svdprune.testing import images
from svdprune_cuda import reference
from svdprune_cuda.info import cpu_name

__all__ = [
    "machine_description", "row_space_basis", "TokenMatrix", "span_residual", "BUDGET", "VARIANCE", "PHOTOS",
    "features", "leverage_top_k", "svd_pipeline", "svd_lowrank_pipeline", "check",
]


def machine_description() -> str:
    """Processor, cores, GPU, torch threads, versions and the load average, for a results file."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    threads = torch.get_num_threads()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    return (f"{cpu_name()}, {os.cpu_count()} cores, {gpu}, {threads} torch thread{'s' if threads != 1 else ''}; "
            f"Python {platform.python_version()}, torch {torch.__version__}; load average {load}")


def row_space_basis(rows: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (as rows) of the span of ``rows``, float64, with pinv's rank cut-off."""
    _, s, vh = torch.linalg.svd(rows.to(torch.float64), full_matrices=False)
    if s.numel() == 0 or s[0] == 0:
        return vh[:0]
    tolerance = max(rows.shape) * torch.finfo(torch.float64).eps * s[0]
    return vh[: int((s > tolerance).sum())]


class TokenMatrix:
    """An image's token matrix X (N x D), ready for many span residuals.

    With the thin SVD X = U S V^T, X = Y V^T for the coordinates Y = U S (N x r, r <= N). The
    rows of V^T are orthonormal, so the residual of X against the span of its rows S equals
    that of Y against the span of Y's rows S: the work is done in r <= 576 dimensions
    whatever D is.
    """

    def __init__(self, x: torch.Tensor):
        u, s, _ = torch.linalg.svd(x.to(torch.float64), full_matrices=False)
        self.coordinates = u * s
        self.singular_values = s
        self.norm = float(s.square().sum().sqrt())

    def span_residual(self, indices) -> float:
        """``||X - X P_S||_F / ||X||_F``, ``P_S`` the projector onto the kept rows' span."""
        y = self.coordinates
        basis = row_space_basis(y[torch.as_tensor(indices, dtype=torch.int64)])
        return float(torch.linalg.matrix_norm(y - (y @ basis.T) @ basis)) / self.norm

    def best_rank_residual(self, budget: int) -> float:
        """Eckart-Young: the smallest residual any rank-``budget`` matrix leaves, relative."""
        return float(self.singular_values[budget:].square().sum().sqrt()) / self.norm


def span_residual(x: torch.Tensor, indices) -> float:
    """``||X - X P_S||_F / ||X||_F`` for one selection (see :class:`TokenMatrix`)."""
    return TokenMatrix(x).span_residual(indices)


# ----------------------------------------------------------------- the select microbenchmarks

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


_EXPECTED: dict[tuple, tuple[torch.Tensor, list[TokenMatrix], list[float]]] = {}


def _expected(x: torch.Tensor, strategy: str) -> tuple[torch.Tensor, list[TokenMatrix], list[float]]:
    """The reference's selection on ``x``, each image's TokenMatrix and the span residual of the
    reference's choice, cached by content: every implementation is checked on the same images."""
    key = (strategy, x.dtype, tuple(x.shape), hashlib.sha1(x.contiguous().view(torch.uint8).numpy()).hexdigest())
    if key not in _EXPECTED:
        expected = reference.select(x, BUDGET, VARIANCE, strategy=strategy)[0]
        matrices = [TokenMatrix(image) for image in x] if strategy == "pivoted" else []
        _EXPECTED[key] = expected, matrices, [m.span_residual(e) for m, e in zip(matrices, expected)]
    return _EXPECTED[key]


def check(implementation: str, x: torch.Tensor, got: torch.Tensor) -> float:
    """Top-K overlap with the reference (leverage), or for pivoted selections the span residual
    relative to the reference's pivoted choice (greedy pivots may differ yet span as well)."""
    if "pivoted" in implementation:
        _, matrices, expected_residuals = _expected(x, "pivoted")
        ratio = max(m.span_residual(g) / r for m, g, r in zip(matrices, got, expected_residuals))
        assert ratio <= 1.05, f"{implementation}: span residual {ratio:.3f}× the reference's"
        return ratio
    expected = _expected(x, "leverage")[0]
    overlap = min(len(set(g.tolist()) & set(e.tolist())) / BUDGET for g, e in zip(got, expected))
    assert overlap >= 0.95, f"{implementation}: top-{BUDGET} overlap {overlap:.2f} with the reference"
    return overlap


_FEATURES: dict[tuple[int, int], torch.Tensor] = {}


def features(batch: int, dim: int) -> torch.Tensor:
    """``[batch, 576, dim]`` float32: the first ``batch`` of PHOTOS, lifted to ``dim`` features (cached)."""
    if (batch, dim) not in _FEATURES:
        photos = images.load_photos(PHOTOS[:batch])
        lifted = [images.lift(images.to_patches(photo), dim) for photo in photos.values()]
        _FEATURES[(batch, dim)] = torch.stack(lifted).float()
    return _FEATURES[(batch, dim)]
