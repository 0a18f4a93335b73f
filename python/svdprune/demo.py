"""``python -m svdprune demo``: SVD-Prune on a real photograph, nothing downloaded.

Default: a LLaVA-1.5-shaped model with random weights (real 336 px / 14 px vision geometry, so 576
visual tokens; small widths so it runs in seconds on a CPU) looks at a photograph shipped with
scikit-image. The demo selects 64/32/16 tokens with the exact and the randomized method and with
the pivoted strategy, prints selection and prefill times and how often each agrees with the exact
top-K leverage choice, and draws the kept patches over the photo. With ``--model PATH --prompt "..."`` it loads a local llava-hf checkpoint instead and
answers the question with and without pruning, side by side. ``--family llava-next`` runs the
same on a random-weight LLaVA-NeXT-shaped model (336 px anyres: base view plus up to four tiles,
about 2,000-2,900 visual tokens) with ``budget`` per image, and draws the kept patches on the base
view and on each tile. ``--family qwen2.5-vl`` builds a random-weight Qwen2.5-VL-shaped model (the
photo at its own resolution in 28 px merged tokens, up to 1,280; 3-D rotary positions kept) and
draws the kept tokens on the photo as the model sees it.
"""

from __future__ import annotations

import argparse
import functools
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

import svdprune_cuda

from . import llava
from .integrations import prune
from .testing.measure import SELECTIONS, median_seconds
from .testing.models import Sizes

__all__ = ["add_arguments", "run", "load_photo", "plot_kept_patches"]

SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
FAMILIES = ("llava-1.5", "llava-next", "qwen2.5-vl")
DEFAULT_QUESTION = "What is shown in this picture?"
# Widths of the random-weight model: small enough for a CPU, geometry as LLaVA-1.5.
DEMO_SIZES = Sizes(vision_hidden=128, vision_layers=2, text_hidden=512, text_layers=4, text_heads=8)
QWEN_MAX_TOKENS = 1280  # merged tokens per image, the limit Qwen2.5-VL's examples set (max_pixels = 1280 * 28 * 28)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="svdprune_demo.png", help="PNG to write (default: %(default)s)")
    parser.add_argument(
        "--image",
        default="astronaut",
        help=f"a scikit-image sample ({', '.join(SAMPLE_PHOTOS)}) or an image file (default: %(default)s)",
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 32, 16], help="tokens to keep per image (with --model: the first)")
    parser.add_argument("--variance", type=float, default=0.9, help="energy kept by the truncated SVD")
    parser.add_argument("--source", choices=llava.SOURCES, default="projector", help="features the selection reads")
    parser.add_argument("--family", choices=FAMILIES, default="llava-1.5", help="random-weight model to build (default: %(default)s)")
    parser.add_argument("--tile-size", type=int, default=336, help="--family llava-next: crop size in px, a multiple of 14 (default: %(default)s, LLaVA-NeXT's own)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--model", help="local llava-hf/llava-1.5-*-hf checkpoint (directory or cached name)")
    parser.add_argument("--prompt", default=DEFAULT_QUESTION, help="question for --model")
    parser.add_argument("--method", choices=("exact", "randomized", "auto"), default="auto", help="method for --model")
    parser.add_argument("--strategy", choices=("leverage", "pivoted"), default="leverage", help="strategy for --model")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="answer length for --model")
    parser.add_argument("--device", help="device for --model (default: cuda when available)")


def load_photo(name_or_path: str) -> np.ndarray:
    """An RGB uint8 photo: a scikit-image sample by name, or an image file."""
    if name_or_path in SAMPLE_PHOTOS:
        from skimage import data

        return getattr(data, name_or_path)()
    from PIL import Image

    path = Path(name_or_path)
    if not path.is_file():
        raise SystemExit(f"svdprune demo: --image {name_or_path!r} is neither a sample ({', '.join(SAMPLE_PHOTOS)}) nor a file")
    return np.asarray(Image.open(path).convert("RGB"))


