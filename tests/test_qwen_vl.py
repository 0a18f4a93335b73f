"""svdprune.prune on tiny randomly initialised Qwen2-VL, Qwen2.5-VL and Qwen3-VL: images, videos,
3-D positions.

Images are resized to 4-64 merged tokens (14 px patches for Qwen2-VL and Qwen2.5-VL, 16 px for
Qwen3-VL, merged 2x2); videos are 3 x 4 merged tokens per temporal patch of two frames. The reference: with their
positions kept, dropping tokens gives at every kept position the logits of the unpruned model run
on the whole sequence with the dropped tokens hidden from attention by a 4-D mask. Runs with
transformers 5.x and 4.57.x (scripts/test_transformers4.sh runs it against 4.57).
"""

import copy
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("skimage")

import svdprune  # noqa: E402
import svdprune_cuda  # noqa: E402
from helpers import OutputsRequireGrad, assert_a_follow_up_turn_continues_the_cache, encode, kept_layout, masked_greedy, masked_logits  # noqa: E402
from svdprune.testing import models as tiny_models  # noqa: E402
from svdprune.testing.models import QWEN_IMAGE, QWEN_VIDEO, LanguageModelInputs, last_real_logits  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_grad")]

CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}
PROMPTS = [
    f"USER: {QWEN_IMAGE}What is shown in this picture? Describe it in detail. ASSISTANT:",
    f"USER: {QWEN_IMAGE}What colour is it? ASSISTANT:",
]
VIDEO_PROMPTS = [f"USER: {QWEN_VIDEO}What happens in this video? ASSISTANT:", f"USER: {QWEN_VIDEO}Describe it. ASSISTANT:"]
PER_FRAME = 12  # merged tokens per temporal patch of the test videos
TOLERANCE = dict(atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module", params=list(CLASSES))
def qwen(request):
    family = request.param
    if not hasattr(transformers, CLASSES[family]):
        pytest.skip(f"transformers {transformers.__version__} has no {CLASSES[family]}")
    processors = {side: tiny_models.build_qwen_processor(family, padding_side=side) for side in ("left", "right")}
    return SimpleNamespace(family=family, processors=processors, model=tiny_models.build_qwen_model(processors["left"], family))


@pytest.fixture(scope="module")
def images():
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea()]  # 64, 54 and 48-54 merged tokens


@pytest.fixture(scope="module")
def clips(images):
    from skimage import data

    return [[images[0], data.rocket(), images[1], images[2]], [images[2], images[0]]]  # 2 and 1 temporal patches


def unpruned_positions(model, inputs) -> torch.Tensor:
    """``[B, L, 3]``: the positions the unpruned model gives every token (time, height, width)."""
    with LanguageModelInputs(model) as seen:
        model(**inputs)
    return seen.calls[0]["position_ids"][-3:].permute(1, 2, 0)


def kept_positions(model, handle, inputs) -> torch.Tensor:
    """``[B, L]`` bool, the caller's tokens the latest pruned call kept (images' masks, then videos')."""
    masks = list(handle.last_mask)
    images = len(inputs["image_grid_thw"]) if "image_grid_thw" in inputs else 0
    kinds = [(model.config.image_token_id, masks[:images]), (model.config.video_token_id, masks[images:])]
    return kept_layout(inputs["input_ids"], inputs["attention_mask"], [kind for kind in kinds if kind[1]])


def merged_tokens(output) -> list[torch.Tensor]:
    """Per visual ``[tokens, H]`` from ``get_*_features``: 5.x model output, 4.57 tuple (Qwen3-VL: with deepstack)."""
    output = getattr(output, "pooler_output", output)
    return list(output[0] if isinstance(output[0], tuple) else output)


