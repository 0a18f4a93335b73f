"""svdprune.llava on a tiny randomly initialised LLaVA-1.5 (real 336 px / 14 px geometry: 576 tokens).

Runs with transformers 5.x and 4.57.x (scripts/test_transformers4.sh runs it against 4.57).
"""

import copy
import time

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("skimage")

import svdprune_cuda  # noqa: E402
from svdprune import llava  # noqa: E402
from svdprune.integrations import handle as handle_module  # noqa: E402
from helpers import (  # noqa: E402
    OutputsRequireGrad,
    assert_a_follow_up_turn_continues_the_cache,
    RecordingStreamer,
    encode,
    kept_layout,
    masked_greedy,
    masked_logits,
)
from svdprune.testing import models as tiny_models  # noqa: E402
from svdprune.testing.models import LanguageModelInputs, last_real_logits  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_grad")]
# The bfloat16 cases repeat the float32 ones at the precision of most checkpoints.
BFLOAT16 = pytest.param(torch.bfloat16, marks=pytest.mark.slow)

N = 576
PROMPTS = [
    "USER: <image>\nWhat is shown in this picture? Describe it in detail. ASSISTANT:",
    "USER: <image>\nWhat colour is it? ASSISTANT:",
]
TOLERANCE = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.bfloat16: dict(atol=3e-2, rtol=3e-2)}


@pytest.fixture(scope="module")
def images():
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee()]


@pytest.fixture(scope="module")
def processors():
    return {side: tiny_models.build_processor(padding_side=side) for side in ("left", "right")}


@pytest.fixture(scope="module")
def models(processors):
    model = tiny_models.build_model(processors["left"])
    return {torch.float32: model, torch.bfloat16: tiny_models.build_model(processors["left"], dtype=torch.bfloat16)}


def hf_projected_features(model, pixel_values):
    """[images, 576, H] through transformers' own get_image_features (list in 4.57, output in 5.x)."""
    output = model.model.get_image_features(pixel_values=pixel_values)
    return torch.stack(list(getattr(output, "pooler_output", output)))


def vision_features(model, pixel_values):
    """[images, 576, D]: CLIP penultimate layer without CLS, what LLaVA-1.5's projector reads."""
    hidden_states = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    return hidden_states[model.config.vision_feature_layer][:, 1:]


# -- budget 576 changes nothing -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, BFLOAT16])
def test_full_budget_is_identical(models, processors, images, dtype):
    model, processor = models[dtype], processors["left"]
    inputs = encode(processor, images[:2], PROMPTS)
    logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    with llava.prune(model, processor, budget=N, method="exact"):
        assert torch.equal(model(**inputs).logits, logits)
        assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), generated)


@pytest.mark.slow
def test_full_budget_vision_source_matches(models, processors, images):
    model, processor = models[torch.float32], processors["left"]
    inputs = encode(processor, images[:2], PROMPTS)
    logits = model(**inputs).logits
    with llava.prune(model, processor, budget=N, source="vision"):
        torch.testing.assert_close(model(**inputs).logits, logits, **TOLERANCE[torch.float32])


# -- the language model receives exactly the selected projected features ------------------------


@pytest.mark.parametrize("dtype", [torch.float32, BFLOAT16])
@pytest.mark.parametrize("source", ["projector", "vision"])
@pytest.mark.parametrize("method,strategy", [("exact", "leverage"), ("randomized", "leverage"), ("exact", "pivoted")])
def test_language_model_receives_selected_features(models, processors, images, dtype, source, method, strategy):
    model, processor = models[dtype], processors["left"]
    budget = 32
    inputs = encode(processor, images[:1], PROMPTS[:1])
    ids = inputs.input_ids[0]
    start = int((ids == model.config.image_token_id).nonzero()[0])

    projected = hf_projected_features(model, inputs.pixel_values)
    scored = projected if source == "projector" else vision_features(model, inputs.pixel_values)
    indices = svdprune_cuda.select(scored, budget, 0.9, method=method, strategy=strategy)[0][0]
    expected = projected[0, indices]  # whatever the source, HF's own projected features of the kept tokens

    with llava.prune(model, processor, budget=budget, method=method, source=source, strategy=strategy) as handle:
        with LanguageModelInputs(model) as seen:
            model(**inputs)
    embeds = seen.embeds[0][0]
    text = model.get_input_embeddings()(ids)

    assert torch.equal(handle.last_mask[0].nonzero().flatten(), indices)
    assert embeds.shape[0] == ids.shape[0] - (N - budget)
    assert torch.equal(embeds[:start], text[:start])
    assert torch.equal(embeds[start : start + budget], expected)  # row by row, in token order
    assert torch.equal(embeds[start + budget :], text[start + N :])


