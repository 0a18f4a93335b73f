"""Fake (meta) kernels: output shapes and dtypes for torch.compile and FakeTensor tracing."""

from __future__ import annotations

import torch


def _shapes(features: torch.Tensor):
    torch._check(features.dim() in (2, 3), lambda: f"features must be [N, D] or [B, N, D], got {features.dim()} dims")
    torch._check(features.is_floating_point(), lambda: f"features must be floating point, got {features.dtype}")
    batch = tuple(features.shape[:-2])
    n = features.shape[-2]
    score_dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    return batch, n, score_dtype


def _scores_and_rank(features: torch.Tensor):
    batch, n, score_dtype = _shapes(features)
    scores = features.new_empty((*batch, n), dtype=score_dtype)
    rank = features.new_empty(batch, dtype=torch.int64)
    return scores, rank


@torch.library.register_fake("svdprune::leverage")
def _leverage_fake(features, variance=0.9, method="exact", center=False, seed=0):
    return _scores_and_rank(features)


@torch.library.register_fake("svdprune::select")
def _select_fake(features, budget, variance=0.9, method="exact", center=False, seed=0, strategy="leverage"):
    batch, n, _ = _shapes(features)
    torch._check(1 <= budget, lambda: f"budget must be in [1, N={n}], got {budget}")
    torch._check(budget <= n, lambda: f"budget must be in [1, N={n}], got {budget}")
    scores, rank = _scores_and_rank(features)
    indices = features.new_empty((*batch, budget), dtype=torch.int64)
    return indices, scores, rank


@torch.library.register_fake("svdprune::select_adaptive")
def _select_adaptive_fake(features, variance=0.9, min_tokens=1, max_tokens=-1, method="exact", center=False, seed=0):
    batch, n, _ = _shapes(features)
    scores, rank = _scores_and_rank(features)
    mask = features.new_empty((*batch, n), dtype=torch.bool)
    count = features.new_empty(batch, dtype=torch.int64)
    return mask, count, scores, rank
