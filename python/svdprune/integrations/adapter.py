"""What pruning needs to know about a model family, in one small class per family.

An :class:`Adapter` turns the visual arguments of one ``forward``/``generate`` call into
:class:`~svdprune.integrations.selection.Visual` descriptions, one per image or video in
placeholder order, grouped by the placeholder token they fill. Everything else (selection, batch
rewriting, wrapping ``forward`` and ``generate``) is shared by every family.

The LLaVA families position tokens by their place in the (shortened) sequence: the language model
derives position ids from the attention mask, so an adapter has nothing to say about positions.
A family with its own position scheme (3-D rotary positions) adds that to its adapter.
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
