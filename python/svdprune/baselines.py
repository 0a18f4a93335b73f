"""Vision-token selection baselines, each a small pure-torch function.

Every function takes the tokens of one image ``[N, D]`` or a batch ``[B, N, D]`` (the CLS
attention baseline takes attention weights instead) and a ``budget``, and returns the kept
token indices, int64, ascending, ``[budget]`` or ``[B, budget]``. Ties go to the lower index.
"""

from __future__ import annotations

import math

import torch

__all__ = ["top_k", "random_tokens", "uniform_grid", "l2_norm", "cls_attention", "max_min_diversity", "svd_prune", "BASELINES"]


def _batched(features: torch.Tensor, name: str = "features") -> tuple[torch.Tensor, bool]:
    if not isinstance(features, torch.Tensor) or features.dim() not in (2, 3):
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"{name} must be a [N, D] or [B, N, D] tensor, got {shape}")
    batched = features.dim() == 3
    return (features if batched else features.unsqueeze(0)), batched


def _check_budget(budget: int, tokens: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= tokens:
        raise ValueError(f"budget must be an integer in [1, {tokens}], got {budget!r}")


def top_k(scores: torch.Tensor, budget: int) -> torch.Tensor:
    """Indices of the ``budget`` largest scores along the last dimension, ascending; ties go to
    the lower index (the rule ``svdprune_cuda.select`` applies to leverage scores)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices
    return torch.sort(order[..., :budget], dim=-1).values


def _unbatch(indices: torch.Tensor, batched: bool) -> torch.Tensor:
    return indices if batched else indices[0]


def random_tokens(features: torch.Tensor, budget: int, seed: int = 0) -> torch.Tensor:
    """``budget`` tokens drawn uniformly without replacement; image ``b`` of a batch uses the
    ``b``-th draw of one generator seeded with ``seed``."""
    x, batched = _batched(features)
    _check_budget(budget, x.shape[1])
    generator = torch.Generator().manual_seed(seed)
    draws = [torch.randperm(x.shape[1], generator=generator)[:budget] for _ in range(x.shape[0])]
    indices = torch.sort(torch.stack(draws), dim=-1).values.to(x.device)
    return _unbatch(indices, batched)


def _grid_points(rows: int, cols: int, budget: int) -> torch.Tensor:
    # About sqrt(budget) lines, the points shared among them as evenly as possible, each line
    # and each point centred in its share of the grid.
    lines = min(rows, max(1, round(math.sqrt(budget * rows / cols))))
    while math.ceil(budget / lines) > cols:
        lines += 1
    counts = [budget // lines + (1 if i < budget % lines else 0) for i in range(lines)]
    points = []
    for i, count in enumerate(counts):
        row = int((i + 0.5) * rows / lines)
        points.extend(row * cols + int((j + 0.5) * cols / count) for j in range(count))
    return torch.tensor(sorted(points), dtype=torch.int64)


def uniform_grid(features: torch.Tensor, budget: int, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """Spatially uniform tokens on the patch grid, whatever the features.

    ``grid`` is ``(rows, cols)`` with ``rows * cols == N`` (default: square). ``budget = s^2``
    gives the ``s x s`` lattice of cell centres, e.g. K=64 on 24 x 24: rows and columns
    1, 4, ..., 22. Other budgets spread over ``~sqrt(K)`` rows, as evenly as possible.
    """
    x, batched = _batched(features)
    n = x.shape[1]
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"features has {n} tokens, not a square grid: pass grid=(rows, cols)")
        grid = (side, side)
    rows, cols = grid
    if rows * cols != n:
        raise ValueError(f"grid {grid} does not hold the {n} tokens of features")
    _check_budget(budget, n)
    indices = _grid_points(rows, cols, budget).to(x.device)
    return _unbatch(indices.expand(x.shape[0], budget).clone(), batched)


def l2_norm(features: torch.Tensor, budget: int) -> torch.Tensor:
    """The ``budget`` tokens of largest Euclidean norm."""
    x, batched = _batched(features)
    _check_budget(budget, x.shape[1])
    return _unbatch(top_k(torch.linalg.vector_norm(x.to(torch.float64), dim=-1), budget), batched)


def cls_attention(attention: torch.Tensor, budget: int, cls_index: int = 0) -> torch.Tensor:
    """VisionZip-style dominant tokens: the patches the CLS token attends to most.

    ``attention``: softmax weights of one vision-tower layer (VisionZip reads the penultimate
    one), ``[H, T, T]`` or ``[B, H, T, T]`` over ``T = N + 1`` tokens with the CLS token at
    ``cls_index``. The score of a patch is its weight in the CLS row averaged over heads.
    Returned indices count patches only (the CLS token removed), as the LLM sees them.
    """
    if not isinstance(attention, torch.Tensor) or attention.dim() not in (3, 4) or attention.shape[-1] != attention.shape[-2]:
        shape = tuple(attention.shape) if isinstance(attention, torch.Tensor) else type(attention).__name__
        raise ValueError(f"attention must be [H, T, T] or [B, H, T, T], got {shape}")
    batched = attention.dim() == 4
    a = attention if batched else attention.unsqueeze(0)
    tokens = a.shape[-1]
    if not -tokens <= cls_index < tokens:
        raise ValueError(f"cls_index {cls_index} is out of range for {tokens} tokens")
    cls_index %= tokens
    _check_budget(budget, tokens - 1)
    cls_row = a[:, :, cls_index, :].to(torch.float64).mean(dim=1)  # [B, T]
    patches = torch.cat([cls_row[:, :cls_index], cls_row[:, cls_index + 1 :]], dim=1)
    return _unbatch(top_k(patches, budget), batched)


def max_min_diversity(features: torch.Tensor, budget: int) -> torch.Tensor:
    """DivPrune-style max-min diversity: greedy farthest-point selection on cosine distance.

    The first token is the one whose nearest other token is farthest; each next token is the
    one farthest from its nearest already-kept token (``argmax`` ties to the lower index).
    """
    x, batched = _batched(features)
    b, n, _ = x.shape
    _check_budget(budget, n)
    unit = torch.nn.functional.normalize(x.to(torch.float64), dim=-1)
    distance = 1.0 - unit @ unit.transpose(-1, -2)  # [B, N, N]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    if n > 1:
        nearest_other = distance.masked_fill(eye, float("inf")).min(dim=-1).values
    else:
        nearest_other = torch.zeros(b, n, dtype=distance.dtype, device=x.device)
    rows = torch.arange(b, device=x.device)
    kept = torch.empty(b, budget, dtype=torch.int64, device=x.device)
    kept[:, 0] = nearest_other.argmax(dim=-1)
    to_kept = distance[rows, kept[:, 0]]  # distance of every token to its nearest kept token
    taken = torch.zeros(b, n, dtype=torch.bool, device=x.device)
    taken[rows, kept[:, 0]] = True
    for step in range(1, budget):
        # Kept tokens are masked so duplicates of a kept token (distance 0) cannot repeat it.
        kept[:, step] = to_kept.masked_fill(taken, -float("inf")).argmax(dim=-1)
        taken[rows, kept[:, step]] = True
        to_kept = torch.minimum(to_kept, distance[rows, kept[:, step]])
    return _unbatch(torch.sort(kept, dim=-1).values, batched)


def svd_prune(
    features: torch.Tensor, budget: int, variance: float = 0.9, method: str = "exact", center: bool = False, seed: int = 0
) -> torch.Tensor:
    """SVD-Prune top-K by leverage (``svdprune_cuda.select``): the indices only."""
    import svdprune_cuda

    return svdprune_cuda.select(features, budget, variance=variance, method=method, center=center, seed=seed)[0]


# The feature-based selections by name (cls_attention reads attention weights instead).
BASELINES = {
    "random": random_tokens,
    "uniform_grid": uniform_grid,
    "l2_norm": l2_norm,
    "max_min_diversity": max_min_diversity,
    "svd_prune": svd_prune,
}
