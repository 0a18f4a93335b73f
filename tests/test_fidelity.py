"""Token-fidelity benchmark: its metrics on hand-made inputs, the photo helpers, a --quick run.
(pytest's configuration puts benchmarks/ on the import path.)"""

import json
import math

import fidelity
import numpy as np
import pytest
import torch
from common import TokenMatrix, span_residual

from svdprune.testing import images


def pinv_residual(x, indices):
    # The definition: ||X - X pinv(X_S) X_S||_F / ||X||_F in float64.
    x = x.to(torch.float64)
    kept = x[indices]
    projector = torch.linalg.pinv(kept) @ kept
    return float(torch.linalg.matrix_norm(x - x @ projector) / torch.linalg.matrix_norm(x))


# ----------------------------------------------------------------------------- metrics


def test_span_residual_hand_made():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # span(e1) leaves the second coordinate of rows 1 and 2: sqrt(2) / sqrt(4)
    assert span_residual(x, [0]) == pytest.approx(math.sqrt(2) / 2)
    # span((1,1)) leaves (.5,-.5) and (-.5,.5): sqrt(1) / sqrt(4)
    assert span_residual(x, [2]) == pytest.approx(0.5)
    assert span_residual(x, [0, 1]) == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("shape", [(40, 12), (30, 70)])
def test_span_residual_matches_pinv_definition(shape):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator, dtype=torch.float64)
    matrix = TokenMatrix(x)
    for indices in ([3], [0, 5, 9], list(range(0, 30, 3))):
        assert matrix.span_residual(indices) == pytest.approx(pinv_residual(x, indices), rel=1e-10)


def test_span_residual_dependent_kept_rows():
    # Kept rows 0 and 1 are the same direction: the span is one-dimensional.
    x = torch.tensor([[1.0, 2.0, 0.0], [2.0, 4.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    assert span_residual(x, [0, 1]) == pytest.approx(pinv_residual(x, [0, 1]), rel=1e-12)


def test_best_rank_is_eckart_young_and_a_lower_bound():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(50, 20, generator=generator, dtype=torch.float64)
    matrix = TokenMatrix(x)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    for k in (1, 5, 10):
        truncated = (u[:, :k] * s[:k]) @ vh[:k]
        expected = float(torch.linalg.matrix_norm(x - truncated) / torch.linalg.matrix_norm(x))
        assert matrix.best_rank_residual(k) == pytest.approx(expected, rel=1e-10)
        for seed in range(5):
            indices = torch.randperm(50, generator=torch.Generator().manual_seed(seed))[:k]
            assert matrix.span_residual(indices) >= matrix.best_rank_residual(k) - 1e-12


def test_mean_grid_distance_hand_made():
    # 3 x 3 grid, centre kept: 4 corners at sqrt(2), 4 edges at 1, the centre at 0.
    assert fidelity.mean_grid_distance([4], grid=3) == pytest.approx((4 * math.sqrt(2) + 4) / 9)
    assert fidelity.mean_grid_distance(list(range(9)), grid=3) == 0


def test_cell_coverage_hand_made():
    # 8 x 8 grid, 4 cells of 4 x 4 patches
    assert fidelity.cell_coverage([0, 1, 9], grid=8) == 0.25
    assert fidelity.cell_coverage([0, 4, 32, 36], grid=8) == 1.0
    assert fidelity.cell_coverage([27, 28, 35, 36], grid=8) == 1.0  # the four patches round the centre


# ----------------------------------------------------------------------------- photo helpers


def test_to_patches_layout():
    # Pixel value encodes (row, column, channel): patch p of a 2 x 2 grid of 2 x 2 patches.
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    for r in range(4):
        for c in range(4):
            image[r, c] = [r * 10 + c, 100 + r, 200 + c]
    patches = images.to_patches(image, patch_size=2) * 255
    assert patches.shape == (4, 12)
    # patch 1 = rows 0-1, columns 2-3; first pixel (0, 2), then (0, 3), then (1, 2)
    assert patches[1, :3].round().tolist() == [2, 100, 202]
    assert patches[1, 3:6].round().tolist() == [3, 100, 203]
    assert patches[1, 6:9].round().tolist() == [12, 101, 202]
    assert patches[2, :3].round().tolist() == [20, 102, 200]  # patch 2 starts at pixel (2, 0)
    with pytest.raises(ValueError, match="patches"):
        images.to_patches(np.zeros((5, 4, 3), dtype=np.uint8), patch_size=2)


@pytest.mark.parametrize("name", images.photo_names())
def test_photos_load_as_576_tokens(name):
    image = images.load_photos([name])[name]
    assert image.shape == (336, 336, 3) and image.dtype == np.uint8
    patches = images.to_patches(image)
    assert patches.shape == (576, 588) and patches.dtype == torch.float64
    assert 0 <= float(patches.min()) and float(patches.max()) <= 1


def test_unknown_photo():
    with pytest.raises(ValueError, match="unknown photo"):
        images.load_photo("moon landing")


def test_square_resize_center_crops():
    image = np.zeros((100, 200, 3), dtype=np.uint8)
    image[:, 50:150] = 255  # the centre square is white, the sides black
    out = images.square_resize(image, size=50)
    assert out.shape == (50, 50, 3)
    assert out[5:-5, 5:-5].min() == 255


def test_lift_is_fixed_and_nonlinear():
    patches = images.to_patches(images.load_photos(["coffee"])["coffee"])
    a, b = images.lift(patches, dim=64, seed=3), images.lift(patches, dim=64, seed=3)
    assert a.shape == (576, 64) and torch.equal(a, b)
    assert not torch.equal(a, images.lift(patches, dim=64, seed=4))
    assert float(a.min()) < 0 and float(a.min()) > -0.2  # GELU's floor, not a linear map


def test_draw_kept_patches():
    image = np.full((28, 28, 3), 200, dtype=np.uint8)
    out = images.draw_kept_patches(image, [3], patch_size=14, dim=0.5)
    assert (out[:14, :14] == 100).all()  # patch 0 not kept: dimmed
    assert (out[15:27, 15:27] == 200).all()  # inside of kept patch 3 untouched
    assert tuple(out[14, 20]) == (255, 220, 0)  # its outline


# ----------------------------------------------------------------------------- the benchmark


@pytest.mark.slow
def test_quick_run_writes_tables_and_plots(tmp_path):
    markdown = tmp_path / "FIDELITY.md"
    fidelity.main(["--quick", "--out", str(tmp_path / "plots"), "--markdown", str(markdown)])
    text = markdown.read_text()
    for heading in ("View `patches`", "View `clip`", "View `lifted`", "svd exact τ=0.9 (paper)", "max-min diversity"):
        assert heading in text
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["fidelity_vs_k.png", "overlay_astronaut_clip_k64.png", "overlay_astronaut_lifted_k64.png",
                    "overlay_astronaut_patches_k64.png"]
    results = json.loads((tmp_path / "plots" / "fidelity.json").read_text())
    for view in results["views"].values():
        for k, bound in view["best rank-K"].items():
            for name, cells in view["methods"].items():
                assert cells[k]["residual"] >= bound - 1e-9, (name, k)
                assert 0 < cells[k]["cells"] <= 1
    # The uniform grid at K=64 covers every 4 x 4 cell of the 24 x 24 grid.
    assert results["views"]["patches"]["methods"]["uniform grid"]["64"]["cells"] == 1.0
