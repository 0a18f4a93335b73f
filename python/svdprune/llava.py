"""SVD-Prune inside Hugging Face transformers' ``LlavaForConditionalGeneration`` (LLaVA-1.5).

    model, processor = svdprune.llava.load("llava-hf/llava-1.5-7b-hf")
    with svdprune.llava.prune(model, processor, budget=64):
        inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device)
        output = model.generate(**inputs, max_new_tokens=32)

How it works, and why this way
------------------------------
The processor expands every ``<image>`` into N = 576 placeholder tokens and the model scatters the
image's 576 projected features into them (``masked_scatter``). Keeping K tokens therefore means
that the placeholders, the attention mask, the position ids and the KV cache must all shrink to
K per image, and with ``budget=None`` K differs from image to image, so it is known only after the
vision tower has run.

``prune()`` replaces ``model.forward`` and ``model.generate`` on the instance. When a call carries
``pixel_values``, the wrapper

1. runs the vision tower, takes the features the projector reads (``vision_feature_layer``, CLS
   dropped for the ``"default"`` strategy), projects them and selects the kept tokens with
   ``torch.ops.svdprune`` on either the projected (``source="projector"``) or the vision features
   (``source="vision"``, then only the kept tokens are projected);
2. drops the placeholders of the unkept tokens from ``input_ids`` (the first ``K_i`` placeholders
   of image ``i`` stay; they are all the same token, so which ones does not matter), drops the
   padding, and re-pads the rows on the side the batch was padded (left for generation);
3. embeds the shortened ``input_ids`` and scatters the kept projected features into the remaining
   placeholders, in their original order;
4. calls the original ``forward``/``generate`` with ``inputs_embeds`` (plus the shortened
   ``input_ids`` for ``generate``) and the new attention mask, and no ``pixel_values``.

Because the language model is handed finished ``inputs_embeds``, the inner model never encodes the
image itself: transformers 5.x's pre-prefill ``get_image_features`` call (``mm_encoder_outputs``)
and 4.57's first-step ``pixel_values`` path are simply not taken, and the attention mask, position
ids (derived from the mask by ``generate``) and KV cache are built from the shortened sequence by
transformers' own code in both major versions. The same code path serves fixed budgets, the
adaptive mode, padded batches and several images per prompt.

What callers see: ``generate`` returns the caller's original ``input_ids`` followed by the new
tokens, exactly as without pruning. ``forward`` returns logits laid out like the caller's
``input_ids`` (rows of pruned placeholders and padding are zero), so indexing with the caller's
attention mask keeps working; ``loss`` is computed on the pruned sequence; ``hidden_states``,
``attentions`` and the returned cache cover the pruned sequence. Continue a conversation with
``generate``, not by feeding the returned cache back into ``forward`` with the unpruned mask.
"""

from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import torch

import svdprune_cuda

__all__ = ["prune", "load", "selection_features", "PruneHandle", "SOURCES"]

SOURCES = ("projector", "vision")
_MISSING = object()  # marks "no instance attribute" among the saved forward/generate


