"""svdprune.vllm serving tiny random LLaVA-NeXT and LLaVA-OneVision from disk equals transformers +
svdprune.prune with the same ``newlines``.

Runs in .venv-vllm (scripts/test.sh runs it with the other vLLM modules); skipped where vLLM is not
installed. The reference is transformers with ``svdprune.prune(model, processor, budget=BUDGET,
scope=..., newlines=...)``: the prompt vLLM serves must be transformers' prompt with each image's
and video's placeholders cut to the count svdprune.prune keeps, and the greedy tokens and their
log-probabilities must agree. Engines are shared per module and family: one pruned with the
defaults (every newline; chunked prefill in steps of 24 tokens, so prefills stop inside images;
prefix caching in blocks of 32), one with no newlines (LLaVA-NeXT per tile, OneVision's videos per
clip), one whose budget is above every crop's and frame's tokens, one stock, and for LLaVA-NeXT
one `vllm serve`.

112 px crops of 64 tokens: the astronaut photo is a 2 x 2 tile grid of 16 rows, the coffee photo
cut to 150 x 600 px a 1 x 3 grid of 6 rows; video frames pool to 16 tokens.
"""

import json
import os
import pytest

pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import svdprune  # noqa: E402
from helpers import Prompt, data_url, post, transformers_greedy, vllm_engine, vllm_greedy, vllm_serve  # noqa: E402
from svdprune.testing import images as photos  # noqa: E402
from svdprune.vllm import testing as vllm_testing  # noqa: E402

BUDGET = 8
MAX_TOKENS = 6
LOGPROB_TOLERANCE = dict(atol=1e-4, rtol=0)
ONE_IMAGE = "USER: <image>\nWhat is shown in this picture? Describe it in detail. ASSISTANT:"
TWO_IMAGES = "USER: <image>\n<image>\nWhat differs between the two images? ASSISTANT:"
ONE_VIDEO = "USER: <video>\nWhat happens in this video? ASSISTANT:"
ENGINE_OPTIONS = dict(
    dtype="float32",
    max_model_len=1024,
    enforce_eager=True,  # no torch.compile: start-up in seconds on the CPU
    enable_prefix_caching=True,
    block_size=32,
    seed=0,
)
# An engine whose budget is above every crop's 64 tokens and every video frame's 16: each keeps them all.
LARGE_BUDGET = {"budget": 100, "scope": "tile", "newlines": "none"}
# The second engine of each family: its settings besides the budget.
OTHER_SETTINGS = {
    "llava_next": {"scope": "tile", "newlines": "none"},
    "llava_onevision": {"scope": "video", "newlines": "none"},
}


@pytest.fixture(scope="module", params=["llava_next", "llava_onevision"])
def checkpoint(request, tmp_path_factory):
    """(directory, transformers model, processor): the same weights on disk and in memory."""
    from transformers import AutoProcessor

    directory = tmp_path_factory.mktemp(f"tiny-{request.param}")
    model = vllm_testing.write_llava_next_checkpoint(directory, request.param)
    return directory, model, AutoProcessor.from_pretrained(directory)


def family(checkpoint) -> str:
    return checkpoint[1].config.model_type


@pytest.fixture(scope="module")
def pictures():
    """A square photo (2 x 2 tiles, 16 rows), a wide one (1 x 3 tiles, 6 rows once unpadded), a tall
    one (2 x 1 tiles, 16 rows) and a taller one (3 x 1 tiles, 24 rows: more than the square image
    vLLM profiles with, which has the most tokens)."""
    from PIL import Image

    astronaut, coffee, chelsea = (photos.load_photo(name) for name in ("astronaut", "coffee", "chelsea"))
    return [Image.fromarray(picture) for picture in (astronaut, coffee[:150], chelsea[:, :150], chelsea[:, :100])]


@pytest.fixture(scope="module")
def clip():
    """Three photos as 168 x 224 px frames."""
    from PIL import Image

    names = ("astronaut", "coffee", "rocket")
    return np.stack([np.asarray(Image.fromarray(photos.load_photo(name)).resize((224, 168))) for name in names])


def engine(checkpoint, settings=None, **options):
    limits = {"image": 2} if family(checkpoint) == "llava_next" else {"image": 2, "video": 1}
    return vllm_engine(checkpoint[0], settings, limit_mm_per_prompt=limits, **options, **ENGINE_OPTIONS)


@pytest.fixture(scope="module")
def pruned_llm(checkpoint):
    with engine(checkpoint, {"budget": BUDGET}, max_num_batched_tokens=24, enable_chunked_prefill=True) as llm:
        yield llm


