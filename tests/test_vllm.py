"""svdprune.vllm: vLLM serving a tiny random LLaVA-1.5 from disk equals transformers + svdprune.llava.

Runs in .venv-vllm (scripts/setup_vllm_env.sh installs vLLM and svdprune there; scripts/test.sh
runs this module with it); skipped where vLLM is not installed. Engines are shared per module:
one pruned, one stock, one `vllm serve`; the bad configurations fail before an engine starts.
"""

import json
import os

import pytest

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402

from helpers import data_url, post, transformers_greedy, vllm_engine, vllm_greedy, vllm_serve  # noqa: E402
from svdprune import llava  # noqa: E402
from svdprune.testing import images as photos  # noqa: E402
from svdprune.vllm import testing as vllm_testing  # noqa: E402

BUDGET = 32
N = 576
MAX_TOKENS = 6
LOGPROB_TOLERANCE = dict(atol=1e-3, rtol=1e-3)
ONE_IMAGE = "USER: <image>\nWhat is shown in this picture? Describe it in detail. ASSISTANT:"
TWO_IMAGES = "USER: <image>\n<image>\nWhat differs between the two images? ASSISTANT:"
BATCH = [
    "USER: <image>\nWhat colour is it? ASSISTANT:",
    ONE_IMAGE,
    "USER: <image>\nHow many objects are there, and where are they, left or right, top or bottom? ASSISTANT:",
]
ENGINE_OPTIONS = dict(
    dtype="float32",
    max_model_len=2048,
    enforce_eager=True,  # no torch.compile: start-up in seconds on the CPU
    enable_prefix_caching=True,
    limit_mm_per_prompt={"image": 2},
    seed=0,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(directory, transformers model, processor): the same weights on disk and in memory."""
    directory = tmp_path_factory.mktemp("tiny-llava")
    model, processor = vllm_testing.write_checkpoint(directory)
    return directory, model, processor


@pytest.fixture(scope="module")
def pictures():
    return [photo for photo in photos.load_photos(["astronaut", "chelsea", "coffee"]).values()]


@pytest.fixture(scope="module")
def pil_pictures(pictures):
    from PIL import Image

    return [Image.fromarray(picture) for picture in pictures]


@pytest.fixture(scope="module")
def pruned_llm(checkpoint):
    # A small token budget per step makes every prompt with images prefill in several chunks.
    options = dict(max_num_batched_tokens=48, enable_chunked_prefill=True, **ENGINE_OPTIONS)
    with vllm_engine(checkpoint[0], {"budget": BUDGET}, **options) as llm:
        yield llm


@pytest.fixture(scope="module")
def stock_llm(checkpoint):
    with vllm_engine(checkpoint[0], **ENGINE_OPTIONS) as llm:
        yield llm


def greedy(logprobs: bool = True):
    return vllm_greedy(MAX_TOKENS, logprobs)


def expected_prompt_ids(processor, prompt, tokens_per_image):
    """The prompt's tokens with each <image> expanded to ``tokens_per_image`` placeholders."""
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    ids = []
    for token in processor.tokenizer(prompt).input_ids:
        ids += [token] * (tokens_per_image if token == image_id else 1)
    return ids


def assert_matches_hf(output, model, processor, images, prompt, budget):
    completion = output.outputs[0]
    inputs = processor(images=images, text=[prompt], return_tensors="pt")
    prune = None if budget is None else lambda: llava.prune(model, processor, budget=budget)
    tokens, logprobs = transformers_greedy(model, inputs, MAX_TOKENS, prune)
    assert list(output.prompt_token_ids) == expected_prompt_ids(processor, prompt, budget or N)
    assert list(completion.token_ids) == tokens
    vllm_logprobs = torch.tensor([step[token].logprob for step, token in zip(completion.logprobs, tokens)])
    torch.testing.assert_close(vllm_logprobs, logprobs, **LOGPROB_TOLERANCE)


# -- with the plugin: equal to transformers pruned with svdprune.llava -------------------------


def test_one_image(pruned_llm, checkpoint, pil_pictures):
    _, model, processor = checkpoint
    (output,) = pruned_llm.generate({"prompt": ONE_IMAGE, "multi_modal_data": {"image": pil_pictures[0]}}, greedy())
    assert len(output.prompt_token_ids) == len(processor.tokenizer(ONE_IMAGE).input_ids) - 1 + BUDGET
    assert_matches_hf(output, model, processor, pil_pictures[:1], ONE_IMAGE, BUDGET)


def test_two_images(pruned_llm, checkpoint, pil_pictures):
    _, model, processor = checkpoint
    request = {"prompt": TWO_IMAGES, "multi_modal_data": {"image": pil_pictures[:2]}}
    (output,) = pruned_llm.generate(request, greedy())
    assert len(output.prompt_token_ids) == len(processor.tokenizer(TWO_IMAGES).input_ids) - 2 + 2 * BUDGET
    assert_matches_hf(output, model, processor, pil_pictures[:2], TWO_IMAGES, BUDGET)


def test_batch_of_different_lengths(pruned_llm, checkpoint, pil_pictures):
    # Continuous batching with chunked prefill; the repeated photo also hits the prefix cache.
    _, model, processor = checkpoint
    images = [pil_pictures[2], pil_pictures[1], pil_pictures[0]]
    requests = [{"prompt": p, "multi_modal_data": {"image": image}} for p, image in zip(BATCH, images)]
    outputs = pruned_llm.generate(requests, greedy())
    assert len({len(output.prompt_token_ids) for output in outputs}) == len(BATCH)
    for output, prompt, image in zip(outputs, BATCH, images):
        assert_matches_hf(output, model, processor, [image], prompt, BUDGET)


def test_chat_equals_generate(pruned_llm, pil_pictures, pictures):
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(pictures[0])}},
        {"type": "text", "text": "What is shown in this picture? Describe it in detail."},
    ]}]
    (chat,) = pruned_llm.chat(messages, greedy(logprobs=False))
    (plain,) = pruned_llm.generate({"prompt": ONE_IMAGE, "multi_modal_data": {"image": pil_pictures[0]}}, greedy(False))
    assert list(chat.prompt_token_ids) == list(plain.prompt_token_ids)
    assert chat.outputs[0].token_ids == plain.outputs[0].token_ids