def test_generate_encodes_each_image_once(models, processors, images):
    # transformers 5.x encodes images before prefill; pruning must not run the tower twice or
    # let the unpruned features reach the language model.
    model, processor = models[torch.float32], processors["left"]
    inputs = encode(processor, images[:2], PROMPTS)
    calls = []
    hook = model.model.vision_tower.register_forward_hook(lambda *args: calls.append(1))
    try:
        with llava.prune(model, processor, budget=16), LanguageModelInputs(model) as seen:
            output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    finally:
        hook.remove()
    assert len(calls) == 1
    prefill = seen.embeds[0]
    assert prefill.shape[1] == inputs.input_ids.shape[1] - (N - 16)
    assert all(step.shape[1] == 1 for step in seen.embeds[1:])
    # The caller's prompt comes back, followed by the new tokens.
    assert output.shape == (2, inputs.input_ids.shape[1] + 3)
    assert torch.equal(output[:, : inputs.input_ids.shape[1]], inputs.input_ids)


def test_selection_seconds_time_the_selection_alone(models, processors, images, monkeypatch):
    model, processor = models[torch.float32], processors["left"]
    inputs = encode(processor, images[:1], PROMPTS[:1])
    select = handle_module.select_placeholders
    monkeypatch.setattr(handle_module, "select_placeholders", lambda *args, **kwargs: (time.sleep(0.1), select(*args, **kwargs))[1])
    slow_tower = model.model.vision_tower.register_forward_hook(lambda *args: time.sleep(0.5))
    try:
        with llava.prune(model, processor, budget=16) as handle:
            assert handle.selection_seconds == 0
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
            model(**inputs)
            model(**processor.tokenizer(["USER: hello ASSISTANT:"], return_tensors="pt"))  # no image, no selection
    finally:
        slow_tower.remove()
    # Two selections of 0.1 s each and more, without the 0.5 s the tower takes each time.
    assert 0.2 <= handle.selection_seconds < 1.0


# -- padded batches, several images, adaptive mode ----------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, BFLOAT16])
@pytest.mark.parametrize("padding_side", ["left", pytest.param("right", marks=pytest.mark.slow)])
@pytest.mark.parametrize("budget", [32, pytest.param(None, marks=pytest.mark.slow)])
def test_padded_batch_matches_each_prompt_alone(models, processors, images, dtype, padding_side, budget):
    model, processor = models[dtype], processors[padding_side]
    batch = encode(processor, images[:2], PROMPTS)
    assert (batch.attention_mask == 0).any()
    with llava.prune(model, processor, budget=budget, method="exact") as handle:
        batch_logits = last_real_logits(model(**batch).logits, batch.attention_mask)
        batch_mask = handle.last_mask
        for row, (image, prompt) in enumerate(zip(images[:2], PROMPTS)):
            alone = model(**encode(processor, [image], [prompt])).logits[0, -1]
            assert torch.equal(handle.last_mask[0], batch_mask[row])
            torch.testing.assert_close(batch_logits[row], alone, **TOLERANCE[dtype])
        generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert generated.shape == (2, batch.input_ids.shape[1] + 3)
    assert torch.equal(generated[:, : batch.input_ids.shape[1]], batch.input_ids)
    if padding_side == "left" and dtype == torch.float32:
        # Greedy's first token is the argmax of the logits just compared (later tokens may flip
        # between near-tied logits of a random model).
        assert torch.equal(generated[:, batch.input_ids.shape[1]], batch_logits.argmax(-1))
    if budget is None:
        assert ((batch_mask.sum(1) >= 1) & (batch_mask.sum(1) <= N)).all()


