"""svdprune.integrations.batch and .selection without any model: shortening a padded batch
around kept placeholders, the newline rule, and the grouping of budgets; and the lazy export."""

import subprocess
import sys

import pytest
import torch

import svdprune_cuda
from svdprune.integrations.batch import padding_side, rewrite_batch
from svdprune.integrations.selection import Visual, select_placeholders, select_tokens

P, PAD = 9, 0  # placeholder token, pad token


def embed(ids):
    """A stand-in embedding: token id and position-free, two features per token."""
    return torch.stack([ids.float(), -ids.float()], dim=-1)


def expected_rows(ids, mask, keep_flags, features):
    """Row by row, the surviving tokens (features in placeholders), unpadded."""
    rows, flags, rows_features = [], iter(keep_flags.tolist()), iter(features)
    for row, row_mask in zip(ids, mask):
        out = []
        for token, real in zip(row.tolist(), row_mask.tolist()):
            if token == P:
                if next(flags):
                    out.append(next(rows_features))
            elif real:
                out.append(embed(torch.tensor(token)))
        rows.append(torch.stack(out))
    return rows


@pytest.mark.parametrize("side", ["left", "right"])
def test_rewrite_batch_drops_unkept_placeholders_and_repads(side):
    if side == "left":
        ids = torch.tensor([[PAD, PAD, 5, P, P, P, 6], [7, P, P, 8, P, P, 4]])
        mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    else:
        ids = torch.tensor([[5, P, P, P, 6, PAD, PAD], [7, P, P, 8, P, P, 4]])
        mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    assert padding_side(mask) == side
    placeholders = ids == P
    kept = torch.tensor([True, False, True, False, True, True, False])  # 7 placeholders, row-major
    features = torch.tensor([[100.0, 1], [101, 2], [102, 3], [103, 4]])
    out = rewrite_batch(ids, mask, placeholders, kept, features, embed, side=side, pad_token_id=PAD)

    lengths = out.attention_mask.sum(1)
    assert lengths.tolist() == [4, 5]
    assert out.input_ids.shape == (2, 5)
    for row, expected in enumerate(expected_rows(ids, mask, kept, features)):
        real = out.attention_mask[row].bool()
        # Padding sits on the batch's side, the surviving tokens keep their order.
        assert bool(real[-1] if side == "left" else real[0])
        assert torch.equal(out.inputs_embeds[row, real], expected)
        assert (out.input_ids[row, ~real] == PAD).all()

    # move and restore are inverse on the surviving positions, zeros elsewhere.
    values = torch.arange(14.0).view(2, 7)
    moved = out.move(values, -1.0)
    assert torch.equal(out.restore(moved), values * out.keep)
    assert (moved[~out.attention_mask.bool()] == -1).all()
    # generate's output gets the caller's prompt back, new tokens after it, per returned sequence.
    sequences = torch.cat([out.input_ids, torch.tensor([[11, 12], [13, 14]])], dim=1).repeat_interleave(2, 0)
    restored = out.restore_prompt(ids, sequences)
    assert torch.equal(restored[:, :7], ids.repeat_interleave(2, 0))
    assert torch.equal(restored[:, 7:], torch.tensor([[11, 12], [11, 12], [13, 14], [13, 14]]))


def test_rewrite_batch_without_mask_or_pruning_is_the_identity():
    ids = torch.tensor([[3, P, P, 4]])
    features = torch.tensor([[50.0, 5], [60, 6]])
    out = rewrite_batch(ids, None, ids == P, torch.tensor([True, True]), features, embed, side="left", pad_token_id=PAD)
    assert torch.equal(out.input_ids, ids)
    assert torch.equal(out.inputs_embeds[0, 1:3], features)
    assert out.attention_mask.all()


def test_rewrite_batch_checks_its_arguments():
    ids = torch.tensor([[3, P, P, 4]])
    with pytest.raises(ValueError, match="kept"):
        rewrite_batch(ids, None, ids == P, torch.tensor([True]), torch.zeros(1, 2), embed, side="left", pad_token_id=0)
    with pytest.raises(ValueError, match="features"):
        rewrite_batch(ids, None, ids == P, torch.tensor([True, True]), torch.zeros(1, 2), embed, side="left", pad_token_id=0)
    with pytest.raises(ValueError, match="side"):
        rewrite_batch(ids, None, ids == P, torch.tensor([True, True]), torch.zeros(2, 2), embed, side="up", pad_token_id=0)


