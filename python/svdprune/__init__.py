"""svdprune: SVD-based vision-token pruning for vision-language models.

The ops (``select``, ``leverage``, ``select_adaptive``) and the float64 ``reference`` come
from the compiled backend ``svdprune_cuda``; the submodules (``llava``, ``baselines``,
``flops``, ``evaluate``, ``scoring``, ``demo``, ``testing``, ``info``) are imported on first
use, and so is ``prune`` (:func:`svdprune.integrations.prune`, for every supported model family),
so ``import svdprune`` does not pull in transformers.
"""

import importlib
import sys

from svdprune_cuda import METHODS, STRATEGIES, __version__, leverage, reference, select, select_adaptive

__all__ = ["__version__", "leverage", "select", "select_adaptive", "reference", "METHODS", "STRATEGIES"]

# `import svdprune.reference` finds the backend's module, so that the documented name is a module
# and not only an attribute.
sys.modules[f"{__name__}.reference"] = reference

_SUBMODULES = {"llava", "integrations", "baselines", "flops", "evaluate", "scoring", "demo", "testing", "info"}


def __getattr__(name):
    if name == "prune":
        return importlib.import_module(f"{__name__}.integrations").prune
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
