"""End-to-end latency of a LLaVA-1.5-7B-shaped model with SVD-Prune: time to first token and
decode speed for all 576 visual tokens against K kept, with the selection timed on its own; then
the same for a LLaVA-NeXT-7B-shaped model (``--next-budgets``; a 672 x 672 image: base view and
four tiles, 2,880 visual tokens plus 48 row newlines, ``budget`` per image) and a
Qwen2.5-VL-7B-shaped model (``--qwen-budgets``; a 1,280 x 720 image at its native resolution:
1,196 visual tokens, 3-D rotary positions kept).

The weights are random (latency does not depend on them), built locally: the CLIP
ViT-L/14-336 tower, the 1024 -> 4096 -> 4096 projector and a Vicuna-7B decoder (hidden 4096,
MLP 11008, 32 heads, vocabulary 32064); for Qwen2.5-VL its 32-layer windowed ViT, 2x2 merger and
Qwen2.5-7B decoder (hidden 3584, MLP 18944, 28 heads over 4 key/value heads, vocabulary 152064).
On a GPU the full depth runs in float16; on a CPU the default keeps 2 decoder and 2 vision layers
(every width real) and says so in the table.

    python benchmarks/bench_llava_prefill.py                      # writes benchmarks/LATENCY.md + PNG
    python benchmarks/bench_llava_prefill.py --text-layers 32 --vision-layers 24 --batch-sizes 1 8

Time to first token and decode speed come from one ``generate`` call of 1 + ``--decode-tokens``
tokens, timed by a streamer: time to first token = from the call to the first new token (vision
tower, projector, selection, LLM prefill); decode tokens/s = the tokens after it over the time
they took. Selection = ``svdprune_cuda.select`` alone on the batch's ``[B, 576, 4096]``
projector output. Medians of ``--repeats`` runs after one warm-up. ``--decode-tokens 0`` times
the first token only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers.generation.streamers import BaseStreamer

import svdprune
import svdprune_cuda
from common import machine_description
from svdprune import llava
from svdprune.integrations import adapter_for
from svdprune.testing import images
from svdprune.testing.measure import SELECTIONS, median_seconds

ROOT = Path(__file__).resolve().parent
IMAGE_TOKEN_ID = 32000  # llava-hf/llava-1.5-7b-hf: <image> is the first added token
VOCAB = 32064


# llava-hf/llava-v1.6-vicuna-7b-hf's anyres grids; a 672 x 672 image uses the 2 x 2 one.
NEXT_GRIDS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
NEXT_PLACEHOLDERS = 5 * 576 + 48  # base view, four tiles, a newline after each of the 48 grid rows
# Qwen/Qwen2.5-VL-7B-Instruct's special tokens, and the image size its row is measured at.
QWEN_IMAGE_TOKEN_ID, QWEN_VISION_START, QWEN_VISION_END, QWEN_VOCAB = 151655, 151652, 151653, 152064
QWEN_IMAGE_SIZE = (720, 1280)  # height, width: resized to 728 x 1288 px, 52 x 92 patches,
QWEN_TOKENS = 1196  # 26 x 46 merged tokens


def build_model(text_layers: int, vision_layers: int, device: torch.device, dtype: torch.dtype, family: str = "llava-1.5"):
    """A LLaVA-1.5-7B-shaped ``LlavaForConditionalGeneration`` with random weights, or with
    ``family="llava-next"`` a LLaVA-NeXT-7B-shaped ``LlavaNextForConditionalGeneration`` (the
    same tower, projector and decoder; llava-v1.6-vicuna-7b's anyres grids), or with
    ``family="qwen2.5-vl"`` a Qwen2.5-VL-7B-shaped ``Qwen2_5_VLForConditionalGeneration``."""
    if family == "qwen2.5-vl":
        return _initialise(*_qwen_model_class_and_config(text_layers, vision_layers), device, dtype)
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
    )

    vision = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=vision_layers, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        vocab_size=VOCAB, hidden_size=4096, intermediate_size=11008, num_hidden_layers=text_layers,
        num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    common = dict(
        vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN_ID, vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )
    if family == "llava-next":
        model_class, config = LlavaNextForConditionalGeneration, LlavaNextConfig(image_grid_pinpoints=NEXT_GRIDS, **common)
    else:
        model_class, config = LlavaForConditionalGeneration, LlavaConfig(**common)
    return _initialise(model_class, config, device, dtype)


def _qwen_model_class_and_config(text_layers: int, vision_layers: int):
    """Qwen/Qwen2.5-VL-7B-Instruct's config at the given depths (its tower's global-attention
    blocks, 7, 15, 23 and 31, kept where they exist, else the last block)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    full_attention = [i for i in (7, 15, 23, 31) if i < vision_layers] or [vision_layers - 1]
    vision = dict(
        depth=vision_layers, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
        patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
        fullatt_block_indexes=full_attention, tokens_per_second=2, hidden_act="silu",
    )
    text = dict(
        vocab_size=QWEN_VOCAB, hidden_size=3584, intermediate_size=18944, num_hidden_layers=text_layers,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
        rope_theta=1000000.0, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        tie_word_embeddings=False, bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
    )
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=QWEN_IMAGE_TOKEN_ID, video_token_id=151656,
        vision_start_token_id=QWEN_VISION_START, vision_end_token_id=QWEN_VISION_END, tie_word_embeddings=False,
    )
    return Qwen2_5_VLForConditionalGeneration, config


