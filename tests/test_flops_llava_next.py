"""The LLaVA-NeXT-7B row of the FLOPs model: five 576-token crops per image, one decoder."""

import pytest

from svdprune import flops

NEXT, LLAVA = flops.LLAVA_NEXT["7b"], flops.LLAVA_15["7b"]


def test_the_tower_runs_once_per_crop():
    assert NEXT.vision.patches == 2880
    assert flops.vision_tower_flops(NEXT.vision) == pytest.approx(5 * flops.vision_tower_flops(LLAVA.vision))


def test_kept_tokens_reach_the_decoder_and_selection_reads_all_of_them():
    parts = flops.llava_flops(NEXT, 320, text_tokens=64)
    assert parts["prefill"] == sum(flops.decoder_prefill_flops(NEXT.decoder, 320 + 64).values())
    assert parts["selection"] == flops.selection_flops(2880, 4096, "exact")
    assert flops.llava_flops(NEXT, 2880)["selection"] == 0
    assert flops.reduction(NEXT, 320) > flops.reduction(LLAVA, 64)  # 2,880 -> 320 saves more than 576 -> 64
    with pytest.raises(ValueError, match="visual_tokens"):
        flops.llava_flops(NEXT, 2881)
