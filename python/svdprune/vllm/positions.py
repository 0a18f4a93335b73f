"""Qwen's 3-D rotary (M-RoPE) positions for a pruned prompt served by vLLM, with no vLLM involved.

vLLM numbers a prompt's positions when the request arrives, before the vision tower has run and
so before anyone knows which tokens a visual keeps. The prompt is numbered in two steps:

1. :func:`prompt_positions`, when the request arrives: every text token gets the position it has
   in the unpruned prompt (text after a visual continues after the visual's whole grid, as
   transformers numbers it), and every placeholder of a visual gets the visual's ``base``, the
   position its grid starts at.
2. :func:`place_kept_positions`, after the vision tower: each kept token's placeholder gets
   ``base`` plus the token's own (time, height, width) in the visual's grid, which the model
   hands over as extra columns of its embeddings (:func:`append_positions`,
   :func:`split_positions`).

A placeholder's ``base`` is one more than the position of the token before its run of
placeholders, which is text (``<|vision_start|>``) and never renumbered, so step 2 gives the same
answer however often it runs and wherever a prefill chunk starts.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "CHANNELS",
    "grid_positions",
    "prompt_positions",
    "append_positions",
    "split_positions",
    "place_kept_positions",
]

# A kept token's (time, height, width), each as two base-256 digits: every digit is an integer
# below 256, which bfloat16 (8 significant bits) holds exactly, so the columns survive any
# embedding dtype; a coordinate can reach 65,535.
CHANNELS = 6
_DIGIT = 256


def grid_positions(frames: int, height: int, width: int, time_scale: float = 1.0) -> np.ndarray:
    """``[3, frames * height * width]`` int64: each merged token's (time, height, width) in its
    grid, frame by frame and row by row. Time advances ``time_scale`` per frame, rounded down (a
    Qwen2.5-VL video: seconds per frame times tokens per second)."""
    grid = np.indices((frames, height, width)).reshape(3, -1)
    if time_scale != 1.0:
        grid[0] = (grid[0] * time_scale).astype(np.int64)
    return grid


def prompt_positions(length: int, runs) -> tuple[torch.Tensor, int]:
    """The prompt's positions before the vision tower runs, and where new tokens continue.

    ``runs`` are the placeholder runs in prompt order, each ``(offset, count, grid)``: ``count``
    placeholders from ``offset`` on for a visual (or one frame of it) whose unpruned grid
    positions are ``grid`` (``[3, n]``, :func:`grid_positions`). Returns ``[3, length]`` int64
    positions, placeholders at their run's base, and the M-RoPE delta (the first new token's
    position minus ``length``).
    """
    columns, position, start = [], 0, 0
    for offset, count, grid in runs:
        text = offset - start
        columns.append(np.broadcast_to(np.arange(position, position + text), (3, text)))
        base = position + text
        columns.append(np.full((3, count), base))
        position = base + int(grid.max()) + 1
        start = offset + count
    text = length - start
    columns.append(np.broadcast_to(np.arange(position, position + text), (3, text)))
    position += text
    return torch.from_numpy(np.concatenate(columns, axis=1).astype(np.int64)), position - length


def append_positions(features: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``features`` (``[n, H]``) with each token's grid position (``[n, 3]``) as :data:`CHANNELS`
    more columns."""
    digits = torch.stack([grid // _DIGIT, grid % _DIGIT], dim=-1).reshape(grid.shape[0], CHANNELS)
    return torch.cat([features, digits.to(features.device, features.dtype)], dim=-1)


def split_positions(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`append_positions`: ``(features [n, H], grid positions [n, 3] int64)``."""
    digits = embeddings[:, -CHANNELS:].float().round().long().reshape(-1, 3, 2)
    return embeddings[:, :-CHANNELS], digits[..., 0] * _DIGIT + digits[..., 1]


def place_kept_positions(
    placeholder: torch.Tensor, positions: torch.Tensor, grid: torch.Tensor, start: int
) -> torch.Tensor:
    """Give the kept tokens whose embeddings arrive in this step their positions, in place.

    ``placeholder`` ``[L]`` bool marks the prompt's placeholder tokens, ``positions`` ``[3, L]``
    are the prompt's (:func:`prompt_positions`, perhaps already partly placed), ``grid``
    ``[rows, 3]`` the grid positions of the embeddings that fill the first ``rows`` placeholders
    from prompt index ``start`` on (a prefill chunk's, in order). Returns ``positions``.
    """
    placeholder = placeholder.to(positions.device)
    later = torch.nonzero(placeholder[start:]).flatten() + start
    if later.numel() < grid.shape[0]:
        raise RuntimeError(
            f"svdprune: {grid.shape[0]} visual embeddings for {later.numel()} placeholders from token {start} on"
        )
    slots = later[: grid.shape[0]]
    # The first placeholder of each slot's run; the token before it is text, numbered already.
    previous = torch.cat([placeholder.new_zeros(1), placeholder[:-1]])
    run_starts = torch.nonzero(placeholder & ~previous).flatten()
    run_start = run_starts[torch.searchsorted(run_starts, slots, right=True) - 1]
    base = torch.where(run_start > 0, positions[0, (run_start - 1).clamp(min=0)] + 1, 0)
    positions[:, slots] = base + grid.to(positions.device).T
    return positions