# -- the masking reference ----------------------------------------------------------------------


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("source", ["projector", "vision"])
def test_pruned_logits_equal_the_masked_reference(qwen, images, source, padding_side):
    model, processor, budget = qwen.model, qwen.processors[padding_side], 12
    inputs = encode(processor, images[:2], PROMPTS)
    assert (inputs.attention_mask == 0).any()
    positions = unpruned_positions(model, inputs)
    with svdprune.prune(model, processor, budget=budget, source=source, method="exact") as handle:
        with LanguageModelInputs(model) as seen:
            logits = model(**inputs).logits
    keep = kept_positions(model, handle, inputs)
    assert [int(mask.sum()) for mask in handle.last_mask] == [budget, budget]
    # The language model receives exactly the kept tokens, and every visual one keeps its place.
    visual = inputs.input_ids == model.config.image_token_id
    assert seen.embeds[0].shape[1] == int(keep.sum(1).max())
    assert int((keep & visual).sum()) == 2 * budget
    reference = masked_logits(model, inputs, keep, positions)
    torch.testing.assert_close(logits[keep], reference[keep], **TOLERANCE)
    assert not logits[~keep].any()
    if qwen.family == "qwen3_vl":  # every deepstack level, pruned with the same mask
        call = seen.calls[0]
        assert int(call["visual_pos_masks"].sum()) == 2 * budget
        levels = call["deepstack_visual_embeds"]
        assert len(levels) == len(model.config.vision_config.deepstack_visual_indexes)
        assert all(level.shape == (2 * budget, model.config.text_config.hidden_size) for level in levels)


def test_generate_equals_the_masked_reference_greedy(qwen, images):
    """Left padding, as generation with a decoder-only model wants it (right-padded rows would
    predict their first token at a padding position)."""
    model, processor, steps = qwen.model, qwen.processors["left"], 4
    inputs = encode(processor, images[1:], PROMPTS)
    positions = unpruned_positions(model, inputs)
    with svdprune.prune(model, processor, budget=10, method="exact") as handle:
        output = model.generate(
            **inputs, max_new_tokens=steps, do_sample=False, return_dict_in_generate=True, output_logits=True
        )
    keep = kept_positions(model, handle, inputs)
    tokens, logits = masked_greedy(model, inputs, keep, positions, steps)
    assert torch.equal(output.sequences[:, : inputs.input_ids.shape[1]], inputs.input_ids)
    assert torch.equal(output.sequences[:, inputs.input_ids.shape[1] :], tokens)
    torch.testing.assert_close(torch.stack(output.logits, dim=1), logits, **TOLERANCE)


def test_the_unpruned_model_continues_one_past_the_largest_position(qwen, images):
    """The continuation the reference uses is transformers' own for an unpadded prompt."""
    model, processor = qwen.model, qwen.processors["left"]
    inputs = encode(processor, images[:1], PROMPTS[:1])
    positions = unpruned_positions(model, inputs)
    with LanguageModelInputs(model) as seen:
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
    following = [call["position_ids"][-3:].flatten().tolist() for call in seen.calls[1:]]
    first = int(positions.max()) + 1
    assert following == [[first] * 3, [first + 1] * 3]


# -- images -------------------------------------------------------------------------------------


def test_batched_equals_one_by_one(qwen, images):
    processor = qwen.processors["right"]
    model = qwen.model
    prompts = [f"USER: {QWEN_IMAGE}{QWEN_IMAGE}Compare the two pictures. ASSISTANT:", PROMPTS[1]]
    groups = [images[:2], images[2:]]
    batch = encode(processor, [image for group in groups for image in group], prompts)
    with svdprune.prune(model, processor, budget=8, method="exact") as handle:
        batch_logits = last_real_logits(model(**batch).logits, batch.attention_mask)
        assert [int(mask.sum()) for mask in handle.last_mask] == [8, 8, 8]
        for row, (group, prompt) in enumerate(zip(groups, prompts)):
            alone = model(**encode(processor, group, [prompt])).logits[0, -1]
            torch.testing.assert_close(batch_logits[row], alone, **TOLERANCE)


