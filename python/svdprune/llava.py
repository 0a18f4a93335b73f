"""LLaVA-1.5 (``llava-hf/llava-1.5-*-hf``): loading a local checkpoint, and pruning it.

    model, processor = svdprune.llava.load("llava-hf/llava-1.5-7b-hf")
    with svdprune.llava.prune(model, processor, budget=64):
        inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device)
        output = model.generate(**inputs, max_new_tokens=32)

``prune`` and ``PruneHandle`` are :func:`svdprune.prune` and its handle, which serve every
supported family (see :mod:`svdprune.integrations`, where the wrapping, the selection and the
batch rewriting live). How it works: the processor expands every ``<image>`` into N = 576
placeholder tokens; the wrapped ``forward``/``generate`` select K tokens per image, drop the
placeholders of the others (and the padding), re-pad the rows on the batch's side, scatter the kept
projected features into the remaining placeholders in their original order, and call the model with
``inputs_embeds`` and the shortened attention mask, so transformers builds positions and the KV
cache from the shortened sequence (in 4.57 and 5.x alike).

What callers see: ``generate`` returns the caller's original ``input_ids`` followed by the new
tokens, exactly as without pruning. ``forward`` returns logits laid out like the caller's
``input_ids`` (rows of pruned placeholders and padding are zero), so indexing with the caller's
attention mask keeps working; ``loss`` is computed on the pruned sequence; ``hidden_states``,
``attentions`` and the returned cache cover the pruned sequence. Continue a conversation with
``generate``, not by feeding the returned cache back into ``forward`` with the unpruned mask.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .integrations import SOURCES, PruneHandle, prune
from .integrations.llava import vision_features

__all__ = ["prune", "load", "selection_features", "PruneHandle", "SOURCES"]


def selection_features(model, pixel_values: torch.Tensor, source: str = "projector") -> torch.Tensor:
    """``[images, N, D]``: the features LLaVA-1.5 pruning scores for ``source`` (config's feature layer)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    config = model.config
    vision = vision_features(
        model.model.vision_tower, pixel_values, config.vision_feature_layer, config.vision_feature_select_strategy
    )
    return model.model.multi_modal_projector(vision) if source == "projector" else vision


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
