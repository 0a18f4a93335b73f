"""Float64 reference implementation of SVD-Prune: the ground truth of every test.

Written for clarity, not speed: one thin SVD per image with ``torch.linalg.svd``.
The functions mirror ``torch.ops.svdprune.*`` argument for argument (``method`` and
``seed`` are accepted and ignored: the reference is always the exact full SVD) and
return float64 scores.
"""

from __future__ import annotations

import torch

__all__ = ["leverage", "select", "select_adaptive", "rank_from_spectrum", "spectrum", "pivoted_tokens"]


def _as_batch(features: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if features.dim() not in (2, 3):
        raise ValueError(f"features must be [N, D] or [B, N, D], got shape {tuple(features.shape)}")
    batched = features.dim() == 3
    x = features.detach().to(torch.float64)
    return (x if batched else x.unsqueeze(0)), batched


# Relative slack on the cut-off (the kernels use 1e-5 in float32): with variance=1 the
# rank is the numerical rank, not min(N, D) because rounding left the sum a hair short.
RANK_SLACK = 1e-10


def rank_from_spectrum(singular_values: torch.Tensor, total_energy: torch.Tensor, variance: float) -> torch.Tensor:
    """Smallest k with sum_{i<=k} sigma_i^2 >= variance * total_energy (0 for a zero matrix).

    ``singular_values`` is ``[B, R]`` in descending order, ``total_energy`` is ``[B]``.
    """
    cumulative = torch.cumsum(singular_values.square(), dim=-1)
    threshold = variance * total_energy * (1 - RANK_SLACK)
    below = (cumulative < threshold.unsqueeze(-1)).sum(dim=-1)
    rank = torch.clamp(below + 1, max=singular_values.shape[-1])
    return torch.where(total_energy > 0, rank, torch.zeros_like(rank))


def spectrum(features: torch.Tensor, center: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, sigma, total energy) of each image, float64, batched ``[B, ...]``."""
    x, _ = _as_batch(features)
    if center:
        x = x - x.mean(dim=-2, keepdim=True)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    return u, s, x.square().sum(dim=(-2, -1))


def _leverage_batched(features, variance, center):
    u, s, total = spectrum(features, center)
    rank = rank_from_spectrum(s, total, variance)
    keep = torch.arange(u.shape[-1]) < rank.unsqueeze(-1)  # [B, R]
    scores = (u.square() * keep.unsqueeze(-2)).sum(dim=-1)  # [B, N]
    return scores, rank


def _descending_order(scores: torch.Tensor) -> torch.Tensor:
    # A stable sort keeps equal scores in index order: ties go to the lower index.
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def leverage(features, variance=0.9, method="exact", center=False, seed=0):
    """Leverage scores ``[.., N]`` (float64) and truncation rank ``[..]`` (int64)."""
    _, batched = _as_batch(features)
    scores, rank = _leverage_batched(features, variance, center)
    return (scores, rank) if batched else (scores[0], rank[0])


def pivoted_tokens(u: torch.Tensor, s: torch.Tensor, scores: torch.Tensor, budget: int) -> torch.Tensor:
    """Pivoted selection of one image, ascending: greedy column pivoting (a rank-revealing QR's
    pivot order) on U_mᵀ, m = min(budget, number of non-zero singular values), each step taking
    the token farthest from the span of those already taken (ties to the lower index); the rest
    of the budget, if any, by leverage."""
    nonzero = int((s.square() > s[0].square() * RANK_SLACK).sum()) if s.numel() and s[0] > 0 else 0
    m = min(budget, nonzero)
    rows = u[:, :m].clone()
    picked: list[int] = []
    for _ in range(m):
        norms = rows.square().sum(dim=1)
        norms[picked] = -1.0
        j = int(torch.argmax(norms))  # the first maximum: ties go to the lower index
        direction = rows[j] / rows[j].norm()
        rows -= torch.outer(rows @ direction, direction)
        picked.append(j)
    taken = set(picked)
    rest = [j for j in _descending_order(scores).tolist() if j not in taken]
    return torch.tensor(sorted(picked + rest[: budget - m]), dtype=torch.int64)


def select(features, budget, variance=0.9, method="exact", center=False, seed=0, strategy="leverage"):
    """``budget`` tokens in ascending index order, with scores and rank.

    ``strategy="leverage"``: the highest-leverage tokens. ``"pivoted"``: see :func:`pivoted_tokens`.
    """
    if strategy not in ("leverage", "pivoted"):
        raise ValueError(f"strategy must be 'leverage' or 'pivoted', got {strategy!r}")
    _, batched = _as_batch(features)
    scores, rank = _leverage_batched(features, variance, center)
    if strategy == "leverage":
        top = _descending_order(scores)[..., :budget]
        indices = torch.sort(top, dim=-1).values
    else:
        u, s, _ = spectrum(features, center)
        indices = torch.stack([pivoted_tokens(u[b], s[b], scores[b], budget) for b in range(u.shape[0])])
    return (indices, scores, rank) if batched else (indices[0], scores[0], rank[0])


def adaptive_count(scores: torch.Tensor, rank: torch.Tensor, variance: float, min_tokens: int, max_tokens: int):
    """Fewest tokens, highest leverage first, whose cumulative leverage reaches ``variance * rank``."""
    n = scores.shape[-1]
    max_tokens = n if max_tokens == -1 else max_tokens
    ordered = torch.gather(scores, -1, _descending_order(scores))
    cumulative = torch.cumsum(ordered, dim=-1)
    target = variance * rank.to(scores.dtype)
    count = (cumulative < target.unsqueeze(-1)).sum(dim=-1) + 1
    count = torch.where(target > 0, torch.clamp(count, max=n), torch.zeros_like(count))
    return torch.clamp(count, min=min_tokens, max=max_tokens)


def select_adaptive(features, variance=0.9, min_tokens=1, max_tokens=-1, method="exact", center=False, seed=0):
    """Adaptive selection: ``(mask [.., N] bool, count [..] int64, scores, rank)``."""
    _, batched = _as_batch(features)
    scores, rank = _leverage_batched(features, variance, center)
    count = adaptive_count(scores, rank, variance, min_tokens, max_tokens)
    order = _descending_order(scores)
    position = torch.empty_like(order).scatter_(-1, order, torch.arange(scores.shape[-1]).expand_as(order))
    mask = position < count.unsqueeze(-1)
    return (mask, count, scores, rank) if batched else (mask[0], count[0], scores[0], rank[0])
