"""What pruning needs to know about a model family, in one small class per family.

An :class:`Adapter` turns the visual arguments of one ``forward``/``generate`` call into
:class:`~svdprune.integrations.selection.Visual` descriptions, one per image or video in
placeholder order, grouped by the placeholder token they fill. Everything else (selection, batch
rewriting, wrapping ``forward`` and ``generate``) is shared by every family.

Positions. With ``positions="compact"`` (the LLaVA families' default) the language model numbers
the shortened sequence itself, from its attention mask, as if the pruned tokens had never been
there. With ``positions="keep"`` every kept token, text included, keeps the position it had in the
full sequence: :meth:`Adapter.position_ids` computes those (one index per token for the LLaVA
families; time, height and width for Qwen's 3-D rotary positions, with the model's own
``get_rope_index``), and the handle gives the model the kept tokens' ones at every step.
"""

from __future__ import annotations

import torch

from .selection import Visual

__all__ = ["Adapter"]


class Adapter:
    """Base of the per-family adapters. Subclasses set the class attributes and :meth:`visuals`."""

    class_name: str = ""  # the transformers class served, e.g. "LlavaForConditionalGeneration"
    family: str = ""  # a short name for messages and the README, e.g. "LLaVA-1.5"
    # How ``budget`` may be spread: "image" per image (a video frame counts as an image), "tile"
    # per base view and per tile of an image, "video" per image and per whole video clip.
    scopes: tuple[str, ...] = ("image",)
    # Call arguments that carry images or videos: a call with any of them set is pruned.
    visual_inputs: tuple[str, ...] = ("pixel_values",)
    # Call arguments the adapter reads (and removes) besides those.
    options: tuple[str, ...] = ()
    # Tokens per image when every image has the same number (budget is checked up front), else None.
    fixed_tokens: int | None = None
    # The position schemes the family supports (see the module docstring); the first is the default.
    positions: tuple[str, ...] = ("compact", "keep")
    # What may become of the family's row-end newline tokens (settings.NEWLINES), the first the
    # default; none: the family has no newline tokens.
    newlines: tuple[str, ...] = ()

    def __init__(self, model):
        self.model = model

    @classmethod
    def serves(cls, model) -> bool:
        return any(klass.__name__ == cls.class_name and klass.__module__.startswith("transformers.")
                   for klass in type(model).__mro__)

    def has_visual_input(self, call: dict) -> bool:
        return any(call.get(name) is not None and call[name].numel() > 0 for name in self.visual_inputs)

    def visuals(self, call: dict, source: str, scope: str) -> list[tuple[str, int, list[Visual]]]:
        """Per kind of visual ("image", "video"): its placeholder token id and its visuals in
        placeholder order.

        Reads and removes ``visual_inputs`` and ``options`` from ``call``.
        """
        raise NotImplementedError

    def check_layout(self, name: str, tensor: torch.Tensor, *layouts: str) -> None:
        """A clear error when ``tensor`` (the call's argument ``name``) has the dimensions of none of
        the ``layouts`` the family takes (each its axes, e.g. ``"images, channels, height, width"``)."""
        if all(tensor.dim() != len(layout.split(",")) for layout in layouts):
            expected = " or ".join(f"[{layout}]" for layout in layouts)
            raise ValueError(
                f"{self.family}: {name} must be {expected}, as its processor returns them; "
                f"got shape {tuple(tensor.shape)}"
            )

    def position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, call: dict) -> torch.Tensor:
        """``[B, L, P]``: each token's position in the full sequence, as the model places it (``P``
        indices per token: 1 here, counting the real tokens of each row; 0 at padding).

        Reads ``call`` before :meth:`visuals` removes anything from it.
        """
        real = torch.ones_like(input_ids) if attention_mask is None else attention_mask.long()
        return (real.cumsum(1) - 1).clamp(min=0)[..., None]

    @property
    def language_model(self) -> torch.nn.Module:
        return self.model.model.language_model

    def language_model_inputs(self, visual_mask: torch.Tensor, extra: torch.Tensor) -> dict:
        """Keyword arguments for the language model's pass over the prompt that carry the kept
        visual tokens' ``extra`` features (``[kept, X]``, the columns of :attr:`Visual.features`
        beyond the embedding width, in placeholder order; ``visual_mask`` ``[B, L']`` marks where
        those tokens sit in the shortened batch). Families without such features have none."""
        return {}
