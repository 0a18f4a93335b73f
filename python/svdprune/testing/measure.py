"""What the demo and the benchmarks measure with: the selections they compare, by name, and a
median timer."""

from __future__ import annotations

import statistics
import time

import torch

__all__ = ["SELECTIONS", "median_seconds"]

# name -> (method, strategy): the paper's top-K leverage with each solver, and the pivoted
# strategy on the exact basis.
SELECTIONS = {"exact": ("exact", "leverage"), "randomized": ("randomized", "leverage"), "pivoted": ("exact", "pivoted")}


def median_seconds(function, repeats: int, device: torch.device | str | None = None) -> float:
    """Median wall time of ``repeats`` calls of ``function`` after one warm-up call; on a CUDA
    ``device`` each call is timed up to the end of its work."""
    synchronize = torch.device(device).type == "cuda" if device is not None else False
    function()
    times = []
    for _ in range(repeats):
        if synchronize:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        function()
        if synchronize:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
