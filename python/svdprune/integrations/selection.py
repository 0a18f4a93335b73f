"""Choosing the kept visual tokens of each image or video, whatever the model family.

A family's adapter describes every image or video as a :class:`Visual`: the features its
placeholders receive, the features the selection scores, the groups of tokens that share one
budget (the whole image, one tile, one frame, the whole clip) and the row-end ``image_newline``
tokens some models insert. :func:`select_tokens` runs ``svdprune_cuda`` on each group and returns,
per visual, which of its placeholders survive.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

import svdprune_cuda

__all__ = ["Visual", "select_tokens", "select_placeholders"]


@dataclass
class Visual:
    """One image or video as the language model receives it: ``L`` placeholder positions.

    ``rows`` lets a newline follow its row: the newline at position ``j`` survives when a visual
    token with the same ``rows`` value survives (ids are ``-1`` for tokens outside any row).
    """

    # [L, H] what the L placeholders receive (projected, newlines included); a family that also
    # feeds visual features into later layers appends them as further columns (Qwen3-VL's deepstack).
    features: torch.Tensor
    scored: torch.Tensor  # [L, D] what the selection scores (rows at newlines are not read)
    groups: list[torch.Tensor]  # long index tensors into [0, L): tokens that share one budget
    newline: torch.Tensor  # [L] bool, row-end tokens the selection does not score
    rows: torch.Tensor  # [L] long, the row of each token and newline (-1: none)
    sources: torch.Tensor  # [L] long, the vision-tower token (crop * tokens per crop + token) or -1


def select_tokens(
    visuals: list[Visual],
    budget: int | None,
    variance: float,
    method: str,
    strategy: str,
    *,
    keep_smaller: bool = False,
    newlines: str | None = "kept",
) -> list[torch.Tensor]:
    """Per visual, an ``[L]`` bool mask of the placeholders that survive.

    ``budget`` tokens are kept in every group (``None``: the adaptive count per group). A group
    of fewer tokens than ``budget`` is an error, or with ``keep_smaller`` keeps them all (vLLM
    sizes its placeholders so). Groups of equal size go through one batched call of the op, as a
    batch of LLaVA-1.5 images does. Newlines are never scored; with ``newlines="kept"`` one
    survives with its row (when at least one token of the row does), with ``"all"`` every one
    survives, with ``"none"`` (or ``None``, for visuals without newlines) none does.
    """
    masks = [torch.zeros(v.features.shape[0], dtype=torch.bool, device=v.features.device) for v in visuals]
    by_size: dict[int, list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for index, visual in enumerate(visuals):
        for group in visual.groups:
            if keep_smaller and budget is not None and budget > group.numel():
                masks[index][group.to(masks[index].device)] = True
                continue
            if budget is not None and budget > group.numel():
                raise ValueError(
                    f"budget {budget} is larger than the {group.numel()} visual tokens it applies to "
                    f"(visual {index}); choose a budget of at most {group.numel()} or a wider scope"
                )
            by_size[group.numel()].append((index, group))
    for members in by_size.values():
        scored = torch.stack([visuals[i].scored[g.to(visuals[i].scored.device)] for i, g in members]).detach()
        if budget is None:
            kept = svdprune_cuda.select_adaptive(scored, variance, method=method)[0]
        else:
            indices = svdprune_cuda.select(scored, budget, variance, method=method, strategy=strategy)[0]
            kept = torch.zeros(scored.shape[:2], dtype=torch.bool, device=scored.device)
            kept.scatter_(1, indices, True)
        for (index, group), group_kept in zip(members, kept):
            masks[index][group.to(masks[index].device)] = group_kept.to(masks[index].device)
    for visual, mask in zip(visuals, masks):
        if newlines == "all":
            mask |= visual.newline.to(mask.device)
        elif newlines == "kept" and visual.newline.any():
            rows = visual.rows.to(mask.device)
            kept_rows = rows[mask & (rows >= 0)].unique()
            mask |= visual.newline.to(mask.device) & torch.isin(rows, kept_rows)
    return masks


def select_placeholders(
    input_ids: torch.Tensor,
    kinds: list[tuple[str, int, list[Visual]]],
    budget: int | None,
    variance: float,
    method: str,
    strategy: str,
    *,
    newlines: str | None = "kept",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Select every visual's tokens and lay the result out over ``input_ids``' placeholders.

    ``kinds`` is an adapter's answer: per kind ("image", "video"), its placeholder token id and
    its visuals in placeholder order; ``newlines`` as in :func:`select_tokens`. Returns ``placeholders`` ``[B, L]`` bool, ``kept`` ``[P]``
    bool (one per placeholder, row-major), the kept ``features`` ``[kept, H]`` in that order (the
    arguments :func:`~svdprune.integrations.batch.rewrite_batch` takes), and the per-visual masks.
    """
    visuals = [visual for _, _, group in kinds for visual in group]
    masks = select_tokens(visuals, budget, variance, method, strategy, newlines=newlines)
    placeholders = torch.zeros_like(input_ids, dtype=torch.bool)
    surviving = torch.zeros_like(placeholders)
    kept_features = []
    start = 0
    for kind, token_id, group in kinds:
        slots = input_ids == token_id
        lengths = [visual.features.shape[0] for visual in group]
        if int(slots.sum()) != sum(lengths):
            raise ValueError(
                f"{kind.capitalize()} features and {kind} tokens do not match: {int(slots.sum())} {kind} tokens in "
                f"input_ids for {len(group)} {kind}(s) of {lengths} tokens"
            )
        group_masks = masks[start : start + len(group)]
        start += len(group)
        placeholders |= slots
        surviving[slots] = torch.cat(group_masks).to(slots.device)
        kept_features.append((slots, torch.cat([v.features[m] for v, m in zip(group, group_masks)])))
    # The kept features in row-major placeholder order, whatever kind each placeholder is.
    order = surviving.flatten().cumsum(0).view_as(surviving) - 1
    hidden = kept_features[0][1]
    features = hidden.new_empty((int(surviving.sum()), hidden.shape[-1]))
    for slots, values in kept_features:
        features[order[slots & surviving].to(features.device)] = values.to(features.dtype)
    return placeholders, surviving[placeholders], features, masks
