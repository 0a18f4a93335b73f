"""Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``) and Qwen2-VL: native resolution, 3-D positions.

The processor resizes an image to multiples of 28 px (patch 14 x merge 2) and cuts it into 14 px
patches; the vision tower's merger concatenates each 2x2 group of patch features and projects it
to one visual token. An image of ``image_grid_thw`` ``(1, h, w)`` patches therefore fills
``h * w / 4`` placeholders (a 1,280 x 720 photo about 1,200), row by row over the merged grid. A
video of ``video_grid_thw`` ``(t, h, w)`` (two frames make one temporal patch, so ``t`` is half the
frames) fills ``t * h * w / 4``, one merged frame after the other. ``budget`` applies per image,
per merged frame of a video (default), or per whole clip with ``scope="video"``.

Positions: the language model places tokens with three rotary indices (time, height, width; M-RoPE).
Text advances all three by one; an image or video spreads its tokens over its grid. Renumbering the
shortened sequence would move every kept visual token off its grid cell, so the only position
scheme here is ``"keep"``: the full sequence's position ids come from the model's own
``get_rope_index`` and every kept token takes its own.

``source="vision"``: a merged token is scored by the four patch features the merger reads for it,
side by side (``4 x D``): exactly the merger's input row for that token, what the projector reads
as with LLaVA's ``"vision"``, so one row per token the budget counts and no rule is needed to
combine four patch scores into one. Qwen2.5-VL's tower runs in windows and hands the merger its
patches window by window; the rows are put back in the model's token order with the model's own
window index (Qwen2-VL and Qwen3-VL have no windows).
"""

from __future__ import annotations

import inspect

import torch

from .adapter import Adapter
from .selection import Visual

__all__ = ["Qwen2_5_VLAdapter", "Qwen2VLAdapter"]

# Per kind of visual: the call arguments of its pixels and its grids, and its token type in the
# model's mm_token_type_ids.
KINDS = {"image": ("pixel_values", "image_grid_thw", 1), "video": ("pixel_values_videos", "video_grid_thw", 2)}


class Qwen2_5_VLAdapter(Adapter):
    class_name = "Qwen2_5_VLForConditionalGeneration"
    family = "Qwen2.5-VL"
    scopes = ("image", "video")
    positions = ("keep",)
    visual_inputs = ("pixel_values", "pixel_values_videos")
    options = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "mm_token_type_ids")

    def token_id(self, kind: str) -> int:
        return getattr(self.model.config, f"{kind}_token_id")

    def call_visuals(self, call) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per kind of visual the call carries: its pixels and its grids."""
        found = {}
        for kind, (pixels_name, grid_name, _) in KINDS.items():
            pixels, grids = call.get(pixels_name), call.get(grid_name)
            if pixels is None or pixels.numel() == 0:
                continue
            if grids is None:
                raise ValueError(f"{self.class_name} needs {grid_name} together with {pixels_name} (the processor returns both)")
            self.check_layout(pixels_name, pixels, "patches, channels * temporal_patch_size * patch_size ** 2")
            found[kind] = (pixels, grids)
        return found

    def position_ids(self, input_ids, attention_mask, call):
        """``[B, L, 3]`` (time, height, width) from the model's ``get_rope_index``, whose arguments
        differ between transformers versions: each gets those its version takes."""
        self.call_visuals(call)  # a clear error for missing grids, before get_rope_index fails on them
        types = call.get("mm_token_type_ids")
        if types is None:  # transformers 5.x wants them; the 4.x processor does not return them
            types = torch.zeros_like(input_ids, dtype=torch.int)
            for kind, (_, _, code) in KINDS.items():
                types[input_ids == self.token_id(kind)] = code
        arguments = {
            "input_ids": input_ids,
            "mm_token_type_ids": types.to(input_ids.device),
            "image_grid_thw": call.get("image_grid_thw"),
            "video_grid_thw": call.get("video_grid_thw"),
            "second_per_grid_ts": call.get("second_per_grid_ts"),
            "attention_mask": attention_mask,
        }
        get_rope_index = self.model.model.get_rope_index
        accepted = inspect.signature(get_rope_index).parameters
        positions = get_rope_index(**{name: value for name, value in arguments.items() if name in accepted})[0]
        return positions.permute(1, 2, 0)

    def visuals(self, call, source, scope):
        kinds = [
            (kind, self.token_id(kind), self.grid_visuals(kind, pixels, grids, source, scope))
            for kind, (pixels, grids) in self.call_visuals(call).items()
        ]
        for name in (*self.visual_inputs, *self.options):
            call.pop(name, None)
        return kinds

    def grid_visuals(self, kind: str, pixels, grids, source: str, scope: str) -> list[Visual]:
        """One :class:`Visual` per image or video of ``grids`` (``[visuals, 3]``, t, h, w patches)."""
        visual = self.model.model.visual
        merge = visual.spatial_merge_size
        grids = grids.to(pixels.device)
        merger_inputs = []
        hook = visual.merger.register_forward_hook(lambda module, args, output: merger_inputs.append(args[0]))
        try:
            get_features = getattr(self.model.model, f"get_{kind}_features")
            features = self.merged_features(get_features(pixels.to(next(visual.parameters()).device), grids))
        finally:
            hook.remove()
        width = self.model.get_input_embeddings().embedding_dim
        if source == "projector":
            scored = features[:, :width]
        else:
            patches = merger_inputs[0]
            scored = patches.reshape(-1, merge * merge * patches.shape[-1])[self.merged_order(grids)]

        visuals, start = [], 0
        for frames, height, width_patches in grids.tolist():
            count = frames * height * width_patches // (merge * merge)
            tokens = torch.arange(count, device=features.device)
            per_frame = tokens.view(frames, -1)
            groups = list(per_frame) if kind == "video" and scope != "video" else [tokens]
            visuals.append(Visual(
                features=features[start : start + count],
                scored=scored[start : start + count],
                groups=groups,
                newline=torch.zeros(count, dtype=torch.bool, device=features.device),
                rows=torch.full((count,), -1, device=features.device),
                sources=tokens,
            ))
            start += count
        return visuals

    def merged_features(self, output) -> torch.Tensor:
        """``[tokens, H]``, all visuals' merged tokens, from ``get_*_features``' output: a model output
        with one tensor per visual in ``pooler_output`` (transformers 5.x) or that tuple (4.x)."""
        return torch.cat(list(getattr(output, "pooler_output", output)))

    def merged_order(self, grids) -> torch.Tensor | slice:
        """Where each merged token's row is among the merger's input rows: the inverse of the
        tower's window order (Qwen2.5-VL), or all of them in order for a tower without windows."""
        visual = self.model.model.visual
        if not hasattr(visual, "window_size"):
            return slice(None)
        if hasattr(visual, "get_window_index"):  # transformers 4.x
            window_index = visual.get_window_index(grids)[0]
        else:
            from transformers.vision_utils import get_vision_window_index

            window_index = get_vision_window_index(grids, visual.spatial_merge_size, visual.window_size, visual.patch_size)[0]
        return torch.argsort(window_index.to(grids.device))


class Qwen2VLAdapter(Qwen2_5_VLAdapter):
    """Qwen2-VL: the same layout and positions; its tower has no windows."""

    class_name = "Qwen2VLForConditionalGeneration"
    family = "Qwen2-VL"
