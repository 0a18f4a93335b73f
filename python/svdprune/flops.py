"""Analytic FLOPs of LLaVA-1.5 inference as a function of the visual tokens kept.

Counting convention: one multiply-add is 2 FLOPs. Only matrix products are counted
(linear layers, the attention score and value products, the selection's GEMMs and
factorisations); norms, softmax, activations, rotary embeddings and the embedding lookup are
lower order and left out.

Per decoder layer, for ``n`` new tokens attending to ``c`` context tokens (``c = n`` in prefill):

- Q, K, V, O projections: ``4 * 2 n h^2`` (Vicuna has as many key/value heads as query heads;
  with ``kv`` key/value heads of ``heads``, K and V cost ``kv / heads`` of that each);
- attention scores ``Q K^T`` and weighted values ``A V``: ``2 * 2 n c h``, the full ``n x c``
  rectangle as dense kernels compute it (``causal=True`` counts only the lower triangle);
- MLP: ``mlp_matrices * 2 n h m`` with 3 matrices for Llama's SwiGLU (gate, up, down). The
  formula popularised by FastV, ``4 n h^2 + 2 n^2 h + 2 n h m`` multiply-adds, is this count with
  2 MLP matrices (``--mlp-matrices 2``).

The vision tower (CLIP ViT-L/14-336: 577 tokens, 24 layers run even though LLaVA reads the
penultimate one) and the 2-layer projector cost the same whatever K is when the selection
reads the projector output (``source="projector"``); with ``source="vision"`` the selection
reads the tower's features and the projector runs on the K kept tokens only.

Qwen2.5-VL-7B (``QWEN2_5_VL``): the same decoder count with grouped key/value heads; its tower
runs on the image's own patch grid (no CLS), with SwiGLU MLPs and attention within 112 px windows
(8 x 8 patches) in all but 4 layers (each token counted against a full window), and a merger
(LayerNorm, Linear(4 D, 4 D), GELU, Linear(4 D, H)) on every 2x2 patch group.

Selection cost for one ``N x D`` image (``N`` tokens of ``D`` features):

- exact: Gram matrix ``X X^T`` (``2 N^2 D``) and a symmetric eigensolver with eigenvectors,
  ``~9 N^3`` (Golub & Van Loan, symmetric QR algorithm); ``N <-> D`` when ``D < N``;
- randomized, sketch width ``l``, ``q`` power iterations, as the CPU kernel runs it:
  ``2 N D l (2q + 1)`` for the products with ``X`` and ``X^T`` (``X Omega``, then ``X^T Q`` and
  ``X Z`` per iteration, the last ``Y = X Z`` feeding Rayleigh-Ritz), ``q`` Householder QRs of
  ``N x l`` and ``q`` of ``D x l`` blocks with explicit Q (``4 m l^2 - 4 l^3 / 3`` each), the small
  Gram ``Y^T Y`` (``2 N l^2``), its eigensolver ``9 l^3`` and ``U = Y W`` (``2 N l^2``).

Run ``python -m svdprune.flops --help``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

__all__ = [
    "DecoderConfig",
    "VisionTowerConfig",
    "ProjectorConfig",
    "LlavaConfig",
    "LLAVA_15",
    "LLAVA_NEXT",
    "QWEN2_5_VL",
    "BUDGETS",
    "decoder_prefill_flops",
    "decoder_decode_flops",
    "vision_tower_flops",
    "projector_flops",
    "selection_flops",
    "llava_flops",
    "reduction",
    "match_reduction",
    "text_tokens_for",
    "budget_table",
    "main",
]

BUDGETS = (576, 192, 128, 64, 32, 16)


@dataclass(frozen=True)
class DecoderConfig:
    """A Llama-style decoder: ``layers`` blocks of attention + gated MLP, then the LM head."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    mlp_matrices: int = 3  # SwiGLU: gate, up, down
    kv_heads: int | None = None  # grouped key/value heads; None: as many as query heads


