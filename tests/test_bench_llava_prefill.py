"""benchmarks/bench_llava_prefill.py: its command line and its timings on a tiny random LLaVA (a
7B-wide model is too slow for a unit test). pytest's configuration puts benchmarks/ on the
import path."""

import subprocess
import sys

import bench_llava_prefill as bench
import pytest
import torch

import svdprune_cuda
from svdprune.testing import images
from svdprune.testing.measure import SELECTIONS


@pytest.mark.slow
def test_help():
    out = subprocess.run([sys.executable, bench.__file__, "--help"], capture_output=True, text=True, check=True).stdout
    assert "--methods" in out and "time to" in out


def test_inputs_hold_576_placeholders_around_the_text():
    inputs = bench.make_inputs(2, 8, torch.device("cpu"), torch.float32)
    assert inputs["input_ids"].shape == (2, 1 + 8 + 576)
    assert int((inputs["input_ids"][0] == bench.IMAGE_TOKEN_ID).sum()) == 576
    assert inputs["pixel_values"].shape == (2, 3, 336, 336)
    assert torch.equal(inputs["attention_mask"], torch.ones_like(inputs["input_ids"]))
    photo = images.load_photos([images.photo_names()[0]])[images.photo_names()[0]]
    assert torch.equal(inputs["pixel_values"][0], images.clip_pixels(photo))


def test_clip_pixels_normalise_per_channel():
    image = torch.zeros(2, 2, 3, dtype=torch.uint8).numpy()
    image[..., 1] = 255
    pixels = images.clip_pixels(image)
    assert pixels.shape == (3, 2, 2)
    expected = [(0 - images.CLIP_MEAN[0]) / images.CLIP_STD[0], (1 - images.CLIP_MEAN[1]) / images.CLIP_STD[1]]
    assert pixels[0, 0, 0].item() == pytest.approx(expected[0]) and pixels[1, 1, 1].item() == pytest.approx(expected[1])


@pytest.mark.parametrize("name", list(SELECTIONS))
def test_selections_are_valid_select_calls(name):
    method, strategy = SELECTIONS[name]
    features = torch.randn(2, 576, 64, generator=torch.Generator().manual_seed(0))
    indices, _, _ = svdprune_cuda.select(features, 16, method=method, strategy=strategy)
    assert indices.shape == (2, 16)


def test_device_defaults_and_an_explicit_zero():
    args = bench.arguments(["--device", "cpu"])
    assert (args.decode_tokens, args.repeats, args.batch_sizes) == (8, 2, [1])
    assert bench.arguments(["--device", "cpu", "--decode-tokens", "0"]).decode_tokens == 0
    with pytest.raises(SystemExit, match="decode-tokens"):
        bench.arguments(["--device", "cpu", "--decode-tokens", "-1"])


@pytest.mark.slow
def test_first_token_only_has_no_decode_rate():
    from svdprune.testing import models as tiny_models

    processor = tiny_models.build_processor()
    model = tiny_models.build_model(processor).eval()
    model.generation_config.eos_token_id = None  # every run generates the tokens asked for
    photo = images.load_photos(["coffee"])["coffee"]
    inputs = processor(images=photo, text="USER: <image>\nWhat? ASSISTANT:", return_tensors="pt")
    with torch.inference_mode():
        ttft, rate = bench.generation_timings(model, inputs, 0, torch.device("cpu"), repeats=1)
        assert ttft > 0 and rate is None
        ttft, rate = bench.generation_timings(model, inputs, 2, torch.device("cpu"), repeats=1)
    assert ttft > 0 and rate > 0
    row = {"batch": 1, "budget": 576, "vision": 0.1, "ttft": ttft, "decode tokens/s": None}
    assert bench._rate(row) == "-"


def test_qwen_inputs_hold_one_image_at_its_native_resolution():
    inputs = bench.make_inputs(2, 8, torch.device("cpu"), torch.float32, "qwen2.5-vl")
    assert torch.equal(inputs["image_grid_thw"], torch.tensor([[1, 52, 92]] * 2))
    assert inputs["pixel_values"].shape == (2 * 52 * 92, 3 * 2 * 14 * 14)
    ids = inputs["input_ids"][0]
    assert inputs["input_ids"].shape == (2, 8 + 2 + bench.QWEN_TOKENS)
    start = int((ids == bench.QWEN_VISION_START).nonzero())
    assert ids[start + 1 + bench.QWEN_TOKENS] == bench.QWEN_VISION_END
    assert torch.equal(ids[start + 1 : start + 1 + bench.QWEN_TOKENS], torch.full((bench.QWEN_TOKENS,), bench.QWEN_IMAGE_TOKEN_ID))


def test_qwen_config_is_the_7b_one_at_the_asked_depth():
    _, config = bench._qwen_model_class_and_config(2, 10)
    text, vision = config.get_text_config(), config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads, text.vocab_size) == (3584, 2, 4, 152064)
    assert (vision.depth, vision.fullatt_block_indexes, vision.out_hidden_size) == (10, [7], 3584)
    assert config.image_token_id == bench.QWEN_IMAGE_TOKEN_ID
