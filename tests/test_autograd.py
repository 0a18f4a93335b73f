"""The ops on features that require grad or are inference tensors: the selection is not
differentiable, so no output carries a gradient, and a model's graph still runs through the
features the selection keeps."""

import pytest
import torch

import svdprune_cuda
from helpers import SPECTRUM, TORCH_DEVICES, designed

CALLS = {
    "leverage": lambda x: torch.ops.svdprune.leverage(x, 0.9, "exact"),
    "select": lambda x: torch.ops.svdprune.select(x, 8, 0.9, "exact"),
    "select_pivoted": lambda x: torch.ops.svdprune.select(x, 8, 0.9, "exact", False, 0, "pivoted"),
    "select_randomized": lambda x: torch.ops.svdprune.select(x, 8, 0.9, "randomized", True, 3),
    "select_adaptive": lambda x: torch.ops.svdprune.select_adaptive(x, 0.9, 1, -1, "exact"),
}


def features(device, dtype=torch.float32, batch=2):
    return designed(96, 300, SPECTRUM, noise=1e-3, batch=batch).to(device=device, dtype=dtype)


@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("call", sorted(CALLS))
def test_features_that_require_grad(call, dtype, device):
    x = features(device, dtype)
    expected = CALLS[call](x)
    got = CALLS[call](x.clone().requires_grad_())
    for out, want in zip(got, expected):
        assert not out.requires_grad and out.grad_fn is None
        assert torch.equal(out, want)


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_wrappers_accept_features_that_require_grad(device):
    x = features(device).requires_grad_()
    for outputs in (svdprune_cuda.leverage(x), svdprune_cuda.select(x, 8), svdprune_cuda.select_adaptive(x)):
        assert not any(out.requires_grad for out in outputs)


@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("call", sorted(CALLS))
def test_inference_tensors(call, device):
    expected = CALLS[call](features(device))
    with torch.inference_mode():
        x = features(device)
        inside = CALLS[call](x)
    outside = CALLS[call](x)  # an inference tensor passed in normal mode
    for got_inside, got_outside, want in zip(inside, outside, expected):
        assert torch.equal(got_inside, want) and torch.equal(got_outside, want)


def keep_and_project(features, weight):
    """What model code does: select on features that require grad, gather the kept tokens and
    feed them on."""
    indices, _, _ = torch.ops.svdprune.select(features, 8)
    kept = torch.gather(features, 1, indices[..., None].expand(-1, -1, features.shape[-1]))
    return (kept @ weight).square().sum(), indices


@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"])
def test_gradients_flow_through_the_kept_tokens(compiled, device):
    x = features(device).requires_grad_()
    weight = torch.randn(300, 4, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_()
    run = torch.compile(keep_and_project, fullgraph=True, backend="aot_eager") if compiled else keep_and_project
    loss, indices = run(x, weight)
    loss.backward()
    assert weight.grad is not None and weight.grad.abs().sum() > 0
    # The features' gradient comes from the gather alone: non-zero on the kept rows only.
    kept = torch.zeros(x.shape[:2], dtype=torch.bool, device=device)
    kept.scatter_(1, indices, True)
    row_has_grad = x.grad.abs().sum(-1) > 0
    assert torch.equal(row_has_grad, kept)
    expected_loss, expected_indices = keep_and_project(x.detach(), weight.detach())
    assert torch.equal(indices, expected_indices)
    torch.testing.assert_close(loss.detach(), expected_loss)
