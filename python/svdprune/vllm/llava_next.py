"""vLLM's LLaVA-NeXT and LLaVA-OneVision with SVD-Prune in their image and video embedding path
(registered by :func:`svdprune.vllm.register`).

Without the ``svdprune`` config key every class here defers to vLLM's own code unchanged.

* The processor gives each image the count of placeholders known from its size: ``min(budget, n)``
  of its ``n`` visual tokens (per base view and per tile with ``scope="tile"``), plus every row's
  newline with ``newlines="all"`` (the default) or none with ``"none"``; each OneVision video
  ``min(budget, P)`` per frame of ``P`` pooled tokens (``min(budget, F * P)`` per clip with
  ``scope="video"``), plus the clip's newline with ``"all"``. ``newlines="kept"``, whose count
  depends on the selection, cannot be served. An image given as precomputed embeddings keeps all
  its placeholders and is not pruned. Memory profiling runs vLLM's largest image (and video), and
  the encoder cache is sized by its unpruned count, as for the stock model.
* Both counts and the tokens' layout come from vLLM's own packing
  (``_merge_image_patch_embeddings``: base view, tiles in a grid, unpadded, OneVision's large
  grids downscaled, a newline after each row) applied to a tensor of token indices
  (:func:`~svdprune.integrations.llava_next.index_layout`), as :func:`svdprune.prune` applies
  transformers' packing: the same visuals, so the same kept tokens.
* ``embed_multimodal`` runs the vision tower, keeps the tokens :func:`svdprune.prune` keeps with
  the same settings (``newlines`` included), checks that each image and video has exactly its
  placeholder count and returns the kept embeddings in their original order. These models number
  positions 1-D: vLLM numbers the shortened prompt itself (``positions="compact"``).
"""

from __future__ import annotations

import dataclasses
import functools
from types import SimpleNamespace

import torch

import svdprune_cuda  # noqa: F401  (registers torch.ops.svdprune)
from svdprune.integrations.llava_next import image_visual, index_layout, newline_marker
from svdprune.integrations.llava_onevision import video_visual
from svdprune.integrations.selection import Visual, select_tokens
from svdprune.vllm import KEY, PruneSettings, settings
from svdprune.vllm.internals import (
    MULTIMODAL_REGISTRY,
    LlavaDummyInputsBuilder,
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)

__all__ = [
    "PrunedLlavaNextForConditionalGeneration",
    "PrunedLlavaOnevisionForConditionalGeneration",
    "image_placeholders",
    "video_placeholders",
]


def _pack_next(config, image_size: torch.Tensor, crops: torch.Tensor, newline: torch.Tensor) -> torch.Tensor:
    """vLLM's LLaVA-NeXT packing of one image's ``crops`` (``[crops, N, C]``), with ``newline``
    (``[C]``) after each row."""
    model = SimpleNamespace(config=config, image_newline=newline)
    return LlavaNextForConditionalGeneration._merge_image_patch_embeddings(
        model, image_size, crops, strategy="spatial_unpad"
    )


def _pack_onevision(config, image_size: torch.Tensor, crops: torch.Tensor, newline: torch.Tensor) -> torch.Tensor:
    """vLLM's LLaVA-OneVision packing (large tile grids downscaled to its ``anyres_max_9``)."""
    model = SimpleNamespace(config=config, image_newline=newline)
    return LlavaOnevisionForConditionalGeneration._merge_image_patch_embeddings(
        model, image_size, crops, image_newline=newline, strategy="spatial_unpad"
    )


_PACK = {
    "LlavaNextForConditionalGeneration": _pack_next,
    "LlavaOnevisionForConditionalGeneration": _pack_onevision,
}


