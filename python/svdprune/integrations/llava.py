"""LLaVA-1.5 (``LlavaForConditionalGeneration``): one CLIP crop, N = 576 tokens per image."""

from __future__ import annotations

import torch

from .adapter import Adapter
from .selection import Visual

__all__ = ["LlavaAdapter", "vision_features"]


def vision_features(vision_tower, pixel_values, layer, strategy) -> torch.Tensor:
    """``[crops, N, D]``: the vision hidden states the projector reads, as the LLaVA models build them."""
    if strategy not in ("default", "full"):
        raise ValueError(f"vision_feature_select_strategy must be 'default' or 'full', got {strategy!r}")
    hidden_states = vision_tower(pixel_values, output_hidden_states=True).hidden_states
    layers = [layer] if isinstance(layer, int) else list(layer)
    selected = [hidden_states[i] for i in layers]
    if strategy == "default":
        selected = [h[:, 1:] for h in selected]  # drop CLS
    return torch.cat(selected, dim=-1)


def tokens_per_image(config) -> int:
    """Visual tokens per image as LLaVA-1.5's processor counts them (576 at 336 px / 14 px)."""
    grid = config.vision_config.image_size // config.vision_config.patch_size
    return grid * grid + (1 if config.vision_feature_select_strategy == "full" else 0)


class LlavaAdapter(Adapter):
    class_name = "LlavaForConditionalGeneration"
    family = "LLaVA-1.5"
    options = ("vision_feature_layer", "vision_feature_select_strategy", "image_sizes")

    def __init__(self, model):
        super().__init__(model)
        self.fixed_tokens = tokens_per_image(model.config)

    def crop_features(self, pixel_values, call) -> tuple[torch.Tensor, torch.Tensor]:
        """``(vision [crops, N, D], projected [crops, N, H])`` for the call's layer and strategy."""
        config, base = self.model.config, self.model.model
        layer = call.get("vision_feature_layer")
        strategy = call.get("vision_feature_select_strategy")
        layer = config.vision_feature_layer if layer is None else layer
        strategy = config.vision_feature_select_strategy if strategy is None else strategy
        device = next(base.vision_tower.parameters()).device
        vision = vision_features(base.vision_tower, pixel_values.to(device), layer, strategy)
        return vision, base.multi_modal_projector(vision)

    def visuals(self, call, source, scope):
        if call.pop("image_sizes", None) is not None:
            raise ValueError(
                "image_sizes (variable-resolution LLaVA variants) is not supported for LlavaForConditionalGeneration"
            )
        pixel_values = call.pop("pixel_values")
        self.check_layout("pixel_values", pixel_values, "images, channels, height, width")
        vision, projected = self.crop_features(pixel_values, call)
        for name in self.options:
            call.pop(name, None)
        scored = projected if source == "projector" else vision
        n = projected.shape[1]
        everything = torch.arange(n, device=projected.device)
        visuals = [
            Visual(
                features=projected[i],
                scored=scored[i],
                groups=[everything],
                newline=torch.zeros(n, dtype=torch.bool, device=projected.device),
                rows=torch.full((n,), -1, device=projected.device),
                sources=everything,
            )
            for i in range(projected.shape[0])
        ]
        return [("image", self.model.config.image_token_id, visuals)]