def _initialise(model_class, config, device: torch.device, dtype: torch.dtype):
    torch.manual_seed(0)
    with torch.device(device):  # initialise in place: a 7B model initialises in seconds on a GPU
        model = model_class(config)
    model = model.to(dtype).eval()
    model.generation_config.pad_token_id = config.get_text_config().pad_token_id
    model.generation_config.eos_token_id = None  # never stop early: every run decodes the same length
    return model


def make_inputs(batch: int, text_tokens: int, device, dtype, family: str = "llava-1.5") -> dict:
    """``batch`` photos and prompts of ``text_tokens`` random text tokens around the image's
    placeholders (576; LLaVA-NeXT: the photo taken as 672 x 672, base view and 2 x 2 tiles;
    Qwen2.5-VL: the photo taken as 1,280 x 720 at its native resolution)."""
    if family == "qwen2.5-vl":
        return _qwen_inputs(batch, text_tokens, device, dtype)
    names = images.photo_names()
    pictures = images.load_photos([names[i % len(names)] for i in range(batch)])
    pixels = torch.stack([images.clip_pixels(pictures[names[i % len(names)]]) for i in range(batch)])
    placeholders = 576
    extra = {}
    if family == "llava-next":
        large = torch.nn.functional.interpolate(pixels, size=(672, 672), mode="bilinear", align_corners=False)
        tiles = large.unflatten(2, (2, 336)).unflatten(4, (2, 336)).permute(0, 2, 4, 1, 3, 5).flatten(1, 2)
        pixels = torch.cat([pixels[:, None], tiles], dim=1)  # [batch, 5, 3, 336, 336]
        placeholders = NEXT_PLACEHOLDERS
        extra["image_sizes"] = torch.tensor([[672, 672]] * batch, device=device)
    generator = torch.Generator().manual_seed(0)
    before = text_tokens // 2
    text = torch.randint(3, 32000, (batch, text_tokens), generator=generator)
    image = torch.full((batch, placeholders), IMAGE_TOKEN_ID)
    bos = torch.ones(batch, 1, dtype=torch.long)
    input_ids = torch.cat([bos, text[:, :before], image, text[:, before:]], dim=1)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "pixel_values": pixels.to(device, dtype),
        **extra,
    }


