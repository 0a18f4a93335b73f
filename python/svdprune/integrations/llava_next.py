"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): "anyres" base view plus tiles, row newlines.

The processor resizes an image to the best of ``image_grid_pinpoints`` and cuts it into tiles of
the vision tower's size; the model encodes the base view (the whole image at tower size) and every
tile, lays the tiles out as one grid, removes the rows and columns that are only padding
(``unpad_image``), and appends ``image_newline`` after each row of that grid. An image thus fills
``N_base + unpadded tile tokens + rows`` placeholders (about 2,000-2,900 at 336 px tiles).

The adapter reuses the model's own packing (``pack_image_features``) twice: on the projected
features, which gives exactly what the model would scatter into the placeholders, and on a tensor
of token indices (with the vision features alongside for ``source="vision"``), which says for each
placeholder which crop and token it came from, and which placeholders are newlines. So the
selection sees the tokens in the model's order and the kept ones reach the language model in it.
"""

from __future__ import annotations

import sys

import torch

from .llava import LlavaAdapter
from .selection import Visual
from .settings import NEWLINES

__all__ = ["LlavaNextAdapter"]


class LlavaNextAdapter(LlavaAdapter):
    class_name = "LlavaNextForConditionalGeneration"
    family = "LLaVA-NeXT"
    scopes = ("image", "tile")
    newlines = NEWLINES
    options = ("vision_feature_layer", "vision_feature_select_strategy", "image_sizes")

    def __init__(self, model):
        super().__init__(model)
        self.fixed_tokens = None  # depends on each image's size

    def _modeling(self):
        return sys.modules[type(self.model.model).__module__]

    def crops_per_image(self, image_sizes, call) -> list[int]:
        config = self.model.config
        count = self._modeling().image_size_to_num_patches
        return [
            count(image_size=size, grid_pinpoints=config.image_grid_pinpoints, patch_size=config.vision_config.image_size)
            for size in image_sizes
        ]

    def pack(self, features: list[torch.Tensor], image_sizes, newline: torch.Tensor, call) -> list[torch.Tensor]:
        strategy = self.model.config.vision_feature_select_strategy
        return list(self.model.model.pack_image_features(features, image_sizes, strategy, image_newline=newline)[0])

    def visuals(self, call, source, scope):
        visuals = [("image", self.model.config.image_token_id, self.image_visuals(call, source, scope))]
        for name in ("pixel_values", *self.options):
            call.pop(name, None)
        return visuals

    def image_visuals(self, call, source, scope) -> list[Visual]:
        """The call's images (``pixel_values``, ``image_sizes``); reads the options, removes nothing."""
        pixel_values, image_sizes = call["pixel_values"], call.get("image_sizes")
        self.check_layout("pixel_values", pixel_values, "images, crops, channels, height, width",
                          "crops, channels, height, width")
        if image_sizes is None:
            raise ValueError(
                f"{self.class_name} needs image_sizes together with pixel_values (the processor returns both)"
            )
        crops = self.crops_per_image(image_sizes, call)
        if pixel_values.dim() == 5:  # [images, most crops, C, H, W], zero-padded crops at the end
            pixel_values = torch.cat([p[:n] for p, n in zip(pixel_values, crops)])
        if pixel_values.shape[0] != sum(crops):
            raise ValueError(f"pixel_values hold {pixel_values.shape[0]} crops, image_sizes call for {sum(crops)}")
        vision, projected = self.crop_features(pixel_values, call)
        features = self.pack(list(projected.split(crops)), image_sizes, self.model.model.image_newline, call)
        per_crop = projected.shape[1]
        layouts = [index_layout(n, per_crop, part if source == "vision" else None, vision.device)
                   for n, part in zip(crops, vision.split(crops))]
        packed = self.pack(layouts, image_sizes, newline_marker(layouts[0].shape[-1], vision.device), call)
        return [
            image_visual(feature, laid_out, n, per_crop, scope, source, image)
            for image, (feature, laid_out, n) in enumerate(zip(features, packed, crops))
        ]


def index_layout(crops: int, per_crop: int, vision: torch.Tensor | None, device) -> torch.Tensor:
    """``[crops, per_crop, 1 (+ D)]`` float64: each token's index in the image (crop * per_crop +
    token), and its vision features (``[crops, per_crop, D]``) alongside when given. Packed as the
    model packs its features, it says for each placeholder which crop and token it came from."""
    index = torch.arange(crops * per_crop, dtype=torch.float64, device=device).view(crops, per_crop, 1)
    return index if vision is None else torch.cat([index, vision.to(device, torch.float64)], dim=-1)


def newline_marker(width: int, device) -> torch.Tensor:
    """The "newline" an :func:`index_layout` is packed with: index -1."""
    marker = torch.zeros(width, dtype=torch.float64, device=device)
    marker[0] = -1
    return marker


def image_visual(feature, laid_out, crops: int, per_crop: int, scope: str, source: str, image: int) -> Visual:
    """Image ``image``'s :class:`Visual` from its packed ``feature`` (``[L, H]``, what its
    placeholders receive) and its packed :func:`index_layout` (``laid_out``, ``[L, 1 (+ D)]``)."""
    position = laid_out[:, 0]
    newline = position == -1
    # An index that is no longer whole means the model downscaled the grid (OneVision's anyres_max).
    whole = torch.equal(position, position.round())
    sources = torch.where(newline, -1, position.long()) if whole else torch.full_like(position, -1, dtype=torch.long)
    # A row is everything after the previous newline; the base view of a tiled image has none.
    rows = newline.long().cumsum(0) - newline.long()
    if crops > 1:
        rows[:per_crop] = -1
    tokens = (~newline).nonzero().flatten()
    if scope == "tile":
        if not whole:
            raise ValueError(
                f"scope='tile' needs each token's tile, but the model downscaled image {image}'s tile grid; "
                "use scope='image'"
            )
        tile = sources[tokens] // per_crop
        groups = [tokens[tile == t] for t in tile.unique()]
    else:
        groups = [tokens]
    scored = feature if source == "projector" else laid_out[:, 1:].to(feature.dtype)
    return Visual(feature, scored, groups, newline, rows, sources)
