"""svdprune.vllm serving tiny random Qwen2.5-VL and Qwen3-VL from disk equals transformers +
svdprune.prune.

Runs in .venv-vllm (scripts/test.sh runs it with tests/test_vllm.py); skipped where vLLM is not
installed. The reference is transformers with ``svdprune.prune(model, processor, budget=BUDGET,
positions="keep")``: the same kept tokens at their full-sequence 3-D positions, so the prompt
lengths, greedy tokens and log-probabilities must agree (float32 on both sides: to 1e-5, where
a kept token placed at its visual's first grid cell instead moves them by 5e-4; the checkpoint's
small rotary base makes positions inside an image matter). Engines are shared per module: one
pruned (chunked prefill in steps of 24 tokens, so prefills stop inside images; prefix caching in
blocks of 32), one stock, per family.
"""

import os

import pytest

vllm = pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402

import svdprune  # noqa: E402
from svdprune.testing import images as photos  # noqa: E402
from svdprune.vllm import testing as vllm_testing  # noqa: E402

BUDGET = 16
MAX_TOKENS = 6
LOGPROB_TOLERANCE = dict(atol=1e-5, rtol=0)
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
ONE_IMAGE = f"USER: {IMAGE}What is shown in this picture? Describe it in detail. ASSISTANT:"
TWO_IMAGES = f"USER: {IMAGE}{IMAGE}What differs between the two images? ASSISTANT:"
BATCH = [
    f"USER: {IMAGE}What colour is it? ASSISTANT:",
    ONE_IMAGE,
    f"USER: {IMAGE}How many objects are there, and where are they, left or right, top or bottom? ASSISTANT:",
]
ENGINE_OPTIONS = dict(
    dtype="float32",
    max_model_len=1024,
    enforce_eager=True,  # no torch.compile: start-up in seconds on the CPU
    enable_prefix_caching=True,
    block_size=32,
    limit_mm_per_prompt={"image": 2, "video": 1},
    seed=0,
)


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def checkpoint(request, tmp_path_factory):
    """(directory, transformers model, processor): the same weights on disk and in memory."""
    from transformers import AutoProcessor

    directory = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model = vllm_testing.write_qwen_checkpoint(directory, request.param)
    return directory, model, AutoProcessor.from_pretrained(directory)


@pytest.fixture(scope="module")
def pictures():
    """Photos at their own sizes: 64, 54 and 54 merged tokens (Qwen3-VL: 64, 48 and 48)."""
    from PIL import Image

    return [Image.fromarray(photos.load_photo(name)) for name in ("astronaut", "coffee", "chelsea")]


@pytest.fixture(scope="module")
def small_picture(pictures):
    """Fewer merged tokens than the budget (84 x 112 px)."""
    return pictures[0].resize((112, 84))


@pytest.fixture(scope="module")
def pruned_llm(checkpoint):
    llm = vllm.LLM(
        model=str(checkpoint[0]),
        hf_overrides={"svdprune": {"budget": BUDGET}},
        max_num_batched_tokens=24,
        enable_chunked_prefill=True,
        **ENGINE_OPTIONS,
    )
    yield llm
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def stock_llm(checkpoint):
    llm = vllm.LLM(model=str(checkpoint[0]), **ENGINE_OPTIONS)
    yield llm
    llm.llm_engine.engine_core.shutdown()


def greedy():
    return vllm.SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, logprobs=0)


