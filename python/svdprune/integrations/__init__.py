"""``svdprune.prune``: SVD-Prune inside Hugging Face transformers vision-language models.

    with svdprune.prune(model, processor, budget=64):
        inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device)
        output = model.generate(**inputs, max_new_tokens=32)

The pieces, one module each: :mod:`.adapter` (what a family looks like) with one adapter per
family (:mod:`.llava`, :mod:`.llava_next`, :mod:`.llava_onevision`, :mod:`.qwen2_5_vl` with
Qwen2-VL, :mod:`.qwen3_vl`), :mod:`.selection` (which
tokens each image, tile, frame or clip keeps), :mod:`.batch` (shortening the batch around them,
with no model involved) and :mod:`.handle` (wrapping ``forward`` and ``generate``).
"""

from __future__ import annotations

from .adapter import Adapter
from .handle import PruneHandle, tokenizer_of
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .llava_onevision import LlavaOnevisionAdapter
from .qwen2_5_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter
from .qwen3_vl import Qwen3VLAdapter
from .settings import SOURCES, PruneSettings

__all__ = ["prune", "PruneHandle", "PruneSettings", "ADAPTERS", "SOURCES", "adapter_for"]

ADAPTERS: tuple[type[Adapter], ...] = (
    LlavaAdapter, LlavaNextAdapter, LlavaOnevisionAdapter, Qwen2_5_VLAdapter, Qwen2VLAdapter, Qwen3VLAdapter
)


def adapter_for(model) -> Adapter:
    """The adapter of ``model``'s family; ``TypeError`` naming the supported classes otherwise."""
    # Most derived first: a subclass of a supported class is served by its own family's adapter.
    for adapter in ADAPTERS:
        if type(model).__name__ == adapter.class_name:
            return adapter(model)
    for adapter in ADAPTERS:
        if adapter.serves(model):
            return adapter(model)
    supported = ", ".join(adapter.class_name for adapter in ADAPTERS)
    raise TypeError(f"svdprune.prune supports transformers' {supported}; got {type(model).__name__}")


def prune(
    model,
    processor=None,
    *,
    budget: int | None = 64,
    variance: float = 0.9,
    method: str = "auto",
    strategy: str = "leverage",
    source: str = "projector",
    scope: str = "image",
    positions: str | None = None,
    newlines: str | None = None,
) -> PruneHandle:
    """Make ``model`` see only the selected visual tokens of every image and video it is given.

    Args:
        model: a supported transformers model (see ``ADAPTERS``); its ``forward`` and ``generate``
            are wrapped in place. A ``torch.compile``'d model: the module it compiles is pruned,
            and the compiled model's calls see it pruned.
        processor: its processor, or the processor's tokenizer (optional): the tokenizer's padding
            side and pad token are used when the batch itself does not show them.
        budget: an integer (``operator.index``: a NumPy integer or 0-d integer tensor too): visual
            tokens kept per image (``scope="image"``: LLaVA-NeXT and OneVision count
            the base view and all tiles together), per tile (``"tile"``), per video frame, or per
            whole video (``"video"``); ``None`` for the adaptive mode (``select_adaptive`` per
            image, tile, frame or video: the fewest tokens whose cumulative leverage reaches
            ``variance * rank``). Row-end ``image_newline`` tokens are not counted (``newlines``).
        variance: fraction of the energy the truncated SVD keeps, in ``(0, 1]``.
        method: ``"exact"``, ``"randomized"`` or ``"auto"``.
        strategy: how a fixed ``budget`` is chosen: ``"leverage"`` (top-K leverage) or
            ``"pivoted"`` (column pivoting on the top-K singular vectors); see ``svdprune_cuda.select``.
        source: ``"projector"`` scores the projected features the language model receives,
            ``"vision"`` the vision-tower features the projector reads (laid out, tiled and pooled
            as the model lays out the projected ones). Either way the language model receives the
            projected features of the kept tokens, in their original order.
        scope: ``"image"``, ``"tile"`` (LLaVA-NeXT, OneVision) or ``"video"`` (OneVision, Qwen),
            what one ``budget`` covers (above).
        positions: ``"compact"``: the language model numbers the shortened sequence afresh, as if
            the pruned tokens had never been there (the LLaVA families' default); ``"keep"``: every
            kept token, text included, keeps its position in the full sequence, and new tokens
            continue from there, as without pruning (Qwen's only choice: its 3-D rotary
            positions place visual tokens on their grid). ``None``: the family's default.
        newlines: what becomes of the ``image_newline`` token LLaVA-NeXT and OneVision put after
            each row of an image's tile grid (and OneVision after each video); newlines are never
            scored nor counted in ``budget``. ``"kept"`` (the default): a row's newline stays when
            a token of the row does, so the language model still sees where each kept row ends,
            at a count that depends on the selection; ``"all"``: every newline stays, the grid's
            rows shown whole, and an image costs ``budget`` plus its grid's rows (a count known
            from the image's size, which vLLM can serve: :mod:`svdprune.vllm`'s default);
            ``"none"``: every newline goes, an image costs exactly ``budget`` and the language
            model sees no row ends. Other families have no newlines: leave it ``None``.

    Returns:
        A :class:`PruneHandle`; ``handle.remove()`` or ``with prune(...):`` restores the model.

    A streamer given to ``generate`` receives the caller's prompt (``skip_prompt=False``), as
    ``generate`` returns it, then the new tokens.
    """
    # torch.compile's OptimizedModule calls its module's own forward, which pruning the module wraps.
    model = getattr(model, "_orig_mod", model)
    adapter = adapter_for(model)
    if processor is not None and tokenizer_of(processor) is None:
        raise TypeError(
            "processor must be the model's processor or its tokenizer (an object with padding_side and "
            f"pad_token_id, or whose .tokenizer has them), got {type(processor).__name__}"
        )
    settings = PruneSettings(budget, variance, method, strategy, source, scope, positions, newlines).checked(
        adapter.family, adapter.scopes, adapter.positions, adapter.fixed_tokens, adapter.newlines
    )
    return PruneHandle(
        model, adapter, processor, settings.budget, settings.variance, settings.method, settings.source,
        settings.strategy, settings.scope, settings.positions, settings.newlines,
    )
