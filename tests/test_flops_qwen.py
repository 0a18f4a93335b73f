"""The Qwen2.5-VL-7B row of the FLOPs model: a native-resolution tower with windows and a 2x2 merger,
a decoder with grouped key/value heads."""

import pytest

from svdprune import flops

QWEN = flops.QWEN2_5_VL["7b"]


def test_a_1280_by_720_image_gives_1196_visual_tokens():
    assert QWEN.vision.grid_patches == 92 * 52
    assert QWEN.vision.patches == 46 * 26 == 1196


def test_the_tower_counts_windowed_and_global_layers_and_the_merger_reads_four_patches():
    vision, patches, hidden, mlp = QWEN.vision, 4784, 1280, 3420
    layer = 8 * patches * hidden**2 + 3 * 2 * patches * hidden * mlp
    expected = (
        2 * patches * (3 * 2 * 14 * 14) * hidden  # patch embedding: 2 frames x 14 x 14 x RGB
        + 28 * (layer + 4 * patches * 64 * hidden)  # windowed layers: 64 keys per token
        + 4 * (layer + 4 * patches * patches * hidden)  # global layers
    )
    assert flops.vision_tower_flops(vision) == pytest.approx(expected)
    assert flops.projector_flops(QWEN.projector, 1196) == 2 * 1196 * (5120 * 5120 + 5120 * 3584)


def test_grouped_key_value_heads_shrink_the_k_and_v_projections():
    n, h = 100, 3584
    parts = flops.decoder_prefill_flops(QWEN.decoder, n)
    assert parts["attention_projections"] == pytest.approx(28 * (2 + 2 * 4 / 28) * 2 * n * h * h)
    full_heads = flops.DecoderConfig(layers=28, hidden=h, intermediate=18944, heads=28, vocab=152064)
    assert flops.decoder_prefill_flops(full_heads, n)["attention_projections"] == 28 * 4 * 2 * n * h * h


def test_selection_reads_all_merged_tokens():
    parts = flops.llava_flops(QWEN, 128, text_tokens=64)
    assert parts["selection"] == flops.selection_flops(1196, 3584, "exact")
    assert flops.llava_flops(QWEN, 128, source="vision")["selection"] == flops.selection_flops(1196, 5120, "exact")
    assert parts["prefill"] == sum(flops.decoder_prefill_flops(QWEN.decoder, 128 + 64).values())
    with pytest.raises(ValueError, match="visual_tokens"):
        flops.llava_flops(QWEN, 1197)
