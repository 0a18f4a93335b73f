"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): Qwen2.5-VL's layout and positions, plus deepstack.

Images and videos fill their placeholders as with Qwen2.5-VL (16 px patches, merged 2x2: a merged
token covers 32 px), positions are 3-D and kept (see :mod:`.qwen2_5_vl`); in a video prompt each
merged frame has its own placeholder run, after a timestamp. "Deepstack": besides the merged
tokens the language model receives at its input, the tower merges the features of a few of its
intermediate layers the same way and the language model adds level ``i`` to the visual tokens'
hidden states after its layer ``i``. Every level is pruned with the same kept mask: each visual
carries its levels as further feature columns, so the kept ones come out in placeholder order with
the main features, and the language model's pass over the prompt receives them with the kept
tokens' places (``visual_pos_masks``, ``deepstack_visual_embeds``).
"""

from __future__ import annotations

import torch

from .qwen2_5_vl import Qwen2_5_VLAdapter

__all__ = ["Qwen3VLAdapter"]


class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    class_name = "Qwen3VLForConditionalGeneration"
    family = "Qwen3-VL"

    def merged_features(self, output) -> torch.Tensor:
        """``[tokens, H * (1 + levels)]``: the merged tokens, then each deepstack level's. Model
        output with per-visual tuples (transformers 5.x), or ``(per-visual tuple, levels)`` (4.x)."""
        if hasattr(output, "pooler_output"):
            merged, levels = output.pooler_output, output.deepstack_features
        else:
            merged, levels = output
        levels = [torch.cat(list(level)) if isinstance(level, (tuple, list)) else level for level in levels]
        return torch.cat([torch.cat(list(merged)), *levels], dim=-1)

    def language_model_inputs(self, visual_mask, extra):
        width = self.model.get_input_embeddings().embedding_dim
        return {"visual_pos_masks": visual_mask, "deepstack_visual_embeds": list(extra.split(width, dim=-1))}