@pytest.fixture(scope="module")
def other_llm(checkpoint):
    with engine(checkpoint, {"budget": BUDGET, **OTHER_SETTINGS[family(checkpoint)]}) as llm:
        yield llm


@pytest.fixture(scope="module")
def large_budget_llm(checkpoint):
    with engine(checkpoint, LARGE_BUDGET) as llm:
        yield llm


@pytest.fixture(scope="module")
def stock_llm(checkpoint):
    with engine(checkpoint) as llm:
        yield llm


def greedy():
    return vllm_greedy(MAX_TOKENS)


def hf_inputs(processor, prompt: Prompt):
    visuals = {}
    if prompt.images:
        visuals["images"] = list(prompt.images)
    if prompt.video is not None:
        visuals["videos"] = [prompt.video]
    return processor(text=[prompt.text], return_tensors="pt", **visuals)


def hf_generate(model, processor, inputs, settings):
    """Greedy new tokens, their log-probabilities and the kept placeholders per visual (images
    first; ``None``: nothing pruned) from transformers, pruned by svdprune.prune with ``settings``
    (``None``: unpruned)."""
    handles = []

    def prune():
        handles.append(svdprune.prune(model, processor, **settings))
        return handles[-1]

    tokens, logprobs = transformers_greedy(model, inputs, MAX_TOKENS, None if settings is None else prune)
    masks = handles[0].last_mask if handles else None
    return tokens, logprobs, None if masks is None else [int(mask.sum()) for mask in masks]


def served_prompt(ids: list[int], placeholder_ids: list[int], kept: list[int] | None) -> list[int]:
    """The unpruned prompt ``ids`` with each run of placeholders (images first, then videos, as
    ``kept`` counts them) cut to its kept count."""
    if kept is None:
        return ids
    runs = []  # (token, start) of each run in the prompt
    for index, token in enumerate(ids):
        if token in placeholder_ids and (index == 0 or ids[index - 1] != token):
            runs.append((token, index))
    ordered = sorted(runs, key=lambda run: (placeholder_ids.index(run[0]), run[1]))
    counts = {start: count for (_, start), count in zip(ordered, kept, strict=True)}
    served, left = [], 0
    for index, token in enumerate(ids):
        left = counts.get(index, left)
        if token not in placeholder_ids or left > 0:
            served.append(token)
            left -= token in placeholder_ids
    return served


def assert_matches_hf(output, checkpoint, prompt: Prompt, settings: dict | None):
    """``output`` is transformers' answer, pruned by svdprune.prune with ``settings``, on the
    prompt svdprune.prune shortens."""
    _, model, processor = checkpoint
    inputs = hf_inputs(processor, prompt)
    tokens, logprobs, kept = hf_generate(model, processor, inputs, settings)
    placeholder_ids = [model.config.image_token_id, getattr(model.config, "video_token_id", None)]
    assert list(output.prompt_token_ids) == served_prompt(inputs["input_ids"][0].tolist(), placeholder_ids, kept)
    completion = output.outputs[0]
    assert list(completion.token_ids) == tokens
    vllm_logprobs = torch.tensor([step[token].logprob for step, token in zip(completion.logprobs, tokens)])
    torch.testing.assert_close(vllm_logprobs, logprobs, **LOGPROB_TOLERANCE)


def placeholders(output, token_id) -> list[int]:
    return [i for i, token in enumerate(output.prompt_token_ids) if token == token_id]


def grid_rows(checkpoint, picture) -> int:
    """The newlines transformers packs after the rows of ``picture``'s tile grid."""
    _, model, processor = checkpoint
    inputs = hf_inputs(processor, Prompt(ONE_IMAGE, (picture,)))
    with torch.no_grad():
        output = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    features = getattr(output, "pooler_output", output)[0]
    return int((features == model.model.image_newline).all(-1).sum())


DEFAULTS = dict(budget=BUDGET, newlines="all")


# -- with the plugin: equal to transformers pruned with svdprune.prune -------------------------


def test_one_image_keeps_the_budget_and_every_row_newline(pruned_llm, checkpoint, pictures):
    prompt = Prompt(ONE_IMAGE, pictures[:1])
    (output,) = pruned_llm.generate(prompt.request(), greedy())
    rows = grid_rows(checkpoint, pictures[0])
    assert rows == 16 and len(placeholders(output, checkpoint[1].config.image_token_id)) == BUDGET + rows
    assert_matches_hf(output, checkpoint, prompt, DEFAULTS)