def test_adaptive_keeps_select_adaptive_tokens(models, processors, images):
    model, processor = models[torch.float32], processors["left"]
    inputs = encode(processor, images[:2], PROMPTS)
    projected = hf_projected_features(model, inputs.pixel_values)
    mask, count = svdprune_cuda.select_adaptive(projected, 0.5, method="exact")[:2]
    assert count[0] != count[1]  # the two images keep different numbers of tokens
    with llava.prune(model, processor, budget=None, variance=0.5, method="exact") as handle:
        with LanguageModelInputs(model) as seen:
            model(**inputs)
    assert torch.equal(handle.last_mask, mask)
    embeds = seen.embeds[0]
    lengths = inputs.attention_mask.sum(1) - N + count
    assert embeds.shape[1] == int(lengths.max())
    for row in range(2):
        start = int(embeds.shape[1] - lengths[row])  # left padding
        ids = inputs.input_ids[row, inputs.attention_mask[row].bool()]
        offset = int((ids == model.config.image_token_id).nonzero()[0])
        placed = embeds[row, start + offset : start + offset + count[row]]
        assert torch.equal(placed, projected[row, mask[row]])


@pytest.mark.parametrize("source,budget", [("projector", 32), pytest.param("vision", None, marks=pytest.mark.slow)])
def test_training_mode_with_gradients(models, processors, images, source, budget):
    # A model in train() mode outside no_grad: the selection is the one made in eval mode, takes
    # no gradient, and the backward pass reaches the language model and the projector.
    model, processor = models[torch.float32], processors["left"]
    inputs = encode(processor, images[:2], PROMPTS)
    with llava.prune(model, processor, budget=budget, source=source) as handle:
        model(**inputs)
        eval_mask = handle.last_mask
        model.train()
        try:
            with torch.enable_grad():
                logits = model(**inputs).logits
                assert logits.requires_grad
                logits.square().mean().backward()
        finally:
            model.eval()
        assert torch.equal(handle.last_mask, eval_mask) and not handle.last_mask.requires_grad
        assert not any(v.features.requires_grad or v.scored.requires_grad for v in handle.last_visuals)
    try:
        for part in (model.model.language_model, model.model.multi_modal_projector):
            grads = [p.grad for p in part.parameters()]
            assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    finally:
        model.zero_grad(set_to_none=True)


def test_pruned_generate_runs_the_vision_side_without_autograd(models, processors, images):
    # As generate runs it without pruning; the handle then holds no graph, and the model copies.
    model, processor = models[torch.float32], processors["left"]
    inputs = encode(processor, images[:1], PROMPTS[:1])
    with torch.enable_grad(), llava.prune(model, processor, budget=16) as handle:
        with OutputsRequireGrad(model.model.multi_modal_projector) as projector:
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert projector.calls == [False]
        assert not any(v.features.requires_grad or v.scored.requires_grad for v in handle.last_visuals)
        copy.deepcopy(model)


@pytest.mark.slow
def test_several_images_per_prompt(models, processors, images):
    model, processor = models[torch.float32], processors["left"]
    prompts = ["USER: <image>\n<image>\nCompare the two pictures. ASSISTANT:", PROMPTS[1]]
    nested = [[images[0], images[1]], [images[2]]]
    batch = encode(processor, nested, prompts)
    assert batch.pixel_values.shape[0] == 3
    projected = hf_projected_features(model, batch.pixel_values)
    indices = svdprune_cuda.select(projected, 16, method="exact")[0]
    with llava.prune(model, processor, budget=16, method="exact") as handle:
        with LanguageModelInputs(model) as seen:
            batch_logits = last_real_logits(model(**batch).logits, batch.attention_mask)
        assert handle.last_mask.shape == (3, N)
        # Row 0 holds images 0 and 1, in that order, each with its own kept tokens.
        ids = batch.input_ids[0]
        first = int((ids == model.config.image_token_id).nonzero()[0])
        assert torch.equal(seen.embeds[0][0, first : first + 16], projected[0, indices[0]])
        assert torch.equal(seen.embeds[0][0, first + 17 : first + 33], projected[1, indices[1]])  # "\n" between
        for row, (image_group, prompt) in enumerate(zip(nested, prompts)):
            alone = model(**encode(processor, image_group, [prompt])).logits[0, -1]
            torch.testing.assert_close(batch_logits[row], alone, **TOLERANCE[torch.float32])
        generated = model.generate(**batch, max_new_tokens=2, do_sample=False)
    assert torch.equal(generated[:, : batch.input_ids.shape[1]], batch.input_ids)