def _per_crop(config) -> int:
    """Visual tokens per crop (vLLM's packing requires the full patch grid)."""
    return (config.vision_config.image_size // config.vision_config.patch_size) ** 2


def _kept_count(prune: PruneSettings, visual: Visual) -> int:
    """What :func:`select_tokens` keeps of ``visual`` with ``keep_smaller``."""
    kept = sum(min(prune.budget, group.numel()) for group in visual.groups)
    return kept + (int(visual.newline.sum()) if prune.newlines == "all" else 0)


def _image_layout(architecture: str, config, image_size, crops: int, vision=None) -> torch.Tensor:
    """An image's packed :func:`index_layout` (``[L, 1 (+ D)]``), with its vision features ``vision``
    (``[crops, N, D]``) alongside when given."""
    device = "cpu" if vision is None else vision.device
    layout = index_layout(crops, _per_crop(config), vision, device)
    marker = newline_marker(layout.shape[-1], device)
    return _PACK[architecture](config, torch.as_tensor(image_size), layout, marker)


def image_placeholders(architecture: str, config, image_size, crops: int, prune: PruneSettings) -> int:
    """Placeholders of an image of ``image_size`` (height, width) in ``crops`` crops."""
    laid_out = _image_layout(architecture, config, image_size, crops)
    return _kept_count(prune, image_visual(laid_out, laid_out, crops, _per_crop(config), prune.scope, "projector", 0))


def video_placeholders(prune: PruneSettings, frames: int, per_frame: int) -> int:
    """Placeholders of a OneVision video of ``frames`` frames of ``per_frame`` pooled tokens."""
    kept = min(prune.budget, frames * per_frame) if prune.scope == "video" else frames * min(prune.budget, per_frame)
    return kept + (1 if prune.newlines == "all" else 0)


class _PrunedProcessingInfo:
    """vLLM's processing info, with memory profiling and the encoder cache sized as for the stock
    model: by the unpruned count at vLLM's image size with the most tokens. The pruned count of
    that size would be too small for a taller image, which has more rows' newlines."""

    architecture: str

    def get_mm_max_tokens_per_item(self, seq_len, mm_counts):
        if settings(self.get_hf_config(), self.architecture) is None:
            return super().get_mm_max_tokens_per_item(seq_len, mm_counts)
        maxima = {"image": self.get_max_image_tokens()}
        if "video" in self.get_supported_mm_limits():
            maxima["video"] = self.get_max_video_tokens(seq_len, mm_counts)
        return maxima


class PrunedLlavaNextProcessingInfo(_PrunedProcessingInfo, LlavaNextProcessingInfo):
    architecture = "LlavaNextForConditionalGeneration"


class PrunedLlavaOnevisionProcessingInfo(_PrunedProcessingInfo, LlavaOnevisionProcessingInfo):
    architecture = "LlavaOnevisionForConditionalGeneration"


class _PrunedProcessor:
    """The family's multimodal processor with each image's and video's placeholders cut to its kept count."""

    architecture: str

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        config = self.info.get_hf_config()
        prune = settings(config, self.architecture)
        if prune is None:
            return updates

        def kept(update, item_index: int):
            item = out_mm_kwargs[update.modality][item_index]
            if update.modality == "image" and item.get("pixel_values") is not None:
                crops = item["pixel_values"].data.shape[0]
                count = image_placeholders(self.architecture, config, item["image_sizes"].data, crops, prune)
            elif update.modality == "video" and item.get("pixel_values_videos") is not None:
                frames = item["pixel_values_videos"].data.shape[0]
                size = config.vision_config.image_size
                per_frame = self.info._get_num_frame_tokens(image_width=size, image_height=size)
                count = video_placeholders(prune, frames, per_frame)
            else:  # precomputed embeddings: every placeholder stays
                return update.replacement(item_index)
            return update.replacement(item_index)[:count]

        return [dataclasses.replace(update, replacement=functools.partial(kept, update)) for update in updates]


class PrunedLlavaNextMultiModalProcessor(_PrunedProcessor, LlavaNextMultiModalProcessor):
    architecture = "LlavaNextForConditionalGeneration"


class PrunedLlavaOnevisionMultiModalProcessor(_PrunedProcessor, LlavaOnevisionMultiModalProcessor):
    architecture = "LlavaOnevisionForConditionalGeneration"


class _PrunedLlavaNext:
    """The family's model, returning the kept embeddings of every image and video."""

    architecture: str

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.prune_settings = settings(vllm_config.model_config.hf_config, self.architecture)

    def embed_multimodal(self, **kwargs):
        prune = self.prune_settings
        if prune is None:
            return super().embed_multimodal(**kwargs)
        items = []  # per image or video: its precomputed embeddings, or (its Visual, its placeholder count)
        for modality, visual_input in self.visual_inputs(**kwargs):
            if visual_input["type"] == "image_embeds":  # precomputed: passed through unpruned
                items += list(self._process_image_input(visual_input))
            elif modality == "image":
                items += self.image_visuals(visual_input)
            else:
                items += self.video_visuals(visual_input)
        selected = [item for item in items if isinstance(item, tuple)]
        masks = select_tokens(
            [visual for visual, _ in selected], prune.budget, prune.variance, prune.method, prune.strategy,
            keep_smaller=True, newlines=prune.newlines,
        )
        kept = iter(visual.features[mask] for (visual, _), mask in zip(selected, masks))
        outputs = []
        for item in items:
            if not isinstance(item, tuple):
                outputs.append(item)
                continue
            embeddings, count = next(kept), item[1]
            if embeddings.shape[0] != count:
                raise RuntimeError(f"{KEY}: an image or video has {embeddings.shape[0]} kept embeddings for {count} placeholders")
            outputs.append(embeddings)
        return tuple(outputs)

    def visual_inputs(self, **kwargs):
        """``(modality, input)`` of the call's images (and videos), in vLLM's order."""
        image_input = self._parse_and_validate_image_input(**kwargs)
        return [] if image_input is None else [("image", image_input)]

    def image_visuals(self, image_input) -> list[tuple[Visual, int]]:
        """Per image, its :class:`Visual` and its placeholder count."""
        prune, config = self.prune_settings, self.config
        pixel_values, image_sizes = image_input["pixel_values"], image_input.get("image_sizes")
        if image_sizes is None:
            raise RuntimeError(f"{KEY}: {self.architecture} needs image_sizes with pixel_values (its processor gives both)")
        crops = [p.shape[0] for p in pixel_values]
        vision = self._image_pixels_to_features(self.vision_tower, torch.cat(list(pixel_values)))  # [crops, N, D]
        projected = self.multi_modal_projector(vision)
        found, per_crop = [], _per_crop(config)
        for image, (size, n, image_vision, image_projected) in enumerate(
            zip(image_sizes, crops, vision.split(crops), projected.split(crops))
        ):
            feature = _PACK[self.architecture](config, size, image_projected, self.image_newline)
            laid_out = _image_layout(self.architecture, config, size, n, image_vision if prune.source == "vision" else None)
            visual = image_visual(feature, laid_out.to(feature.device), n, per_crop, prune.scope, prune.source, image)
            found.append((visual, image_placeholders(self.architecture, config, size, n, prune)))
        return found

    def video_visuals(self, video_input) -> list[tuple[Visual, int]]:
        raise NotImplementedError


@MULTIMODAL_REGISTRY.register_processor(
    PrunedLlavaNextMultiModalProcessor, info=PrunedLlavaNextProcessingInfo, dummy_inputs=LlavaDummyInputsBuilder
)
class PrunedLlavaNextForConditionalGeneration(_PrunedLlavaNext, LlavaNextForConditionalGeneration):
    architecture = "LlavaNextForConditionalGeneration"


@MULTIMODAL_REGISTRY.register_processor(
    PrunedLlavaOnevisionMultiModalProcessor, info=PrunedLlavaOnevisionProcessingInfo,
    dummy_inputs=LlavaOnevisionDummyInputsBuilder,
)  # fmt: skip
class PrunedLlavaOnevisionForConditionalGeneration(_PrunedLlavaNext, LlavaOnevisionForConditionalGeneration):
    architecture = "LlavaOnevisionForConditionalGeneration"

    def visual_inputs(self, **kwargs):
        return [(modality, value) for modality, value in self._parse_and_validate_multimodal_inputs(**kwargs).items()
                if value is not None]

    def video_visuals(self, video_input) -> list[tuple[Visual, int]]:
        prune = self.prune_settings
        videos = video_input["pixel_values_videos"]
        frames = [len(video) for video in videos]
        vision = self._image_pixels_to_features(self.vision_tower, torch.cat(list(videos)))  # [frames, N, D]
        projected = self.apply_pooling(self.multi_modal_projector(vision))  # as _video_pixels_to_features
        scored = projected if prune.source == "projector" else self.apply_pooling(vision)
        image_newline = self.image_newline.to(projected.dtype)
        found = []
        for clip, clip_scored in zip(projected.split(frames), scored.split(frames)):
            visual = video_visual(clip, clip_scored, image_newline, prune.scope)
            found.append((visual, video_placeholders(prune, clip.shape[0], clip.shape[1])))
        return found
