"""Device parametrisation shared by the test modules: the CUDA cases skip where no GPU is
visible or the extension was built without its CUDA kernels."""

import pytest
import torch

import svdprune_cuda  # noqa: F401  (registers the ops, so their CUDA kernels can be looked up)

needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key("svdprune::select", "CUDA")),
    reason="needs a CUDA GPU and svdprune_cuda built with its CUDA kernels",
)
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
