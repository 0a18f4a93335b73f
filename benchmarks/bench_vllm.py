"""vLLM serving throughput and latency, all visual tokens vs svdprune budgets (results: VLLM.md).

A model with random weights and few layers is written to disk, shaped as

- ``--model llava`` (default): LLaVA-1.5-7B (CLIP-L widths: 1024 hidden, 336 px / 14 px so 576
  tokens per image; Llama-7B widths: 4096 hidden, 32 heads);
- ``--model qwen2_5_vl``: Qwen2.5-VL-7B (vision tower 1280 wide, 14 px patches merged 2 x 2;
  language model 3584 wide, 28 heads of 128), every photo resized to 896 x 672 px: 768 tokens;
- ``--model llava_next``: LLaVA-NeXT-7B (LLaVA-1.5's widths, anyres crops of 336 px), every photo
  resized to 672 x 672 px: the base view and a 2 x 2 grid of crops, 5 x 576 = 2,880 tokens, and a
  newline after each of the grid's 48 rows (``newlines="all"``, the plugin's default, keeps them);

then for each budget one vLLM engine (offline ``LLM``, the plugin switched on with
``hf_overrides``) answers a batch of concurrent requests, each with its own photo, and reports

- requests per second: requests / wall time of the whole batch;
- time to first token: vLLM's per-request first-token latency (queueing included), mean;
- output tokens per second: generated tokens / wall time of the whole batch.

Run in .venv-vllm (scripts/setup_vllm_env.sh)::

    .venv-vllm/bin/python -P benchmarks/bench_vllm.py            # writes benchmarks/vllm_results/llava.json
    .venv-vllm/bin/python -P benchmarks/bench_vllm.py --model qwen2_5_vl
    .venv/bin/python benchmarks/bench_vllm.py --plot              # the plots (need matplotlib)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).parent / "vllm_results"
QUESTION = "What is shown in this picture? Describe it in detail."


@dataclass(frozen=True)
class Shape:
    """A served model's shape and its benchmark's workload."""

    name: str
    prompt: str
    tokens: int  # visual tokens per image, unpruned
    budgets: tuple  # None: the stock model, every token
    sizes: dict  # svdprune.testing.models.Sizes fields
    picture_size: tuple[int, int] | None = None  # (width, height) every photo is resized to
    max_model_len: int = 2048

    def write_checkpoint(self, directory) -> None:
        from svdprune.vllm import testing

        if self.name == "llava":
            testing.write_checkpoint(directory, **self.sizes)
        elif self.name == "llava_next":
            testing.write_llava_next_checkpoint(directory, tile_size=336, **self.sizes)
        else:
            testing.write_qwen_checkpoint(directory, self.name, max_tokens=self.tokens, **self.sizes)


SHAPES = {
    "llava": Shape(
        "llava", f"USER: <image>\n{QUESTION} ASSISTANT:", 576, (None, 192, 128, 64, 32, 16),
        dict(vision_hidden=1024, vision_layers=2, text_hidden=4096, text_layers=2, text_heads=32),
    ),
    "qwen2_5_vl": Shape(
        "qwen2_5_vl", f"USER: <|vision_start|><|image_pad|><|vision_end|>{QUESTION} ASSISTANT:", 768,
        (None, 256, 128, 64, 32),
        dict(vision_hidden=1280, vision_layers=2, text_hidden=3584, text_layers=2, text_heads=28),
        picture_size=(896, 672),
    ),
    "llava_next": Shape(
        "llava_next", f"USER: <image>\n{QUESTION} ASSISTANT:", 2880, (None, 640, 320, 160),
        dict(vision_hidden=1024, vision_layers=2, text_hidden=4096, text_layers=2, text_heads=32),
        picture_size=(672, 672), max_model_len=4096,
    ),
}  # fmt: skip


def photos(count: int, size: tuple[int, int] | None = None):
    """``count`` distinct pictures (the photos and their mirror images) so no cache serves one twice."""
    import numpy as np
    from PIL import Image

    from svdprune.testing import images

    pictures = list(images.load_photos(["astronaut", "chelsea", "coffee", "rocket", "camera"]).values())
    pictures += [np.ascontiguousarray(picture[:, ::-1]) for picture in pictures]
    if count > len(pictures):
        raise ValueError(f"at most {len(pictures)} requests (distinct pictures), got {count}")
    pictures = [Image.fromarray(picture).convert("RGB") for picture in pictures[:count]]
    return [picture.resize(size) for picture in pictures] if size else pictures


def run(shape: Shape, budget, checkpoint: str, requests: int, max_tokens: int) -> dict:
    import vllm

    overrides = {} if budget is None else {"svdprune": {"budget": budget}}
    llm = vllm.LLM(
        model=checkpoint,
        hf_overrides=overrides,
        dtype="float32",
        max_model_len=shape.max_model_len,
        enforce_eager=True,
        enable_prefix_caching=False,  # every request pays its own prefill
        disable_log_stats=False,  # per-request first-token latency
        seed=0,
    )
    try:
        params = vllm.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        pictures = photos(requests + 1, shape.picture_size)
        llm.generate({"prompt": shape.prompt, "multi_modal_data": {"image": pictures[-1]}}, params)  # warm-up
        batch = [{"prompt": shape.prompt, "multi_modal_data": {"image": picture}} for picture in pictures[:requests]]
        start = time.perf_counter()
        outputs = llm.generate(batch, params)
        wall = time.perf_counter() - start
    finally:
        llm.llm_engine.engine_core.shutdown()
    generated = sum(len(output.outputs[0].token_ids) for output in outputs)
    return {
        "budget": budget,
        "prompt_tokens": len(outputs[0].prompt_token_ids),
        "requests_per_s": requests / wall,
        "ttft_s": sum(output.metrics.first_token_latency for output in outputs) / requests,
        "output_tokens_per_s": generated / wall,
        "wall_s": wall,
    }


def measure(args) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    import torch

    shape = SHAPES[args.model]
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        shape.write_checkpoint(directory)
        for budget in args.budgets or shape.budgets:
            rows.append(run(shape, budget, directory, args.requests, args.max_tokens))
            print(json.dumps(rows[-1]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "machine": args.machine,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "vllm": __import__("vllm").__version__,
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "model": shape.name,
        "visual_tokens": shape.tokens,
        "shape": shape.sizes,
        "picture_size": shape.picture_size,
    }
    (RESULTS / f"{shape.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(table(rows, shape.tokens))


def table(rows, full_tokens: int) -> str:
    full = rows[0]
    lines = [
        "| visual tokens | prompt tokens | requests/s | time to first token | output tokens/s | speed-up (req/s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        tokens = f"{full_tokens} (full)" if row["budget"] is None else str(row["budget"])
        lines.append(
            f"| {tokens} | {row['prompt_tokens']} | {row['requests_per_s']:.3f} | {row['ttft_s']:.2f} s "
            f"| {row['output_tokens_per_s']:.2f} | {row['requests_per_s'] / full['requests_per_s']:.2f}x |"
        )
    return "\n".join(lines)


def plot(name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads((RESULTS / f"{name}.json").read_text())
    rows, full = data["rows"], data["meta"]["visual_tokens"]
    tokens = [full if row["budget"] is None else row["budget"] for row in rows]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for axis, key, label in zip(
        axes,
        ["requests_per_s", "ttft_s", "output_tokens_per_s"],
        ["requests / s", "time to first token (s)", "output tokens / s"],
    ):
        axis.plot(tokens, [row[key] for row in rows], "o-")
        axis.set_xscale("log", base=2)
        axis.set_xticks(tokens, [str(t) for t in tokens])
        axis.set_xlabel("visual tokens per image")
        axis.set_title(label)
        axis.grid(alpha=0.3)
    title = {"llava": "LLaVA-1.5-7B", "qwen2_5_vl": "Qwen2.5-VL-7B", "llava_next": "LLaVA-NeXT-7B"}[name]
    figure.suptitle(f"vLLM {data['meta']['vllm']}, {title}-shaped ({data['meta']['machine']})", fontsize=10)
    figure.tight_layout()
    figure.savefig(RESULTS / f"{name}.png", dpi=120)
    print(RESULTS / f"{name}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="llava", help="the model's shape")
    parser.add_argument("--requests", type=int, default=4, help="concurrent requests per budget")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens generated per request")
    parser.add_argument(
        "--budgets", type=lambda s: [None if b == "full" else int(b) for b in s.split(",")],
        help="comma-separated, 'full' for all tokens (default: the model's, e.g. full,192,128,64,32,16)",
    )  # fmt: skip
    parser.add_argument("--machine", default="2-core AMD EPYC VM, no GPU", help="recorded with the results")
    parser.add_argument("--plot", action="store_true", help="only plot the saved results (needs matplotlib)")
    args = parser.parse_args()
    plot(args.model) if args.plot else measure(args)


if __name__ == "__main__":
    main()
