"""SVD-Prune vision-token selection as PyTorch ops.

Importing this package loads the compiled library, which registers
``torch.ops.svdprune.leverage``, ``torch.ops.svdprune.select`` and
``torch.ops.svdprune.select_adaptive`` for the CPU (and, when built with CUDA, the CUDA)
dispatch keys. The functions below are typed wrappers around those ops.

The selection is not differentiable. The ops accept features that require grad (straight from a
model's forward pass) and inference tensors, on every device, eagerly and under torch.compile;
no output carries a gradient: indices, masks, counts and ranks are integers, and ``scores`` are
returned detached. A model's graph runs on through the features it gathers at the kept indices.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch

from . import reference
from ._version import __version__


def _load_library():
    """The compiled library, which registers the ops: ``svdprune_cuda._C`` as pip built it, or
    the file SVDPRUNE_LIBRARY names (a CMake build, see scripts/build_cmake.sh)."""
    path = os.environ.get("SVDPRUNE_LIBRARY")
    if not path:
        from . import _C

        return _C
    spec = importlib.util.spec_from_file_location(f"{__name__}._C", path)
    if spec is None:
        raise ImportError(f"SVDPRUNE_LIBRARY={path} is not a Python extension module (_C.<abi>.so)")
    library = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(library)
    sys.modules[spec.name] = library
    return library


try:
    _C = _load_library()
except ImportError as error:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "svdprune_cuda: the compiled extension svdprune_cuda._C could not be loaded "
        f"({error}). Build it from the repository root with "
        "`pip install --no-build-isolation -e .` (set SVDPRUNE_FORCE_CPU=1 for a CPU-only build, "
        "FORCE_CUDA=1 with CUDA_HOME and TORCH_CUDA_ARCH_LIST to force the CUDA build)."
    ) from error

from . import _fake  # noqa: E402,F401  (fake kernels for torch.compile)

__all__ = ["leverage", "select", "select_adaptive", "reference", "METHODS", "STRATEGIES", "__version__"]

METHODS = ("exact", "randomized", "auto")
STRATEGIES = ("leverage", "pivoted")


def _check_finite(features: torch.Tensor, check_finite: bool) -> None:
    # The CPU kernels check for NaN/Inf themselves. The CUDA kernels do not, because that
    # would need a device-to-host copy; the check lives here so it can be switched off, and
    # it is skipped while a CUDA graph is being captured or torch.compile is tracing.
    if not (check_finite and features.is_cuda):
        return
    if torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing():
        return
    if not bool(torch.isfinite(features).all()):
        raise ValueError("svdprune: features contains NaN or Inf")


def leverage(
    features: torch.Tensor,
    variance: float = 0.9,
    method: str = "exact",
    center: bool = False,
    seed: int = 0,
    check_finite: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Leverage score of every token.

    Args:
        features: ``[N, D]`` or ``[B, N, D]`` token matrix (float16/bfloat16/float32/float64).
        variance: fraction of ``||X||_F^2`` the truncated SVD must capture, in (0, 1].
        method: ``"exact"``, ``"randomized"`` or ``"auto"``.
        center: subtract each image's mean token before the decomposition.
        seed: seed of the randomized sketch (results are deterministic for a given seed).
        check_finite: on CUDA, raise if ``features`` holds NaN/Inf (costs one sync).

    Returns:
        ``scores`` ``[B, N]`` (float32, float64 for float64 input), leverage
        ``sum_{i<=k} U[j, i]^2`` summing to ``rank``; ``rank`` ``[B]`` int64, the smallest
        ``k`` whose singular values capture ``variance`` of the energy. The batch dimension
        is dropped for unbatched input. No output carries a gradient: ``scores`` are detached
        even when ``features`` requires grad.
    """
    _check_finite(features, check_finite)
    return torch.ops.svdprune.leverage(features, variance, method, center, seed)


def select(
    features: torch.Tensor,
    budget: int,
    variance: float = 0.9,
    method: str = "exact",
    center: bool = False,
    seed: int = 0,
    strategy: str = "leverage",
    check_finite: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``budget`` tokens of each image.

    ``strategy="leverage"`` (the paper's rule) keeps the highest-leverage tokens; ties go to
    the lower index. ``"pivoted"`` runs greedy column pivoting (a rank-revealing QR) on the
    leading ``budget`` left singular vectors, which keeps tokens that are far from redundant;
    if X has fewer non-zero singular values than ``budget``, the rest go by leverage.

    Returns ``(indices, scores, rank)``: ``indices`` ``[B, budget]`` int64 in ascending
    order, and ``scores``/``rank`` (leverage at ``variance``, whatever the strategy) as in
    :func:`leverage`.
    """
    _check_finite(features, check_finite)
    return torch.ops.svdprune.select(features, budget, variance, method, center, seed, strategy)


def select_adaptive(
    features: torch.Tensor,
    variance: float = 0.9,
    min_tokens: int = 1,
    max_tokens: int = -1,
    method: str = "exact",
    center: bool = False,
    seed: int = 0,
    check_finite: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image, the fewest tokens whose cumulative leverage reaches ``variance * rank``.

    Returns ``(mask, count, scores, rank)``: ``mask`` ``[B, N]`` bool marks the kept tokens,
    ``count`` ``[B]`` int64 is how many, clamped to ``[min_tokens, max_tokens]``
    (``max_tokens=-1`` means N). Output shapes do not depend on the data.
    """
    _check_finite(features, check_finite)
    return torch.ops.svdprune.select_adaptive(features, variance, min_tokens, max_tokens, method, center, seed)