def test_two_images_of_different_aspect_ratios(pruned_llm, checkpoint, pictures):
    prompt = Prompt(TWO_IMAGES, pictures[:2])
    (output,) = pruned_llm.generate(prompt.request(), greedy())
    assert_matches_hf(output, checkpoint, prompt, DEFAULTS)


def test_video_per_frame(pruned_llm, checkpoint, clip):
    """``budget`` tokens of every frame, and the newline after the clip."""
    if family(checkpoint) != "llava_onevision":
        pytest.skip("LLaVA-NeXT takes no videos")
    prompt = Prompt(ONE_VIDEO, video=clip)
    (output,) = pruned_llm.generate(prompt.request(), greedy())
    assert len(placeholders(output, checkpoint[1].config.video_token_id)) == 3 * BUDGET + 1
    assert_matches_hf(output, checkpoint, prompt, DEFAULTS)


def test_mixed_batch(pruned_llm, checkpoint, pictures, clip):
    """Images of different sizes (a video for OneVision) and text alone in one batch; the tallest
    image has more placeholders than the image memory profiling uses."""
    prompts = [
        Prompt("USER: <image>\nWhat colour is it? ASSISTANT:", pictures[2:3]),
        Prompt("USER: What is a photograph? ASSISTANT:"),
        Prompt("USER: <image>\nHow many objects are there, and where are they, left or right? ASSISTANT:", pictures[1:2]),
        Prompt("USER: <image>\nIs it tall? ASSISTANT:", pictures[3:4]),
    ]
    if family(checkpoint) == "llava_onevision":
        prompts.insert(1, Prompt("USER: <video>\nDescribe the video. ASSISTANT:", video=clip[::-1].copy()))
    outputs = pruned_llm.generate([prompt.request() for prompt in prompts], greedy())
    assert len({len(output.prompt_token_ids) for output in outputs}) == len(prompts)
    for output, prompt in zip(outputs, prompts):
        assert_matches_hf(output, checkpoint, prompt, DEFAULTS)


def test_no_newlines_per_tile_or_per_clip(other_llm, checkpoint, pictures, clip):
    """``newlines="none"``: LLaVA-NeXT keeps ``budget`` per base view and per tile, OneVision
    ``budget`` per image and per whole video clip, and no newline."""
    settings = {"budget": BUDGET, **OTHER_SETTINGS[family(checkpoint)]}
    config = checkpoint[1].config
    prompts = [Prompt(ONE_IMAGE, pictures[:1]), Prompt(ONE_IMAGE, pictures[1:2])]
    counts = [5 * BUDGET, 4 * BUDGET] if settings["scope"] == "tile" else [BUDGET, BUDGET]
    if family(checkpoint) == "llava_onevision":
        prompts.append(Prompt(ONE_VIDEO, video=clip))
        counts.append(BUDGET)
    outputs = other_llm.generate([prompt.request() for prompt in prompts], greedy())
    for output, prompt, count in zip(outputs, prompts, counts):
        token = config.image_token_id if prompt.images else config.video_token_id
        assert len(placeholders(output, token)) == count
        assert_matches_hf(output, checkpoint, prompt, settings)


def test_groups_smaller_than_the_budget_keep_all_their_tokens(large_budget_llm, checkpoint, pictures, clip):
    """Served, a crop or frame of fewer tokens than the budget keeps them all (svdprune.prune
    refuses such a budget: its reference keeps each crop's or frame's whole count, 64 or 16)."""
    config = checkpoint[1].config
    prompts, counts = [Prompt(ONE_IMAGE, pictures[:1])], [(64, 5 * 64)]  # the base view and 2 x 2 tiles
    if family(checkpoint) == "llava_onevision":
        prompts.append(Prompt(ONE_VIDEO, video=clip))
        counts.append((16, 3 * 16))  # three pooled frames
    outputs = large_budget_llm.generate([prompt.request() for prompt in prompts], greedy())
    for output, prompt, (group, count) in zip(outputs, prompts, counts):
        token = config.image_token_id if prompt.images else config.video_token_id
        assert len(placeholders(output, token)) == count
        assert_matches_hf(output, checkpoint, prompt, {**LARGE_BUDGET, "budget": group})


# -- without the key: vLLM's own model, equal to the unpruned transformers model -----------------


def test_without_key_is_unpruned(stock_llm, checkpoint, pictures, clip):
    prompts = [Prompt(ONE_IMAGE, pictures[:1])]
    if family(checkpoint) == "llava_onevision":
        prompts.append(Prompt(ONE_VIDEO, video=clip))
    outputs = stock_llm.generate([prompt.request() for prompt in prompts], greedy())
    assert len(placeholders(outputs[0], checkpoint[1].config.image_token_id)) == 64 + 4 * 64 + 16
    for output, prompt in zip(outputs, prompts):
        assert_matches_hf(output, checkpoint, prompt, None)