# -- without the key: stock vLLM, equal to the unpruned transformers model -----------------------


def test_without_key_is_unpruned(stock_llm, checkpoint, pil_pictures):
    _, model, processor = checkpoint
    (output,) = stock_llm.generate({"prompt": ONE_IMAGE, "multi_modal_data": {"image": pil_pictures[0]}}, greedy())
    assert len(output.prompt_token_ids) == len(processor.tokenizer(ONE_IMAGE).input_ids) - 1 + N
    assert_matches_hf(output, model, processor, pil_pictures[:1], ONE_IMAGE, None)


# -- bad configurations fail when the engine starts, naming the key ------------------------------


@pytest.fixture(scope="module")
def llama_checkpoint(tmp_path_factory, checkpoint):
    """A text-only model (LlamaForCausalLM), an architecture the plugin does not support."""
    from transformers import LlamaForCausalLM

    directory = tmp_path_factory.mktemp("tiny-llama")
    _, model, processor = checkpoint
    LlamaForCausalLM(model.config.text_config).save_pretrained(directory)
    processor.tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"budget": None}, r"svdprune\.budget must be an int in \[1, 576\] \(tokens per image\): adaptive"),
        ({"budget": 64, "positions": "keep"}, r"svdprune\.positions 'keep' is not served for LLaVA-1\.5"),
        ({"budget": 0}, r"svdprune\.budget must be an int in \[1, 576\].*got 0"),
        ({"budget": N + 1}, r"svdprune\.budget must be an int in \[1, 576\].*got 577"),
        ({"budget": 64, "method": "svd"}, r"svdprune\.method must be one of .*got 'svd'"),
        ({"budget": 64, "strategy": "random"}, r"svdprune\.strategy must be one of .*got 'random'"),
        ({"budget": 64, "source": "pixels"}, r"svdprune\.source must be one of .*got 'pixels'"),
        ({"budget": 64, "variance": 0}, r"svdprune\.variance must be in \(0, 1\]"),
        ({"budget": 64, "budgets": 3}, r"svdprune: unknown key\(s\) \['budgets'\]"),
        ({"budget": 64, "newlines": "all"}, r"svdprune\.newlines applies to LLaVA-NeXT and LLaVA-OneVision only"),
    ],
)
def test_bad_settings_fail_at_start(checkpoint, settings, message):
    with pytest.raises(ValueError, match=message), vllm_engine(checkpoint[0], settings, **ENGINE_OPTIONS):
        pass


def test_unsupported_architecture_fails_at_start(llama_checkpoint):
    with pytest.raises(ValueError, match=r"svdprune: architecture 'LlamaForCausalLM' is not supported"):
        with vllm_engine(llama_checkpoint, {"budget": 64}, dtype="float32"):
            pass


# -- vllm serve -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    arguments = [
        "--hf-overrides", json.dumps({"svdprune": {"budget": BUDGET}}),
        "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager", "--seed", "0",
    ]  # fmt: skip
    with vllm_serve(checkpoint[0], arguments, tmp_path_factory.mktemp("serve") / "serve.log") as base:
        yield base


def test_serve_chat_completion_equals_offline(server, pruned_llm, pictures, checkpoint):
    question = "What is shown in this picture? Describe it in detail."
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(pictures[0])}},
        {"type": "text", "text": question},
    ]}]
    answer = post(
        server + "/v1/chat/completions",
        {"model": str(checkpoint[0]), "messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS},
        timeout=120,
    )
    (offline,) = pruned_llm.chat(messages, greedy(logprobs=False))
    assert answer["usage"]["prompt_tokens"] == len(offline.prompt_token_ids)
    assert answer["choices"][0]["message"]["content"] == offline.outputs[0].text