# -- the rest of the forward contract -------------------------------------------------------------


@pytest.mark.slow
def test_forward_outputs_follow_the_callers_layout(models, processors, images):
    model, processor = models[torch.float32], processors["right"]
    inputs = encode(processor, images[:2], PROMPTS)
    labels = inputs.input_ids.masked_fill(inputs.input_ids == model.config.image_token_id, -100)
    labels = labels.masked_fill(inputs.attention_mask == 0, -100)
    unpruned = model(**inputs, labels=labels)
    with llava.prune(model, processor, budget=N, method="exact"):
        same = model(**inputs, labels=labels)
        assert torch.equal(same.logits, unpruned.logits * inputs.attention_mask[..., None])
        torch.testing.assert_close(same.loss, unpruned.loss)
    with llava.prune(model, processor, budget=8):
        output = model(**inputs, labels=labels)
        assert output.logits.shape == unpruned.logits.shape
        assert torch.isfinite(output.loss)
        last = model(**inputs, logits_to_keep=1).logits
        assert torch.equal(last, output.logits[:, -1:])
        as_tuple = model(**inputs, return_dict=False)
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], output.logits)
        with pytest.raises(ValueError, match="position_ids"):
            model(**inputs, position_ids=torch.zeros_like(inputs.input_ids))
    # Calls without images go straight through.
    text_only = processor.tokenizer(["USER: hello ASSISTANT:"], return_tensors="pt")
    with llava.prune(model, processor, budget=8):
        pruned_text = model(**text_only).logits
    assert torch.equal(pruned_text, model(**text_only).logits)


def test_a_follow_up_turn_continues_the_pruned_cache(models, processors, images):
    model, processor = models[torch.float32], processors["left"]
    inputs = encode(processor, images[:2], PROMPTS)
    with llava.prune(model, processor, budget=16, method="exact"):
        assert_a_follow_up_turn_continues_the_cache(
            model, processor.tokenizer, {"input_ids": inputs.input_ids, "attention_mask": inputs.attention_mask},
            {"pixel_values": inputs.pixel_values}, TOLERANCE[torch.float32],
        )

def test_remove_restores_the_model(models, processors, images):
    model, processor = models[torch.float32], processors["left"]
    inputs = encode(processor, images[:1], PROMPTS[:1])
    before = model(**inputs).logits
    handle = llava.prune(model, processor, budget=16)
    assert model(**inputs).logits.shape == before.shape
    assert not torch.equal(model(**inputs).logits, before)
    with pytest.raises(RuntimeError, match="already pruned"):
        llava.prune(model, processor, budget=16)
    handle.remove()
    handle.remove()
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert torch.equal(model(**inputs).logits, before)
    with llava.prune(model, budget=16) as handle:
        assert handle.active
    assert not handle.active
    assert torch.equal(model(**inputs).logits, before)


def test_entering_a_removed_handle_installs_it_again(models, processors, images):
    model, processor = models[torch.float32], processors["left"]
    inputs = encode(processor, images[:1], PROMPTS[:1])
    unpruned = model(**inputs).logits
    handle = llava.prune(model, processor, budget=16)
    pruned = model(**inputs).logits
    handle.remove()
    with handle:
        assert handle.active
        assert torch.equal(model(**inputs).logits, pruned)
    assert not handle.active and "forward" not in model.__dict__
    assert torch.equal(model(**inputs).logits, unpruned)
    with llava.prune(model, processor, budget=8) as other:
        with pytest.raises(RuntimeError, match="already pruned"):
            with handle:
                pass
        assert model._svdprune_handle is other and not handle.active


def test_a_deep_copy_is_pruned_alike_by_a_handle_of_its_own(models, processors, images):
    model, processor = models[torch.float32], processors["left"]
    inputs = encode(processor, images[:1], PROMPTS[:1])
    unpruned = model(**inputs).logits
    with llava.prune(model, processor, budget=16) as handle:
        pruned = model(**inputs).logits
        twin = copy.deepcopy(model)
        with LanguageModelInputs(model) as seen, OutputsRequireGrad(model.model.vision_tower) as tower:
            assert torch.equal(twin(**inputs).logits, pruned)
        assert not seen.calls and not tower.calls  # the copy runs its own modules
        twin_handle = twin._svdprune_handle
        assert twin_handle is not handle and twin_handle.model is twin
        twin_handle.remove()
        assert "forward" not in twin.__dict__ and "generate" not in twin.__dict__
        assert torch.equal(twin(**inputs).logits, unpruned)
        with llava.prune(twin, processor, budget=8) as again:
            twin(**inputs)
            assert again.last_mask.sum().item() == 8
        assert handle.active and torch.equal(model(**inputs).logits, pruned)


