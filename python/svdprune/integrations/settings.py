"""What to prune and how: the settings of :func:`svdprune.prune` and of the vLLM plugin
(:mod:`svdprune.vllm`), one type and one validation, so that a setting means the same in both and
is refused with the same message (the plugin prefixes it with its config key, ``svdprune.``).
"""

from __future__ import annotations

import dataclasses
import operator
from dataclasses import dataclass

import torch

import svdprune_cuda

__all__ = ["PruneSettings", "SOURCES", "NEWLINES", "budget_limit"]

SOURCES = ("projector", "vision")
# What becomes of the row-end image_newline tokens of LLaVA-NeXT and OneVision (svdprune.prune).
NEWLINES = ("kept", "all", "none")


@dataclass(frozen=True)
class PruneSettings:
    """See :func:`svdprune.prune` for what each setting means."""

    budget: int | None = 64
    variance: float = 0.9
    method: str = "auto"
    strategy: str = "leverage"
    source: str = "projector"
    scope: str = "image"
    positions: str | None = None
    newlines: str | None = None

    def checked(
        self, family: str, scopes: tuple[str, ...], positions: tuple[str, ...], most: int | None,
        newlines: tuple[str, ...] = (),
    ) -> PruneSettings:
        """These settings for a model of ``family``, which allows ``scopes``, ``positions`` and
        ``newlines`` (the first is its default; no ``newlines``: the family has no newline tokens,
        and the setting must be left ``None``) and has ``most`` tokens per image (``None``: images
        differ): ``budget`` as an ``int``, ``variance`` as a ``float``, ``positions`` and
        ``newlines`` resolved.

        Raises ``ValueError`` whose message begins with the offending setting's name.
        """
        budget = None if self.budget is None else _integer(self.budget)
        if self.budget is not None and (budget is None or budget < 1 or (most and budget > most)):
            raise ValueError(f"budget must be an int {budget_limit(most)} or None for adaptive, got {self.budget!r}")
        variance = self.variance
        if isinstance(variance, bool) or not isinstance(variance, (int, float)) or not 0 < variance <= 1:
            raise ValueError(f"variance must be in (0, 1], got {variance!r}")
        choices = {"method": svdprune_cuda.METHODS, "source": SOURCES, "strategy": svdprune_cuda.STRATEGIES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if budget is None and self.strategy != "leverage":
            raise ValueError(
                f"strategy {self.strategy!r} needs an int budget; the adaptive mode (budget=None) ranks by leverage"
            )
        if self.scope not in scopes:
            raise ValueError(f"scope must be one of {scopes} for {family}, got {self.scope!r}")
        resolved = positions[0] if self.positions is None else self.positions
        if resolved not in positions:
            why = " (its language model places visual tokens by their 3-D grid positions)" if resolved == "compact" else ""
            raise ValueError(f"positions must be one of {positions} for {family}{why}, got {self.positions!r}")
        if not newlines and self.newlines is not None:
            raise ValueError(
                f"newlines applies to LLaVA-NeXT and LLaVA-OneVision only (their image_newline tokens); {family} has "
                f"no newline tokens: leave it None, got {self.newlines!r}"
            )
        resolved_newlines = self.newlines
        if newlines:
            resolved_newlines = newlines[0] if self.newlines is None else self.newlines
            if resolved_newlines not in newlines:
                raise ValueError(f"newlines must be one of {newlines} for {family}, got {self.newlines!r}")
        return dataclasses.replace(
            self, budget=budget, variance=float(variance), positions=resolved, newlines=resolved_newlines
        )


def budget_limit(most: int | None) -> str:
    """The integers a budget may be, in words."""
    return f"in [1, {most}] (tokens per image)" if most else ">= 1"


def _integer(value) -> int | None:
    """``value`` as an ``int`` when it is an integer of any kind but a bool; ``None`` otherwise."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None
