"""svdprune.prune on a tiny randomly initialised LLaVA-OneVision: anyres images and video.

112 px SigLIP crops of 14 px patches: 64 tokens per crop, up to four tiles; video frames pooled 2x2
to 16 tokens, one newline after each clip. Runs with transformers 5.x and 4.57.x
(scripts/test_transformers4.sh runs it against 4.57).
"""

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("skimage")

import svdprune  # noqa: E402
import svdprune_cuda  # noqa: E402
from helpers import encode  # noqa: E402
from svdprune.testing import models as tiny_models  # noqa: E402
from svdprune.testing.models import LanguageModelInputs, last_real_logits  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_grad")]

PER_FRAME = 16
PROMPTS = [
    "USER: <image>\nWhat is shown in this picture? Describe it in detail. ASSISTANT:",
    "USER: <image>\nWhat colour is it? ASSISTANT:",
]
VIDEO_PROMPTS = [
    "USER: <video>\nWhat happens in this video? ASSISTANT:",
    "USER: <video>\nDescribe it. ASSISTANT:",
]
TOLERANCE = dict(atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def images():
    from skimage import data

    return [data.astronaut(), data.coffee()[:150], data.chelsea()[:, :150]]


@pytest.fixture(scope="module")
def clips(images):
    from skimage import data

    return [[images[0], data.rocket(), images[1]], [images[2], images[0], data.rocket()]]


@pytest.fixture(scope="module")
def processors():
    return {side: tiny_models.build_onevision_processor(padding_side=side) for side in ("left", "right")}


@pytest.fixture(scope="module")
def model(processors):
    return tiny_models.build_onevision_model(processors["left"])


def pooled_output(output):
    """transformers 5.x returns model outputs with ``pooler_output``, 4.57 the features themselves."""
    output = getattr(output, "pooler_output", output)
    return output[0] if isinstance(output, tuple) else output


def hf_image_features(model, inputs):
    output = model.model.get_image_features(
        pixel_values=inputs.pixel_values, image_sizes=inputs.image_sizes, batch_num_images=inputs.get("batch_num_images")
    )
    return list(pooled_output(output))


def hf_video_features(model, inputs):
    """``[videos, frames * 16 + 1, H]``: pooled frames, then the newline (which 4.57 appends in forward)."""
    config = model.config
    features = pooled_output(
        model.get_video_features(
            inputs.pixel_values_videos,
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
        )
    )
    if features.shape[1] % PER_FRAME == 0:
        newline = model.model.image_newline[None, None].expand(features.shape[0], 1, -1)
        features = torch.cat([features, newline], dim=1)
    return features


def test_image_keeps_the_budget_over_base_view_and_tiles(model, processors, images):
    processor, budget = processors["left"], 40
    inputs = encode(processor, [images[1]], PROMPTS[:1])
    features = hf_image_features(model, inputs)[0]
    newline = (features == model.model.image_newline).all(-1)
    tokens = (~newline).nonzero().flatten()
    chosen = tokens[svdprune_cuda.select(features[tokens][None], budget, 0.9, method="exact")[0][0]]
    with svdprune.prune(model, processor, budget=budget, method="exact") as handle:
        with LanguageModelInputs(model) as seen:
            model(**inputs)
    mask = handle.last_mask[0]
    assert torch.equal((mask & ~newline).nonzero().flatten(), chosen)
    ids = inputs.input_ids[0]
    start = int((ids == model.config.image_token_id).nonzero()[0])
    kept = int(mask.sum())
    assert seen.embeds[0].shape[1] == ids.shape[0] - features.shape[0] + kept
    assert torch.equal(seen.embeds[0][0, start : start + kept], features[mask])


@pytest.mark.parametrize("newlines", ["all", "none"])
def test_newline_modes_of_images_and_videos(model, processors, images, clips, newlines):
    """The tokens "kept" keeps, with every newline ("all": budget + grid rows, the clip's one
    newline) or none ("none": exactly budget per image, per frame)."""
    processor, budget = processors["left"], 6
    image_inputs = encode(processor, [images[1]], PROMPTS[:1])
    video_inputs = tiny_models.video_inputs(processor, clips[:1], VIDEO_PROMPTS[:1])
    image_newline = (hf_image_features(model, image_inputs)[0] == model.model.image_newline).all(-1)
    assert image_newline.sum() > 1
    for inputs, newline, tokens in [(image_inputs, image_newline, budget), (video_inputs, None, 3 * budget)]:
        masks = {}
        for mode in ("kept", newlines):
            with svdprune.prune(model, processor, budget=budget, method="exact", newlines=mode) as handle:
                with LanguageModelInputs(model) as seen:
                    model(**inputs)
            masks[mode] = handle.last_mask[0]
        newline = handle.last_visuals[0].newline if newline is None else newline
        expected = masks["kept"] | newline if newlines == "all" else masks["kept"] & ~newline
        assert torch.equal(masks[newlines], expected)
        assert int(masks[newlines].sum()) == tokens + (int(newline.sum()) if newlines == "all" else 0)
        assert seen.embeds[0].shape[1] == inputs.input_ids.shape[1] - newline.shape[0] + int(masks[newlines].sum())
    assert bool(masks[newlines][-1]) == (newlines == "all")  # the video's newline ends the clip


def test_images_batched_match_each_prompt_alone(model, processors, images):
    processor = processors["right"]  # both padding sides: test_llava_next.py, and the videos below
    prompts = ["USER: <image>\n<image>\nCompare the two pictures. ASSISTANT:", PROMPTS[1]]
    groups = [[images[0], images[1]], [images[2]]]  # several images: base views only; one: tiles
    batch = encode(processor, groups, prompts)
    with svdprune.prune(model, processor, budget=24, method="exact") as handle:
        batch_logits = last_real_logits(model(**batch).logits, batch.attention_mask)
        lengths = [int(m.shape[0]) for m in handle.last_mask]
        assert lengths[:2] == [64 + 1, 64 + 1] and lengths[2] > 2 * 64  # base view and its newline
        for row, (group, prompt) in enumerate(zip(groups, prompts)):
            alone = model(**encode(processor, [group], [prompt])).logits[0, -1]
            torch.testing.assert_close(batch_logits[row], alone, **TOLERANCE)
        generated = model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert torch.equal(generated[:, : batch.input_ids.shape[1]], batch.input_ids)


@pytest.mark.parametrize("scope", ["image", "video"])
def test_video_budget_per_frame_or_per_clip(model, processors, clips, scope):
    processor, budget = processors["left"], 6
    inputs = tiny_models.video_inputs(processor, clips[:1], VIDEO_PROMPTS[:1])
    features = hf_video_features(model, inputs)[0]
    frames = features[:-1].view(3, PER_FRAME, -1)
    if scope == "image":  # a frame is an image: each keeps its own budget
        chosen = svdprune_cuda.select(frames, budget, 0.9, method="exact")[0]
        chosen = (chosen + PER_FRAME * torch.arange(3)[:, None]).flatten()
    else:  # rank and leverage from the whole clip's tokens
        chosen = svdprune_cuda.select(features[None, :-1], budget, 0.9, method="exact")[0][0]
    with svdprune.prune(model, processor, budget=budget, method="exact", scope=scope) as handle:
        with LanguageModelInputs(model) as seen:
            model(**inputs)
    mask = handle.last_mask[0]
    assert torch.equal(mask[:-1].nonzero().flatten(), chosen)
    assert bool(mask[-1])  # the clip's newline stays
    ids = inputs.input_ids[0]
    start = int((ids == model.config.video_token_id).nonzero()[0])
    kept = chosen.shape[0] + 1
    assert seen.embeds[0].shape[1] == ids.shape[0] - features.shape[0] + kept
    assert torch.equal(seen.embeds[0][0, start : start + kept], features[mask])


def test_videos_batched_match_each_prompt_alone(model, processors, clips):
    processor = processors["left"]
    batch = tiny_models.video_inputs(processor, clips, VIDEO_PROMPTS)
    assert (batch.attention_mask == 0).any()
    unpruned = model(**batch).logits
    with svdprune.prune(model, processor, budget=4, method="exact", source="vision") as handle:
        output = model(**batch).logits
        assert output.shape == unpruned.shape
        batch_logits = last_real_logits(output, batch.attention_mask)
        assert handle.last_mask.shape == (2, 3 * PER_FRAME + 1) and (handle.last_mask.sum(1) == 3 * 4 + 1).all()
        for row in range(2):
            alone = model(**tiny_models.video_inputs(processor, clips[row : row + 1], VIDEO_PROMPTS[row : row + 1]))
            torch.testing.assert_close(batch_logits[row], alone.logits[0, -1], **TOLERANCE)
        generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert generated.shape == (2, batch.input_ids.shape[1] + 3)
    assert torch.equal(generated[:, : batch.input_ids.shape[1]], batch.input_ids)
    assert torch.equal(model(**batch).logits, unpruned)  # removed: the model is as before


def test_adaptive_video_and_bad_input(model, processors, clips):
    processor = processors["left"]
    inputs = tiny_models.video_inputs(processor, clips[:1], VIDEO_PROMPTS[:1])
    features = hf_video_features(model, inputs)[0]
    counts = svdprune_cuda.select_adaptive(features[:-1].view(3, PER_FRAME, -1), 0.9, method="exact")[1]
    with svdprune.prune(model, processor, budget=None, method="exact") as handle:
        model(**inputs)
        assert torch.equal(handle.last_mask[0, :-1].view(3, PER_FRAME).sum(1), counts)
    with svdprune.prune(model, processor, budget=PER_FRAME + 1):
        with pytest.raises(ValueError, match="budget 17 is larger than the 16 visual tokens"):
            model(**inputs)
    with svdprune.prune(model, processor, budget=3 * PER_FRAME, scope="video"):
        model(**inputs)  # the clip's 48 tokens share the budget: allowed
    with svdprune.prune(model, processor, budget=4):
        with pytest.raises(ValueError, match="video tokens do not match"):
            model(input_ids=inputs.input_ids[:, 5:], pixel_values_videos=inputs.pixel_values_videos)
        with pytest.raises(ValueError, match=r"pixel_values_videos must be \[videos, frames, channels, height, width\]"):
            model(input_ids=inputs.input_ids, pixel_values_videos=inputs.pixel_values_videos[0])
