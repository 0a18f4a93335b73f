"""vLLM's Qwen2.5-VL and Qwen3-VL with SVD-Prune in their visual embedding path (registered by
:func:`svdprune.vllm.register`).

Without the ``svdprune`` config key every class here defers to vLLM's own code unchanged.

* The processor gives each image ``min(budget, n)`` placeholders (``n`` merged tokens), and each
  video ``min(budget, n)`` per merged frame or per clip (:func:`placeholder_count`); a visual
  passed as precomputed embeddings keeps all its placeholders and is not pruned. The processing
  info is vLLM's: memory profiling and the encoder cache are sized for unpruned visuals, which
  the vision tower does compute.
* ``embed_multimodal`` runs the vision tower, keeps the tokens :func:`svdprune.prune` keeps with
  the same settings (Qwen3-VL's deepstack levels with the same mask), checks that each visual has
  exactly its placeholder count, and appends each kept token's grid position to its embedding.
* Positions (:mod:`svdprune.vllm.positions`): ``get_mrope_input_positions`` numbers the prompt
  when a request arrives, text as in the unpruned prompt; ``recompute_mrope_positions``, which
  the model runner calls before each step, places the kept tokens of the step at their own
  positions and removes the appended columns. A prompt must end with text, and two visuals must
  not touch (Qwen's prompts put ``<|vision_start|>`` and ``<|vision_end|>`` around each), so that
  every run of placeholders starts after a text token whose position is final.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import numpy as np
import torch

from svdprune.integrations.selection import Visual, select_tokens
from svdprune.vllm import KEY, PruneSettings, settings
from svdprune.vllm import positions as mrope
from svdprune.vllm.internals import (
    MULTIMODAL_REGISTRY,
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
    Qwen3VLDummyInputsBuilder,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMultiModalProcessor,
    Qwen3VLProcessingInfo,
    rope_cache_for_pruning,
)

__all__ = [
    "PrunedQwen2_5_VLForConditionalGeneration",
    "PrunedQwen3VLForConditionalGeneration",
    "placeholder_count",
]


def placeholder_count(prune: PruneSettings, modality: str, grid_thw, merge: int, precomputed: bool) -> int:
    """How many placeholders a visual of ``grid_thw`` (frames, height, width patches) gets."""
    frames, height, width = (int(value) for value in grid_thw)
    per_frame = height * width // (merge * merge)
    if precomputed:
        return frames * per_frame
    if modality == "image" or prune.scope == "video":
        return min(prune.budget, frames * per_frame)
    return frames * min(prune.budget, per_frame)


class _PrunedProcessor:
    """Qwen's multimodal processor with each visual's placeholders cut to its kept count."""

    architecture: str

    def prune_settings(self) -> PruneSettings | None:
        return settings(self.info.get_hf_config(), self.architecture)

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        prune = self.prune_settings()
        if prune is None:
            return updates
        merge = self.info.get_hf_config().vision_config.spatial_merge_size

        def kept(update, item_index: int):
            item = out_mm_kwargs[update.modality][item_index]
            embeds = item.get(f"{update.modality}_embeds")
            grid = item[f"{update.modality}_grid_thw"].data
            count = placeholder_count(prune, update.modality, grid, merge, precomputed=embeds is not None)
            # Refused here, with the request, rather than where the model splits them by the grid.
            if embeds is not None and embeds.data.shape[0] != count:
                raise ValueError(
                    f"{KEY}: a precomputed {update.modality} has {embeds.data.shape[0]} embeddings for the {count} "
                    f"tokens of its grid {grid.tolist()}"
                )
            return self.kept_replacement(update, item_index, item, count)

        return [dataclasses.replace(update, replacement=functools.partial(kept, update)) for update in updates]

    def kept_replacement(self, update, item_index: int, item, count: int):
        """A visual's replacement with ``count`` placeholders: one run, the first ``count``."""
        return update.replacement(item_index)[:count]

    def apply(self, *args, **kwargs):
        processed = super().apply(*args, **kwargs)
        if self.prune_settings() is not None:
            config = self.info.get_hf_config()
            _check_placeholder_runs(
                processed["prompt_token_ids"], processed["mm_placeholders"], {config.image_token_id, config.video_token_id}
            )
        return processed


def _check_placeholder_runs(prompt: list[int], placeholders, placeholder_ids: set[int]) -> None:
    """Every run of placeholders follows a text token or starts the prompt, and text ends it."""
    if prompt and prompt[-1] in placeholder_ids:
        raise ValueError(f"{KEY}: the prompt must not end with an image's or video's placeholders (end it with <|vision_end|>)")
    for ranges in placeholders.values():
        for item in ranges:
            if item.offset > 0 and prompt[item.offset] in placeholder_ids and prompt[item.offset - 1] in placeholder_ids:
                raise ValueError(f"{KEY}: two images or videos touch in the prompt; put <|vision_start|> before each")


