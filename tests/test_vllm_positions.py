"""svdprune.vllm.positions: a pruned Qwen prompt numbered in vLLM's two steps (when the request
arrives, then after the vision tower, perhaps chunk by chunk) gets, at every kept token, the
position transformers gives that token in the unpruned prompt (the model's own get_rope_index),
and continues where the unpruned prompt would. No vLLM needed.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("skimage")

from svdprune.integrations import adapter_for  # noqa: E402
from svdprune.testing import models as tiny_models  # noqa: E402
from svdprune.testing.models import QWEN_IMAGE, QWEN_VIDEO  # noqa: E402
from svdprune.vllm import positions as mrope  # noqa: E402

pytestmark = pytest.mark.integration  # transformers 5.x and 4.57 (scripts/test_transformers4.sh)

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]


@pytest.fixture(scope="module", params=FAMILIES)
def qwen(request):
    processor = tiny_models.build_qwen_processor(request.param)
    return request.param, processor, tiny_models.build_qwen_model(processor, request.param)


@pytest.fixture(scope="module")
def photos():
    import numpy as np
    from skimage import data

    # A square photo, then a portrait one: the text after an image continues after its larger side.
    return [data.astronaut(), np.ascontiguousarray(np.rot90(data.coffee())), data.chelsea(), data.rocket()]


def image_inputs(processor, photos):
    return processor(images=photos[:2], text=[f"USER: {QWEN_IMAGE}and {QWEN_IMAGE}Compare them. ASSISTANT:"], return_tensors="pt")


def video_inputs(processor, family, photos):
    prompt = f"USER: {QWEN_IMAGE}then {QWEN_VIDEO}What happens? ASSISTANT:"
    return tiny_models.qwen_video_inputs(processor, family, [photos], [prompt], images=photos[2:3])


def run_grids(family, model, inputs) -> list[torch.Tensor]:
    """Per run of placeholders in prompt order, its unpruned grid positions ``[3, n]``: an image
    one run; a Qwen2.5-VL video one run whose time advances by seconds per frame times tokens
    per second; a Qwen3-VL video one run per merged frame, each placed like an image."""
    merge = model.config.vision_config.spatial_merge_size
    grids = []
    for t, h, w in inputs["image_grid_thw"].tolist():
        grids.append(mrope.grid_positions(t, h // merge, w // merge))
    for index, (t, h, w) in enumerate(inputs.get("video_grid_thw", torch.empty(0, 3)).tolist()):
        if family == "qwen3_vl":
            grids += [mrope.grid_positions(1, h // merge, w // merge)] * t
        else:
            scale = float(inputs["second_per_grid_ts"][index]) * model.config.vision_config.tokens_per_second
            grids.append(mrope.grid_positions(t, h // merge, w // merge, scale))
    return [torch.from_numpy(grid) for grid in grids]


def placeholder_runs(placeholder: torch.Tensor) -> list[tuple[int, int]]:
    """``(offset, count)`` of each maximal run of True in ``placeholder``."""
    runs, start = [], None
    for index, flag in enumerate([*placeholder.tolist(), False]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            runs.append((start, index - start))
            start = None
    return runs


def served(model, inputs, family, keep, pieces=((0, None),)):
    """The pruned prompt's positions (``[3, L']``) and delta as the plugin numbers them, and the
    unpruned prompt's placeholders: ``keep`` (``[L]`` bool) marks the tokens the pruned prompt
    keeps; the kept tokens' grid positions arrive in ``pieces``, ranges of the kept placeholders
    (``None``: to the end), each starting right after the placeholder before it."""
    ids = inputs["input_ids"][0]
    ids_of = {model.config.image_token_id, model.config.video_token_id}
    placeholder = torch.tensor([token in ids_of for token in ids.tolist()])
    grids = run_grids(family, model, inputs)
    full_runs = placeholder_runs(placeholder)
    assert len(full_runs) == len(grids)
    pruned_index = keep.long().cumsum(0) - 1
    runs, rows = [], []
    for (offset, count), grid in zip(full_runs, grids):
        kept = keep[offset : offset + count]
        runs.append((int(pruned_index[offset : offset + count][kept][0]), int(kept.sum()), grid.numpy()))
        rows.append(grid[:, kept].T)
    positions, delta = mrope.prompt_positions(int(keep.sum()), runs)
    rows = torch.cat(rows)
    pruned_placeholder = placeholder[keep]
    slots = torch.nonzero(pruned_placeholder).flatten()
    for first, end in pieces:
        start = int(slots[first - 1]) + 1 if first > 0 else 0
        mrope.place_kept_positions(pruned_placeholder, positions, rows[first:end], start)
    return positions, delta, placeholder


def unpruned(model, inputs) -> torch.Tensor:
    """``[L, 3]``: transformers' positions of the unpruned prompt."""
    call = dict(inputs)
    return adapter_for(model).position_ids(call["input_ids"], call["attention_mask"], call)[0]


