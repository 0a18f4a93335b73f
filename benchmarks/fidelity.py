"""Token fidelity: how well the kept tokens span all the tokens of an image, per selection method.

For an image's token matrix X (N x D) and kept rows S:

- span residual ``||X - X P_S||_F / ||X||_F``, with ``P_S = pinv(X_S) X_S`` the orthogonal
  projector onto the row space of the kept tokens (float64): how much of the image the kept
  tokens cannot express as linear combinations of themselves. Lower is better.
- best rank-K residual (Eckart-Young) ``sqrt(sum_{i>K} sigma_i^2) / ||X||_F``: no K tokens can
  do better, since X P_S has rank <= K.
- spatial coverage: mean distance (in patches) from each patch of the 24 x 24 grid to its
  nearest kept patch, and the fraction of the 36 cells of 4 x 4 patches holding a kept patch.

Inputs are real photographs shipped by scikit-image and scikit-learn, in three views:
``patches`` (raw 14 x 14 x 3 patches, 588-d), ``clip`` (penultimate-layer features of a CLIP
ViT-L/14-336 tower, 1024-d: random weights unless ``--clip PATH`` names a local checkpoint) and
``lifted`` (a fixed random nonlinear 4096-d view of the patches, the width of LLaVA's
projector output). The CLS-attention baseline reads the tower's penultimate attention map.

    python benchmarks/fidelity.py                 # full run, writes benchmarks/FIDELITY.md + PNGs
    python benchmarks/fidelity.py --quick --out /tmp/fid --markdown /tmp/fid/FIDELITY.md
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

import svdprune_cuda
from common import TokenMatrix, machine_description
from svdprune import baselines
from svdprune.testing import images

ROOT = Path(__file__).resolve().parent
PAPER_DEFAULT = "svd exact τ=0.9"
VIEWS = ("patches", "clip", "lifted")
TABLE_BUDGETS = (64, 32, 16)

# --------------------------------------------------------------------------------- metrics


def mean_grid_distance(indices, grid: int = images.GRID) -> float:
    """Mean Euclidean distance (in patches) from every grid patch to its nearest kept patch."""
    coordinates = images.grid_coordinates(grid)
    kept = coordinates[torch.as_tensor(indices, dtype=torch.int64)]
    return float(torch.cdist(coordinates, kept).min(dim=1).values.mean())


def cell_coverage(indices, grid: int = images.GRID, cell: int = 4) -> float:
    """Fraction of the ``(grid/cell)^2`` cells of ``cell x cell`` patches that hold a kept patch."""
    index = torch.as_tensor(indices, dtype=torch.int64)
    cells_per_side = grid // cell
    cells = (index // grid // cell) * cells_per_side + (index % grid) // cell
    return len(set(cells.tolist())) / cells_per_side**2


# --------------------------------------------------------------------------------- inputs


def clip_tower(path: str | None, layers: int):
    """A CLIP vision tower: the local checkpoint at ``path``, else ViT-L/14-336-shaped random weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if path:
        model = CLIPVisionModel.from_pretrained(path, attn_implementation="eager")
        label = f"CLIP vision tower from {path} ({model.config.num_hidden_layers} layers)"
    else:
        config = CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=layers, num_attention_heads=16,
            image_size=336, patch_size=14, hidden_act="quick_gelu",
        )
        config._attn_implementation = "eager"  # attention weights are needed for CLS attention
        torch.manual_seed(0)
        model = CLIPVisionModel(config)
        full = " (ViT-L/14-336 has 24)" if layers != 24 else ""
        label = f"randomly initialised CLIP ViT-L/14-336-shaped tower, {layers} layers{full}, seed 0"
    return model.eval(), label