def _qwen_inputs(batch: int, text_tokens: int, device, dtype) -> dict:
    from PIL import Image

    from svdprune.testing import models as tiny_models

    # The tiny test processor has Qwen2.5-VL's real image geometry (14 px patches, 2x2 merge).
    image_processor = tiny_models.build_qwen_processor("qwen2_5_vl", max_tokens=16384).image_processor
    names = images.photo_names()
    height, width = QWEN_IMAGE_SIZE
    pictures = images.load_photos([names[i % len(names)] for i in range(batch)])
    photos = [np.asarray(Image.fromarray(pictures[names[i % len(names)]]).resize((width, height))) for i in range(batch)]
    vision = image_processor(images=photos, return_tensors="pt")
    placeholders = int(vision["image_grid_thw"][0].prod()) // 4
    generator = torch.Generator().manual_seed(0)
    before = text_tokens // 2
    text = torch.randint(0, 151000, (batch, text_tokens), generator=generator)
    image = torch.cat([
        torch.full((batch, 1), QWEN_VISION_START), torch.full((batch, placeholders), QWEN_IMAGE_TOKEN_ID),
        torch.full((batch, 1), QWEN_VISION_END),
    ], dim=1)
    input_ids = torch.cat([text[:, :before], image, text[:, before:]], dim=1)
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "pixel_values": vision["pixel_values"].to(device, dtype),
        "image_grid_thw": vision["image_grid_thw"].to(device),
    }


def visual_features(model, inputs: dict, family: str) -> torch.Tensor:
    """``[batch, tokens, 4096 or 3584]``: the projector output the selection scores, per image."""
    batch = inputs["input_ids"].shape[0]
    if family == "qwen2.5-vl":
        visuals = adapter_for(model).visuals(dict(inputs), "projector", "image")[0][2]
        return torch.stack([visual.scored for visual in visuals])
    crops = inputs["pixel_values"].flatten(0, -4)  # LLaVA-NeXT: [batch * 5, 3, 336, 336]
    features = llava.selection_features(model, crops)  # [crops, 576, 4096]
    return features.view(batch, -1, features.shape[-1])


