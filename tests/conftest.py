import pytest
import torch

from svdprune.testing import images


@pytest.fixture(scope="session")
def photos() -> dict[str, torch.Tensor]:
    """scikit-image sample photos as LLaVA-1.5 sees them: 336×336 px, 24×24 patches of 14×14×3,
    i.e. 576×588 token matrices (float32, values in [0, 1])."""
    names = ("astronaut", "coffee", "chelsea", "rocket")
    return {name: images.to_patches(photo).float() for name, photo in images.load_photos(names).items()}


@pytest.fixture
def no_grad():
    """The model-integration tests run their models without autograd unless they ask for it."""
    with torch.no_grad():
        yield