def test_a_streamer_receives_the_callers_prompt(models, processors, images):
    model, processor = models[torch.float32], processors["left"]
    inputs = encode(processor, images[:1], PROMPTS[:1])
    streamer = RecordingStreamer()
    with llava.prune(model, processor, budget=16):
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False, streamer=streamer)
        several = RecordingStreamer()
        model.generate(**inputs, max_new_tokens=1, do_sample=True, num_return_sequences=2, streamer=several)
    assert torch.equal(streamer.puts[0], inputs.input_ids)
    assert torch.equal(torch.cat([new.view(1, -1) for new in streamer.puts[1:]], dim=1), output[:, -3:])
    assert streamer.ended
    assert torch.equal(several.puts[0], inputs.input_ids.repeat(2, 1))


@pytest.mark.slow
def test_a_compiled_model_is_pruned_through_its_module(models, processors, images):
    model, processor = models[torch.float32], processors["left"]
    inputs = encode(processor, images[:1], PROMPTS[:1])
    unpruned = model(**inputs).logits
    with llava.prune(model, processor, budget=16):
        pruned = model(**inputs).logits
    compiled = torch.compile(model, backend="eager")
    try:
        with llava.prune(compiled, processor, budget=16) as handle:
            assert handle.model is model
            torch.testing.assert_close(compiled(**inputs).logits, pruned, **TOLERANCE[torch.float32])
        torch.testing.assert_close(compiled(**inputs).logits, unpruned, **TOLERANCE[torch.float32])
    finally:
        torch._dynamo.reset()


# -- positions="keep": the masking reference ---------------------------------------------------


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_kept_positions_equal_the_masked_reference(models, processors, images, padding_side):
    """With positions kept, dropping tokens is hiding them from attention in the whole sequence,
    whose real tokens LLaVA numbers 0, 1, 2, ... (as its generate does)."""
    model, processor, budget = models[torch.float32], processors[padding_side], 32
    inputs = encode(processor, images[:2], PROMPTS)
    positions = (inputs.attention_mask.cumsum(1) - 1).clamp(min=0)[..., None]
    with llava.prune(model, processor, budget=budget, method="exact", positions="keep") as handle:
        logits = model(**inputs).logits
    keep = kept_layout(inputs.input_ids, inputs.attention_mask, [(model.config.image_token_id, handle.last_mask)])
    reference = masked_logits(model, inputs, keep, positions)
    torch.testing.assert_close(logits[keep], reference[keep], **TOLERANCE[torch.float32])
    with llava.prune(model, processor, budget=budget, method="exact"):  # "compact" renumbers: not the same
        assert not torch.allclose(model(**inputs).logits[keep], reference[keep], **TOLERANCE[torch.float32])
    if padding_side == "left":
        with llava.prune(model, processor, budget=budget, method="exact", positions="keep"):
            output = model.generate(
                **inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True, output_logits=True
            )
        tokens, steps = masked_greedy(model, inputs, keep, positions, 3)
        assert torch.equal(output.sequences[:, inputs.input_ids.shape[1] :], tokens)
        torch.testing.assert_close(torch.stack(output.logits, dim=1), steps, **TOLERANCE[torch.float32])