class TokenClock(BaseStreamer):
    """A ``generate`` streamer that notes when each step's tokens arrive (``generate`` moves them
    to the CPU first, which waits for the GPU)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def generation_timings(model, inputs, decode_tokens: int, device, repeats: int) -> tuple[float, float | None]:
    """Median (time to first token, decode tokens/s) of ``generate`` runs of 1 + ``decode_tokens`` tokens.

    In one run: the first token arrives ``ttft`` after the call, the others at the decode rate
    (None when there are none).
    """
    batch = inputs["input_ids"].shape[0]
    ttfts, rates = [], []
    for run in range(repeats + 1):  # the first run warms up
        clock = TokenClock()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model.generate(**inputs, max_new_tokens=1 + decode_tokens, min_new_tokens=1 + decode_tokens,
                       do_sample=False, streamer=clock)
        # times[0]: the prompt handed to the streamer before the prefill; then one per new token.
        first, last = clock.times[1], clock.times[-1]
        if run:
            ttfts.append(first - start)
            if decode_tokens:
                rates.append(batch * (len(clock.times) - 2) / (last - first))
    return statistics.median(ttfts), statistics.median(rates) if rates else None


def measure(model, args, device, dtype, family: str, full: int, budgets, batch_sizes) -> list[dict]:
    """Rows of timings for every batch size and ``full`` (no pruning) followed by ``budgets``."""
    rows = []
    for batch in batch_sizes:
        inputs = make_inputs(batch, args.text_tokens, device, dtype, family)

        def encode():
            return visual_features(model, inputs, family)

        features = encode()
        assert features.shape[1] == full, (family, features.shape)
        vision = median_seconds(encode, args.repeats, device)
        for budget in [full, *budgets]:
            row = {"batch": batch, "budget": budget, "vision": vision}
            for name in args.methods:
                method, strategy = SELECTIONS[name]
                row[f"select {name}"] = None if budget == full else median_seconds(
                    lambda: svdprune_cuda.select(features, budget, args.variance, method, strategy=strategy),
                    args.repeats, device)
            handle = None if budget == full else svdprune.prune(model, budget=budget, variance=args.variance,
                                                                 method=args.ttft_method)
            try:
                row["ttft"], row["decode tokens/s"] = generation_timings(
                    model, inputs, args.decode_tokens, device, args.repeats)
            finally:
                if handle is not None:
                    handle.remove()
            rows.append(row)
            print(f"{family} batch {batch} K={budget}: TTFT {row['ttft'] * 1e3:.1f} ms, "
                  f"decode {_rate(row)} tokens/s", flush=True)
    return rows


@torch.inference_mode()
def run(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    text_layers = args.text_layers or (32 if device.type == "cuda" else 2)
    vision_layers = args.vision_layers or (24 if device.type == "cuda" else 2)
    depth = (f"random weights, {text_layers}/32 decoder layers, {vision_layers}/24 vision layers, "
             f"{str(dtype).removeprefix('torch.')}")
    model = build_model(text_layers, vision_layers, device, dtype)
    rows = measure(model, args, device, dtype, "llava-1.5", 576, args.budgets, args.batch_sizes)
    result = {"rows": rows, "label": f"LLaVA-1.5-7B-shaped, {depth}", "device": device, "next": None, "qwen": None}
    if args.next_budgets:
        del model
        model = build_model(text_layers, vision_layers, device, dtype, "llava-next")
        next_rows = measure(model, args, device, dtype, "llava-next", 2880, args.next_budgets, args.batch_sizes[:1])
        result["next"] = {"rows": next_rows, "label": f"LLaVA-NeXT-7B-shaped, {depth}"}
    if args.qwen_budgets:
        del model
        model = build_model(text_layers, vision_layers, device, dtype, "qwen2.5-vl")
        qwen_depth = depth.replace("/32 decoder", "/28 decoder").replace("/24 vision", "/32 vision")
        qwen_rows = measure(model, args, device, dtype, "qwen2.5-vl", QWEN_TOKENS, args.qwen_budgets, args.batch_sizes[:1])
        result["qwen"] = {"rows": qwen_rows, "label": f"Qwen2.5-VL-7B-shaped, {qwen_depth}"}
    return result


def _rate(row: dict) -> str:
    return "-" if row["decode tokens/s"] is None else f"{row['decode tokens/s']:.1f}"


def markdown(result: dict, args, plot_name: str) -> str:
    methods = args.methods
    lines = [
        "# End-to-end latency of LLaVA-1.5, LLaVA-NeXT and Qwen2.5-VL with SVD-Prune",
        "",
        f"Generated by `python benchmarks/bench_llava_prefill.py`. Machine: {machine_description()}.",
        f"Model: {result['label']}. Prompt: {args.text_tokens} text tokens + 576 image placeholders; "
        f"τ = {args.variance}; TTFT with `method={args.ttft_method}`; decode speed over {args.decode_tokens} tokens; "
        f"medians of {args.repeats} runs.",
        "",
        "| batch | K | vision tower + projector | " + " | ".join(f"selection ({m})" for m in methods)
        + " | time to first token | speed-up | decode tokens/s |",
        "|---:|---:|---:|" + "---:|" * len(methods) + "---:|---:|---:|",
    ]
    header = lines[-2:]
    lines += _table_rows(result["rows"], methods)
    lines += ["", f"![time to first token]({plot_name})", ""]
    if result["next"] is not None:
        lines += [
            "## LLaVA-NeXT",
            "",
            f"Model: {result['next']['label']}. Prompt: {args.text_tokens} text tokens + one 672 x 672 image: "
            f"base view and 2 x 2 tiles, 2,880 visual tokens and 48 row newlines; K per image over all five crops "
            "(the newlines of rows that keep a token stay); selection on the image's [2880, 4096] projector output.",
            "",
            *header,
            *_table_rows(result["next"]["rows"], methods),
            "",
        ]
    if result["qwen"] is not None:
        lines += [
            "## Qwen2.5-VL",
            "",
            f"Model: {result['qwen']['label']}. Prompt: {args.text_tokens} text tokens + one 1,280 x 720 image at its "
            f"native resolution (resized to 1,288 x 728 px: 92 x 52 patches of 14 px, merged 2 x 2 into {QWEN_TOKENS:,} "
            "visual tokens); K per image; every kept token keeps its 3-D rotary position (`positions=\"keep\"`); "
            f"selection on the image's [{QWEN_TOKENS}, 3584] merger output.",
            "",
            *header,
            *_table_rows(result["qwen"]["rows"], methods),
            "",
        ]
    return "\n".join(lines)


def _table_rows(rows: list[dict], methods) -> list[str]:
    full = {row["batch"]: row["ttft"] for row in rows if all(row[f"select {m}"] is None for m in methods)}
    lines = []
    for row in rows:
        selections = ["-" if row[f"select {m}"] is None else f"{row[f'select {m}'] * 1e3:.2f} ms" for m in methods]
        lines.append(
            f"| {row['batch']} | {row['budget']} | {row['vision'] * 1e3:.1f} ms | " + " | ".join(selections)
            + f" | {row['ttft'] * 1e3:.1f} ms | {full[row['batch']] / row['ttft']:.2f}x | {_rate(row)} |"
        )
    return lines


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for batch in sorted({row["batch"] for row in result["rows"]}):
        rows = [row for row in result["rows"] if row["batch"] == batch]
        budgets = [row["budget"] for row in rows]
        axes[0].plot(budgets, [row["ttft"] * 1e3 for row in rows], marker="o", label=f"batch {batch}")
        axes[1].plot(budgets, [row["decode tokens/s"] or float("nan") for row in rows], marker="o", label=f"batch {batch}")
    for axis, ylabel in zip(axes, ["time to first token (ms)", "decode tokens/s"]):
        axis.set_xscale("log", base=2)
        ticks = sorted({row["budget"] for row in result["rows"]})
        axis.set_xticks(ticks, [str(t) for t in ticks])
        axis.minorticks_off()
        axis.set_xlabel("visual tokens kept K")
        axis.set_ylabel(ylabel)
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend()
    fig.suptitle(result["label"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--text-layers", type=int, help="decoder layers (default: 32 on GPU, 2 on CPU)")
    parser.add_argument("--vision-layers", type=int, help="vision layers (default: 24 on GPU, 2 on CPU)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="default: 1 8 on GPU, 1 on CPU")
    parser.add_argument("--budgets", type=int, nargs="+", default=[192, 128, 64, 32, 16])
    parser.add_argument("--next-budgets", type=int, nargs="*", default=[640, 320, 160],
                        help="LLaVA-NeXT budgets per image, of 2,880 tokens (none: skip LLaVA-NeXT)")
    parser.add_argument("--qwen-budgets", type=int, nargs="*", default=[256, 128, 64],
                        help=f"Qwen2.5-VL budgets per image, of {QWEN_TOKENS:,} tokens (none: skip Qwen2.5-VL)")
    parser.add_argument("--methods", nargs="+", choices=list(SELECTIONS), default=list(SELECTIONS),
                        help="selections timed (pivoted = exact basis, strategy='pivoted')")
    parser.add_argument("--ttft-method", default="exact", help="selection method inside the TTFT runs")
    parser.add_argument("--variance", type=float, default=0.9)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--decode-tokens", type=int, help="default: 32 on GPU, 8 on CPU")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, help="default: 10 on GPU, 2 on CPU")
    parser.add_argument("--markdown", type=Path, default=ROOT / "LATENCY.md")
    parser.add_argument("--out", type=Path, default=ROOT / "latency_results", help="folder of the PNG")
    return parser


def arguments(argv=None) -> argparse.Namespace:
    """The command line, with the defaults that depend on the device filled in."""
    args = _parser().parse_args(argv)
    gpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    defaults = {"batch_sizes": [1, 8] if gpu else [1], "decode_tokens": 32 if gpu else 8, "repeats": 10 if gpu else 2}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.decode_tokens < 0 or args.repeats < 1:
        raise SystemExit(f"--decode-tokens must be >= 0 and --repeats >= 1, got {args.decode_tokens} and {args.repeats}")
    return args


def main(argv=None) -> dict:
    args = arguments(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    plot_path = args.out / f"ttft_{result['device'].type}.png"
    plot(result, plot_path)
    args.markdown.write_text(markdown(result, args, os.path.relpath(plot_path, args.markdown.parent)))
    print(f"wrote {args.markdown} and {plot_path}")
    return result


if __name__ == "__main__":
    main()
