"""Smoke tests of benchmarks/bench_llava_prefill.py (a 7B-wide model is too slow for a unit test)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import svdprune_cuda

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_llava_prefill.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_llava_prefill", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--methods" in out and "time to" in out


def test_inputs_hold_576_placeholders_around_the_text(bench):
    inputs = bench.make_inputs(2, 8, torch.device("cpu"), torch.float32)
    assert inputs["input_ids"].shape == (2, 1 + 8 + 576)
    assert int((inputs["input_ids"][0] == bench.IMAGE_TOKEN_ID).sum()) == 576
    assert inputs["pixel_values"].shape == (2, 3, 336, 336)
    assert torch.equal(inputs["attention_mask"], torch.ones_like(inputs["input_ids"]))


@pytest.mark.parametrize("name", ["exact", "randomized", "pivoted"])
def test_selections_are_valid_select_calls(bench, name):
    method, strategy = bench.SELECTIONS[name]
    features = torch.randn(2, 576, 64, generator=torch.Generator().manual_seed(0))
    indices, _, _ = svdprune_cuda.select(features, 16, method=method, strategy=strategy)
    assert indices.shape == (2, 16)
