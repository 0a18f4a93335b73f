"""svdprune.prune on a tiny randomly initialised LLaVA-NeXT (anyres: base view plus tiles, row newlines).

112 px crops of 14 px patches: 64 tokens per crop, up to four tiles. Runs with transformers 5.x and
4.57.x (scripts/test_transformers4.sh runs it against 4.57).
"""

import copy

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("skimage")

import svdprune  # noqa: E402
import svdprune_cuda  # noqa: E402
from helpers import OutputsRequireGrad, assert_a_follow_up_turn_continues_the_cache, encode  # noqa: E402
from svdprune.testing import models as tiny_models  # noqa: E402
from svdprune.testing.models import LanguageModelInputs, last_real_logits  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_grad")]

PER_CROP = 64
PROMPTS = [
    "USER: <image>\nWhat is shown in this picture? Describe it in detail. ASSISTANT:",
    "USER: <image>\nWhat colour is it? ASSISTANT:",
]
TOLERANCE = dict(atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def images():
    from skimage import data

    # Square (2 x 2 tiles), wide (1 x 3 tiles, unpadded rows) and tall (2 x 1 tiles) images.
    return [data.astronaut(), data.coffee()[:150], data.chelsea()[:, :150]]


@pytest.fixture(scope="module")
def processors():
    return {side: tiny_models.build_next_processor(padding_side=side) for side in ("left", "right")}


@pytest.fixture(scope="module")
def model(processors):
    return tiny_models.build_next_model(processors["left"])


def hf_image_features(model, inputs):
    """Per image, ``[L, H]``: what transformers' own code scatters into its L placeholders."""
    output = model.model.get_image_features(pixel_values=inputs.pixel_values, image_sizes=inputs.image_sizes)
    output = getattr(output, "pooler_output", output)
    return list(output[0] if isinstance(output, tuple) else output)


def newline_positions(model, features):
    """``[L]`` bool: the placeholders holding the model's image_newline."""
    return (features == model.model.image_newline.to(features.dtype)).all(-1)


def expected_kept(features, newline, budget):
    """Kept placeholders: the top-``budget`` tokens by the exact op, and the newline of every row
    (the tokens after the 64-token base view, up to and including a newline) that keeps one."""
    tokens = (~newline).nonzero().flatten()
    chosen = svdprune_cuda.select(features[tokens][None], budget, 0.9, method="exact")[0][0]
    kept = torch.zeros_like(newline)
    kept[tokens[chosen]] = True
    row = newline.long().cumsum(0) - newline.long()
    for position in newline.nonzero().flatten():
        in_row = (row == row[position]) & ~newline
        in_row[:PER_CROP] = False
        kept[position] = bool(kept[in_row].any())
    return kept


def test_images_of_different_sizes_have_different_tile_counts(model, processors, images):
    inputs = encode(processors["left"], images, [PROMPTS[0]] * 3)
    counts = (inputs.input_ids == model.config.image_token_id).sum(1)
    assert len(set(counts.tolist())) == 3
    features = hf_image_features(model, inputs)
    assert [f.shape[0] for f in features] == counts.tolist()


@pytest.mark.slow
@pytest.mark.parametrize("image_index", [1])
def test_full_budget_is_identical(model, processors, images, image_index):
    processor = processors["left"]
    inputs = encode(processor, [images[image_index]], PROMPTS[:1])
    features = hf_image_features(model, inputs)[0]
    everything = int((~newline_positions(model, features)).sum())
    logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    with svdprune.prune(model, processor, budget=everything, method="exact"):
        assert torch.equal(model(**inputs).logits, logits)
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), generated)


