"""Real photographs as LLaVA-1.5 token matrices, for benchmarks and demos that need no model.

A photo is resized so its short side is 336 pixels and center-cropped to 336 x 336 (what the
llava-hf CLIP image processor does), then cut into the 24 x 24 grid of 14 x 14 x 3 patches the
CLIP ViT-L/14-336 tower embeds: a ``576 x 588`` matrix, one row per patch in raster order.

The photos are the colour and grey-level photographs that scikit-image and scikit-learn ship
inside their wheels (no download).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "IMAGE_SIZE",
    "PATCH_SIZE",
    "GRID",
    "photo_names",
    "load_photo",
    "load_photos",
    "square_resize",
    "to_patches",
    "grid_coordinates",
    "lift",
    "draw_kept_patches",
    "CLIP_MEAN",
    "CLIP_STD",
    "clip_pixels",
]

IMAGE_SIZE = 336
PATCH_SIZE = 14
GRID = IMAGE_SIZE // PATCH_SIZE  # 24 patches per side, 576 in all
# Per-channel normalisation of CLIP's image processor (and so of LLaVA-1.5's).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# name -> (package, loader name)
_PHOTOS = {
    "astronaut": ("skimage", "astronaut"),
    "camera": ("skimage", "camera"),
    "chelsea": ("skimage", "chelsea"),
    "coffee": ("skimage", "coffee"),
    "rocket": ("skimage", "rocket"),
    "hubble": ("skimage", "hubble_deep_field"),
    "china": ("sklearn", "china.jpg"),
    "flower": ("sklearn", "flower.jpg"),
}


def photo_names() -> list[str]:
    """Names accepted by :func:`load_photo`."""
    return list(_PHOTOS)


def load_photo(name: str) -> np.ndarray:
    """The photo as ``H x W x 3`` uint8 (grey-level photos are repeated over the channels)."""
    if name not in _PHOTOS:
        raise ValueError(f"unknown photo {name!r}; choose from {photo_names()}")
    package, key = _PHOTOS[name]
    if package == "skimage":
        import skimage.data

        image = getattr(skimage.data, key)()
    else:
        from sklearn.datasets import load_sample_image

        image = load_sample_image(key)
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)


def load_photos(names=None) -> dict[str, np.ndarray]:
    """``{name: 336 x 336 x 3 uint8}`` for ``names`` (all photos by default)."""
    return {name: square_resize(load_photo(name)) for name in (names or photo_names())}


def square_resize(image: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Resize the short side to ``size`` (bicubic) and center-crop to ``size x size``."""
    from PIL import Image

    height, width = image.shape[:2]
    scale = size / min(height, width)
    new_width, new_height = max(size, round(width * scale)), max(size, round(height * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_width, new_height), Image.BICUBIC))
    top, left = (new_height - size) // 2, (new_width - size) // 2
    return np.ascontiguousarray(resized[top : top + size, left : left + size])


def to_patches(image: np.ndarray, patch_size: int = PATCH_SIZE) -> torch.Tensor:
    """``(H/p * W/p) x (p*p*3)`` float64 matrix of pixel values in [0, 1], patches in raster order.

    Each row is one patch flattened in (row, column, channel) order.
    """
    height, width, channels = image.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"image of {height} x {width} pixels is not a whole number of {patch_size}-pixel patches")
    rows, cols = height // patch_size, width // patch_size
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float64) / 255.0)
    patches = pixels.reshape(rows, patch_size, cols, patch_size, channels).permute(0, 2, 1, 3, 4)
    return patches.reshape(rows * cols, patch_size * patch_size * channels).contiguous()


def clip_pixels(image: np.ndarray) -> torch.Tensor:
    """``3 x H x W`` float32 pixel values of an ``H x W x 3`` uint8 image, normalised as CLIP's
    image processor does (the input of a CLIP vision tower)."""
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    return (pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def grid_coordinates(grid: int = GRID) -> torch.Tensor:
    """``[grid*grid, 2]`` (row, column) of each token in raster order, float64."""
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1).to(torch.float64)


def lift(patches: torch.Tensor, dim: int = 4096, seed: int = 0) -> torch.Tensor:
    """A fixed random nonlinear view of the patches in ``dim`` features, like a projector's output.

    ``GELU(Z W)`` with ``Z`` the patches standardised per feature and ``W`` a ``588 x dim``
    Gaussian matrix of variance 1/588 drawn from ``seed``. The GELU keeps the view from being
    a mere linear image of the patches (whose span structure it would copy). Float64.
    """
    x = patches.to(torch.float64)
    z = (x - x.mean(dim=0)) / (x.std(dim=0) + 1e-6)
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(x.shape[1], dim, generator=generator, dtype=torch.float64) / x.shape[1] ** 0.5
    return torch.nn.functional.gelu(z @ weight)


def draw_kept_patches(
    image: np.ndarray, indices, patch_size: int = PATCH_SIZE, dim: float = 0.25, colour=(255, 220, 0)
) -> np.ndarray:
    """Copy of ``image`` with the patches not in ``indices`` darkened and the kept ones outlined."""
    height, width = image.shape[:2]
    cols = width // patch_size
    keep = np.zeros((height // patch_size) * cols, dtype=bool)
    keep[np.asarray(indices, dtype=np.int64)] = True
    out = image.astype(np.float64) * dim
    for index in np.flatnonzero(keep):
        r, c = divmod(int(index), cols)
        rows, columns = slice(r * patch_size, (r + 1) * patch_size), slice(c * patch_size, (c + 1) * patch_size)
        out[rows, columns] = image[rows, columns]
        out[r * patch_size, columns] = out[(r + 1) * patch_size - 1, columns] = colour
        out[rows, c * patch_size] = out[rows, (c + 1) * patch_size - 1] = colour
    return out.astype(np.uint8)