def grid_visual(scored, rows_of, newline_after):
    """A visual of tokens in rows with a newline after each row (as LLaVA-NeXT lays out its tiles)."""
    features, rows, newline, sources = [], [], [], []
    for index, (vector, row) in enumerate(zip(scored, rows_of)):
        features.append(vector)
        rows.append(row)
        newline.append(False)
        sources.append(index)
        if index in newline_after:
            features.append(torch.zeros_like(vector))
            rows.append(row)
            newline.append(True)
            sources.append(-1)
    newline = torch.tensor(newline)
    tokens = (~newline).nonzero().flatten()
    features = torch.stack(features)
    return Visual(features, features, [tokens], newline, torch.tensor(rows), torch.tensor(sources))


def test_selection_keeps_the_reference_choice_and_the_newlines_of_kept_rows():
    torch.manual_seed(0)
    scored = torch.randn(12, 6, dtype=torch.float64) * torch.linspace(0.1, 3, 12, dtype=torch.float64)[:, None]
    visual = grid_visual(scored, [0] * 4 + [1] * 4 + [2] * 4, newline_after={3, 7, 11})
    expected = svdprune_cuda.select(scored[None], 4, 0.9, method="exact")[0][0]
    mask = select_tokens([visual], 4, 0.9, "exact", "leverage")[0]
    kept_tokens = visual.sources[mask & ~visual.newline]
    assert torch.equal(kept_tokens, expected)
    kept_rows = set(torch.tensor([0] * 4 + [1] * 4 + [2] * 4)[expected].tolist())
    newline_rows = visual.rows[mask & visual.newline].tolist()
    assert set(newline_rows) == kept_rows and len(newline_rows) == len(kept_rows)


def test_selection_applies_the_budget_per_group_and_rejects_a_larger_one():
    torch.manual_seed(1)
    scored = torch.randn(10, 5, dtype=torch.float64)
    groups = [torch.arange(0, 4), torch.arange(4, 10)]
    visual = Visual(scored, scored, groups, torch.zeros(10, dtype=torch.bool), torch.full((10,), -1), torch.arange(10))
    mask = select_tokens([visual], 3, 0.9, "exact", "leverage")[0]
    for group in groups:
        expected = svdprune_cuda.select(scored[group][None], 3, 0.9, method="exact")[0][0]
        assert torch.equal(mask[group].nonzero().flatten(), expected)
    with pytest.raises(ValueError, match="budget 5 is larger than the 4 visual tokens"):
        select_tokens([visual], 5, 0.9, "exact", "leverage")


def test_select_placeholders_merges_kinds_in_sequence_order():
    torch.manual_seed(2)
    image_token, video_token = 9, 8

    def plain(n, offset):
        features = torch.arange(n, dtype=torch.float64)[:, None].repeat(1, 3) + offset
        scored = torch.randn(n, 4, dtype=torch.float64)
        return Visual(features, scored, [torch.arange(n)], torch.zeros(n, dtype=torch.bool), torch.full((n,), -1), torch.arange(n))

    image, video = plain(4, 100), plain(4, 200)
    ids = torch.tensor([[1, video_token] + [video_token] * 3 + [2] + [image_token] * 4])
    placeholders, kept, features, masks = select_placeholders(
        ids, [("image", image_token, [image]), ("video", video_token, [video])], 2, 0.9, "exact", "leverage"
    )
    assert torch.equal(placeholders, (ids == image_token) | (ids == video_token))
    # The video comes first in the sequence, so its kept features come first.
    assert torch.equal(kept, torch.cat([masks[1], masks[0]]))
    assert torch.equal(features, torch.cat([video.features[masks[1]], image.features[masks[0]]]))
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        select_placeholders(ids[:, :-1], [("image", image_token, [image])], 2, 0.9, "exact", "leverage")


@pytest.mark.slow
def test_svdprune_prune_is_exported_without_importing_transformers():
    code = "import sys, svdprune; svdprune.prune; print('transformers' in sys.modules, svdprune.prune.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "svdprune.integrations"]