@pytest.mark.parametrize("image_index, strategy", [(0, "leverage"), (1, "leverage"), (2, "pivoted")])
def test_language_model_receives_the_kept_tokens_and_their_rows_newlines(model, processors, images, image_index, strategy):
    processor, budget = processors["left"], 40
    inputs = encode(processor, [images[image_index]], PROMPTS[:1])
    features = hf_image_features(model, inputs)[0]
    newline = newline_positions(model, features)
    assert newline.sum() > 1  # one per row of the tile grid

    with svdprune.prune(model, processor, budget=budget, method="exact", strategy=strategy) as handle:
        with LanguageModelInputs(model) as seen:
            model(**inputs)
    mask = handle.last_mask[0]
    if strategy == "leverage":
        assert torch.equal(mask, expected_kept(features, newline, budget))
    assert int((mask & ~newline).sum()) == budget
    # A newline survives exactly when its row keeps a token (the base view has no newline).
    row = newline.long().cumsum(0) - newline.long()
    for position in newline.nonzero().flatten():
        in_row = (row == row[position]) & ~newline
        in_row[:PER_CROP] = False
        assert bool(mask[position]) == bool(mask[in_row].any())

    ids = inputs.input_ids[0]
    slots = (ids == model.config.image_token_id).nonzero().flatten()
    start, end = int(slots[0]), int(slots[-1]) + 1
    embeds = seen.embeds[0][0]
    text = model.get_input_embeddings()(ids)
    kept = int(mask.sum())
    assert embeds.shape[0] == ids.shape[0] - features.shape[0] + kept
    assert torch.equal(embeds[:start], text[:start])
    assert torch.equal(embeds[start : start + kept], features[mask])  # in the model's order
    assert torch.equal(embeds[start + kept :], text[end:])