def tokens_per_image(processor, images) -> list[int]:
    grids = processor.image_processor(images=images, return_tensors="pt")["image_grid_thw"]
    return (grids.prod(-1) // processor.image_processor.merge_size**2).tolist()


def hf_generate(model, processor, images, prompt, budget):
    """Greedy new tokens and their log-probabilities from transformers, pruned by svdprune.prune
    with positions kept (``budget=None``: unpruned)."""
    inputs = processor(images=images, text=[prompt], return_tensors="pt")
    handle = svdprune.prune(model, processor, budget=budget, positions="keep") if budget is not None else None
    try:
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=MAX_TOKENS, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
    finally:
        if handle is not None:
            handle.remove()
    tokens = output.sequences[0, inputs.input_ids.shape[1] :].tolist()
    logprobs = torch.stack(output.logits, 1)[0].float().log_softmax(-1)
    return tokens, logprobs[torch.arange(len(tokens)), tokens]


def expected_prompt_ids(processor, prompt, counts) -> list[int]:
    """The prompt's tokens with the i-th ``<|image_pad|>`` repeated ``counts[i]`` times."""
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    ids, counts = [], iter(counts)
    for token in processor.tokenizer(prompt).input_ids:
        ids += [token] * (next(counts) if token == image_id else 1)
    return ids


def assert_matches_hf(output, model, processor, images, prompt, budget):
    """``output`` has the kept count of placeholders per image and transformers' greedy answer."""
    full = tokens_per_image(processor, images)
    counts = [n if budget is None else min(budget, n) for n in full]
    if budget is not None and min(full) < budget:  # svdprune.prune refuses a budget above an image's tokens
        assert max(full) <= budget, "the reference prunes every image or none"
        budget = None
    completion = output.outputs[0]
    tokens, logprobs = hf_generate(model, processor, images, prompt, budget)
    assert list(output.prompt_token_ids) == expected_prompt_ids(processor, prompt, counts)
    assert list(completion.token_ids) == tokens
    vllm_logprobs = torch.tensor([step[token].logprob for step, token in zip(completion.logprobs, tokens)])
    torch.testing.assert_close(vllm_logprobs, logprobs, **LOGPROB_TOLERANCE)


def request(prompt, images):
    return {"prompt": prompt, "multi_modal_data": {"image": images if len(images) > 1 else images[0]}}


# -- with the plugin: equal to transformers pruned with svdprune.prune -------------------------


def test_one_image(pruned_llm, checkpoint, pictures):
    _, model, processor = checkpoint
    (output,) = pruned_llm.generate(request(ONE_IMAGE, pictures[:1]), greedy())
    assert len(output.prompt_token_ids) == len(processor.tokenizer(ONE_IMAGE).input_ids) - 1 + BUDGET
    assert_matches_hf(output, model, processor, pictures[:1], ONE_IMAGE, BUDGET)


def test_two_images_of_different_sizes(pruned_llm, checkpoint, pictures):
    _, model, processor = checkpoint
    images = pictures[:2]
    assert len(set(tokens_per_image(processor, images))) == 2
    (output,) = pruned_llm.generate(request(TWO_IMAGES, images), greedy())
    assert_matches_hf(output, model, processor, images, TWO_IMAGES, BUDGET)


def test_image_smaller_than_budget_keeps_all(pruned_llm, checkpoint, small_picture):
    # svdprune.prune refuses a budget above an image's tokens; served, the image keeps them all,
    # as the unpruned model sees it.
    _, model, processor = checkpoint
    (count,) = tokens_per_image(processor, [small_picture])
    assert count < BUDGET
    (output,) = pruned_llm.generate(request(ONE_IMAGE, [small_picture]), greedy())
    assert len(output.prompt_token_ids) == len(processor.tokenizer(ONE_IMAGE).input_ids) - 1 + count
    assert_matches_hf(output, model, processor, [small_picture], ONE_IMAGE, BUDGET)


def test_batch_of_different_lengths(pruned_llm, checkpoint, pictures, small_picture):
    _, model, processor = checkpoint
    images = [pictures[2], small_picture, pictures[0]]
    outputs = pruned_llm.generate([request(p, [image]) for p, image in zip(BATCH, images)], greedy())
    assert len({len(output.prompt_token_ids) for output in outputs}) == len(BATCH)
    for output, prompt, image in zip(outputs, BATCH, images):
        assert_matches_hf(output, model, processor, [image], prompt, BUDGET)


# -- without the key: vLLM's own model, equal to the unpruned transformers model -----------------


def test_without_key_is_unpruned(stock_llm, checkpoint, pictures):
    _, model, processor = checkpoint
    (output,) = stock_llm.generate(request(ONE_IMAGE, pictures[:1]), greedy())
    (count,) = tokens_per_image(processor, pictures[:1])
    assert len(output.prompt_token_ids) == len(processor.tokenizer(ONE_IMAGE).input_ids) - 1 + count
    assert_matches_hf(output, model, processor, pictures[:1], ONE_IMAGE, None)
