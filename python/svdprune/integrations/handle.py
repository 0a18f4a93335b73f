"""Wrapping a model's ``forward`` and ``generate`` so that they see only the kept visual tokens.

:class:`PruneHandle` replaces ``model.forward`` and ``model.generate`` on the instance. A call that
carries images or videos is rewritten before the model's own method runs: the family's adapter
describes the visuals, :func:`~svdprune.integrations.selection.select_placeholders` chooses the
kept tokens, :func:`~svdprune.integrations.batch.rewrite_batch` shortens the batch, and the model
receives ``inputs_embeds`` and the shortened attention mask instead of pixels. The language model
therefore never encodes an image itself, and transformers builds the KV cache from the shortened
sequence in every supported version. Calls without images go straight through.

Positions: with ``positions="compact"`` transformers numbers the shortened sequence itself. With
``"keep"`` the handle passes ``position_ids`` on every call it rewrites and on every step of a
``generate`` that it started: the kept tokens' positions in the full sequence (the adapter's
:meth:`~svdprune.integrations.adapter.Adapter.position_ids`), then, for each new token, one more
than the row's largest position, as the unpruned model continues (transformers' ``rope_deltas``).
Passing them at every step makes the continuation independent of how each transformers version
tracks it. Visual features that a family feeds into later layers (Qwen3-VL's deepstack) reach the
language model's pass over the prompt through a forward pre-hook, the kept tokens' only.

Follow-up turns: the KV cache of a pruned call holds the shortened prompt, so the handle keeps
that prompt on the cache (:class:`CachedPrompt`), and a later call that continues the cache
without images is laid out as the cache is: the caller's ids (beginning with the earlier call's)
and attention mask shortened alike, positions continued.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import time
from dataclasses import dataclass

import torch

from .adapter import Adapter
from .batch import Rewritten, padding_side, rewrite_batch
from .selection import select_placeholders

__all__ = ["PruneHandle", "Prompt", "tokenizer_of"]


def tokenizer_of(processor):
    """The tokenizer whose padding side and pad token pruning uses: ``processor``'s own, or
    ``processor`` itself when it is a tokenizer; ``None`` when it is neither (or ``None``)."""
    for candidate in (getattr(processor, "tokenizer", None), processor):
        if hasattr(candidate, "padding_side") and hasattr(candidate, "pad_token_id"):
            return candidate
    return None


@dataclass
class Prompt:
    """A pruned prompt as the language model receives it, and where the sequence goes on from it."""

    batch: Rewritten  # the shortened batch and its map to the caller's layout
    positions: torch.Tensor | None  # [B, L', P] the kept tokens' positions in the full sequence; None: "compact"
    next_position: torch.Tensor | None  # [B] the position of each row's first new token
    visual_mask: torch.Tensor  # [B, L'] bool, where the kept visual tokens are in the shortened batch
    extra: torch.Tensor  # [kept, X] their features beyond the embedding width (X = 0: none)

    def position_ids(self, start: int, count: int, rows: int) -> torch.Tensor:
        """The model's ``position_ids`` for ``count`` tokens from shortened position ``start`` on,
        for ``rows`` rows (the batch, or generate's several sequences per prompt): ``[rows, count]``
        with one index per token, ``[P, rows, count]`` with ``P``. Prompt tokens have their
        full-sequence positions; each new token one more, in every index, than the one before."""
        length = self.positions.shape[1]
        index = torch.arange(start, start + count, device=self.positions.device)
        ids = torch.where(
            (index < length)[None, :, None],
            self.positions[:, index.clamp(max=length - 1)],
            (self.next_position[:, None] + index - length)[..., None],
        )
        ids = ids.repeat_interleave(rows // ids.shape[0], dim=0).movedim(-1, 0)
        return ids[0] if ids.shape[0] == 1 else ids



@dataclass
class CachedPrompt:
    """What a KV cache built by a pruned call holds, kept on the cache (as ``_svdprune_prompt``)
    so that a later call continuing it is laid out as the cache is: the cache starts with the
    shortened prompt, the caller's sequences with the caller's."""

    callers_prompt: torch.Tensor  # [B, L] the caller's input_ids of the pruned call
    prompt: Prompt  # the shortened prompt, its positions and where the sequence goes on from it

    @property
    def removed(self) -> int:
        return self.callers_prompt.shape[1] - self.prompt.batch.input_ids.shape[1]

    def check_rows(self, rows: int) -> None:
        if rows != self.callers_prompt.shape[0]:
            raise ValueError(
                f"svdprune: past_key_values holds the pruned prompt of {self.callers_prompt.shape[0]} rows, "
                f"got {rows} (several sequences per prompt cannot be continued): pass the conversation "
                "with its pixel_values again, without past_key_values"
            )

    def shorten_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The caller's ``input_ids`` (the pruned call's sequences, then more) as the cache continues them."""
        self.check_rows(input_ids.shape[0])
        length = self.callers_prompt.shape[1]
        callers = self.callers_prompt.to(input_ids.device)
        if input_ids.shape[1] < length or not torch.equal(input_ids[:, :length], callers):
            raise ValueError(
                "svdprune: past_key_values comes from a pruned call and holds its shortened prompt: input_ids "
                "must begin with that call's input_ids (as its returned sequences do), or pass the conversation "
                "with its pixel_values again, without past_key_values"
            )
        shortened = self.prompt.batch.input_ids.to(input_ids.device)
        return torch.cat([shortened, input_ids[:, length:]], dim=1)

    def shorten_mask(self, attention_mask: torch.Tensor | None, length: int) -> torch.Tensor:
        """The caller's ``attention_mask`` over ``length`` tokens in its layout, in the cache's."""
        shortened = self.prompt.batch.attention_mask
        if attention_mask is None:
            rest = shortened.new_ones(shortened.shape[0], length - self.callers_prompt.shape[1])
            return torch.cat([shortened, rest], dim=1)
        if attention_mask.shape != (shortened.shape[0], length):
            raise ValueError(
                f"svdprune: attention_mask must cover the whole sequence in the caller's layout, "
                f"{length} tokens, got shape {tuple(attention_mask.shape)}"
            )
        rest = attention_mask[:, self.callers_prompt.shape[1] :].to(shortened)
        return torch.cat([shortened.to(rest.device), rest], dim=1)


def cache_of(arguments) -> object | None:
    """The KV cache among a call's arguments (a dict) or in a model's output: ``cache`` in
    transformers 5.x, ``past_key_values`` in 4.x."""
    get = arguments.get if isinstance(arguments, dict) else lambda name: getattr(arguments, name, None)
    cache = get("cache")
    return get("past_key_values") if cache is None else cache


def cached_prompt(call: dict) -> CachedPrompt | None:
    return getattr(cache_of(call), "_svdprune_prompt", None)


def remember_prompt(output, callers_prompt: torch.Tensor, prompt: Prompt) -> None:
    cache = cache_of(output)
    if cache is not None and getattr(cache, "_svdprune_prompt", None) is None:
        try:
            cache._svdprune_prompt = CachedPrompt(callers_prompt, prompt)
        except AttributeError:  # a cache type that takes no attributes: left as it is
            pass

class PruneHandle:
    """Returned by :func:`svdprune.prune`. ``remove()`` (or leaving the ``with`` block) restores the model.

    ``last_mask`` holds the placeholders kept in the latest call that carried images or videos
    (visuals in placeholder order, images before videos): an ``[images, N]`` bool tensor when every
    visual has the same number N of placeholders (LLaVA-1.5), otherwise a list of ``[N_i]`` masks
    over each visual's placeholders, newlines included. ``None`` before the first such call.
    ``last_visuals`` holds that call's visuals, detached from any autograd graph.
    ``selection_seconds`` sums, over every such call, the wall time spent choosing the kept tokens
    (the scoring and selection; not the vision tower nor the language model), on CUDA up to the
    end of the GPU's work.

    ``with handle:`` on a removed handle installs it again (and removes it at the end of the
    block). A ``copy.deepcopy`` of the pruned model is pruned the same way, by a handle of its own.
    """

    def __init__(
        self, model, adapter: Adapter, processor, budget, variance, method, source, strategy, scope, positions, newlines
    ):
        self.model = model
        self.adapter = adapter
        self.tokenizer = tokenizer_of(processor)
        self.budget = budget
        self.variance = variance
        self.method = method
        self.source = source
        self.strategy = strategy
        self.scope = scope
        self.positions = positions
        self.newlines = newlines
        self.last_mask: torch.Tensor | list[torch.Tensor] | None = None
        self.last_visuals: list | None = None  # the adapter's description of the latest visuals
        self.selection_seconds = 0.0
        self._saved: dict[str, object] = {}
        self._generating: Prompt | None = None  # the prompt of a running generate that needs positions or extras
        self._generate_depth = 0  # > 0 while a generate that this handle started runs
        self._install()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        budget = "adaptive" if self.budget is None else self.budget
        return (
            f"PruneHandle({self.adapter.family}, budget={budget}, scope={self.scope!r}, variance={self.variance}, "
            f"method={self.method!r}, strategy={self.strategy!r}, source={self.source!r}, "
            f"positions={self.positions!r}, newlines={self.newlines!r}, {state})"
        )

    @property
    def active(self) -> bool:
        return bool(self._saved)

    def __enter__(self) -> "PruneHandle":
        if not self.active:
            self._install()
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    # -- installation -------------------------------------------------------------------------

    def _install(self) -> None:
        model = self.model
        if getattr(model, "_svdprune_handle", None) is not None:
            raise RuntimeError("svdprune.prune: this model is already pruned; call .remove() on its handle first")
        # Instance attributes shadow the class's methods; remember what was there (accelerate's
        # hooks, for one, also live in the instance dict) to put it back in remove(). None: nothing
        # (a marker that stays itself in a deep copy of the model, unlike a sentinel object).
        for name in ("forward", "generate"):
            self._saved[name] = model.__dict__.get(name)
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
            if previous is None:
                self.model.__dict__.pop(name, None)
            else:
                setattr(self.model, name, previous)
        self._saved = {}
        del self.model._svdprune_handle

    # -- one call -------------------------------------------------------------------------------

    def _pad_token_id(self) -> int:
        config = self.model.config
        candidates = [
            getattr(self.tokenizer, "pad_token_id", None),
            getattr(self.model.generation_config, "pad_token_id", None),
            getattr(config, "pad_token_id", None),
            getattr(getattr(config, "text_config", None), "pad_token_id", None),
        ]
        return next((c for c in candidates if isinstance(c, int)), 0)

    def _rewrite(self, input_ids, call: dict) -> Prompt:
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

        positions = None
        if self.positions == "keep":  # before visuals() removes the arguments they are computed from
            positions = self.adapter.position_ids(input_ids, attention_mask, call)
        kinds = self.adapter.visuals(call, self.source, self.scope)
        start = _finished_work_time(input_ids.device)
        placeholders, kept, features, masks = select_placeholders(
            input_ids, kinds, self.budget, self.variance, self.method, self.strategy, newlines=self.newlines
        )
        self.selection_seconds += _finished_work_time(input_ids.device) - start
        # Detached: a training forward's graph belongs to its output, not to the handle.
        self.last_visuals = [
            dataclasses.replace(visual, features=visual.features.detach(), scored=visual.scored.detach())
            for _, _, group in kinds
            for visual in group
        ]
        same_length = len({mask.shape[0] for mask in masks}) == 1
        self.last_mask = torch.stack(masks) if same_length else masks

        side = padding_side(attention_mask, getattr(self.tokenizer, "padding_side", None) or "left")
        width = embedding.embedding_dim
        batch = rewrite_batch(
            input_ids, attention_mask, placeholders, kept, features[:, :width], embedding, side=side,
            pad_token_id=self._pad_token_id(),
        )
        next_position = None
        if positions is not None:
            real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
            next_position = positions.masked_fill(~real[..., None], -1).amax(dim=(1, 2)) + 1
            positions = batch.move(positions, 0)
        return Prompt(batch, positions, next_position, batch.move(placeholders, False), features[:, width:])

    @contextlib.contextmanager
    def _extras_for(self, prompt: Prompt | None):
        """While active, the language model's calls receive ``prompt``'s extra visual features."""
        if prompt is None or prompt.extra.shape[1] == 0:
            yield
            return

        def add(module, args, kwargs):
            rows = kwargs["inputs_embeds"].shape[0]
            mask, extra = prompt.visual_mask, prompt.extra
            if rows != mask.shape[0]:  # generate runs several sequences per prompt
                copies = rows // mask.shape[0]
                extra = torch.cat([part.repeat(copies, 1) for part in extra.split(mask.sum(1).tolist())])
                mask = mask.repeat_interleave(copies, dim=0)
            kwargs.update(self.adapter.language_model_inputs(mask, extra))
            return args, kwargs

        # First among the pre-hooks, so that others see the language model's complete inputs.
        hook = self.adapter.language_model.register_forward_pre_hook(add, with_kwargs=True, prepend=True)
        try:
            yield
        finally:
            hook.remove()

    def _forward(self, forward, *args, **kwargs):
        signature = inspect.signature(forward)
        call = dict(signature.bind(*args, **kwargs).arguments)
        for parameter in signature.parameters.values():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                call.update(call.pop(parameter.name, {}))
        if not self.adapter.has_visual_input(call):
            if self._generating is not None:
                return self._generation_step(forward, call, self._generating)
            cached = None if self._generate_depth else cached_prompt(call)
            if cached is not None:
                return self._continued_forward(forward, call, cached)
            return forward(*args, **kwargs)
        input_ids = call.pop("input_ids", None)
        prompt = self._rewrite(input_ids, call)
        pruned = prompt.batch
        if call.get("labels") is not None:
            call["labels"] = pruned.move(call["labels"], -100)
        if call.get("cache_position") is not None:  # transformers 4.x
            start = call["cache_position"][0]
            call["cache_position"] = torch.arange(pruned.input_ids.shape[1], device=start.device) + start
        if prompt.positions is not None:
            rows, length = pruned.input_ids.shape
            call["position_ids"] = prompt.position_ids(0, length, rows)
        logits_to_keep = call.pop("logits_to_keep", 0)
        wants_tuple = call.pop("return_dict", None) is False

        with self._extras_for(prompt):
            output = forward(
                inputs_embeds=pruned.inputs_embeds,
                attention_mask=pruned.attention_mask,
                logits_to_keep=0,
                return_dict=True,
                **call,
            )
        remember_prompt(output, input_ids, prompt)
        # Lay the logits out like the caller's input_ids, then apply logits_to_keep there.
        logits = pruned.restore(output.logits)
        if isinstance(logits_to_keep, int):
            output.logits = logits[:, -logits_to_keep:] if logits_to_keep > 0 else logits
        else:
            output.logits = logits[:, logits_to_keep]
        return output.to_tuple() if wants_tuple else output

    def _continued_forward(self, forward, call: dict, cached: CachedPrompt):
        """A forward over new tokens after a cache that a pruned call built: the caller's
        attention mask (and positions) laid out as the cache is."""
        tokens = call.get("inputs_embeds")
        tokens = call["input_ids"] if tokens is None else tokens
        cached.check_rows(tokens.shape[0])
        if call.get("position_ids") is not None:
            raise ValueError("svdprune: position_ids cannot be given when continuing a pruned call's cache")
        start = int(cache_of(call).get_seq_length())
        call["attention_mask"] = cached.shorten_mask(call.get("attention_mask"), start + cached.removed + tokens.shape[1])
        if call.get("cache_position") is not None:  # transformers 4.x
            call["cache_position"] = torch.arange(tokens.shape[1], device=call["cache_position"].device) + start
        if cached.prompt.positions is not None:
            call["position_ids"] = cached.prompt.position_ids(start, tokens.shape[1], tokens.shape[0])
        return forward(**call)

    def _generation_step(self, forward, call: dict, prompt: Prompt):
        """One step of a pruned ``generate`` (the prompt's pass, then one per new token): the
        positions that step's tokens continue from, and the extra features on the prompt's pass."""
        tokens = call.get("inputs_embeds")
        tokens = call["input_ids"] if tokens is None else tokens
        cache = cache_of(call)
        start = 0 if cache is None else int(cache.get_seq_length())
        if prompt.positions is not None:
            call["position_ids"] = prompt.position_ids(start, tokens.shape[1], tokens.shape[0])
        with self._extras_for(prompt if start == 0 else None):
            return forward(**call)

    def _generate(self, generate, inputs=None, *args, **kwargs):
        if not self.adapter.has_visual_input(kwargs):
            cached = cached_prompt(kwargs)
            if cached is None:
                return generate(inputs, *args, **kwargs)
            return self._continued_generate(generate, cached, inputs, *args, **kwargs)
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        with torch.no_grad():  # the vision side runs as in generate itself
            prompt = self._rewrite(input_ids, kwargs)
        pruned = prompt.batch
        # max_length / min_length count the prompt; keep the number of new tokens unchanged.
        removed = input_ids.shape[1] - pruned.input_ids.shape[1]
        for key in ("max_length", "min_length"):
            if kwargs.get(key) is not None:
                kwargs[key] -= removed
        if kwargs.get("streamer") is not None:
            kwargs["streamer"] = _CallersPrompt(kwargs["streamer"], input_ids)

        output = self._run_generate(
            generate, prompt, *args, input_ids=pruned.input_ids, inputs_embeds=pruned.inputs_embeds,
            attention_mask=pruned.attention_mask, **kwargs,
        )
        # generate returns the prompt it was given followed by the new tokens: put the caller's
        # prompt back so that slicing at input_ids.shape[1] finds the answer, as without pruning.
        if isinstance(output, torch.Tensor):
            return pruned.restore_prompt(input_ids, output)
        remember_prompt(output, input_ids, prompt)
        output.sequences = pruned.restore_prompt(input_ids, output.sequences)
        return output

    def _continued_generate(self, generate, cached: CachedPrompt, inputs=None, *args, **kwargs):
        """A generate that continues a cache a pruned call built (a follow-up turn): the caller's
        sequence, which begins with that call's input_ids, laid out as the cache is."""
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        if input_ids is None or kwargs.get("inputs_embeds") is not None or kwargs.get("position_ids") is not None:
            raise ValueError(
                "svdprune: a generate that continues a pruned call's past_key_values needs input_ids "
                "(that call's sequences, then the new tokens), without inputs_embeds or position_ids"
            )
        shortened = cached.shorten_ids(input_ids)
        kwargs["attention_mask"] = cached.shorten_mask(kwargs.get("attention_mask"), input_ids.shape[1])
        for key in ("max_length", "min_length"):
            if kwargs.get(key) is not None:
                kwargs[key] -= cached.removed
        if kwargs.get("streamer") is not None:
            kwargs["streamer"] = _CallersPrompt(kwargs["streamer"], input_ids)
        output = self._run_generate(generate, cached.prompt, *args, input_ids=shortened, **kwargs)
        restore = cached.prompt.batch.restore_prompt
        if isinstance(output, torch.Tensor):
            return restore(cached.callers_prompt, output)
        output.sequences = restore(cached.callers_prompt, output.sequences)
        return output

    def _run_generate(self, generate, prompt: Prompt, *args, **kwargs):
        """The model's generate, its steps given ``prompt``'s positions and extra features."""
        if prompt.positions is not None or prompt.extra.shape[1] > 0:
            self._generating = prompt
        self._generate_depth += 1
        try:
            return generate(None, *args, **kwargs)
        finally:
            self._generate_depth -= 1
            self._generating = None


class _CallersPrompt:
    """A streamer's stand-in that hands it the caller's prompt where ``generate`` puts the shortened
    one (its first ``put``), as ``generate`` returns the caller's prompt too; the new tokens as they come."""

    def __init__(self, streamer, prompt: torch.Tensor):
        self.streamer = streamer
        self.prompt = prompt

    def put(self, value: torch.Tensor) -> None:
        if self.prompt is not None:  # the prompt, once per sequence that generate runs for it
            copies = value.shape[0] // self.prompt.shape[0]
            value, self.prompt = self.prompt.cpu().repeat_interleave(copies, dim=0), None
        self.streamer.put(value)

    def end(self) -> None:
        self.streamer.end()


def _finished_work_time(device: torch.device) -> float:
    """``time.perf_counter()`` once the work queued on ``device`` has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _check_call(input_ids, arguments: dict) -> None:
    """Arguments that cannot be combined with pruning, rejected rather than silently misapplied."""
    if input_ids is None or arguments.get("inputs_embeds") is not None:
        raise ValueError("svdprune: pixel_values need input_ids with the image tokens (not inputs_embeds)")
    if arguments.get("position_ids") is not None:
        raise ValueError(
            "svdprune: position_ids cannot be given together with pixel_values while pruning: "
            "svdprune derives them for the shortened sequence (see prune's positions argument)"
        )