# -- inside the engine: prefix caching, chunked prefill, memory profiling ------------------------


def test_prefix_cache_hit_over_the_image(pruned_llm, checkpoint, pictures):
    """The second request finds its first block (the image and the text after it) cached."""
    prompt = Prompt("USER: <image>\nWhere was this taken? Describe the place in detail. ASSISTANT:", pictures[2:3])
    first, second = (pruned_llm.generate(prompt.request(), greedy())[0] for _ in range(2))
    assert second.num_cached_tokens > placeholders(second, checkpoint[1].config.image_token_id)[-1] + 1
    for output in (first, second):
        assert_matches_hf(output, checkpoint, prompt, DEFAULTS)


def test_prefill_chunk_ends_inside_the_image(pruned_llm, checkpoint, pictures):
    prompt = Prompt("USER: Look at the picture and answer. <image>\nIs it a photograph? ASSISTANT:", pictures[1:2])
    (output,) = pruned_llm.generate(prompt.request(), greedy())
    slots = placeholders(output, checkpoint[1].config.image_token_id)
    chunk = pruned_llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    assert output.num_cached_tokens == 0 and slots[0] // chunk < slots[-1] // chunk
    assert_matches_hf(output, checkpoint, prompt, DEFAULTS)


def test_profiling_sizes_the_unpruned_image(pruned_llm, stock_llm):
    """The vision tower computes every token of an image before pruning: memory profiling and the
    encoder cache are sized by the unpruned count, at the size with the most of them."""
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.encoder_budget import MultiModalBudget

    pruned, stock = (MultiModalBudget(llm.llm_engine.vllm_config, MULTIMODAL_REGISTRY) for llm in (pruned_llm, stock_llm))
    assert pruned.mm_max_toks_per_item == stock.mm_max_toks_per_item
    assert pruned.mm_max_toks_per_item["image"] > 4 * 64  # vLLM's count at its largest image, unpruned


# -- configurations the plugin cannot serve fail when the engine starts ---------------------------


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"newlines": "kept"}, r"svdprune\.newlines 'kept' is not served for LLaVA-.* \(served: \('all', 'none'\), "
                               r"default 'all'\): vLLM counts an image's placeholders from its size"),
        ({"newlines": "rows"}, r"svdprune\.newlines must be one of \('kept', 'all', 'none'\)"),
        ({"budget": None}, r"svdprune\.budget must be an int >= 1: adaptive"),
        ({"positions": "keep"}, r"svdprune\.positions 'keep' is not served"),
        ({"scope": "frames"}, r"svdprune\.scope must be one of"),
    ],
)
def test_bad_settings_fail_at_start(checkpoint, settings, message):
    with pytest.raises(ValueError, match=message), engine(checkpoint, {"budget": BUDGET, **settings}):
        pass


# -- vllm serve -----------------------------------------------------------------------------------


def test_serve_chat_completion_equals_offline(pruned_llm, checkpoint, pictures, tmp_path):
    """The OpenAI-compatible server, given an image as a data URL, answers as the offline engine
    (LLaVA-NeXT; the server is the same code for OneVision)."""
    if family(checkpoint) != "llava_next":
        pytest.skip("one family is enough for the server")
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(pictures[0])}},
        {"type": "text", "text": "What is shown in this picture? Describe it in detail."},
    ]}]  # fmt: skip
    arguments = [
        "--hf-overrides", json.dumps({"svdprune": {"budget": BUDGET}}), "--dtype", "float32",
        "--max-model-len", str(ENGINE_OPTIONS["max_model_len"]), "--block-size", str(ENGINE_OPTIONS["block_size"]),
        "--limit-mm-per-prompt", json.dumps({"image": 2}), "--enforce-eager", "--seed", "0",
    ]  # fmt: skip
    with vllm_serve(checkpoint[0], arguments, tmp_path / "serve.log") as server:
        answer = post(
            server + "/v1/chat/completions",
            {"model": str(checkpoint[0]), "messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS},
            timeout=120,
        )
    (offline,) = pruned_llm.chat(messages, vllm_greedy(MAX_TOKENS, logprobs=False))
    assert len(placeholders(offline, checkpoint[1].config.image_token_id)) == BUDGET + 16
    assert answer["usage"]["prompt_tokens"] == len(offline.prompt_token_ids)
    assert answer["choices"][0]["message"]["content"] == offline.outputs[0].text