# -- arguments ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(budget=N + 1), ValueError, "budget"),
        (dict(budget=0), ValueError, "budget"),
        (dict(budget=-3), ValueError, "budget"),
        (dict(budget=16.0), ValueError, "budget"),
        (dict(budget=True), ValueError, "budget"),
        (dict(source="clip"), ValueError, "source"),
        (dict(method="svd"), ValueError, "method"),
        (dict(variance=0.0), ValueError, "variance"),
        (dict(variance=1.5), ValueError, "variance"),
        (dict(strategy="qr"), ValueError, "strategy"),
        (dict(budget=None, strategy="pivoted"), ValueError, "needs an int budget"),
        (dict(budget=torch.tensor(16.0)), ValueError, "budget"),
        (dict(budget=torch.tensor(True)), ValueError, "budget"),
        (dict(budget=np.bool_(True)), ValueError, "budget"),
        (dict(positions="3d"), ValueError, r"positions must be one of \('compact', 'keep'\)"),
        (dict(scope="tile"), ValueError, r"scope must be one of \('image',\) for LLaVA-1.5"),
        (dict(newlines="all"), ValueError, r"newlines applies to LLaVA-NeXT and LLaVA-OneVision only .* LLaVA-1.5 has"),
        (dict(processor=42), TypeError, "processor must be the model's processor or its tokenizer"),
    ],
)
def test_bad_arguments(models, kwargs, error, match):
    model = models[torch.float32]
    with pytest.raises(error, match=match):
        llava.prune(model, **kwargs)
    assert "forward" not in model.__dict__


@pytest.mark.parametrize("budget", [np.int64(16), torch.tensor(16)])
def test_integer_budgets_of_any_kind(models, processors, images, budget):
    model, processor = models[torch.float32], processors["left"]
    with llava.prune(model, processor, budget=budget) as handle:
        model(**encode(processor, images[:2], PROMPTS))
    assert type(handle.budget) is int and handle.last_mask.sum(1).tolist() == [16, 16]


def test_a_tokenizer_serves_as_the_processor(models, processors, images):
    # Unpadded rows keep different numbers of tokens (adaptive budget): they are re-padded on the
    # tokenizer's side.
    model, tokenizer = models[torch.float32], processors["right"].tokenizer
    inputs = encode(processors["right"], images[:2], [PROMPTS[1]] * 2)
    assert inputs.attention_mask.all()
    with llava.prune(model, tokenizer, budget=None, variance=0.5) as handle:
        with LanguageModelInputs(model) as seen:
            model(**inputs)
    assert handle.tokenizer is tokenizer
    mask = seen.calls[0]["attention_mask"]
    assert not mask[:, -1].all() and mask[:, 0].all()


def test_pixel_values_of_the_wrong_shape_are_reported(models, processors, images):
    model, processor = models[torch.float32], processors["left"]
    inputs = encode(processor, images[:1], PROMPTS[:1])
    expected = r"LLaVA-1.5: pixel_values must be \[images, channels, height, width\].*got shape \(3, 336, 336\)"
    with llava.prune(model, processor, budget=16):
        with pytest.raises(ValueError, match=expected):
            model(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values[0])
        with pytest.raises(ValueError, match=expected):
            model.generate(input_ids=inputs.input_ids, pixel_values=inputs.pixel_values[0], max_new_tokens=1)


def test_rejects_models_that_are_not_llava(models):
    with pytest.raises(TypeError, match="LlavaForConditionalGeneration"):
        llava.prune(models[torch.float32].model.language_model)
    with pytest.raises(TypeError, match="LlavaForConditionalGeneration"):
        llava.prune(torch.nn.Linear(2, 2))


def test_placeholder_mismatch_is_reported(models, processors, images):
    model, processor = models[torch.float32], processors["left"]
    inputs = encode(processor, images[:1], PROMPTS[:1])
    with llava.prune(model, processor, budget=16):
        with pytest.raises(ValueError, match="image tokens"):
            model(input_ids=inputs.input_ids[:, :-300], pixel_values=inputs.pixel_values)


# -- loading -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_load_round_trip(models, processors, images, tmp_path):
    model, processor = models[torch.float32], processors["left"]
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = llava.load(tmp_path, device="cpu", dtype=torch.float32)
    inputs = encode(processor, images[:1], PROMPTS[:1])
    reloaded_inputs = encode(loaded_processor, images[:1], PROMPTS[:1])
    assert torch.equal(reloaded_inputs.input_ids, inputs.input_ids)
    torch.testing.assert_close(reloaded_inputs.pixel_values, inputs.pixel_values)
    with llava.prune(loaded, loaded_processor, budget=16), llava.prune(model, processor, budget=16):
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)


def test_load_reports_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        llava.load(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        llava.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no local copy"):
        llava.load("svdprune-tests/no-such-model")