class PrunedQwen2_5_VLMultiModalProcessor(_PrunedProcessor, Qwen2_5_VLMultiModalProcessor):
    architecture = "Qwen2_5_VLForConditionalGeneration"


class PrunedQwen3VLMultiModalProcessor(_PrunedProcessor, Qwen3VLMultiModalProcessor):
    architecture = "Qwen3VLForConditionalGeneration"

    def kept_replacement(self, update, item_index, item, count):
        if update.modality == "image":
            return super().kept_replacement(update, item_index, item, count)
        # A video is one run of placeholders per merged frame, each after its timestamp.
        config = self.info.get_hf_config()
        frames = int(item["video_grid_thw"].data[0])
        return Qwen3VLMultiModalProcessor.get_video_repl(
            tokens_per_frame=[count // frames] * frames,
            timestamps=item["timestamps"].data,
            tokenizer=self.info.get_tokenizer(),
            vision_start_token_id=config.vision_start_token_id,
            vision_end_token_id=config.vision_end_token_id,
            video_token_id=config.video_token_id,
            select_token_id=True,
        )


class _PrunedQwen:
    """Qwen's model with the kept visual tokens in its embeddings and their positions placed."""

    architecture: str
    # Whether the language model's M-RoPE cache is sized by the prompt's length unless told otherwise.
    rope_cache_by_length = False

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        prune = settings(vllm_config.model_config.hf_config, self.architecture)
        larger_cache = prune is not None and self.rope_cache_by_length
        with rope_cache_for_pruning() if larger_cache else contextlib.nullcontext():
            super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.prune_settings = prune
        # Asks the model runner for recompute_mrope_positions (svdprune.vllm.internals); vLLM's
        # models read this attribute too: it keeps the vision tower out of CUDA graphs, whose
        # replay would return unpruned embeddings.
        self.svdprune_renumbers_positions = prune is not None
        if prune is not None:
            self.is_multimodal_pruning_enabled = True

    # -- the vision tower's output ----------------------------------------------------------------

    def visual_grids(self, modality: str, grid_thw, visual_input, index: int) -> list[np.ndarray]:
        """Per run of the visual's placeholders, its unpruned grid positions (``[3, n]``)."""
        raise NotImplementedError

    def embed_multimodal(self, **kwargs):
        prune = self.prune_settings
        if prune is None:
            return super().embed_multimodal(**kwargs)
        merge = self.config.vision_config.spatial_merge_size
        width = self.config.vision_config.out_hidden_size
        visuals, grids, counts = [], [], []
        for modality, visual_input in self._parse_and_validate_multimodal_inputs(**kwargs).items():
            if visual_input is None:
                continue
            precomputed = visual_input["type"] == f"{modality}_embeds"
            process = self._process_image_input if modality == "image" else self._process_video_input
            with self._merger_inputs(prune.source == "vision" and not precomputed) as merger_inputs:
                features = process(visual_input)
            grid_list = visual_input[f"{modality}_grid_thw"].tolist()
            scored = self._vision_rows(merger_inputs, grid_list) if merger_inputs else [f[:, :width] for f in features]
            for index, (item, item_scored, grid_thw) in enumerate(zip(features, scored, grid_list)):
                tokens = torch.arange(item.shape[0], device=item.device)
                per_frame = tokens.view(grid_thw[0], -1)
                groups = list(per_frame) if modality == "video" and prune.scope != "video" else [tokens]
                visuals.append(Visual(
                    features=item, scored=item_scored, groups=[] if precomputed else groups,
                    newline=torch.zeros_like(tokens, dtype=torch.bool), rows=torch.full_like(tokens, -1), sources=tokens,
                ))
                grids.append(np.concatenate(self.visual_grids(modality, grid_thw, visual_input, index), axis=1))
                counts.append(placeholder_count(prune, modality, grid_thw, merge, precomputed))
        masks = select_tokens(visuals, prune.budget, prune.variance, prune.method, prune.strategy, keep_smaller=True)
        outputs = []
        for visual, mask, grid, count in zip(visuals, masks, grids, counts):
            if not visual.groups:  # precomputed embeddings: every token stays
                mask = torch.ones_like(mask)
            kept = visual.features[mask]
            if kept.shape[0] != count:
                raise RuntimeError(f"{KEY}: a visual has {kept.shape[0]} kept embeddings for {count} placeholders")
            outputs.append(mrope.append_positions(kept, torch.from_numpy(grid).T[mask.cpu()]))
        return tuple(outputs)

    @contextlib.contextmanager
    def _merger_inputs(self, record: bool):
        """Collects what the vision tower's merger reads (``source="vision"``)."""
        inputs: list[torch.Tensor] = []
        if not record:
            yield inputs
            return
        hook = self.visual.merger.register_forward_hook(lambda module, args, output: inputs.append(args[0]))
        try:
            yield inputs
        finally:
            hook.remove()

    def _vision_rows(self, merger_inputs, grid_list) -> list[torch.Tensor]:
        """Per visual, the merger's input row of each merged token (its 2x2 patches side by side),
        in the visual's token order."""
        merge = self.config.vision_config.spatial_merge_size
        (patches,) = merger_inputs
        rows = patches.reshape(-1, merge * merge * patches.shape[-1])
        sizes = [t * h * w // (merge * merge) for t, h, w in grid_list]
        return [self.token_order(item, grid_thw) for item, grid_thw in zip(rows.split(sizes), grid_list)]

    def token_order(self, rows: torch.Tensor, grid_thw) -> torch.Tensor:
        """A visual's merger rows in token order (a tower without windows keeps that order)."""
        return rows

    # -- positions --------------------------------------------------------------------------------

    def get_mrope_input_positions(self, input_tokens, mm_features):
        if self.prune_settings is None:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        runs = []
        for feature in sorted(mm_features, key=lambda f: f.mm_position.offset):
            grid_thw = feature.data[f"{feature.modality}_grid_thw"].data.tolist()
            grids = self.visual_grids(feature.modality, grid_thw, feature.data, None)
            spans = _placeholder_spans(feature.mm_position)
            if len(spans) != len(grids):
                raise RuntimeError(f"{KEY}: a {feature.modality} has {len(spans)} placeholder runs for {len(grids)} grids")
            runs += [(offset, count, grid) for (offset, count), grid in zip(spans, grids)]
        return mrope.prompt_positions(len(input_tokens), runs)

    def recompute_mrope_positions(self, input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens):
        if self.prune_settings is None:
            return super().recompute_mrope_positions(input_ids, multimodal_embeddings, mrope_positions, num_computed_tokens)
        embeddings, grids = zip(*map(mrope.split_positions, multimodal_embeddings)) if multimodal_embeddings else ((), ())
        if embeddings:
            ids = torch.as_tensor(input_ids, device=mrope_positions.device)
            placeholder = (ids == self.config.image_token_id) | (ids == self.config.video_token_id)
            mrope.place_kept_positions(placeholder, mrope_positions, torch.cat(grids), num_computed_tokens)
        # The prompt ends with text (checked by the processor), whose position never changes.
        delta = int(mrope_positions[0, -1]) + 1 - len(input_ids)
        return list(embeddings), mrope_positions, delta


def _placeholder_spans(position) -> list[tuple[int, int]]:
    """``(offset, count)`` of each run of embedding tokens in a visual's placeholder range."""
    if position.is_embed is None:
        return [(position.offset, position.length)]
    embed = position.is_embed.tolist()
    spans, start = [], None
    for index, is_embed in enumerate([*embed, False]):
        if is_embed and start is None:
            start = index
        elif not is_embed and start is not None:
            spans.append((position.offset + start, index - start))
            start = None
    return spans


@MULTIMODAL_REGISTRY.register_processor(
    PrunedQwen2_5_VLMultiModalProcessor, info=Qwen2_5_VLProcessingInfo, dummy_inputs=Qwen2_5_VLDummyInputsBuilder
)
class PrunedQwen2_5_VLForConditionalGeneration(_PrunedQwen, Qwen2_5_VLForConditionalGeneration):
    architecture = "Qwen2_5_VLForConditionalGeneration"

    def visual_grids(self, modality, grid_thw, visual_input, index):
        # One run per visual; a video's time advances by its seconds per frame.
        merge = self.config.vision_config.spatial_merge_size
        frames, height, width = grid_thw
        scale = 1.0
        if modality == "video":  # as vLLM's get_mrope_input_positions: one second per frame if unknown
            seconds = visual_input.get("second_per_grid_ts")
            if seconds is not None:
                seconds = seconds.data if index is None else seconds[index]
            seconds = 1.0 if seconds is None else float(seconds)
            scale = seconds * getattr(self.config.vision_config, "tokens_per_second", 1.0)
        return [mrope.grid_positions(frames, height // merge, width // merge, scale)]

    def token_order(self, rows, grid_thw):
        # The tower hands the merger its patches window by window.
        window_index = self.visual.get_window_index_thw(*grid_thw)[0]
        return rows[torch.argsort(window_index.to(rows.device))]


@MULTIMODAL_REGISTRY.register_processor(
    PrunedQwen3VLMultiModalProcessor, info=Qwen3VLProcessingInfo, dummy_inputs=Qwen3VLDummyInputsBuilder
)
class PrunedQwen3VLForConditionalGeneration(_PrunedQwen, Qwen3VLForConditionalGeneration):
    architecture = "Qwen3VLForConditionalGeneration"
    rope_cache_by_length = True

    def visual_grids(self, modality, grid_thw, visual_input, index):
        # Every merged frame of a video is a run of its own, placed like an image.
        merge = self.config.vision_config.spatial_merge_size
        frames, height, width = grid_thw
        return [mrope.grid_positions(1, height // merge, width // merge)] * frames