def random_keep(placeholder: torch.Tensor, seed: int) -> torch.Tensor:
    """Text, and about a third of every run of placeholders (at least its last one)."""
    keep = ~placeholder | (torch.rand(placeholder.shape, generator=torch.Generator().manual_seed(seed)) < 0.35)
    for offset, count in placeholder_runs(placeholder):
        keep[offset + count - 1] = True
    return keep


@pytest.mark.parametrize("kind", ["images", "image and video"])
def test_unpruned_prompt_has_transformers_positions(qwen, photos, kind):
    family, processor, model = qwen
    inputs = image_inputs(processor, photos) if kind == "images" else video_inputs(processor, family, photos)
    keep = torch.ones_like(inputs["input_ids"][0], dtype=torch.bool)
    positions, delta, _ = served(model, inputs, family, keep)
    full = unpruned(model, inputs)
    assert torch.equal(positions.T, full)
    assert delta == int(full.max()) + 1 - full.shape[0]


@pytest.mark.parametrize("kind", ["images", "image and video"])
def test_kept_tokens_keep_their_positions(qwen, photos, kind):
    family, processor, model = qwen
    inputs = image_inputs(processor, photos) if kind == "images" else video_inputs(processor, family, photos)
    full = unpruned(model, inputs)
    _, _, placeholder = served(model, inputs, family, torch.ones(full.shape[0], dtype=torch.bool))
    keep = random_keep(placeholder, seed=1)
    positions, delta, _ = served(model, inputs, family, keep)
    assert torch.equal(positions.T, full[keep])
    # New tokens continue where the unpruned prompt does.
    assert delta + int(keep.sum()) == int(full.max()) + 1


def test_chunked_and_repeated_placement_agree(qwen, photos):
    """Chunks that start inside a run of placeholders, and placing the same rows again (a step run
    twice, a preempted request), give the positions of placing them all at once."""
    family, processor, model = qwen
    inputs = video_inputs(processor, family, photos)
    placeholder = served(model, inputs, family, torch.ones_like(inputs["input_ids"][0], dtype=torch.bool))[2]
    keep = random_keep(placeholder, seed=2)
    kept = int((placeholder & keep).sum())
    at_once = served(model, inputs, family, keep)[0]
    chunked = served(model, inputs, family, keep, pieces=((0, 3), (3, kept // 2), (kept // 2, kept - 1), (kept - 1, None)))[0]
    again = served(model, inputs, family, keep, pieces=((0, None), (3, None), (kept // 2, kept - 1)))[0]
    assert torch.equal(chunked, at_once)
    assert torch.equal(again, at_once)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_grid_positions_survive_the_embedding_dtype(dtype):
    grid = torch.tensor([[0, 0, 0], [255, 256, 257], [65535, 1023, 4097]])
    features = torch.randn(3, 8).to(dtype)
    embeddings = mrope.append_positions(features, grid)
    assert embeddings.shape == (3, 8 + mrope.CHANNELS) and embeddings.dtype == dtype
    back, positions = mrope.split_positions(embeddings)
    assert torch.equal(back, features)
    assert torch.equal(positions, grid)
