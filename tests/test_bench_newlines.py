"""benchmarks/bench_newlines.py on a tiny random LLaVA-NeXT (the 7B-shaped one is too slow for a
unit test): what each ``newlines`` mode hands the language model."""

from types import SimpleNamespace

import bench_newlines as bench
import pytest
import torch

from svdprune.testing import images
from svdprune.testing import models as tiny_models


@pytest.mark.slow
def test_each_mode_hands_the_language_model_the_same_tokens_and_its_newlines():
    processor = tiny_models.build_next_processor()
    model = tiny_models.build_next_model(processor).eval()
    model.generation_config.eos_token_id = None
    photo = images.load_photos(["coffee"])["coffee"]
    inputs = processor(images=photo, text="USER: <image>\nWhat is it? ASSISTANT:", return_tensors="pt")
    args = SimpleNamespace(budgets=[20], newlines=["kept", "all", "none"], method="exact", variance=0.9, repeats=1)
    with torch.inference_mode():
        full, kept, every, none = bench.measure(model, inputs, args)
    placeholders = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert full["prompt"] == inputs["input_ids"].shape[1]
    assert full["visual"] + full["newline rows"] == placeholders and full["newline rows"] > 1
    text = full["prompt"] - placeholders
    assert (every["visual"], every["newline rows"], every["prompt"]) == (20, full["newline rows"], text + 20 + full["newline rows"])
    assert (none["visual"], none["newline rows"], none["prompt"]) == (20, 0, text + 20)
    assert kept["visual"] == 20 and 0 < kept["newline rows"] <= full["newline rows"]
    assert full["same tokens"] is None and kept["same tokens"] and every["same tokens"] and none["same tokens"]
    table = bench.markdown([full, kept, every, none], SimpleNamespace(text_tokens=64, method="exact", variance=0.9, repeats=1), "tiny")
    assert table.count("| yes |") == 3 and f"| {full['visual']} (full) |" in table
