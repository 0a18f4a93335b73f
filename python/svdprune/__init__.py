"""svdprune: SVD-based vision-token pruning for vision-language models.

The ops (``select``, ``leverage``, ``select_adaptive``) and the float64 ``reference`` come
from the compiled backend ``svdprune_cuda``; the submodules (``llava``, ``baselines``,
``flops``, ``evaluate``, ``scoring``, ``demo``, ``testing``, ``info``) are imported on first
use, so ``import svdprune`` does not pull in transformers.
"""

import importlib

from svdprune_cuda import METHODS, STRATEGIES, __version__, leverage, reference, select, select_adaptive

__all__ = ["__version__", "leverage", "select", "select_adaptive", "reference", "METHODS", "STRATEGIES"]

_SUBMODULES = {"llava", "baselines", "flops", "evaluate", "scoring", "demo", "testing", "info"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
