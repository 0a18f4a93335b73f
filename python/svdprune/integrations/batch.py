"""Rewriting a batch around the kept visual tokens, with no model involved.

A vision-language processor expands every image (or video) into placeholder tokens, one per visual
token the language model receives. Pruning keeps some of them: :func:`rewrite_batch` drops the
placeholders of the unkept tokens and the padding, re-pads the rows on the batch's padding side,
embeds the shortened ``input_ids`` and writes the kept features into the remaining placeholders.
The returned :class:`Rewritten` maps tensors between the caller's layout and the shortened one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["Rewritten", "rewrite_batch", "padding_side"]


@dataclass
class Rewritten:
    """The shortened batch handed to the language model, and how it maps to the caller's."""

    input_ids: torch.Tensor  # [B, L'] unkept placeholders and padding removed, re-padded
    attention_mask: torch.Tensor  # [B, L']
    inputs_embeds: torch.Tensor  # [B, L', H] text embeddings, kept features in the placeholders
    keep: torch.Tensor  # [B, L] bool, the caller's positions that survive
    target: torch.Tensor  # [B, L] long, where each surviving position went in [B, L']

    def _rows(self) -> torch.Tensor:
        return torch.arange(self.keep.shape[0], device=self.keep.device)[:, None].expand_as(self.keep)

    def move(self, tensor: torch.Tensor, fill) -> torch.Tensor:
        """``tensor`` ``[B, L, ...]`` laid out like the shortened batch (``fill`` elsewhere)."""
        tensor = tensor.to(self.keep.device)
        out = tensor.new_full((*self.input_ids.shape, *tensor.shape[2:]), fill)
        rows = self._rows()
        out[rows[self.keep], self.target[self.keep]] = tensor[self.keep]
        return out

    def restore(self, tensor: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`move`: ``[B, L', ...]`` back to the caller's layout, zeros elsewhere."""
        keep, target = self.keep.to(tensor.device), self.target.to(tensor.device)
        out = tensor.new_zeros((*keep.shape, *tensor.shape[2:]))
        rows = torch.arange(keep.shape[0], device=tensor.device)[:, None].expand_as(keep)
        out[keep] = tensor[rows[keep], target[keep]]
        return out

    def restore_prompt(self, caller_ids: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
        """``generate``'s output with the shortened prompt replaced by the caller's ``input_ids``.

        ``sequences`` is ``[B * n, L' + new]`` (``n`` sequences per prompt, as with beams or
        ``num_return_sequences``); the result is ``[B * n, L + new]``.
        """
        new_tokens = sequences[:, self.input_ids.shape[1] :]
        prompt = caller_ids.to(sequences.device)
        prompt = prompt.repeat_interleave(sequences.shape[0] // caller_ids.shape[0], dim=0)
        return torch.cat([prompt, new_tokens], dim=1)


def padding_side(attention_mask: torch.Tensor | None, default: str = "left") -> str:
    """The side the batch is padded on, as its mask shows it; ``default`` when it shows none."""
    if attention_mask is not None:
        if bool((attention_mask[:, 0] == 0).any()):
            return "left"
        if bool((attention_mask[:, -1] == 0).any()):
            return "right"
    return default


def rewrite_batch(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    placeholders: torch.Tensor,
    kept: torch.Tensor,
    features: torch.Tensor,
    embed: Callable[[torch.Tensor], torch.Tensor],
    *,
    side: str,
    pad_token_id: int,
) -> Rewritten:
    """Drop the unkept placeholders and the padding, re-pad on ``side``, scatter ``features``.

    Args:
        input_ids: ``[B, L]`` the caller's tokens.
        attention_mask: ``[B, L]`` padding mask, or ``None`` for no padding.
        placeholders: ``[B, L]`` bool, the positions of visual placeholder tokens.
        kept: ``[P]`` bool, one per placeholder in row-major order (``P = placeholders.sum()``):
            whether it survives.
        features: ``[kept.sum(), H]`` what the surviving placeholders receive, in the same order.
        embed: maps token ids to their embeddings (the model's input embedding).
        side: ``"left"`` or ``"right"``, where the shortened rows are padded.
        pad_token_id: the token written into the new padding.
    """
    if placeholders.shape != input_ids.shape:
        raise ValueError(f"placeholders must be shaped like input_ids {tuple(input_ids.shape)}, got {tuple(placeholders.shape)}")
    count = int(placeholders.sum())
    if kept.shape != (count,):
        raise ValueError(f"kept must hold one flag per placeholder ({count}), got shape {tuple(kept.shape)}")
    if features.shape[0] != int(kept.sum()):
        raise ValueError(f"features must hold one row per kept placeholder ({int(kept.sum())}), got {features.shape[0]}")
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")

    real = torch.ones_like(placeholders) if attention_mask is None else attention_mask.bool()
    surviving = torch.zeros_like(placeholders)
    surviving[placeholders] = kept.to(placeholders.device)
    keep = surviving | (~placeholders & real)

    lengths = keep.sum(dim=1)
    length = int(lengths.max())
    target = keep.long().cumsum(dim=1) - 1
    if side == "left":
        target = target + (length - lengths)[:, None]
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(keep)
    new_ids = input_ids.new_full((input_ids.shape[0], length), pad_token_id)
    new_ids[rows[keep], target[keep]] = input_ids[keep]
    new_mask = input_ids.new_zeros((input_ids.shape[0], length))
    new_mask[rows[keep], target[keep]] = 1

    embeds = embed(new_ids)
    # Boolean indexing walks row by row, position by position: the placeholders' order.
    embeds[rows[surviving], target[surviving]] = features.to(embeds.device, embeds.dtype)
    return Rewritten(new_ids, new_mask, embeds, keep, target)
