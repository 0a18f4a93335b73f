"""svdprune: SVD-based vision-token pruning for LLaVA-1.5-style vision-language models.

The ops come from ``svdprune_cuda``; the submodules (``llava``, ``baselines``, ``flops``,
``eval``, ``images``) are imported on first use, so ``import svdprune`` does not pull in
transformers.
"""

import importlib

from svdprune_cuda import __version__, leverage, select, select_adaptive

__all__ = ["__version__", "leverage", "select", "select_adaptive"]

_SUBMODULES = {"llava", "baselines", "flops", "eval", "images", "scoring", "demo"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