def test_language_model_receives_the_selected_merged_tokens(qwen, images):
    model, processor, budget = qwen.model, qwen.processors["left"], 16
    inputs = encode(processor, images[1:2], PROMPTS[1:])
    features = merged_tokens(model.model.get_image_features(inputs.pixel_values, inputs.image_grid_thw))[0]
    chosen = svdprune_cuda.select(features[None], budget, 0.9, method="exact")[0][0]
    with svdprune.prune(model, processor, budget=budget, method="exact") as handle:
        with LanguageModelInputs(model) as seen:
            model(**inputs)
    assert torch.equal(handle.last_mask[0].nonzero().flatten(), chosen)
    start = int((inputs.input_ids[0] == model.config.image_token_id).nonzero()[0])
    assert seen.embeds[0].shape[1] == inputs.input_ids.shape[1] - features.shape[0] + budget
    torch.testing.assert_close(seen.embeds[0][0, start : start + budget], features[chosen], atol=0, rtol=0)


def test_vision_source_scores_what_the_merger_reads(qwen, images):
    """Each merged token is scored by its four patch features side by side: the merger maps them
    to exactly the token the language model receives (Qwen2.5-VL: in the model's token order, not
    the window order its tower works in)."""
    model, processor = qwen.model, qwen.processors["left"]
    inputs = encode(processor, images[:2], PROMPTS)
    with svdprune.prune(model, processor, budget=8, source="vision") as handle:
        model(**inputs)
    width = model.config.text_config.hidden_size
    for visual in handle.last_visuals:
        patches = visual.scored.reshape(-1, visual.scored.shape[-1] // 4)  # the 2x2 patches, one a row
        torch.testing.assert_close(model.model.visual.merger(patches), visual.features[:, :width], **TOLERANCE)


def test_full_budget_changes_nothing_and_remove_restores(qwen, images):
    model, processor = qwen.model, qwen.processors["left"]
    inputs = encode(processor, images[:1], PROMPTS[:1])  # 64 merged tokens
    logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    with svdprune.prune(model, processor, budget=64) as handle:
        torch.testing.assert_close(model(**inputs).logits, logits, **TOLERANCE)
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), generated)
        assert "positions='keep'" in repr(handle)
    assert torch.equal(model(**inputs).logits, logits)
    assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), generated)


def test_a_follow_up_turn_continues_the_pruned_cache(qwen, images):
    # positions="keep": the follow-up's positions continue from the first turn's, as unpruned.
    model, processor = qwen.model, qwen.processors["left"]
    inputs = encode(processor, images[1:], PROMPTS)
    text = {"input_ids": inputs.input_ids, "attention_mask": inputs.attention_mask}
    # mm_token_type_ids (transformers 5.x) lays out the first prompt only: the model derives it.
    visual = {key: value for key, value in inputs.items() if key not in (*text, "mm_token_type_ids")}
    with svdprune.prune(model, processor, budget=10, method="exact"):
        assert_a_follow_up_turn_continues_the_cache(model, processor.tokenizer, text, visual, TOLERANCE)

def test_pruned_generate_runs_the_vision_side_without_autograd(qwen, images):
    # As generate runs it without pruning; the handle then holds no graph, and the model copies.
    model, processor = qwen.model, qwen.processors["left"]
    inputs = encode(processor, images[:1], PROMPTS[:1])
    with torch.enable_grad(), svdprune.prune(model, processor, budget=16, source="vision") as handle:
        with OutputsRequireGrad(model.model.visual.merger) as merger:
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert merger.calls and not any(merger.calls)
        assert not any(v.features.requires_grad or v.scored.requires_grad for v in handle.last_visuals)
        copy.deepcopy(model)


def test_a_deep_copy_is_pruned_alike_by_a_handle_of_its_own(qwen, images):
    model, processor = qwen.model, qwen.processors["left"]
    inputs = encode(processor, images[1:], PROMPTS)
    unpruned = model(**inputs).logits
    with svdprune.prune(model, processor, budget=10) as handle:
        pruned = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        twin = copy.deepcopy(model)
        assert torch.equal(twin(**inputs).logits, pruned)
        assert torch.equal(twin.generate(**inputs, max_new_tokens=3, do_sample=False), generated)
        assert twin._svdprune_handle is not handle and twin._svdprune_handle.model is twin
        twin._svdprune_handle.remove()
        assert "forward" not in twin.__dict__ and "generate" not in twin.__dict__
        assert torch.equal(twin(**inputs).logits, unpruned)
        assert handle.active and torch.equal(model(**inputs).logits, pruned)