@dataclass
class _Pruned:
    """The shortened batch handed to the language model."""

    input_ids: torch.Tensor  # [B, L'] placeholders of unkept tokens and padding removed, re-padded
    attention_mask: torch.Tensor  # [B, L']
    inputs_embeds: torch.Tensor  # [B, L', H] kept projected features in the placeholders
    keep: torch.Tensor  # [B, L] bool, the caller's positions that survive
    target: torch.Tensor  # [B, L] long, where each surviving position went in [B, L']

    def move(self, tensor: torch.Tensor, fill: int) -> torch.Tensor:
        """``tensor`` ``[B, L, ...]`` laid out like the shortened batch (``fill`` elsewhere)."""
        tensor = tensor.to(self.keep.device)
        out = tensor.new_full((self.input_ids.shape[0], self.input_ids.shape[1], *tensor.shape[2:]), fill)
        rows = torch.arange(tensor.shape[0], device=tensor.device)[:, None].expand_as(self.keep)
        out[rows[self.keep], self.target[self.keep]] = tensor[self.keep]
        return out

    def restore(self, tensor: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`move`: ``[B, L', ...]`` back to the caller's layout, zeros elsewhere."""
        out = tensor.new_zeros((*self.keep.shape, *tensor.shape[2:]))
        rows = torch.arange(tensor.shape[0], device=tensor.device)[:, None].expand_as(self.keep)
        out[self.keep] = tensor[rows[self.keep], self.target[self.keep]]
        return out


def _is_llava(model) -> bool:
    from transformers import LlavaForConditionalGeneration

    return isinstance(model, LlavaForConditionalGeneration)


def _tokens_per_image(config) -> int:
    """Visual tokens per image as LLaVA-1.5's processor counts them (576 at 336 px / 14 px)."""
    grid = config.vision_config.image_size // config.vision_config.patch_size
    return grid * grid + (1 if config.vision_feature_select_strategy == "full" else 0)


def _vision_features(vision_tower, pixel_values, layer, strategy) -> torch.Tensor:
    """``[images, N, D]``: the CLIP hidden states the projector reads, as LlavaModel builds them."""
    if strategy not in ("default", "full"):
        raise ValueError(f"vision_feature_select_strategy must be 'default' or 'full', got {strategy!r}")
    hidden_states = vision_tower(pixel_values, output_hidden_states=True).hidden_states
    layers = [layer] if isinstance(layer, int) else list(layer)
    selected = [hidden_states[i] for i in layers]
    if strategy == "default":
        selected = [h[:, 1:] for h in selected]  # drop CLS
    return torch.cat(selected, dim=-1)


def selection_features(model, pixel_values: torch.Tensor, source: str = "projector") -> torch.Tensor:
    """``[images, N, D]``: the features :func:`prune` scores for ``source`` (config's feature layer)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    config = model.config
    vision = _vision_features(
        model.model.vision_tower, pixel_values, config.vision_feature_layer, config.vision_feature_select_strategy
    )
    return model.model.multi_modal_projector(vision) if source == "projector" else vision


class PruneHandle:
    """Returned by :func:`prune`. ``remove()`` (or leaving the ``with`` block) restores the model.

    ``last_mask`` is the ``[images, N]`` bool mask of the tokens kept in the latest call that
    carried images (images in batch order), ``None`` before the first one.
    """

    def __init__(self, model, processor, budget, variance, method, source, strategy):
        self.model = model
        self.processor = processor
        self.budget = budget
        self.variance = variance
        self.method = method
        self.source = source
        self.strategy = strategy
        self.last_mask: torch.Tensor | None = None
        self._saved: dict[str, object] = {}
        self._install()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        budget = "adaptive" if self.budget is None else self.budget
        return (
            f"PruneHandle(budget={budget}, variance={self.variance}, method={self.method!r}, "
            f"strategy={self.strategy!r}, source={self.source!r}, {state})"
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

    # -- selection ----------------------------------------------------------------------------

    def _select(self, pixel_values, layer, feature_strategy) -> tuple[torch.Tensor, torch.Tensor]:
        """Kept projected features ``[kept, H]`` (image by image, token order) and the mask."""
        base = self.model.model
        vision = _vision_features(base.vision_tower, pixel_values, layer, feature_strategy)
        projected = base.multi_modal_projector(vision) if self.source == "projector" else None
        scored = (projected if projected is not None else vision).detach()  # selection has no gradient
        if self.budget is None:
            mask = svdprune_cuda.select_adaptive(scored, self.variance, method=self.method)[0]
        else:
            indices = svdprune_cuda.select(
                scored, self.budget, self.variance, method=self.method, strategy=self.strategy
            )[0]
            mask = torch.zeros(scored.shape[:2], dtype=torch.bool, device=scored.device)
            mask.scatter_(1, indices, True)
        self.last_mask = mask
        # Boolean indexing walks image by image, token by token: the order masked_scatter fills.
        if projected is not None:
            return projected[mask], mask
        return base.multi_modal_projector(vision[mask]), mask

    # -- rewriting the batch --------------------------------------------------------------------

    def _padding_side(self, attention_mask) -> str:
        if attention_mask is not None:
            if bool((attention_mask[:, 0] == 0).any()):
                return "left"
            if bool((attention_mask[:, -1] == 0).any()):
                return "right"
        tokenizer = getattr(self.processor, "tokenizer", None)
        return getattr(tokenizer, "padding_side", None) or "left"

    def _pad_token_id(self) -> int:
        tokenizer = getattr(self.processor, "tokenizer", None)
        candidates = [
            getattr(tokenizer, "pad_token_id", None),
            getattr(self.model.generation_config, "pad_token_id", None),
            getattr(self.model.config, "pad_token_id", None),
            getattr(self.model.config.text_config, "pad_token_id", None),
        ]
        for candidate in candidates:
            if isinstance(candidate, int):
                return candidate
        return 0

    def _prepare(self, input_ids, pixel_values, attention_mask, layer, feature_strategy) -> _Pruned:
        config = self.model.config
        layer = config.vision_feature_layer if layer is None else layer
        feature_strategy = config.vision_feature_select_strategy if feature_strategy is None else feature_strategy
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        if attention_mask is not None and attention_mask.dim() != 2:
            raise ValueError("svdprune.llava: attention_mask must be a 2D [batch, length] padding mask")

        # Like generate() in transformers 5.x, accept inputs on another device than the model.
        device = self.model.get_input_embeddings().weight.device
        input_ids = input_ids.to(device)
        attention_mask = None if attention_mask is None else attention_mask.to(device)
        vision_device = next(self.model.model.vision_tower.parameters()).device
        features, mask = self._select(pixel_values.to(vision_device), layer, feature_strategy)
        images, n = mask.shape
        is_image = input_ids == config.image_token_id
        placeholders = int(is_image.sum())
        if placeholders != images * n:
            raise ValueError(
                f"Image features and image tokens do not match: {placeholders} image tokens in input_ids "
                f"for {images} image(s) of {n} tokens"
            )

        # Placeholder j (counting through the batch row by row) belongs to image j // n; keep the
        # first count[i] placeholders of image i, every real text token, and no padding.
        ordinal = is_image.flatten().cumsum(0).view_as(input_ids).clamp(min=1) - 1
        counts = mask.sum(dim=1).to(input_ids.device)
        kept_placeholder = is_image & (ordinal % n < counts[ordinal // n])
        real = torch.ones_like(is_image) if attention_mask is None else attention_mask.bool()
        keep = kept_placeholder | (~is_image & real)

        lengths = keep.sum(dim=1)
        length = int(lengths.max())
        target = keep.long().cumsum(dim=1) - 1
        if self._padding_side(attention_mask) == "left":
            target = target + (length - lengths)[:, None]
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(keep)
        new_ids = input_ids.new_full((input_ids.shape[0], length), self._pad_token_id())
        new_ids[rows[keep], target[keep]] = input_ids[keep]
        new_mask = input_ids.new_zeros((input_ids.shape[0], length))
        new_mask[rows[keep], target[keep]] = 1

        embeds = self.model.get_input_embeddings()(new_ids)
        slots = (new_ids == config.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(slots, features.to(embeds.device, embeds.dtype))
        return _Pruned(new_ids, new_mask, embeds, keep, target)

    # -- the wrappers -------------------------------------------------------------------------

    def _forward(self, forward, *args, **kwargs):
        signature = inspect.signature(forward)
        call = dict(signature.bind(*args, **kwargs).arguments)
        for parameter in signature.parameters.values():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                call.update(call.pop(parameter.name, {}))
        if call.get("pixel_values") is None:
            return forward(*args, **kwargs)
        _check_call(call.get("input_ids"), call)
        call.pop("inputs_embeds", None)

        pruned = self._prepare(
            call.pop("input_ids", None),
            call.pop("pixel_values"),
            call.pop("attention_mask", None),
            call.pop("vision_feature_layer", None),
            call.pop("vision_feature_select_strategy", None),
        )
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
        if kwargs.get("pixel_values") is None:
            return generate(inputs, *args, **kwargs)
        input_ids = inputs if inputs is not None else kwargs.pop("input_ids", None)
        _check_call(input_ids, kwargs)
        kwargs.pop("inputs_embeds", None)

        pruned = self._prepare(
            input_ids,
            kwargs.pop("pixel_values"),
            kwargs.pop("attention_mask", None),
            kwargs.pop("vision_feature_layer", None),
            kwargs.pop("vision_feature_select_strategy", None),
        )
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
        sequences = output if isinstance(output, torch.Tensor) else output.sequences
        new_tokens = sequences[:, pruned.input_ids.shape[1] :]
        prompt = input_ids.to(sequences.device).repeat_interleave(sequences.shape[0] // input_ids.shape[0], dim=0)
        sequences = torch.cat([prompt, new_tokens], dim=1)
        if isinstance(output, torch.Tensor):
            return sequences
        output.sequences = sequences
        return output


def _check_call(input_ids, arguments: dict) -> None:
    """Arguments that cannot be combined with pruning, rejected rather than silently misapplied."""
    if input_ids is None or arguments.get("inputs_embeds") is not None:
        raise ValueError("svdprune.llava: pixel_values need input_ids with the image tokens (not inputs_embeds)")
    if arguments.get("position_ids") is not None:
        raise ValueError(
            "svdprune.llava: position_ids cannot be given together with pixel_values while pruning: "
            "they are derived from the pruned attention mask"
        )
    if arguments.get("image_sizes") is not None:
        raise ValueError("svdprune.llava: image_sizes (variable-resolution LLaVA variants) is not supported")


def prune(
    model,
    processor=None,
    *,
    budget: int | None = 64,
    variance: float = 0.9,
    method: str = "auto",
    source: str = "projector",
    strategy: str = "leverage",
) -> PruneHandle:
    """Make ``model`` (a ``LlavaForConditionalGeneration``) see only the selected visual tokens.

    Args:
        model: the LLaVA-1.5 model; its ``forward`` and ``generate`` are wrapped in place.
        processor: its ``LlavaProcessor`` (optional): the tokenizer's padding side and pad token
            are used when the batch itself does not show them.
        budget: tokens kept per image, in ``[1, N]`` (N = 576 for LLaVA-1.5), or ``None`` for the
            adaptive mode (``select_adaptive``: per image, the fewest tokens whose cumulative
            leverage reaches ``variance * rank``).
        variance: fraction of the energy the truncated SVD keeps, in ``(0, 1]``.
        method: ``"exact"``, ``"randomized"`` or ``"auto"``.
        source: ``"projector"`` selects on the projected features the language model receives,
            ``"vision"`` on the CLIP features the projector reads (then only kept tokens are
            projected). Either way the language model gets projected features of the kept tokens
            in their original order.
        strategy: how a fixed ``budget`` is chosen: ``"leverage"`` (top-K leverage, the paper's
            rule) or ``"pivoted"`` (greedy column pivoting on the top-K singular vectors, which
            keeps tokens that are not redundant with one another); see ``svdprune_cuda.select``.

    Returns:
        A :class:`PruneHandle`; ``handle.remove()`` or ``with prune(...):`` restores the model.
    """
    if not _is_llava(model):
        raise TypeError(
            "svdprune.llava.prune expects a transformers LlavaForConditionalGeneration (LLaVA-1.5), "
            f"got {type(model).__name__}"
        )
    if getattr(model, "_svdprune_handle", None) is not None:
        raise RuntimeError("svdprune.llava.prune: this model is already pruned; call .remove() on its handle first")
    n = _tokens_per_image(model.config)
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= n):
        raise ValueError(f"budget must be an int in [1, {n}] (tokens per image) or None for adaptive, got {budget!r}")
    if isinstance(variance, bool) or not isinstance(variance, (int, float)) or not 0 < variance <= 1:
        raise ValueError(f"variance must be in (0, 1], got {variance!r}")
    if method not in svdprune_cuda.METHODS:
        raise ValueError(f"method must be one of {svdprune_cuda.METHODS}, got {method!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if strategy not in svdprune_cuda.STRATEGIES:
        raise ValueError(f"strategy must be one of {svdprune_cuda.STRATEGIES}, got {strategy!r}")
    if budget is None and strategy != "leverage":
        raise ValueError(f"strategy {strategy!r} needs an int budget; the adaptive mode (budget=None) ranks by leverage")
    return PruneHandle(model, processor, budget, float(variance), method, source, strategy)


_CHECKPOINT_FILES = "config.json, model*.safetensors, tokenizer files and preprocessor_config.json"


def load(path_or_name: str | os.PathLike, *, device=None, dtype: torch.dtype | None = None):
    """Load a local LLaVA-1.5 checkpoint in the ``llava-hf/llava-1.5-7b-hf`` layout, offline.

    ``path_or_name`` is a directory or a Hub name already in the local Hugging Face cache; nothing
    is downloaded. ``device`` defaults to CUDA when available, ``dtype`` to float16 on CUDA and
    float32 on CPU. Returns ``(model, processor)`` with the model in eval mode.
    """
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype if dtype is not None else (torch.float16 if device.type == "cuda" else torch.float32)
    source = str(path_or_name)
    path = Path(source).expanduser()
    looks_like_path = path.exists() or path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1
    if looks_like_path:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"svdprune.llava.load: {source!r} is not a checkpoint directory (expected {_CHECKPOINT_FILES})")
        source = str(path)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=True)
        if config.model_type != "llava":
            raise ValueError(f"svdprune.llava.load: {source!r} is a {config.model_type!r} checkpoint, not LLaVA ('llava')")
        processor = AutoProcessor.from_pretrained(source, local_files_only=True)
        model = LlavaForConditionalGeneration.from_pretrained(source, local_files_only=True, dtype=dtype)
    except OSError as error:
        raise FileNotFoundError(
            f"svdprune.llava.load: no local copy of {source!r} ({_CHECKPOINT_FILES}); nothing is downloaded. "
            "Download it beforehand, e.g. `huggingface-cli download llava-hf/llava-1.5-7b-hf`, or pass its directory."
        ) from error
    return model.to(device).eval(), processor
