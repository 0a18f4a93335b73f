"""Wrapping a model's ``forward`` and ``generate`` so that they see only the kept visual tokens.

:class:`PruneHandle` replaces ``model.forward`` and ``model.generate`` on the instance. A call that
carries images or videos is rewritten before the model's own method runs: the family's adapter
describes the visuals, :func:`~svdprune.integrations.selection.select_placeholders` chooses the
kept tokens, :func:`~svdprune.integrations.batch.rewrite_batch` shortens the batch, and the model
receives ``inputs_embeds`` and the shortened attention mask instead of pixels. The language model
therefore never encodes an image itself, and transformers builds positions and the KV cache from
the shortened sequence in every supported version. Calls without images go straight through.
"""

from __future__ import annotations

import functools
import inspect

import torch

from .adapter import Adapter
from .batch import Rewritten, padding_side, rewrite_batch
from .selection import select_placeholders

__all__ = ["PruneHandle"]

_MISSING = object()  # marks "no instance attribute" among the saved forward/generate


class PruneHandle:
    """Returned by :func:`svdprune.prune`. ``remove()`` (or leaving the ``with`` block) restores the model.

    ``last_mask`` holds the placeholders kept in the latest call that carried images or videos
    (visuals in placeholder order, images before videos): an ``[images, N]`` bool tensor when every
    visual has the same number N of placeholders (LLaVA-1.5), otherwise a list of ``[N_i]`` masks
    over each visual's placeholders, newlines included. ``None`` before the first such call.
    """

    def __init__(self, model, adapter: Adapter, processor, budget, variance, method, source, strategy, scope):
        self.model = model
        self.adapter = adapter
        self.processor = processor
        self.budget = budget
        self.variance = variance
        self.method = method
        self.source = source
        self.strategy = strategy
        self.scope = scope
        self.last_mask: torch.Tensor | list[torch.Tensor] | None = None
        self.last_visuals: list | None = None  # the adapter's description of the latest visuals
        self._saved: dict[str, object] = {}
        self._install()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        budget = "adaptive" if self.budget is None else self.budget
        return (
            f"PruneHandle({self.adapter.family}, budget={budget}, scope={self.scope!r}, variance={self.variance}, "
            f"method={self.method!r}, strategy={self.strategy!r}, source={self.source!r}, {state})"
        )

    @property
    def active(self) -> bool:
        return bool(self._saved)

    def __enter__(self) -> "PruneHandle":
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    # -- installation -------------------------------------------------------------------------

    def _install(self) -> None:
        model = self.model
        # Instance attributes shadow the class's methods; remember what was there (accelerate's
        # hooks, for one, also live in the instance dict) to put it back in remove().
        for name in ("forward", "generate"):
            self._saved[name] = model.__dict__.get(name, _MISSING)
        forward, generate = model.forward, model.generate
        # functools.wraps keeps the signatures visible to inspect.signature, which transformers
        # uses to decide which arguments forward() and generate() accept.
        model.forward = functools.wraps(forward)(functools.partial(self._forward, forward))
        model.generate = functools.wraps(generate)(functools.partial(self._generate, generate))
        model._svdprune_handle = self

    def remove(self) -> None:
        """Restore the model's own ``forward`` and ``generate``. Calling it twice is harmless."""
        if not self.active:
            return
        for name, previous in self._saved.items():
            if previous is _MISSING:
                self.model.__dict__.pop(name, None)
            else:
                setattr(self.model, name, previous)
        self._saved = {}
        del self.model._svdprune_handle

    # -- one call -------------------------------------------------------------------------------

    def _pad_token_id(self) -> int:
        tokenizer = getattr(self.processor, "tokenizer", None)
        config = self.model.config
        candidates = [
            getattr(tokenizer, "pad_token_id", None),
            getattr(self.model.generation_config, "pad_token_id", None),
            getattr(config, "pad_token_id", None),
            getattr(getattr(config, "text_config", None), "pad_token_id", None),
        ]
        return next((c for c in candidates if isinstance(c, int)), 0)

    def _rewrite(self, input_ids, call: dict) -> Rewritten:
        """Select the kept tokens of the call's visuals and shorten the batch around them."""
        _check_call(input_ids, call)
        call.pop("inputs_embeds", None)
        attention_mask = call.pop("attention_mask", None)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError("svdprune: attention_mask must be a 2D [batch, length] padding mask")
        # Like generate() in transformers 5.x, accept inputs on another device than the model.
        embedding = self.model.get_input_embeddings()
        input_ids = input_ids.to(embedding.weight.device)
        attention_mask = None if attention_mask is None else attention_mask.to(input_ids.device)

        kinds = self.adapter.visuals(call, self.source, self.scope)
        placeholders, kept, features, masks = select_placeholders(
            input_ids, kinds, self.budget, self.variance, self.method, self.strategy
        )
        self.last_visuals = [visual for _, _, group in kinds for visual in group]
        same_length = len({mask.shape[0] for mask in masks}) == 1
        self.last_mask = torch.stack(masks) if same_length else masks

        tokenizer = getattr(self.processor, "tokenizer", None)
        side = padding_side(attention_mask, getattr(tokenizer, "padding_side", None) or "left")
        return rewrite_batch(
            input_ids, attention_mask, placeholders, kept, features, embedding, side=side, pad_token_id=self._pad_token_id()
        )

    def _forward(self, forward, *args, **kwargs):
        signature = inspect.signature(forward)
        call = dict(signature.bind(*args, **kwargs).arguments)
        for parameter in signature.parameters.values():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                call.update(call.pop(parameter.name, {}))
        if not self.adapter.has_visual_input(call):
            return forward(*args, **kwargs)
        input_ids = call.pop("input_ids", None)
        pruned = self._rewrite(input_ids, call)
        if call.get("labels") is not None:
            call["labels"] = pruned.move(call["labels"], -100)
        if call.get("cache_position") is not None:  # transformers 4.x
            start = call["cache_position"][0]
            call["cache_position"] = torch.arange(pruned.input_ids.shape[1], device=start.device) + start
        logits_to_keep = call.pop("logits_to_keep", 0)
        wants_tuple = call.pop("return_dict", None) is False

        output = forward(
            inputs_embeds=pruned.inputs_embeds,
            attention_mask=pruned.attention_mask,
            logits_to_keep=0,
            return_dict=True,
            **call,
        )
        # Lay the logits out like the caller's input_ids, then apply logits_to_keep there.
        logits = pruned.restore(output.logits)
        if isinstance(logits_to_keep, int):
            output.logits = logits[:, -logits_to_keep:] if logits_to_keep > 0 else logits
        else:
            output.logits = logits[:, logits_to_keep]
        return output.to_tuple() if wants_tuple else output

    def _generate(self, generate, inputs=None, *args, **kwargs):
        if not self.adapter.has_visual_input(kwargs):
            return generate(inputs, *args, **kwargs)
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        pruned = self._rewrite(input_ids, kwargs)
        # max_length / min_length count the prompt; keep the number of new tokens unchanged.
        removed = input_ids.shape[1] - pruned.input_ids.shape[1]
        for key in ("max_length", "min_length"):
            if kwargs.get(key) is not None:
                kwargs[key] -= removed

        output = generate(
            None,
            *args,
            input_ids=pruned.input_ids,
            inputs_embeds=pruned.inputs_embeds,
            attention_mask=pruned.attention_mask,
            **kwargs,
        )
        # generate returns the prompt it was given followed by the new tokens: put the caller's
        # prompt back so that slicing at input_ids.shape[1] finds the answer, as without pruning.
        if isinstance(output, torch.Tensor):
            return pruned.restore_prompt(input_ids, output)
        output.sequences = pruned.restore_prompt(input_ids, output.sequences)
        return output


def _check_call(input_ids, arguments: dict) -> None:
    """Arguments that cannot be combined with pruning, rejected rather than silently misapplied."""
    if input_ids is None or arguments.get("inputs_embeds") is not None:
        raise ValueError("svdprune: pixel_values need input_ids with the image tokens (not inputs_embeds)")
    if arguments.get("position_ids") is not None:
        raise ValueError(
            "svdprune: position_ids cannot be given together with pixel_values while pruning: "
            "they are derived from the pruned attention mask"
        )