def _model_view(processor, pixel_values: torch.Tensor) -> np.ndarray:
    """The 336x336 crop the model sees, un-normalised back to [0, 1] RGB."""
    image_processor = processor.image_processor
    mean = torch.tensor(image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(3, 1, 1)
    return (pixel_values.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def plot_kept_patches(
    photo: np.ndarray, masks: dict[tuple[str, int], torch.Tensor], title: str, out: str, shape: tuple[int, int] | None = None
) -> None:
    """One row per method, one column per budget: kept patches bright and outlined, the rest dimmed.
    ``shape``: the patch grid's rows and columns (default: square)."""
    from matplotlib.figure import Figure

    methods = list(dict.fromkeys(method for method, _ in masks))
    budgets = list(dict.fromkeys(budget for _, budget in masks))
    grid = int(round(next(iter(masks.values())).numel() ** 0.5))
    rows, cols = shape or (grid, grid)
    columns = len(budgets) + 1
    figure = Figure(figsize=(3.1 * columns, 3.3 * len(methods) + 0.7), dpi=110)
    axes = figure.subplots(len(methods), columns, squeeze=False)
    axes[0, 0].imshow(photo)
    axes[0, 0].set_title(f"input: {rows}x{cols} = {rows * cols} patches", fontsize=10)
    for axis in axes[1:, 0]:
        axis.set_axis_off()
        axis.text(0.5, 0.5, "outlined: kept tokens\ndimmed: pruned tokens", ha="center", va="center", fontsize=10)
    for row, method in enumerate(methods):
        for column, budget in enumerate(budgets, start=1):
            kept = masks[(method, budget)].view(rows, cols).cpu().numpy()
            _draw_kept(axes[row, column], photo, kept, line_width=1.0)
            axes[row, column].set_title(f"{method}: {int(kept.sum())} kept", fontsize=10)
    _finish_figure(figure, axes, title, out)


def _draw_kept(axis, photo: np.ndarray, kept: np.ndarray, line_width: float) -> None:
    """``photo`` with the patches of the ``[rows, cols]`` bool grid ``kept`` bright and outlined."""
    from matplotlib.patches import Rectangle

    patch = photo.shape[0] // kept.shape[0]
    shade = np.kron(kept, np.ones((patch, patch)))[..., None]
    axis.imshow(photo * (0.25 + 0.75 * shade) + 0.1 * (1 - shade))
    for y, x in zip(*np.nonzero(kept)):
        axis.add_patch(Rectangle((x * patch - 0.5, y * patch - 0.5), patch, patch, fill=False, lw=line_width, ec="#ffd21f"))


def _finish_figure(figure, axes, title: str, out: str) -> None:
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    figure.savefig(out)


def _print_table(rows, full_seconds: float, n: int, variance: float) -> None:
    header = f"{'method':<11} {'kept':>4} {'rank':>4} {'selection':>10} {'prefill full -> pruned':>24} {'speed-up':>8} {'same tokens as exact':>21}"
    print(header)
    print("-" * len(header))
    for method, budget, rank, select_seconds, pruned_seconds, overlap in rows:
        agreement = "-" if method == "exact" else f"{overlap:.0%}"
        print(
            f"{method:<11} {budget:>4} {rank:>4} {select_seconds * 1e3:>7.2f} ms "
            f"{full_seconds * 1e3:>9.1f} ms -> {pruned_seconds * 1e3:>6.1f} ms {full_seconds / pruned_seconds:>7.1f}x "
            f"{agreement:>21}"
        )
    print(
        "\nprefill = one forward pass over the prompt (vision tower, selection, language model); "
        f"full keeps all {n} visual tokens.\nrank = singular directions holding {variance:.0%} of the energy; "
        "same tokens = share of the selection that the exact (top-K leverage) one also keeps;\n"
        "pivoted = strategy='pivoted', greedy column pivoting on the top-K singular vectors (non-redundant tokens)."
    )


def _random_model_demo(args) -> None:
    from .testing import models as tiny_models

    torch.manual_seed(0)
    processor = tiny_models.build_processor()
    model = tiny_models.build_model(processor, DEMO_SIZES)
    photo = load_photo(args.image)
    prompt = f"USER: <image>\n{DEFAULT_QUESTION} ASSISTANT:"
    inputs = processor(images=photo, text=prompt, return_tensors="pt")
    n = int((inputs.input_ids == model.config.image_token_id).sum())
    sizes = DEMO_SIZES
    print("svdprune demo: SVD-Prune visual-token selection on a real photograph.")
    print(
        "The model is LLaVA-1.5-shaped with RANDOM WEIGHTS (nothing is downloaded): the selection, its timings\n"
        "and the prefill savings are real, but the model's outputs are meaningless. Use --model PATH for a checkpoint.\n"
    )
    grid = tiny_models.IMAGE_SIZE // tiny_models.PATCH_SIZE
    print(
        f"photo:  {args.image}, {photo.shape[1]}x{photo.shape[0]} px -> {tiny_models.IMAGE_SIZE}x{tiny_models.IMAGE_SIZE} crop -> "
        f"{n} visual tokens ({grid}x{grid} patches of {tiny_models.PATCH_SIZE} px)\n"
        f"model:  CLIP width {sizes.vision_hidden}, {sizes.vision_layers} layers -> 2-layer projector -> "
        f"Llama width {sizes.text_hidden}, {sizes.text_layers} layers (random weights)\n"
        f"select: {args.source} features, variance {args.variance}; {torch.get_num_threads()} CPU threads; "
        f"times are medians of {args.repeats} runs\n"
    )

    with torch.inference_mode():
        features = llava.selection_features(model, inputs.pixel_values, args.source)
        full_seconds = median_seconds(functools.partial(model, **inputs), args.repeats)
        rows, masks = [], {}
        for budget in args.budgets:
            for label, (method, strategy) in SELECTIONS.items():
                select = functools.partial(
                    svdprune_cuda.select, features, budget, args.variance, method=method, strategy=strategy
                )
                select_seconds = median_seconds(select, args.repeats)
                rank = int(select()[2][0])
                with llava.prune(model, processor, budget=budget, variance=args.variance, method=method,
                                 source=args.source, strategy=strategy) as handle:
                    pruned_seconds = median_seconds(functools.partial(model, **inputs), args.repeats)
                    masks[(label, budget)] = handle.last_mask[0].clone()
                overlap = (masks[(label, budget)] & masks[("exact", budget)]).sum().item() / budget
                rows.append((label, budget, rank, select_seconds, pruned_seconds, overlap))

    _print_table(rows, full_seconds, n, args.variance)
    title = f"Tokens kept by SVD-Prune ({args.source} features; random-weight LLaVA-1.5-shaped model)"
    plot_kept_patches(_model_view(processor, inputs.pixel_values[0]), masks, title, args.out)
    print(f"\nwrote {args.out}")


def plot_kept_tiles(crops: list[np.ndarray], masks: dict[str, list[np.ndarray]], title: str, out: str) -> None:
    """One row per method, one column per crop (base view, then the tiles): kept patches outlined."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(2.6 * len(crops), 2.8 * len(masks) + 0.6), dpi=110)
    axes = figure.subplots(len(masks), len(crops), squeeze=False)
    for row, (method, kept_per_crop) in enumerate(masks.items()):
        for column, (crop, kept) in enumerate(zip(crops, kept_per_crop)):
            grid = int(round(kept.size**0.5))
            _draw_kept(axes[row, column], crop, kept.reshape(grid, grid), line_width=0.6)
            name = "base view" if column == 0 else f"tile {column}"
            axes[row, column].set_title(f"{method}, {name}: {int(kept.sum())} kept", fontsize=9)
    _finish_figure(figure, axes, title, out)


def _measure_selections(model, processor, inputs, tokens: torch.Tensor, args, kept_of):
    """Prefill time of the full model and, per budget and selection, the selection's time, its
    rank, the pruned prefill time and how much of the exact selection it keeps. ``tokens``
    ``[1, N, D]`` are what the selection scores; ``kept_of`` maps ``handle.last_mask[0]`` to the
    set of kept tokens. Returns the full time, the table rows and the kept sets."""
    full_seconds = median_seconds(functools.partial(model, **inputs), args.repeats)
    rows, kept_tokens = [], {}
    for budget in args.budgets:
        for label, (method, strategy) in SELECTIONS.items():
            select = functools.partial(svdprune_cuda.select, tokens, budget, args.variance, method=method, strategy=strategy)
            select_seconds = median_seconds(select, args.repeats)
            rank = int(select()[2][0])
            with prune(model, processor, budget=budget, variance=args.variance, method=method,
                       source=args.source, strategy=strategy) as handle:
                pruned_seconds = median_seconds(functools.partial(model, **inputs), args.repeats)
                kept_tokens[(label, budget)] = kept_of(handle.last_mask[0])
            overlap = len(kept_tokens[(label, budget)] & kept_tokens[("exact", budget)]) / budget
            rows.append((label, budget, rank, select_seconds, pruned_seconds, overlap))
    return full_seconds, rows, kept_tokens


def _random_next_demo(args) -> None:
    from .integrations import adapter_for
    from .testing import models as tiny_models

    torch.manual_seed(0)
    if args.tile_size < tiny_models.PATCH_SIZE or args.tile_size % tiny_models.PATCH_SIZE:
        raise SystemExit(f"svdprune demo: --tile-size must be a positive multiple of {tiny_models.PATCH_SIZE}, got {args.tile_size}")
    processor = tiny_models.build_next_processor(tile_size=args.tile_size)
    model = tiny_models.build_next_model(processor, DEMO_SIZES)
    photo = load_photo(args.image)
    prompt = f"USER: <image>\n{DEFAULT_QUESTION} ASSISTANT:"
    inputs = processor(images=photo, text=prompt, return_tensors="pt")
    print("svdprune demo: SVD-Prune on a LLaVA-NeXT-shaped model (anyres base view plus tiles).")
    print(
        "The model has RANDOM WEIGHTS (nothing is downloaded): the selection, its timings and the prefill\n"
        "savings are real, but the model's outputs are meaningless.\n"
    )
    per_crop = (args.tile_size // tiny_models.PATCH_SIZE) ** 2
    adapter = adapter_for(model)
    crops = adapter.crops_per_image(inputs.image_sizes, {})[0]
    with torch.inference_mode():
        visual = adapter.visuals(dict(inputs), args.source, "image")[0][2][0]
        tokens = visual.scored[visual.groups[0]][None]  # [1, N, D]: the image's visual tokens
        print(
            f"photo:  {args.image}, {photo.shape[1]}x{photo.shape[0]} px -> base view + {crops - 1} tiles of "
            f"{args.tile_size} px -> {tokens.shape[1]} visual tokens + {int(visual.newline.sum())} row newlines\n"
            f"select: {args.source} features, variance {args.variance}, budget per image (base view and tiles together); "
            f"{torch.get_num_threads()} CPU threads; times are medians of {args.repeats} runs\n"
        )
        full_seconds, rows, kept_tokens = _measure_selections(
            model, processor, inputs, tokens, args, lambda mask: set(visual.sources[mask & ~visual.newline].tolist())
        )
    _print_table(rows, full_seconds, tokens.shape[1], args.variance)
    budget = args.budgets[0]
    masks = {}
    for label in SELECTIONS:
        kept = np.zeros(crops * per_crop, dtype=bool)
        kept[sorted(kept_tokens[(label, budget)])] = True
        masks[label] = list(kept.reshape(crops, per_crop))
    views = [_model_view(processor, crop) for crop in inputs.pixel_values[0, :crops]]
    title = f"{budget} tokens kept by SVD-Prune over the base view and tiles ({args.source} features; random-weight LLaVA-NeXT)"
    plot_kept_tiles(views, masks, title, args.out)
    print(f"\nwrote {args.out}")


def _random_qwen_demo(args) -> None:
    from .integrations import adapter_for
    from .testing import models as tiny_models

    torch.manual_seed(0)
    processor = tiny_models.build_qwen_processor("qwen2_5_vl", max_tokens=QWEN_MAX_TOKENS)
    model = tiny_models.build_qwen_model(processor, "qwen2_5_vl", DEMO_SIZES)
    photo = load_photo(args.image)
    inputs = processor(images=photo, text=f"USER: {tiny_models.QWEN_IMAGE}{DEFAULT_QUESTION} ASSISTANT:", return_tensors="pt")
    _, height, width = (inputs.image_grid_thw[0] // tiny_models.QWEN_MERGE).tolist()
    unit = tiny_models.QWEN_PATCH["qwen2_5_vl"] * tiny_models.QWEN_MERGE
    print("svdprune demo: SVD-Prune on a Qwen2.5-VL-shaped model (native resolution, 3-D rotary positions kept).")
    print(
        "The model has RANDOM WEIGHTS (nothing is downloaded): the selection, its timings and the prefill\n"
        "savings are real, but the model's outputs are meaningless.\n"
    )
    with torch.inference_mode():
        tokens = adapter_for(model).visuals(dict(inputs), args.source, "image")[0][2][0].scored[None]
        print(
            f"photo:  {args.image}, {photo.shape[1]}x{photo.shape[0]} px -> {width * unit}x{height * unit} px -> "
            f"{tokens.shape[1]} visual tokens ({height}x{width} merged tokens of {unit} px)\n"
            f"select: {args.source} features, variance {args.variance}; {torch.get_num_threads()} CPU threads; "
            f"times are medians of {args.repeats} runs\n"
        )
        full_seconds, rows, kept_tokens = _measure_selections(
            model, processor, inputs, tokens, args, lambda mask: set(mask.nonzero().flatten().tolist())
        )
    _print_table(rows, full_seconds, tokens.shape[1], args.variance)
    from PIL import Image

    view = np.asarray(Image.fromarray(photo).resize((width * unit, height * unit), Image.BICUBIC)) / 255.0
    masks = {}
    for key, kept in kept_tokens.items():
        masks[key] = torch.zeros(height * width, dtype=torch.bool)
        masks[key][sorted(kept)] = True
    title = f"Tokens kept by SVD-Prune ({args.source} features; random-weight Qwen2.5-VL-shaped model)"
    plot_kept_patches(view, masks, title, args.out, shape=(height, width))
    print(f"\nwrote {args.out}")


def _side_by_side(left: tuple[str, str], right: tuple[str, str], width: int = 44) -> str:
    columns = [[title, "-" * len(title), *textwrap.wrap(text, width)] for title, text in (left, right)]
    height = max(map(len, columns))
    lines = []
    for i in range(height):
        cells = [column[i] if i < len(column) else "" for column in columns]
        lines.append(f"{cells[0]:<{width}}   {cells[1]}")
    return "\n".join(lines)


def _checkpoint_demo(args) -> None:
    try:
        model, processor = llava.load(args.model, device=args.device)
    except FileNotFoundError as error:
        raise SystemExit(str(error)) from None
    photo = load_photo(args.image)
    prompt = args.prompt if "<image>" in args.prompt else f"USER: <image>\n{args.prompt} ASSISTANT:"
    inputs = processor(images=photo, text=prompt, return_tensors="pt").to(model.device)
    prompt_length = inputs.input_ids.shape[1]
    budget = args.budgets[0]

    def answer() -> tuple[str, float]:
        start = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        seconds = time.perf_counter() - start
        return processor.decode(output[0, prompt_length:], skip_special_tokens=True).strip(), seconds

    full_answer, full_seconds = answer()
    with llava.prune(model, processor, budget=budget, variance=args.variance, method=args.method, source=args.source,
                     strategy=args.strategy) as handle:
        pruned_answer, pruned_seconds = answer()
        mask = handle.last_mask[0].clone()
    n = mask.numel()
    print(f"svdprune demo: {args.model} on {model.device} ({model.dtype}), image {args.image}\nprompt: {prompt!r}\n")
    print(
        _side_by_side(
            (f"all {n} visual tokens ({full_seconds:.2f} s)", full_answer),
            (f"{budget} tokens, {args.method}, {args.strategy} ({pruned_seconds:.2f} s)", pruned_answer),
        )
    )
    title = f"Tokens kept by SVD-Prune ({args.source} features; {Path(args.model).name})"
    plot_kept_patches(_model_view(processor, inputs.pixel_values[0]), {(args.method, budget): mask}, title, args.out)
    print(f"\nwrote {args.out}")


def run(args: argparse.Namespace) -> int:
    if any(budget < 1 for budget in args.budgets):
        raise SystemExit(f"svdprune demo: --budgets must be positive, got {args.budgets}")
    if args.model is None:
        demos = {"llava-1.5": _random_model_demo, "llava-next": _random_next_demo, "qwen2.5-vl": _random_qwen_demo}
        demos[args.family](args)
    else:
        _checkpoint_demo(args)
    return 0
