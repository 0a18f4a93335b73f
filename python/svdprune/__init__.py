"""svdprune: SVD-based vision-token pruning for LLaVA-1.5-style vision-language models."""

from svdprune_cuda import __version__, leverage, select, select_adaptive

__all__ = ["__version__", "leverage", "select", "select_adaptive"]
