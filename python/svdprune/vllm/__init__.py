"""SVD-Prune inside vLLM: LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL and Qwen3-VL serve
fewer visual tokens per image.

A vLLM general plugin (entry point ``vllm.general_plugins``: ``svdprune``), switched on per model
through the model config::

    vllm serve llava-hf/llava-1.5-7b-hf --hf-overrides '{"svdprune": {"budget": 64}}'
    vllm serve Qwen/Qwen2.5-VL-7B-Instruct --hf-overrides '{"svdprune": {"budget": 256}}'
    LLM(model=..., hf_overrides={"svdprune": {"budget": 64, "variance": 0.9, "method": "auto",
                                              "strategy": "leverage", "source": "projector"}})

Without the ``svdprune`` key the model is vLLM's own, unchanged.

``budget``: LLaVA-1.5 keeps ``budget`` of its 576 tokens per image. Qwen keeps ``min(budget,
n)`` of an image's ``n`` merged tokens (an image smaller than the budget keeps them all), and of a
video ``min(budget, n)`` per merged frame (two frames), or per whole clip with ``"scope":
"video"`` (Qwen2.5-VL only), the tokens :func:`svdprune.prune` keeps with the same settings.
LLaVA-NeXT and OneVision keep ``min(budget, n)`` of an image's ``n`` visual tokens (per base view
and per tile with ``"scope": "tile"``) and of a OneVision video per frame (per clip with
``"scope": "video"``), plus, with ``"newlines": "all"`` (the default), every newline of the
image's grid rows and the video's one, or none with ``"none"`` (``svdprune.prune``'s
``newlines``; its ``"kept"`` gives a count vLLM cannot know before the vision tower runs).

How it works, and why this way
------------------------------
vLLM sizes a visual's placeholders in the prompt before the vision tower runs (the scheduler,
the KV cache and prefix caching all work on the placeholder tokens), so only counts known from
the image's size are possible: the prompt gets the kept count of placeholders per visual, and the
model's embedding path returns exactly that many features, the kept tokens in their original
order (:mod:`svdprune.vllm.model` for LLaVA-1.5, :mod:`svdprune.vllm.llava_next`,
:mod:`svdprune.vllm.qwen`). Everything else -
attention, chunked prefill, prefix caching, continuous batching - is vLLM's, working on the
shorter prompt. The LLaVA families' positions are vLLM's own numbering of the shorter prompt
(``positions="compact"``); Qwen's kept tokens keep their 3-D positions in the full sequence
(``positions="keep"``, :mod:`svdprune.vllm.positions`). The vLLM internals the plugin relies on
are named in :mod:`svdprune.vllm.internals`.

:func:`register` (run by vLLM in every process it starts) puts the model classes in place of
vLLM's and adds a start-up check of the ``svdprune`` settings to every architecture's config
verification, so a bad setting, the key on an unsupported model, or an engine configuration the
plugin cannot serve fails when the engine starts, in the process that starts it.

Selection is deterministic: ``method="exact"`` has no randomness and ``"randomized"`` is seeded
(seed 0) and independent of the batch an image is in, so every tensor-parallel rank, which sees
the same all-reduced projector output, keeps the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from svdprune.integrations import (
    Adapter,
    LlavaAdapter,
    LlavaNextAdapter,
    LlavaOnevisionAdapter,
    Qwen2_5_VLAdapter,
    Qwen3VLAdapter,
)
from svdprune.integrations.llava import tokens_per_image
from svdprune.integrations.settings import PruneSettings, budget_limit

__all__ = ["register", "PruneSettings", "settings", "MODELS", "KEY"]

KEY = "svdprune"  # the hf_overrides / config.json key


@dataclass(frozen=True)
class Served:
    """A served architecture: the plugin's model class, svdprune.prune's adapter of the family
    (its name and the settings it allows), and what of those vLLM serves."""

    model_class: str
    adapter: type[Adapter]
    scopes: tuple[str, ...]
    positions: str  # "compact": vLLM numbers the shortened prompt; "keep": the plugin keeps Qwen's
    # The newline modes served, the first the default (none: the family has no newline tokens).
    newlines: tuple[str, ...] = ()


MODELS = {
    "LlavaForConditionalGeneration": Served(
        "svdprune.vllm.model:PrunedLlavaForConditionalGeneration", LlavaAdapter, ("image",), "compact"
    ),
    # An image's placeholders are counted from its size: every row's newline or none.
    "LlavaNextForConditionalGeneration": Served(
        "svdprune.vllm.llava_next:PrunedLlavaNextForConditionalGeneration", LlavaNextAdapter, ("image", "tile"),
        "compact", ("all", "none"),
    ),
    "LlavaOnevisionForConditionalGeneration": Served(
        "svdprune.vllm.llava_next:PrunedLlavaOnevisionForConditionalGeneration", LlavaOnevisionAdapter,
        ("image", "tile", "video"), "compact", ("all", "none"),
    ),
    "Qwen2_5_VLForConditionalGeneration": Served(
        "svdprune.vllm.qwen:PrunedQwen2_5_VLForConditionalGeneration", Qwen2_5_VLAdapter, ("image", "video"), "keep"
    ),
    # Qwen3-VL gives each merged frame of a video its own placeholders, counted before the vision
    # tower runs: a budget per clip cannot be spread over them.
    "Qwen3VLForConditionalGeneration": Served(
        "svdprune.vllm.qwen:PrunedQwen3VLForConditionalGeneration", Qwen3VLAdapter, ("image",), "keep"
    ),
}


def settings(hf_config, architecture: str) -> PruneSettings | None:
    """The checked ``svdprune`` settings of a model config, ``None`` when it has no such key.

    The settings are :func:`svdprune.prune`'s, checked as it checks them (the same messages,
    prefixed with the key); then what vLLM cannot serve is refused: adaptive budgets, and the
    scopes and position schemes the plugin does not serve for the family. Raises ``ValueError``
    naming the offending key.
    """
    raw = getattr(hf_config, KEY, None)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError(f"{KEY}: expected a dict of settings, e.g. {{'budget': 64}}, got {raw!r}")
    served = MODELS.get(architecture)
    if served is None:
        supported = ", ".join(f"{name} ({model.adapter.family})" for name, model in MODELS.items())
        raise ValueError(f"{KEY}: architecture {architecture!r} is not supported; supported: {supported}")
    family = served.adapter.family
    vision_type = getattr(getattr(hf_config, "vision_config", None), "model_type", None)
    if served.adapter is LlavaAdapter and vision_type != "clip_vision_model":
        raise ValueError(
            f"{KEY}: architecture {architecture} with a {vision_type!r} vision tower is not supported; "
            "supported: LLaVA-1.5 (CLIP vision tower)"
        )
    known = list(PruneSettings.__dataclass_fields__)
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ValueError(f"{KEY}: unknown key(s) {unknown}; known: {known}")

    most = tokens_per_image(hf_config) if served.adapter is LlavaAdapter else None
    if served.newlines:
        raw = {"newlines": served.newlines[0], **raw}
    try:
        prune = PruneSettings(**raw).checked(
            family, served.adapter.scopes, served.adapter.positions, most, served.adapter.newlines
        )
    except ValueError as error:
        raise ValueError(f"{KEY}.{error}") from None
    if prune.budget is None:
        raise ValueError(
            f"{KEY}.budget must be an int {budget_limit(most)}: adaptive budgets (None) cannot be served by vLLM, "
            "which sizes each image's placeholders before the vision tower runs"
        )
    if prune.scope not in served.scopes:
        raise ValueError(
            f"{KEY}.scope {prune.scope!r} is not served for {family} (served: {served.scopes}): vLLM counts "
            "each merged frame's placeholders before the vision tower runs"
        )
    if served.newlines and prune.newlines not in served.newlines:
        raise ValueError(
            f"{KEY}.newlines {prune.newlines!r} is not served for {family} (served: {served.newlines}, default "
            f"{served.newlines[0]!r}): vLLM counts an image's placeholders from its size before the vision tower "
            "runs, and 'kept' keeps a number of newlines that depends on the selection"
        )
    if prune.positions != served.positions:
        raise ValueError(
            f"{KEY}.positions {prune.positions!r} is not served for {family} (served: {served.positions!r}): "
            "vLLM numbers its shortened prompt itself"
        )
    return prune


def _check_engine(vllm_config, architecture: str) -> None:
    """Engine configurations a model that renumbers its positions cannot be served with."""
    hf_config = vllm_config.model_config.hf_config
    if MODELS[architecture].positions != "keep" or settings(hf_config, architecture) is None:
        return
    family = MODELS[architecture].adapter.family
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        raise ValueError(
            f"{KEY}: {family} cannot be pruned with pipeline parallelism: the kept tokens' positions are "
            "set where the vision tower runs, on the first stage only; use tensor parallelism instead"
        )
    if vllm_config.speculative_config is not None:
        raise ValueError(f"{KEY}: {family} cannot be pruned with speculative decoding")
    if vllm_config.use_v2_model_runner:
        raise ValueError(
            f"{KEY}: {family} is pruned with vLLM's V1 model runner only; set VLLM_USE_V2_MODEL_RUNNER=0"
        )
    mm_config = vllm_config.model_config.multimodal_config
    if mm_config is not None and mm_config.is_multimodal_pruning_enabled():
        raise ValueError(f"{KEY}: {family} cannot be pruned by svdprune and by --video-pruning-rate at once")


def _check_on_verify(architecture: str, verifier: type) -> type:
    """``verifier`` (a ``MODELS_CONFIG_MAP`` entry) that first checks the ``svdprune`` settings."""

    def verify_and_update_model_config(model_config) -> None:
        settings(model_config.hf_config, architecture)
        verifier.verify_and_update_model_config(model_config)

    def verify_and_update_config(vllm_config) -> None:
        if architecture in MODELS:
            _check_engine(vllm_config, architecture)
        verifier.verify_and_update_config(vllm_config)

    return type(verifier.__name__, (verifier,), {
        "verify_and_update_model_config": staticmethod(verify_and_update_model_config),
        "verify_and_update_config": staticmethod(verify_and_update_config),
        "svdprune_checked": True,
    })


def register() -> None:
    """The general plugin: vLLM calls it in every process it starts (more than once is harmless)."""
    from svdprune.vllm.internals import MODELS_CONFIG_MAP, ModelRegistry, VerifyAndUpdateConfig, open_pruning_gate

    for architecture, served in MODELS.items():
        ModelRegistry.register_model(architecture, served.model_class)
    # ModelConfig verifies the architecture's entry right after the config (with hf_overrides)
    # is loaded, in the process that creates the engine: the earliest place to reject settings.
    for architecture in ModelRegistry.get_supported_archs():
        verifier = MODELS_CONFIG_MAP.get(architecture, VerifyAndUpdateConfig)
        if not getattr(verifier, "svdprune_checked", False):
            MODELS_CONFIG_MAP[architecture] = _check_on_verify(architecture, verifier)
    open_pruning_gate()
