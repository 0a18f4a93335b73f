import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

from svdprune.testing import images

# One fixed profile for the property-based tests: the same examples on every run (derandomized,
# no example database), bounded in number, and no per-example deadline (an example's time depends
# on its shape and on the machine's load). A failing example is reported as drawn, without
# shrinking, which on these inputs can take many minutes.
settings.register_profile(
    "svdprune",
    derandomize=True,
    database=None,
    max_examples=40,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("svdprune")


@pytest.fixture(scope="session")
def photos() -> dict[str, torch.Tensor]:
    """scikit-image sample photos as LLaVA-1.5 sees them: 336×336 px, 24×24 patches of 14×14×3,
    i.e. 576×588 token matrices (float32, values in [0, 1])."""
    names = ("astronaut", "coffee", "chelsea", "rocket")
    return {name: images.to_patches(photo).float() for name, photo in images.load_photos(names).items()}