@torch.inference_mode()
def clip_features(model, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate-layer patch features [576, 1024], penultimate attention [H, 577, 577])."""
    out = model(pixel_values=images.clip_pixels(image).unsqueeze(0), output_hidden_states=True, output_attentions=True)
    # LLaVA-1.5 reads hidden_states[-2] without the CLS token; VisionZip the same layer's attention.
    return out.hidden_states[-2][0, 1:].double(), out.attentions[-2][0].double()


# --------------------------------------------------------------------------------- methods


def _each_budget(select):
    """A method from a per-budget selection function ``select(features, budget, attention)``."""

    def run(features, budgets, attention):
        chosen = {k: select(features, k, attention) for k in budgets}
        return {k: v if isinstance(v, list) else [v] for k, v in chosen.items()}, None

    return run


def _svd(method: str, center: bool, variance: float):
    """SVD-Prune: one ``select`` call at the largest budget; the smaller budgets are the top of
    the same leverage scores (select's rule: the K highest, ties to the lower index)."""

    def run(features, budgets, attention):
        largest = max(budgets)
        indices, scores, rank = svdprune_cuda.select(features, largest, variance, method, center)
        chosen = {k: [indices if k == largest else baselines.top_k(scores, k)] for k in budgets}
        return chosen, int(rank)

    return run


def methods(random_draws: int) -> dict:
    """name -> run(features, budgets, attention) returning ``({K: [indices, ...]}, rank or None)``;
    several index tensors per K for methods averaged over draws."""
    table = {}
    for method in ("exact", "randomized"):
        for center in (False, True):
            for variance in (0.9, 0.95, 0.99):
                table[f"svd {method}{' center' if center else ''} τ={variance:g}"] = _svd(method, center, variance)
        # Pivoted selection depends on K through its basis (the top-K singular vectors), so
        # each budget is its own call.
        table[f"svd pivoted {method}"] = _each_budget(
            lambda x, k, a, method=method: svdprune_cuda.select(x, k, method=method, strategy="pivoted")[0]
        )
    table["random"] = _each_budget(lambda x, k, a: [baselines.random_tokens(x, k, seed=s) for s in range(random_draws)])
    table["uniform grid"] = _each_budget(lambda x, k, a: baselines.uniform_grid(x, k))
    table["L2 norm"] = _each_budget(lambda x, k, a: baselines.l2_norm(x, k))
    table["CLS attention"] = _each_budget(lambda x, k, a: baselines.cls_attention(a, k))
    table["max-min diversity"] = _each_budget(lambda x, k, a: baselines.max_min_diversity(x, k))
    return table


# --------------------------------------------------------------------------------- run


def evaluate(photos: dict, tower, views, budgets, random_draws: int, lift_dim: int, log=print) -> dict:
    """Metrics per view, method, budget and photo, plus the kept indices of the first photo."""
    table = methods(random_draws)
    results = {view: {"best rank-K": {k: [] for k in budgets}, "methods": {}, "rank": {}} for view in views}
    for view in views:
        for name in table:
            results[view]["methods"][name] = {k: {"residual": [], "distance": [], "cells": []} for k in budgets}
    kept_first = {view: {} for view in views}
    for number, (photo, image) in enumerate(photos.items()):
        start = time.perf_counter()
        patches = images.to_patches(image)
        clip, attention = clip_features(tower, image)
        matrices = {"patches": patches, "clip": clip, "lifted": images.lift(patches, lift_dim)}
        threads = torch.get_num_threads()
        # Many small factorisations: one thread each beats OpenMP start-up and is robust to
        # other work on the machine; the tower above used every thread.
        torch.set_num_threads(1)
        for view in views:
            x = matrices[view]
            matrix = TokenMatrix(x)
            for k in budgets:
                results[view]["best rank-K"][k].append(matrix.best_rank_residual(k))
            features = x.to(torch.float32)  # what a model hands the op
            for name, run in table.items():
                chosen, rank = run(features, budgets, attention)
                if rank is not None:
                    results[view]["rank"].setdefault(name, []).append(rank)
                for k, selections in chosen.items():
                    cell = results[view]["methods"][name][k]
                    cell["residual"].append(float(np.mean([matrix.span_residual(s) for s in selections])))
                    cell["distance"].append(float(np.mean([mean_grid_distance(s) for s in selections])))
                    cell["cells"].append(float(np.mean([cell_coverage(s) for s in selections])))
                    if number == 0:
                        kept_first[view][(name, k)] = selections[0].tolist()
        torch.set_num_threads(threads)
        log(f"  {photo}: {time.perf_counter() - start:.1f} s")
    return {"results": results, "kept_first": kept_first}


def _mean(values) -> float:
    return float(np.mean(values))


# --------------------------------------------------------------------------------- outputs

PLOTTED = [
    PAPER_DEFAULT, "svd exact τ=0.99", "svd exact center τ=0.9", "svd exact center τ=0.99", "svd pivoted exact",
    "random", "uniform grid", "L2 norm", "CLS attention", "max-min diversity",
]
STYLE = {
    PAPER_DEFAULT: ("tab:red", "-", "o"), "svd exact τ=0.99": ("tab:red", "--", "o"),
    "svd exact center τ=0.9": ("tab:purple", "-", "s"), "svd exact center τ=0.99": ("tab:purple", "--", "s"),
    "svd pivoted exact": ("tab:cyan", "-", "D"),
    "random": ("tab:gray", "-", "x"), "uniform grid": ("tab:green", "-", "^"), "L2 norm": ("tab:orange", "-", "v"),
    "CLS attention": ("tab:brown", "-", "D"), "max-min diversity": ("tab:blue", "-", "P"),
}


def plot_curves(results: dict, budgets, view_labels: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = list(results)
    fig, axes = plt.subplots(2, len(views), figsize=(5.2 * len(views), 8.4), squeeze=False)
    ks = sorted(budgets)
    for column, view in enumerate(views):
        top, bottom = axes[0, column], axes[1, column]
        best = [_mean(results[view]["best rank-K"][k]) for k in ks]
        top.plot(ks, best, color="black", linestyle=":", linewidth=2, label="best rank-K (Eckart-Young)")
        for name in PLOTTED:
            colour, line, marker = STYLE[name]
            cells = results[view]["methods"][name]
            top.plot(ks, [_mean(cells[k]["residual"]) for k in ks], color=colour, linestyle=line, marker=marker,
                     markersize=5, label=name)
            bottom.plot(ks, [_mean(cells[k]["distance"]) for k in ks], color=colour, linestyle=line, marker=marker,
                        markersize=5, label=name)
        for axis in (top, bottom):
            axis.set_xscale("log", base=2)
            axis.set_xticks(ks, [str(k) for k in ks])
            axis.minorticks_off()
            axis.grid(True, alpha=0.3)
            axis.set_xlabel("tokens kept K (of 576)")
        top.set_title(view_labels[view], fontsize=11)
        top.set_ylabel("span residual (lower is better)")
        bottom.set_ylabel("mean distance to nearest kept patch (patches)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=9, frameon=False)
    fig.suptitle(f"Span residual ||X - X P_S||_F / ||X||_F (top) and spatial coverage (bottom) vs tokens kept, "
                 f"mean over {results[views[0]]['photos']} photos", fontsize=12)
    fig.tight_layout(rect=(0, 0.07, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


OVERLAID = [PAPER_DEFAULT, "svd pivoted exact", "random", "uniform grid", "L2 norm", "CLS attention",
            "max-min diversity"]


def plot_overlays(image: np.ndarray, photo: str, kept: dict, view_label: str, budget: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(13, 7.4))
    panels = [("original", image)] + [(name, images.draw_kept_patches(image, kept[(name, budget)])) for name in OVERLAID]
    for axis, (title, picture) in zip(axes.flat, panels):
        axis.imshow(picture)
        axis.set_title(title, fontsize=11)
        axis.axis("off")
    fig.suptitle(f"{photo}: the K={budget} patches kept by each method on the {view_label} view", fontsize=12)
    fig.tight_layout(h_pad=1.5)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def markdown(run: dict, settings: dict) -> str:
    results = run["results"]
    budgets = [k for k in TABLE_BUDGETS if k in settings["budgets"]] or sorted(settings["budgets"], reverse=True)[:3]
    lines = [
        "# Token fidelity of SVD-Prune and baselines",
        "",
        "Generated by `python benchmarks/fidelity.py" + (" --quick" if settings["quick"] else "") + "`.",
        "",
        f"- Machine: {settings['machine']}. Run time {settings['seconds']:.0f} s.",
        f"- Photos ({len(settings['photos'])}): {', '.join(settings['photos'])} "
        "(scikit-image and scikit-learn sample images), short side resized to 336 and center-cropped, "
        "24 x 24 patches of 14 x 14 pixels: N = 576 tokens.",
        "- Views: " + "; ".join(f"`{view}` = {settings['view_labels'][view]}" for view in results) + ".",
        "- Span residual: `||X - X P_S||_F / ||X||_F`, `P_S` the projector onto the span of the kept tokens "
        "(float64); mean over photos, lower is better. `best rank-K` is the Eckart-Young bound no selection can beat.",
        "- Grid distance: mean distance (in patches) from each patch to the nearest kept one; cells: fraction of "
        "the 36 cells of 4 x 4 patches that hold a kept patch.",
        f"- `svd` rows: `svdprune_cuda.select` (top-K leverage) with the method, `center` and τ (`variance`) named; "
        f"`{PAPER_DEFAULT}` is the paper's setting; `svd pivoted` rows use `strategy=\"pivoted\"` (greedy column "
        f"pivoting on the top-K left singular vectors). `random` is averaged over {settings['random_draws']} draws. "
        "`CLS attention` reads the penultimate attention map of the CLIP tower (the same for every view).",
        "",
    ]
    for view in results:
        methods_of_view = results[view]["methods"]
        names = list(methods_of_view)
        lines += [f"## View `{view}`: {settings['view_labels'][view]}", ""]
        lines.append("| selection | " + " | ".join(f"residual K={k}" for k in budgets) + " | "
                     + " | ".join(f"grid dist. K={k}" for k in budgets) + " | "
                     + " | ".join(f"cells K={k}" for k in budgets) + " |")
        lines.append("|---|" + "---:|" * (3 * len(budgets)))
        best = [_mean(results[view]["best rank-K"][k]) for k in budgets]
        lines.append("| best rank-K (bound) | " + " | ".join(f"{v:.3f}" for v in best) + " |" + " |" * (2 * len(budgets)))
        winners = {k: min(names, key=lambda n: _mean(methods_of_view[n][k]["residual"])) for k in budgets}
        for name in names:
            cells = methods_of_view[name]
            residuals = []
            for k in budgets:
                value = f"{_mean(cells[k]['residual']):.3f}"
                residuals.append(f"**{value}**" if winners[k] == name else value)
            distances = [f"{_mean(cells[k]['distance']):.2f}" for k in budgets]
            coverage = [f"{_mean(cells[k]['cells']):.2f}" for k in budgets]
            label = f"{name} (paper)" if name == PAPER_DEFAULT else name
            lines.append(f"| {label} | " + " | ".join(residuals + distances + coverage) + " |")
        lines.append("")
        ranks = results[view]["rank"]
        lines.append("Truncation rank k (`svd exact`; mean over photos, min-max): " + "; ".join(
            f"{key.removeprefix('svd exact ')}: {np.mean(values):.1f} ({min(values)}-{max(values)})"
            for key, values in ranks.items() if key.startswith("svd exact")) + ".")
        lines.append("")
        for k in budgets:
            order = sorted(names, key=lambda n: _mean(methods_of_view[n][k]["residual"]))
            position = order.index(PAPER_DEFAULT) + 1
            lines.append(
                f"- K={k}: lowest residual `{order[0]}` ({_mean(methods_of_view[order[0]][k]['residual']):.3f}); "
                f"the paper's setting is {position} of {len(order)} "
                f"({_mean(methods_of_view[PAPER_DEFAULT][k]['residual']):.3f}, random "
                f"{_mean(methods_of_view['random'][k]['residual']):.3f}, bound {_mean(results[view]['best rank-K'][k]):.3f})."
            )
        lines.append("")
    lines += ["## Plots", ""]
    for name in settings["plots"]:
        lines.append(f"![{name}]({settings['plot_prefix']}{name})")
        lines.append("")
    return "\n".join(lines)


def to_json(run: dict, settings: dict) -> dict:
    out = {"settings": {k: v for k, v in settings.items() if k != "plots"}, "views": {}}
    for view, data in run["results"].items():
        out["views"][view] = {
            "best rank-K": {str(k): _mean(v) for k, v in data["best rank-K"].items()},
            "rank": data["rank"],
            "methods": {
                name: {str(k): {metric: _mean(values) for metric, values in cell.items()} for k, cell in cells.items()}
                for name, cells in data["methods"].items()
            },
        }
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Token fidelity (span residual, Eckart-Young bound, spatial coverage) of SVD-Prune and "
        "baselines on real photos shipped by scikit-image and scikit-learn."
    )
    parser.add_argument("--quick", action="store_true", help="2 photos, K=64/16, a 2-layer tower (for tests)")
    parser.add_argument("--photos", nargs="+", choices=images.photo_names(), help="photos (default: all)")
    parser.add_argument("--budgets", type=int, nargs="+", help="K values (default 192 128 64 32 16 8)")
    parser.add_argument("--views", nargs="+", choices=VIEWS, default=list(VIEWS))
    parser.add_argument("--clip", metavar="PATH", help="local CLIP vision checkpoint (default: random weights)")
    parser.add_argument("--clip-layers", type=int, help="layers of the random tower (default 24, 2 with --quick)")
    parser.add_argument("--lift-dim", type=int, default=4096, help="width of the lifted view (default 4096)")
    parser.add_argument("--random-draws", type=int, default=5, help="draws averaged for the random baseline")
    parser.add_argument("--overlay-photo", default=None, help="photo of the overlay figures (default: the first)")
    parser.add_argument("--overlay-budget", type=int, default=None, help="K of the overlay figures (default 64)")
    parser.add_argument("--out", type=Path, default=ROOT / "fidelity_results", help="folder for PNGs and JSON")
    parser.add_argument("--markdown", type=Path, default=ROOT / "FIDELITY.md", help="tables written here")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for the CLIP tower (default: torch's choice); selections and metrics run "
                             "on one thread")
    return parser


def main(argv=None) -> dict:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    photos_names = args.photos or (["astronaut", "china"] if args.quick else images.photo_names())
    budgets = sorted(set(args.budgets or ([64, 16] if args.quick else [192, 128, 64, 32, 16, 8])), reverse=True)
    layers = args.clip_layers or (2 if args.quick else 24)
    overlay_budget = args.overlay_budget or (64 if 64 in budgets else budgets[0])
    if overlay_budget not in budgets:
        raise SystemExit(f"--overlay-budget {overlay_budget} is not one of the budgets {budgets}")
    overlay_photo = args.overlay_photo or photos_names[0]
    if overlay_photo not in photos_names:
        raise SystemExit(f"--overlay-photo {overlay_photo} is not one of the photos {photos_names}")
    # The overlay photo goes first: the kept indices are recorded for the first photo only.
    photos_names = [overlay_photo] + [name for name in photos_names if name != overlay_photo]

    start = time.perf_counter()
    photos = images.load_photos(photos_names)
    tower, tower_label = clip_tower(args.clip, layers)
    tower_layers = tower.config.num_hidden_layers
    print(f"{len(photos)} photos, budgets {budgets}, views {args.views}; {tower_label}")
    run = evaluate(photos, tower, args.views, budgets, args.random_draws, args.lift_dim)
    seconds = time.perf_counter() - start

    view_labels = {
        "patches": "raw 14 x 14 x 3 pixel patches (588-d)",
        "clip": f"penultimate-layer patch features (1024-d) of a {tower_label}",
        "lifted": f"GELU of a fixed random projection of the standardised patches ({args.lift_dim}-d, seed 0)",
    }
    for view in run["results"]:
        run["results"][view]["photos"] = len(photos)
    args.out.mkdir(parents=True, exist_ok=True)
    plots = ["fidelity_vs_k.png"]
    short_labels = {
        "patches": "raw patches (588-d)",
        "clip": f"CLIP tower features (1024-d, {'random weights, ' if not args.clip else ''}{tower_layers} layers)",
        "lifted": f"lifted patches ({args.lift_dim}-d)",
    }
    plot_curves(run["results"], budgets, short_labels, args.out / "fidelity_vs_k.png")
    for view in args.views:
        name = f"overlay_{overlay_photo}_{view}_k{overlay_budget}.png"
        plot_overlays(photos[overlay_photo], overlay_photo, run["kept_first"][view], short_labels[view],
                      overlay_budget, args.out / name)
        plots.append(name)
    settings = {
        "quick": args.quick, "seconds": seconds, "photos": photos_names,
        "machine": f"{machine_description()}; the CLIP tower on all torch threads, selections and metrics on one",
        "budgets": budgets, "view_labels": {v: view_labels[v] for v in args.views}, "random_draws": args.random_draws,
        "plots": plots, "plot_prefix": os.path.relpath(args.out, args.markdown.parent) + "/",
    }
    (args.out / "fidelity.json").write_text(json.dumps(to_json(run, settings), indent=1, ensure_ascii=False))
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(markdown(run, settings))
    print(f"{seconds:.0f} s; wrote {args.markdown} and {args.out}/")
    return run


if __name__ == "__main__":
    main()
