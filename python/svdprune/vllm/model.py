"""vLLM's LLaVA-1.5 with SVD-Prune in its image-embedding path (registered by :func:`svdprune.vllm.register`).

Without the ``svdprune`` config key both classes defer to vLLM's own code unchanged.
"""

from __future__ import annotations

import torch

import svdprune_cuda  # noqa: F401  (registers torch.ops.svdprune)
from svdprune.vllm import settings
from svdprune.vllm.internals import (
    MULTIMODAL_REGISTRY,
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaImageEmbeddingInputs,
    LlavaProcessingInfo,
    _build_llava_or_pixtral_hf_info,
    _build_llava_or_pixtral_hf_processor,
)

ARCHITECTURE = "LlavaForConditionalGeneration"


class PrunedLlavaProcessingInfo(LlavaProcessingInfo):
    """Every image gets ``budget`` placeholders in the prompt."""

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        return settings(self.get_hf_config(), ARCHITECTURE).budget


def _build_info(ctx):
    if settings(ctx.get_hf_config(), ARCHITECTURE) is None:
        return _build_llava_or_pixtral_hf_info(ctx)
    return PrunedLlavaProcessingInfo(ctx)


@MULTIMODAL_REGISTRY.register_processor(
    _build_llava_or_pixtral_hf_processor, info=_build_info, dummy_inputs=LlavaDummyInputsBuilder
)
class PrunedLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """Returns ``budget`` projected features per image: the kept tokens, in their original order."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.prune_settings = settings(vllm_config.model_config.hf_config, ARCHITECTURE)

    def _process_image_input(self, image_input):
        # Precomputed image_embeds are sized by their own length, not by the budget: passed through.
        if self.prune_settings is None or isinstance(image_input, LlavaImageEmbeddingInputs):
            return super()._process_image_input(image_input)
        prune = self.prune_settings
        vision = self._process_image_pixels(image_input)  # [images, N, D], what the projector reads
        projected = self.multi_modal_projector(vision) if prune.source == "projector" else None
        scored = vision if projected is None else projected
        indices = torch.ops.svdprune.select(
            scored, prune.budget, prune.variance, prune.method, False, 0, prune.strategy
        )[0]  # [images, budget], ascending
        if projected is None:
            return self.multi_modal_projector(_gather_tokens(vision, indices))
        return _gather_tokens(projected, indices)


def _gather_tokens(features: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``features[i, indices[i]]`` for every image ``i``: ``[images, budget, D]``."""
    return torch.gather(features, 1, indices[..., None].expand(-1, -1, features.shape[-1]))
