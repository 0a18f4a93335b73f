"""SVD-Prune inside vLLM: LLaVA-1.5 serves ``budget`` visual tokens per image instead of 576.

A vLLM general plugin (entry point ``vllm.general_plugins``: ``svdprune``), switched on per model
through the model config::

    vllm serve llava-hf/llava-1.5-7b-hf --hf-overrides '{"svdprune": {"budget": 64}}'
    LLM(model=..., hf_overrides={"svdprune": {"budget": 64, "variance": 0.9, "method": "auto",
                                              "strategy": "leverage", "source": "projector"}})

Without the ``svdprune`` key the model is vLLM's own LLaVA, unchanged.

How it works, and why this way
------------------------------
vLLM sizes an image's placeholders in the prompt before the vision tower runs (the scheduler,
the KV cache and prefix caching all work on the placeholder tokens), so only fixed budgets are
possible: the processing info reports ``budget`` tokens per image, the prompt gets ``budget``
placeholders per ``<image>``, and the model's image-embedding path returns exactly ``budget``
projected features per image, the kept tokens in their original order (see
:mod:`svdprune.vllm.model`). Everything else - attention, positions, chunked prefill, prefix
caching, continuous batching - is vLLM's, working on the shorter prompt.

:func:`register` (run by vLLM in every process it starts) puts the model class in place of the
stock ``LlavaForConditionalGeneration`` and adds a start-up check of the ``svdprune`` settings
to every architecture's config verification, so a bad setting, or the key on a model other than
LLaVA-1.5, fails when the engine starts, in the process that starts it.

Selection is deterministic: ``method="exact"`` has no randomness and ``"randomized"`` is seeded
(seed 0) and independent of the batch an image is in, so every tensor-parallel rank, which sees
the same all-reduced projector output, keeps the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import svdprune_cuda
from svdprune.integrations import SOURCES
from svdprune.integrations.llava import tokens_per_image

__all__ = ["register", "PruneSettings", "settings", "ARCHITECTURE", "KEY"]

KEY = "svdprune"  # the hf_overrides / config.json key
ARCHITECTURE = "LlavaForConditionalGeneration"
_MODEL_CLASS = "svdprune.vllm.model:PrunedLlavaForConditionalGeneration"


@dataclass(frozen=True)
class PruneSettings:
    budget: int
    variance: float = 0.9
    method: str = "auto"
    strategy: str = "leverage"
    source: str = "projector"


def settings(hf_config, architecture: str = ARCHITECTURE) -> PruneSettings | None:
    """The checked ``svdprune`` settings of a model config, ``None`` when it has no such key.

    Raises ``ValueError`` naming the offending key for anything vLLM cannot serve.
    """
    raw = getattr(hf_config, KEY, None)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"{KEY}: expected a dict of settings, e.g. {{'budget': 64}}, got {raw!r}")
    if architecture != ARCHITECTURE:
        raise ValueError(f"{KEY}: architecture {architecture!r} is not supported; supported: {ARCHITECTURE} (LLaVA-1.5)")
    vision_type = getattr(getattr(hf_config, "vision_config", None), "model_type", None)
    if vision_type != "clip_vision_model":
        raise ValueError(
            f"{KEY}: architecture {architecture} with a {vision_type!r} vision tower is not supported; "
            "supported: LLaVA-1.5 (CLIP vision tower)"
        )
    unknown = sorted(set(raw) - set(PruneSettings.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{KEY}: unknown key(s) {unknown}; known: {list(PruneSettings.__dataclass_fields__)}")

    n = tokens_per_image(hf_config)
    budget = raw.get("budget", 64)
    if budget is None:
        raise ValueError(
            f"{KEY}.budget must be an int in [1, {n}]: adaptive budgets (None) cannot be served by vLLM, "
            "which sizes each image's placeholders before the vision tower runs"
        )
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= n:
        raise ValueError(f"{KEY}.budget must be an int in [1, {n}] (tokens per image), got {budget!r}")
    variance = raw.get("variance", 0.9)
    if isinstance(variance, bool) or not isinstance(variance, (int, float)) or not 0 < variance <= 1:
        raise ValueError(f"{KEY}.variance must be in (0, 1], got {variance!r}")
    choices = {"method": svdprune_cuda.METHODS, "strategy": svdprune_cuda.STRATEGIES, "source": SOURCES}
    for key, allowed in choices.items():
        if key in raw and raw[key] not in allowed:
            raise ValueError(f"{KEY}.{key} must be one of {allowed}, got {raw[key]!r}")
    return PruneSettings(**{**raw, "variance": float(variance)})


def _check_on_verify(architecture: str, verifier: type) -> type:
    """``verifier`` (a ``MODELS_CONFIG_MAP`` entry) that first checks the ``svdprune`` settings."""

    def verify_and_update_model_config(model_config) -> None:
        settings(model_config.hf_config, architecture)
        verifier.verify_and_update_model_config(model_config)

    return type(verifier.__name__, (verifier,), {
        "verify_and_update_model_config": staticmethod(verify_and_update_model_config),
        "svdprune_checked": True,
    })


def register() -> None:
    """The general plugin: vLLM calls it in every process it starts (more than once is harmless)."""
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP, VerifyAndUpdateConfig

    ModelRegistry.register_model(ARCHITECTURE, _MODEL_CLASS)
    # ModelConfig verifies the architecture's entry right after the config (with hf_overrides)
    # is loaded, in the process that creates the engine: the earliest place to reject settings.
    for architecture in ModelRegistry.get_supported_archs():
        verifier = MODELS_CONFIG_MAP.get(architecture, VerifyAndUpdateConfig)
        if not getattr(verifier, "svdprune_checked", False):
            MODELS_CONFIG_MAP[architecture] = _check_on_verify(architecture, verifier)
