"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): anyres images and video.

Images go through LLaVA-NeXT's anyres packing (with OneVision's ``anyres_max_9`` downscaling of
large tile grids, and no tiles for prompts with several images). A video of F frames fills
``F * P + 1`` placeholders: each frame's tokens pooled 2x2 to P, then one ``image_newline`` after
the whole clip. ``budget`` applies per frame, or per clip with ``scope="video"`` (rank and leverage
then come from all the clip's tokens together); the newline stays when any token does.
"""

from __future__ import annotations

import torch

from .llava_next import LlavaNextAdapter
from .selection import Visual

__all__ = ["LlavaOnevisionAdapter"]


class LlavaOnevisionAdapter(LlavaNextAdapter):
    class_name = "LlavaOnevisionForConditionalGeneration"
    family = "LLaVA-OneVision"
    scopes = ("image", "tile", "video")
    visual_inputs = ("pixel_values", "pixel_values_videos")
    options = (
        "vision_feature_layer",
        "vision_feature_select_strategy",
        "image_sizes",
        "vision_aspect_ratio",
        "batch_num_images",
        "image_sizes_videos",
    )

    def crops_per_image(self, image_sizes, call) -> list[int]:
        # Prompts with several images get the base view only, as the model does it.
        crops = super().crops_per_image(image_sizes, call)
        counts = call.get("batch_num_images")
        if counts is None:
            return crops
        single = [int(n) == 1 for n in counts for _ in range(int(n))]
        return [c if one else 1 for c, one in zip(crops, single)]

    def pack(self, features, image_sizes, newline, call):
        ratio = call.get("vision_aspect_ratio") or self.model.config.vision_aspect_ratio
        return list(self.model.model.pack_image_features(features, image_sizes, image_newline=newline,
                                                         vision_aspect_ratio=ratio)[0])

    def visuals(self, call, source, scope):
        visuals = []
        videos = call.pop("pixel_values_videos", None)
        call.pop("image_sizes_videos", None)
        if call.get("pixel_values") is not None and call["pixel_values"].numel() > 0:
            visuals.append(("image", self.model.config.image_token_id, self.image_visuals(call, source, scope)))
        if videos is not None and videos.numel() > 0:
            visuals.append(("video", self.model.config.video_token_id, self.video_visuals(videos, call, source, scope)))
        for name in ("pixel_values", *self.options):
            call.pop(name, None)
        return visuals

    def video_visuals(self, videos, call, source, scope) -> list[Visual]:
        self.check_layout("pixel_values_videos", videos, "videos, frames, channels, height, width")
        count, frames = videos.shape[:2]
        vision, projected = self.crop_features(videos.flatten(0, 1), call)
        pool = self.model.model.apply_pooling  # channel-wise, so it pools the vision features alike
        projected = pool(projected).unflatten(0, (count, frames))
        scored = projected if source == "projector" else pool(vision).unflatten(0, (count, frames))
        image_newline = self.model.model.image_newline.to(projected.device, projected.dtype)
        return [video_visual(clip, clip_scored, image_newline, scope) for clip, clip_scored in zip(projected, scored)]


def video_visual(clip: torch.Tensor, scored: torch.Tensor, image_newline: torch.Tensor, scope: str) -> Visual:
    """A video's :class:`Visual` from its pooled projected frames (``clip``, ``[F, P, H]``), the
    pooled features the selection scores (``[F, P, D]``) and the newline that ends the clip."""
    frames, per_frame = clip.shape[:2]
    length = frames * per_frame + 1
    device = clip.device
    newline = torch.zeros(length, dtype=torch.bool, device=device)
    newline[-1] = True
    tokens = torch.arange(frames * per_frame, device=device)
    groups = [tokens] if scope == "video" else list(tokens.view(frames, per_frame))
    features = torch.cat([clip.flatten(0, 1), image_newline[None]])
    scored = torch.cat([scored.flatten(0, 1), scored.new_zeros(1, scored.shape[-1])])
    # Pooled tokens are no single vision-tower token: no sources. The clip is one row.
    rows = torch.zeros(length, dtype=torch.long, device=device)
    return Visual(features, scored, groups, newline, rows, torch.full((length,), -1, device=device))
