import pytest
import torch


def photo_patches(name: str) -> torch.Tensor:
    """A scikit-image sample photo as LLaVA-1.5 sees it: 336×336 px, a 24×24 grid of 14×14×3
    patches, i.e. a 576×588 token matrix (float32, values in [0, 1])."""
    from skimage import data
    from skimage.color import gray2rgb
    from skimage.transform import resize

    image = getattr(data, name)()
    if image.ndim == 2:
        image = gray2rgb(image)
    image = resize(image[..., :3], (336, 336), anti_aliasing=True)
    patches = torch.from_numpy(image).float().reshape(24, 14, 24, 14, 3).permute(0, 2, 1, 3, 4)
    return patches.reshape(576, 14 * 14 * 3).contiguous()


@pytest.fixture(scope="session")
def photos() -> dict[str, torch.Tensor]:
    return {name: photo_patches(name) for name in ("astronaut", "coffee", "chelsea", "rocket")}