def test_bad_input_is_reported(qwen, images):
    model, processor = qwen.model, qwen.processors["left"]
    inputs = encode(processor, images[2:], PROMPTS[:1])
    tokens = int(inputs.image_grid_thw.prod()) // 4
    with pytest.raises(ValueError, match=r"positions must be one of \('keep',\) for Qwen.*3-D grid"):
        svdprune.prune(model, processor, positions="compact")
    with pytest.raises(ValueError, match="scope must be one of"):
        svdprune.prune(model, processor, scope="tile")
    with svdprune.prune(model, processor, budget=tokens + 1):
        with pytest.raises(ValueError, match=f"budget {tokens + 1} is larger than the {tokens} visual tokens"):
            model(**inputs)
        with pytest.raises(ValueError, match="needs image_grid_thw together with pixel_values"):
            model(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values)
        with pytest.raises(ValueError, match=r"pixel_values must be \[patches, channels \* temporal_patch_size"):
            model(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values[None], image_grid_thw=inputs.image_grid_thw)


# -- videos -------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["image", "video"])
def test_video_budget_per_frame_or_per_clip_and_the_masked_reference(qwen, clips, scope):
    model, processor, budget = qwen.model, qwen.processors["left"], 5
    inputs = tiny_models.qwen_video_inputs(processor, qwen.family, clips, VIDEO_PROMPTS)
    assert inputs.video_grid_thw[:, 0].tolist() == [2, 1]
    features = merged_tokens(model.model.get_video_features(inputs.pixel_values_videos, inputs.video_grid_thw))
    positions = unpruned_positions(model, inputs)
    with svdprune.prune(model, processor, budget=budget, method="exact", scope=scope) as handle:
        logits = model(**inputs).logits
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    for clip, mask in zip(features, handle.last_mask):
        frames = clip.view(-1, PER_FRAME, clip.shape[-1])
        if scope == "image":  # a merged frame is an image: each keeps its own budget
            chosen = svdprune_cuda.select(frames, budget, 0.9, method="exact")[0]
            chosen = (chosen + PER_FRAME * torch.arange(frames.shape[0])[:, None]).flatten()
        else:  # rank and leverage from the whole clip's tokens
            chosen = svdprune_cuda.select(clip[None], budget, 0.9, method="exact")[0][0]
        assert torch.equal(mask.nonzero().flatten(), chosen)
    keep = kept_positions(model, handle, inputs)
    reference = masked_logits(model, inputs, keep, positions)
    torch.testing.assert_close(logits[keep], reference[keep], **TOLERANCE)
    assert torch.equal(generated[:, inputs.input_ids.shape[1] :], masked_greedy(model, inputs, keep, positions, 3)[0])


def test_images_and_videos_in_one_prompt(qwen, images, clips):
    """Placeholders of both kinds in one prompt: each kind's features and masks in placeholder
    order, all at their positions."""
    model, processor = qwen.model, qwen.processors["left"]
    prompts = [f"USER: {QWEN_IMAGE}A picture, then a video: {QWEN_VIDEO}Describe both. ASSISTANT:", VIDEO_PROMPTS[1]]
    inputs = tiny_models.qwen_video_inputs(processor, qwen.family, clips[::-1], prompts, images=images[2:])
    positions = unpruned_positions(model, inputs)
    with svdprune.prune(model, processor, budget=6, method="exact") as handle:
        logits = model(**inputs).logits
    assert [int(mask.sum()) for mask in handle.last_mask] == [6, 6, 12]  # image, 1-patch video, 2-patch video
    keep = kept_positions(model, handle, inputs)
    reference = masked_logits(model, inputs, keep, positions)
    torch.testing.assert_close(logits[keep], reference[keep], **TOLERANCE)