@pytest.mark.parametrize("scope", ["image", "tile"])
def test_newline_modes_keep_the_same_tokens_at_fixed_counts(model, processors, images, scope):
    """"all": every row's newline, an image costs budget + grid rows; "none": exactly budget; the
    scored tokens kept are the same in every mode."""
    processor, budget = processors["left"], 12
    for image in images:
        inputs = encode(processor, [image], PROMPTS[:1])
        features = hf_image_features(model, inputs)[0]
        newline = newline_positions(model, features)
        masks = {}
        for newlines in ("kept", "all", "none"):
            with svdprune.prune(model, processor, budget=budget, scope=scope, method="exact", newlines=newlines) as handle:
                with LanguageModelInputs(model) as seen:
                    model(**inputs)
            masks[newlines] = mask = handle.last_mask[0]
            ids = inputs.input_ids[0]
            start = int((ids == model.config.image_token_id).nonzero()[0])
            kept = int(mask.sum())
            assert seen.embeds[0].shape[1] == ids.shape[0] - features.shape[0] + kept
            assert torch.equal(seen.embeds[0][0, start : start + kept], features[mask])
        groups = 1 if scope == "image" else len(set((handle.last_visuals[0].sources[~newline] // PER_CROP).tolist()))
        assert torch.equal(masks["all"], masks["kept"] | newline)
        assert torch.equal(masks["none"], masks["kept"] & ~newline)
        assert int(masks["all"].sum()) == groups * budget + int(newline.sum())
        assert int(masks["none"].sum()) == groups * budget


def test_tile_scope_keeps_the_budget_in_the_base_view_and_in_every_tile(model, processors, images):
    processor, budget = processors["left"], 12
    inputs = encode(processor, [images[0]], PROMPTS[:1])
    features = hf_image_features(model, inputs)[0]
    newline = newline_positions(model, features)
    with svdprune.prune(model, processor, budget=budget, scope="tile", method="exact") as handle:
        with LanguageModelInputs(model) as seen:
            model(**inputs)
    visual, mask = handle.last_visuals[0], handle.last_mask[0]
    tile = visual.sources // PER_CROP
    assert torch.equal(visual.newline, newline)
    assert tile[:PER_CROP].eq(0).all() and set(tile[~newline].tolist()) == {0, 1, 2, 3, 4}
    for t in range(5):
        in_tile = (tile == t) & ~newline
        assert int(mask[in_tile].sum()) == budget
        chosen = svdprune_cuda.select(features[in_tile][None], budget, 0.9, method="exact")[0][0]
        assert torch.equal(mask[in_tile].nonzero().flatten(), chosen)
    assert seen.embeds[0].shape[1] == inputs.input_ids.shape[1] - features.shape[0] + int(mask.sum())


@pytest.mark.parametrize("padding_side, budget", [("left", 24), pytest.param("right", None, marks=pytest.mark.slow)])
def test_padded_batch_of_different_sizes_matches_each_prompt_alone(model, processors, images, padding_side, budget):
    processor = processors[padding_side]
    batch = encode(processor, images[1:], PROMPTS)
    assert (batch.attention_mask == 0).any()
    with svdprune.prune(model, processor, budget=budget, method="exact", source="vision") as handle:
        batch_logits = last_real_logits(model(**batch).logits, batch.attention_mask)
        batch_masks = handle.last_mask
        for row, (image, prompt) in enumerate(zip(images[1:], PROMPTS)):
            alone = model(**encode(processor, [image], [prompt])).logits[0, -1]
            assert torch.equal(handle.last_mask[0], batch_masks[row])
            torch.testing.assert_close(batch_logits[row], alone, **TOLERANCE)
        generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert generated.shape == (2, batch.input_ids.shape[1] + 3)
    assert torch.equal(generated[:, : batch.input_ids.shape[1]], batch.input_ids)
    if padding_side == "left":
        assert torch.equal(generated[:, batch.input_ids.shape[1]], batch_logits.argmax(-1))


def test_text_only_rows_and_several_images_per_prompt(model, processors, images):
    processor = processors["left"]
    prompts = ["USER: <image>\n<image>\nCompare the two pictures. ASSISTANT:", "USER: hello, how are you? ASSISTANT:", PROMPTS[1]]
    groups = [[images[0], images[1]], [], [images[2]]]
    batch = encode(processor, [image for group in groups for image in group], prompts)
    features = hf_image_features(model, batch)
    with svdprune.prune(model, processor, budget=16, method="exact") as handle:
        with LanguageModelInputs(model) as seen:
            batch_logits = last_real_logits(model(**batch).logits, batch.attention_mask)
        masks = handle.last_mask
        assert len(masks) == 3 and [int(m.sum()) for m in masks] == [
            16 + int(m[newline_positions(model, f)].sum()) for m, f in zip(masks, features)
        ]
        # Row 0 holds images 0 and 1 in that order, each with its own kept tokens: image 0's
        # start after the row's new padding and the text before the first placeholder.
        embeds, row = seen.embeds[0][0], batch.input_ids[0][batch.attention_mask[0].bool()]
        prefix = int((row == model.config.image_token_id).nonzero()[0])
        shortened = row.shape[0] - features[0].shape[0] - features[1].shape[0] + int(masks[0].sum() + masks[1].sum())
        first = embeds.shape[0] - shortened + prefix
        kept_0 = features[0][masks[0]]
        assert torch.equal(embeds[first : first + kept_0.shape[0]], kept_0)
        for row, (group, prompt) in enumerate(zip(groups, prompts)):
            alone = model(**encode(processor, group or None, [prompt])).logits[0, -1]
            torch.testing.assert_close(batch_logits[row], alone, **TOLERANCE)
        generated = model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert torch.equal(generated[:, : batch.input_ids.shape[1]], batch.input_ids)


def test_outputs_follow_the_callers_layout_and_remove_restores(model, processors, images):
    processor = processors["right"]
    inputs = encode(processor, images[1:], PROMPTS)
    before = model(**inputs).logits
    calls = []
    hook = model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    try:
        with svdprune.prune(model, processor, budget=8) as handle:
            output = model(**inputs)
            assert output.logits.shape == before.shape
            assert (output.logits[inputs.attention_mask == 0] == 0).all()
            assert torch.equal(model(**inputs, logits_to_keep=1).logits, output.logits[:, -1:])
            calls.clear()
            generated = model.generate(**inputs, max_new_tokens=2, do_sample=False)
            assert len(calls) == 1  # the images are encoded once, for the selection
            assert torch.equal(generated[:, : inputs.input_ids.shape[1]], inputs.input_ids)
            assert "LLaVA-NeXT" in repr(handle)
    finally:
        hook.remove()
    assert not handle.active
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert torch.equal(model(**inputs).logits, before)


def test_pruned_generate_runs_the_vision_side_without_autograd(model, processors, images):
    # As generate runs it without pruning; the handle then holds no graph, and the model copies.
    processor = processors["left"]
    inputs = encode(processor, images[:1], PROMPTS[:1])
    with torch.enable_grad(), svdprune.prune(model, processor, budget=16, source="vision") as handle:
        with OutputsRequireGrad(model.model.multi_modal_projector) as projector:
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert projector.calls == [False]
        assert not any(v.features.requires_grad or v.scored.requires_grad for v in handle.last_visuals)
        copy.deepcopy(model)


def test_a_deep_copy_is_pruned_alike_by_a_handle_of_its_own(model, processors, images):
    processor = processors["left"]
    inputs = encode(processor, images[:1], PROMPTS[:1])
    unpruned = model(**inputs).logits
    with svdprune.prune(model, processor, budget=16) as handle:
        pruned = model(**inputs).logits
        twin = copy.deepcopy(model)
        assert torch.equal(twin(**inputs).logits, pruned)
        assert twin._svdprune_handle is not handle and twin._svdprune_handle.model is twin
        twin._svdprune_handle.remove()
        assert "forward" not in twin.__dict__ and "generate" not in twin.__dict__
        assert torch.equal(twin(**inputs).logits, unpruned)
        assert handle.active and torch.equal(model(**inputs).logits, pruned)


def test_a_follow_up_turn_continues_the_pruned_cache(model, processors, images):
    processor = processors["left"]
    inputs = encode(processor, images[:2], PROMPTS[:2])
    text = {"input_ids": inputs.input_ids, "attention_mask": inputs.attention_mask}
    visual = {key: value for key, value in inputs.items() if key not in text}
    with svdprune.prune(model, processor, budget=16, method="exact"):
        assert_a_follow_up_turn_continues_the_cache(model, processor.tokenizer, text, visual, dict(atol=2e-5, rtol=1e-4))

def test_bad_input_is_reported(model, processors, images):
    processor = processors["left"]
    inputs = encode(processor, [images[2]], PROMPTS[:1])  # 2 x 1 tiles, 64 + 128 tokens at most
    features = hf_image_features(model, inputs)[0]
    tokens = int((~newline_positions(model, features)).sum())
    with svdprune.prune(model, processor, budget=tokens + 1):
        with pytest.raises(ValueError, match=f"budget {tokens + 1} is larger than the {tokens} visual tokens"):
            model(**inputs)
    with svdprune.prune(model, processor, budget=PER_CROP + 1, scope="tile"):
        with pytest.raises(ValueError, match="budget 65 is larger"):
            model(**inputs)
    with svdprune.prune(model, processor, budget=16):
        without_sizes = {k: v for k, v in inputs.items() if k != "image_sizes"}
        with pytest.raises(ValueError, match="image_sizes"):
            model(**without_sizes)
        with pytest.raises(ValueError, match="image_sizes"):
            model.generate(**without_sizes, max_new_tokens=1)
        with pytest.raises(ValueError, match=r"LLaVA-NeXT: pixel_values must be \[images, crops, channels, height, "
                           r"width\] or \[crops, channels, height, width\]"):
            model(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values[0, 0], image_sizes=inputs.image_sizes)
    with pytest.raises(ValueError, match="scope"):
        svdprune.prune(model, scope="video")
    with pytest.raises(ValueError, match="budget"):
        svdprune.prune(model, budget=0)
    with pytest.raises(ValueError, match=r"newlines must be one of \('kept', 'all', 'none'\) for LLaVA-NeXT"):
        svdprune.prune(model, newlines="rows")
    assert "forward" not in model.__dict__


def test_unsupported_models_are_named():
    with pytest.raises(TypeError, match="LlavaForConditionalGeneration, LlavaNextForConditionalGeneration, "
                       "LlavaOnevisionForConditionalGeneration, Qwen2_5_VLForConditionalGeneration, "
                       "Qwen2VLForConditionalGeneration, Qwen3VLForConditionalGeneration; got Linear"):
        svdprune.prune(torch.nn.Linear(2, 2))