@dataclass(frozen=True)
class VisionTowerConfig:
    """A ViT encoder: patch embedding, ``layers`` blocks of attention + MLP, and the visual tokens
    it hands on (``merge x merge`` patches each)."""

    layers: int = 24
    hidden: int = 1024
    intermediate: int = 4096
    heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    channels: int = 3
    crops: int = 1  # images the tower encodes per input image (LLaVA-NeXT anyres: base view + 4 tiles)
    grid: tuple[int, int] | None = None  # patch rows and columns of a native-resolution image (else square)
    merge: int = 1  # patches per side merged into one visual token
    cls: bool = True
    temporal_patch: int = 1  # frames per patch (an image is repeated to fill them)
    mlp_matrices: int = 2  # GELU MLP; 3 for SwiGLU
    window: int | None = None  # tokens each token attends to in windowed layers
    full_layers: int | None = None  # layers attending over the whole image (None: all)

    @property
    def grid_patches(self) -> int:
        """Patches of one crop."""
        rows, columns = self.grid or (self.image_size // self.patch_size,) * 2
        return rows * columns

    @property
    def patches(self) -> int:
        """Visual tokens of one input image, over all its crops."""
        return self.crops * self.grid_patches // self.merge**2

    @property
    def tokens(self) -> int:
        return self.grid_patches + int(self.cls)  # one crop's sequence


@dataclass(frozen=True)
class ProjectorConfig:
    """LLaVA-1.5's ``mlp2x_gelu`` projector: Linear(vision, text) -> GELU -> Linear(text, text);
    ``inner`` sets the middle width otherwise (Qwen's merger: Linear(4 D, 4 D) -> GELU -> Linear(4 D, text))."""

    vision_hidden: int = 1024  # what the projector reads per visual token
    text_hidden: int = 4096
    inner: int | None = None  # None: text_hidden


@dataclass(frozen=True)
class LlavaConfig:
    name: str
    decoder: DecoderConfig
    vision: VisionTowerConfig
    projector: ProjectorConfig


# From the public llava-hf/llava-1.5-{7b,13b}-hf configs (Vicuna-1.5 text models, CLIP ViT-L/14-336).
LLAVA_15 = {
    "7b": LlavaConfig(
        "LLaVA-1.5-7B",
        DecoderConfig(layers=32, hidden=4096, intermediate=11008, heads=32, vocab=32000),
        VisionTowerConfig(),
        ProjectorConfig(1024, 4096),
    ),
    "13b": LlavaConfig(
        "LLaVA-1.5-13B",
        DecoderConfig(layers=40, hidden=5120, intermediate=13824, heads=40, vocab=32000),
        VisionTowerConfig(),
        ProjectorConfig(1024, 5120),
    ),
}


# From the public llava-hf/llava-v1.6-vicuna-7b-hf config (Vicuna-1.5-7B, CLIP ViT-L/14-336) at its
# largest anyres grid, 672 x 672: the base view and four tiles, 5 x 576 = 2,880 visual tokens (the
# model adds 48 row newlines and drops unpadded rows of non-square images; neither is counted).
LLAVA_NEXT = {
    "7b": LlavaConfig(
        "LLaVA-NeXT-7B",
        DecoderConfig(layers=32, hidden=4096, intermediate=11008, heads=32, vocab=32064),
        VisionTowerConfig(crops=5),
        ProjectorConfig(1024, 4096),
    ),
}


# From the public Qwen/Qwen2.5-VL-7B-Instruct config (Qwen2.5-7B decoder with 4 key/value heads; a
# 32-layer ViT with 14 px patches, 112 px windows except in 4 layers, SwiGLU, 2x2 merger) for a
# 1,280 x 720 image, which the processor resizes to 1,288 x 728 px: 92 x 52 patches, 46 x 26 =
# 1,196 visual tokens.
QWEN2_5_VL = {
    "7b": LlavaConfig(
        "Qwen2.5-VL-7B",
        DecoderConfig(layers=28, hidden=3584, intermediate=18944, heads=28, vocab=152064, kv_heads=4),
        VisionTowerConfig(layers=32, hidden=1280, intermediate=3420, heads=16, patch_size=14, grid=(52, 92), merge=2,
                          cls=False, temporal_patch=2, mlp_matrices=3, window=64, full_layers=4),
        ProjectorConfig(4 * 1280, 3584, inner=4 * 1280),
    ),
}


def _attention_pairs(new_tokens: int, context: int, causal: bool) -> float:
    """How many (query, key) pairs the score and value products cover."""
    if not causal:
        return new_tokens * context
    # The new tokens are the last of the context; query i sees context - new_tokens + i + 1 keys.
    past = context - new_tokens
    return new_tokens * past + new_tokens * (new_tokens + 1) / 2


def _layer_flops(hidden: int, intermediate: int, mlp_matrices: int, new_tokens: int, context: int, causal: bool,
                 kv_share: float = 1.0):
    n, h = new_tokens, hidden
    return {
        "attention_projections": (2 + 2 * kv_share) * 2 * n * h * h,
        "attention_scores": 2 * 2 * _attention_pairs(n, context, causal) * h,
        "mlp": mlp_matrices * 2 * n * h * intermediate,
    }


def _kv_share(config: DecoderConfig) -> float:
    return 1.0 if config.kv_heads is None else config.kv_heads / config.heads


def decoder_prefill_flops(config: DecoderConfig, tokens: int, *, causal: bool = False, lm_head_tokens: int = 1) -> dict:
    """FLOPs of one prefill over ``tokens`` tokens, by part.

    ``lm_head_tokens``: positions whose logits are computed (1 in generation, which only needs
    the last position; ``tokens`` for a plain forward).
    """
    layer = _layer_flops(config.hidden, config.intermediate, config.mlp_matrices, tokens, tokens, causal, _kv_share(config))
    parts = {name: config.layers * value for name, value in layer.items()}
    parts["lm_head"] = 2 * lm_head_tokens * config.hidden * config.vocab
    return parts


def decoder_decode_flops(config: DecoderConfig, prompt_tokens: int, steps: int) -> dict:
    """FLOPs of ``steps`` decode steps after a prompt of ``prompt_tokens`` (KV cache kept).

    Step ``t`` (from 0) feeds one token that attends to ``prompt_tokens + t + 1`` positions.
    """
    parts = {"attention_projections": 0.0, "attention_scores": 0.0, "mlp": 0.0, "lm_head": 0.0}
    for t in range(steps):
        layer = _layer_flops(config.hidden, config.intermediate, config.mlp_matrices, 1, prompt_tokens + t + 1, False,
                             _kv_share(config))
        for name, value in layer.items():
            parts[name] += config.layers * value
        parts["lm_head"] += 2 * config.hidden * config.vocab
    return parts


def vision_tower_flops(config: VisionTowerConfig) -> float:
    inputs = config.channels * config.temporal_patch * config.patch_size**2
    patch_embedding = 2 * config.crops * config.grid_patches * inputs * config.hidden

    def layer(context: int) -> float:
        return sum(_layer_flops(config.hidden, config.intermediate, config.mlp_matrices, config.tokens, context, False).values())

    full = config.layers if config.full_layers is None else config.full_layers
    windowed = (config.layers - full) * layer(config.window) if full < config.layers else 0.0
    return patch_embedding + config.crops * (full * layer(config.tokens) + windowed)


def projector_flops(config: ProjectorConfig, tokens: int) -> float:
    inner = config.inner or config.text_hidden
    return 2 * tokens * (config.vision_hidden * inner + inner * config.text_hidden)


def _qr_flops(rows: int, cols: int) -> float:
    # Householder QR (2 m n^2 - 2 n^3 / 3) plus forming the explicit Q (the same again).
    return 4 * rows * cols**2 - 4 * cols**3 / 3


def selection_flops(tokens: int, features: int, method: str = "exact", sketch: int = 32, power_iterations: int = 3) -> float:
    """FLOPs of the SVD-Prune selection on one ``tokens x features`` image (see module doc)."""
    n, d = tokens, features
    if method == "exact":
        small, large = min(n, d), max(n, d)
        return 2 * small * small * large + 9 * small**3
    if method == "randomized":
        width, q = min(sketch, n, d), power_iterations
        return (
            2 * n * d * width * (2 * q + 1)
            + q * _qr_flops(n, width)
            + q * _qr_flops(d, width)
            + 2 * n * width * width
            + 9 * width**3
            + 2 * n * width * width
        )
    raise ValueError(f"method must be 'exact' or 'randomized', got {method!r}")


def llava_flops(
    config: LlavaConfig,
    visual_tokens: int,
    text_tokens: int = 64,
    decode_tokens: int = 0,
    *,
    include_vision: bool = True,
    selection: str | None = "exact",
    source: str = "projector",
    causal: bool = False,
    lm_head_tokens: int = 1,
    sketch: int = 32,
    power_iterations: int = 3,
) -> dict:
    """FLOPs of answering one image + ``text_tokens`` prompt with ``visual_tokens`` kept, by stage.

    Returns a dict with ``vision`` (tower + projector), ``selection``, ``prefill``, ``decode``
    and ``total``. No selection is counted when all the tower's patches are kept or
    ``selection`` is None.
    """
    if source not in ("projector", "vision"):
        raise ValueError(f"source must be 'projector' or 'vision', got {source!r}")
    patches = config.vision.patches
    if not 0 < visual_tokens <= patches:
        raise ValueError(f"visual_tokens must be in [1, {patches}], got {visual_tokens}")
    if text_tokens < 0 or decode_tokens < 0:
        raise ValueError("text_tokens and decode_tokens must be >= 0")
    prompt = visual_tokens + text_tokens
    projected = patches if source == "projector" else visual_tokens
    vision = vision_tower_flops(config.vision) + projector_flops(config.projector, projected) if include_vision else 0.0
    pruned = selection is not None and visual_tokens < patches
    features = config.projector.text_hidden if source == "projector" else config.projector.vision_hidden
    select = selection_flops(patches, features, selection, sketch, power_iterations) if pruned else 0.0
    prefill = sum(decoder_prefill_flops(config.decoder, prompt, causal=causal, lm_head_tokens=lm_head_tokens).values())
    decode = sum(decoder_decode_flops(config.decoder, prompt, decode_tokens).values())
    total = vision + select + prefill + decode
    return {"vision": vision, "selection": select, "prefill": prefill, "decode": decode, "total": total}


def reduction(config: LlavaConfig, visual_tokens: int, **kwargs) -> float:
    """1 - FLOPs(kept) / FLOPs(all patches), same settings otherwise."""
    kept = llava_flops(config, visual_tokens, **kwargs)["total"]
    full = llava_flops(config, config.vision.patches, **kwargs)["total"]
    return 1.0 - kept / full


# Counting conventions tried when matching a published reduction: what is counted.
SCOPES = {
    "llm-prefill": dict(include_vision=False, selection=None),
    "llm-prefill+selection": dict(include_vision=False, selection="exact"),
    "vision+llm-prefill": dict(include_vision=True, selection=None),
    "vision+selection+llm-prefill": dict(include_vision=True, selection="exact"),
}


def match_reduction(config: LlavaConfig, target: float, budgets=(192, 128, 64, 32, 16), max_text: int = 256):
    """For each counting convention and budget, the text length whose reduction is closest to ``target``.

    Returns rows ``(scope, mlp_matrices, causal, budget, text_tokens, reduction)`` sorted by
    distance to the target.
    """
    rows = []
    for scope, settings in SCOPES.items():
        for mlp_matrices in (3, 2):
            for causal in (False, True):
                variant = replace(config, decoder=replace(config.decoder, mlp_matrices=mlp_matrices))
                for budget in budgets:
                    best = min(
                        (
                            (abs(reduction(variant, budget, text_tokens=t, causal=causal, **settings) - target), t)
                            for t in range(max_text + 1)
                        )
                    )
                    t = best[1]
                    value = reduction(variant, budget, text_tokens=t, causal=causal, **settings)
                    rows.append((scope, mlp_matrices, causal, budget, t, value))
    return sorted(rows, key=lambda row: abs(row[-1] - target))


def text_tokens_for(config: LlavaConfig, budget: int, target: float, max_text: int = 256, **settings):
    """The text length (0..max_text) whose reduction at ``budget`` is closest to ``target``, and
    that reduction."""
    reductions = [(abs(reduction(config, budget, text_tokens=t, **settings) - target), t) for t in range(max_text + 1)]
    text = min(reductions)[1]
    return text, reduction(config, budget, text_tokens=text, **settings)


def _tflops(value: float) -> str:
    return f"{value / 1e12:.3f}"


def budget_table(config: LlavaConfig, budgets, text_tokens: int, decode_tokens: int, **kwargs) -> str:
    """Markdown table of FLOPs per stage and reduction for each budget."""
    full = llava_flops(config, config.vision.patches, text_tokens, decode_tokens, **kwargs)
    full_prefill = full["prefill"]
    lines = [
        f"{config.name}, {text_tokens} text tokens, {decode_tokens} decoded tokens (TFLOPs)",
        "",
        "| K | vision+projector | selection (exact / randomized) | LLM prefill | decode | total | LLM prefill reduction | total reduction |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for budget in budgets:
        exact = llava_flops(config, budget, text_tokens, decode_tokens, selection="exact", **kwargs)
        randomized = llava_flops(config, budget, text_tokens, decode_tokens, selection="randomized", **kwargs)
        lines.append(
            f"| {budget} | {_tflops(exact['vision'])} | {_tflops(exact['selection'])} / {_tflops(randomized['selection'])} "
            f"| {_tflops(exact['prefill'])} | {_tflops(exact['decode'])} | {_tflops(exact['total'])} "
            f"| {100 * (1 - exact['prefill'] / full_prefill):.1f}% | {100 * (1 - exact['total'] / full['total']):.1f}% |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m svdprune.flops",
        description="Analytic FLOPs of LLaVA-1.5 inference versus the number of visual tokens kept.",
    )
    parser.add_argument("--model", choices=sorted(LLAVA_15), nargs="+", default=["7b", "13b"])
    parser.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS), help="visual tokens kept (K)")
    parser.add_argument("--text-tokens", type=int, default=64, help="prompt tokens besides the image (default 64)")
    parser.add_argument("--decode-tokens", type=int, default=0, help="generated tokens after the prefill (default 0)")
    parser.add_argument("--source", choices=["projector", "vision"], default="projector",
                        help="features the selection reads (projector output, 4096-d; or vision tower, 1024-d)")
    parser.add_argument("--causal", action="store_true", help="count only the causal half of the attention products")
    parser.add_argument("--mlp-matrices", type=int, default=3, help="3 for SwiGLU (default), 2 for the FastV formula")
    parser.add_argument("--match", type=float, metavar="FRACTION",
                        help="search the counting conventions and text lengths whose reduction is closest to FRACTION "
                             "(e.g. 0.848)")
    parser.add_argument("--top", type=int, default=12, help="rows to print with --match")
    return parser


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    for key in args.model:
        config = LLAVA_15[key]
        config = replace(config, decoder=replace(config.decoder, mlp_matrices=args.mlp_matrices))
        if args.match is not None:
            print(f"{config.name}: settings closest to a {100 * args.match:.1f}% reduction (K vs 576 visual tokens)")
            print("| counted | MLP matrices | causal | K | text tokens | reduction |")
            print("|---|---:|---|---:|---:|---:|")
            for scope, mlp, causal, budget, text, value in match_reduction(config, args.match)[: args.top]:
                print(f"| {scope} | {mlp} | {causal} | {budget} | {text} | {100 * value:.2f}% |")
            print()
            continue
        print(budget_table(config, args.budgets, args.text_tokens, args.decode_tokens, source=args.source, causal=args.causal))
        print()


if __name__ == "__main__":
    main()
