"""FLOPs model: hand-computed values on a tiny configuration."""

import pytest

from svdprune import flops
from svdprune.flops import DecoderConfig, LlavaConfig, ProjectorConfig, VisionTowerConfig

# layers=2, hidden h=4, intermediate m=8, vocab=10
TINY_DECODER = DecoderConfig(layers=2, hidden=4, intermediate=8, heads=2, vocab=10)
# 4x4 single-channel image, 2x2 patches: 4 patches + CLS = 5 tokens, one layer of width 4
TINY_VISION = VisionTowerConfig(layers=1, hidden=4, intermediate=8, heads=1, image_size=4, patch_size=2, channels=1)
TINY = LlavaConfig("tiny", TINY_DECODER, TINY_VISION, ProjectorConfig(vision_hidden=4, text_hidden=3))


def test_prefill_by_hand():
    parts = flops.decoder_prefill_flops(TINY_DECODER, 3)
    # per layer, n=3: projections 4*2*3*16 = 384, scores 2*2*3*3*4 = 144, MLP 3*2*3*4*8 = 576
    assert parts == {"attention_projections": 768, "attention_scores": 288, "mlp": 1152, "lm_head": 80}


def test_prefill_causal_counts_lower_triangle():
    parts = flops.decoder_prefill_flops(TINY_DECODER, 3, causal=True)
    # 3*4/2 = 6 (query, key) pairs instead of 9: 2 layers * 2*2*6*4
    assert parts["attention_scores"] == 192


def test_prefill_lm_head_all_positions():
    assert flops.decoder_prefill_flops(TINY_DECODER, 3, lm_head_tokens=3)["lm_head"] == 2 * 3 * 4 * 10


def test_fastv_formula_is_two_mlp_matrices():
    # FastV: per layer 4 n h^2 + 2 n^2 h + 2 n h m multiply-adds.
    fastv = DecoderConfig(layers=1, hidden=4, intermediate=8, heads=2, vocab=10, mlp_matrices=2)
    n, h, m = 5, 4, 8
    parts = flops.decoder_prefill_flops(fastv, n)
    assert sum(parts.values()) - parts["lm_head"] == 2 * (4 * n * h * h + 2 * n * n * h + 2 * n * h * m)


def test_decode_by_hand():
    parts = flops.decoder_decode_flops(TINY_DECODER, prompt_tokens=3, steps=2)
    # step 0 attends to 4 positions, step 1 to 5: per layer projections 2*128, scores 64+80, MLP 2*192
    assert parts == {"attention_projections": 512, "attention_scores": 288, "mlp": 768, "lm_head": 160}


def test_vision_tower_and_projector_by_hand():
    # patch embedding 2*4*4*4 = 128; layer on 5 tokens: 640 + 400 + 2*2*5*4*8 = 1680
    assert flops.vision_tower_flops(TINY_VISION) == 1808
    assert flops.projector_flops(TINY.projector, 4) == 2 * 4 * (4 * 3 + 3 * 3)


def test_selection_exact_by_hand():
    assert flops.selection_flops(3, 5, "exact") == 2 * 9 * 5 + 9 * 27
    # D < N: the D x D Gram matrix is the smaller one
    assert flops.selection_flops(5, 3, "exact") == 2 * 9 * 5 + 9 * 27


def test_selection_randomized_by_hand():
    # n=6, d=5, l=2, q=1: products X Omega, X^T Q, X Z: 2*6*5*2*3 = 360; QRs (96 - 32/3) + (80 - 32/3);
    # small Gram Y^T Y 2*6*4 = 48; its eigensolver 9*8 = 72; U = Y W 2*6*4 = 48
    value = flops.selection_flops(6, 5, "randomized", sketch=2, power_iterations=1)
    assert value == pytest.approx(360 + (96 - 32 / 3) + (80 - 32 / 3) + 48 + 72 + 48)


def test_llava_flops_sums_its_stages():
    result = flops.llava_flops(TINY, visual_tokens=2, text_tokens=1, decode_tokens=2, selection="exact")
    assert result["vision"] == 1808 + 2 * 4 * 21  # projector on all 4 patches
    assert result["selection"] == 2 * 9 * 4 + 9 * 27  # 4 x 3 projector output: the 3 x 3 Gram
    assert result["prefill"] == sum(flops.decoder_prefill_flops(TINY_DECODER, 3).values())
    assert result["decode"] == sum(flops.decoder_decode_flops(TINY_DECODER, 3, 2).values())
    assert result["total"] == result["vision"] + result["selection"] + result["prefill"] + result["decode"]


def test_llava_flops_vision_source_projects_kept_tokens_only():
    result = flops.llava_flops(TINY, visual_tokens=2, text_tokens=1, source="vision")
    assert result["vision"] == 1808 + 2 * 2 * 21  # projector on the 2 kept tokens
    assert result["selection"] == 2 * 16 * 4 + 9 * 64  # 4 x 4 tower features


def test_no_selection_when_all_patches_kept():
    assert flops.llava_flops(TINY, visual_tokens=4)["selection"] == 0


def test_reduction_is_zero_at_full_and_grows_as_budget_shrinks():
    config = flops.LLAVA_15["7b"]
    assert flops.reduction(config, 576) == 0
    values = [flops.reduction(config, k, text_tokens=64) for k in (192, 128, 64, 32, 16)]
    assert values == sorted(values) and 0 < values[0] < values[-1] < 1


def test_llava_7b_prefill_matches_parameter_rule_of_thumb():
    # Forward FLOPs = 2 * weights per token plus the attention products: Vicuna-7B has
    # 32 * (4 h^2 + 3 h m) = 6.48e9 non-embedding weights; one token attends to itself (4 h).
    config = flops.LLAVA_15["7b"].decoder
    parts = flops.decoder_prefill_flops(config, 1, lm_head_tokens=0)
    assert sum(parts.values()) == 2 * 32 * (4 * 4096**2 + 3 * 4096 * 11008) + 32 * 4 * 4096


def test_match_reduction_rows_reproduce():
    config = flops.LLAVA_15["7b"]
    rows = flops.match_reduction(config, 0.848, budgets=(64,), max_text=64)
    assert len(rows) == len(flops.SCOPES) * 2 * 2
    scope, mlp, causal, budget, text, value = rows[0]
    assert abs(value - 0.848) < 5e-4
    from dataclasses import replace

    variant = replace(config, decoder=replace(config.decoder, mlp_matrices=mlp))
    assert flops.reduction(variant, budget, text_tokens=text, causal=causal, **flops.SCOPES[scope]) == value


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(visual_tokens=0), "visual_tokens"),
        (dict(visual_tokens=5), "visual_tokens"),
        (dict(visual_tokens=2, source="text"), "source"),
        (dict(visual_tokens=2, text_tokens=-1), "text_tokens"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        flops.llava_flops(TINY, **kwargs)


def test_bad_method_names_the_argument():
    with pytest.raises(ValueError, match="method"):
        flops.selection_flops(4, 4, "svd")


def test_cli_table_and_help(capsys):
    flops.main(["--model", "7b", "--budgets", "576", "64"])
    out = capsys.readouterr().out
    assert "| 576 |" in out and "| 64 |" in out and "LLaVA-1.5-7B" in out
    with pytest.raises(SystemExit) as exit_info:
        flops.main(["--help"])
    assert exit_info.value.code == 0


def test_text_tokens_for_is_the_closest_length():
    config = flops.LLAVA_15["7b"]
    settings = flops.SCOPES["llm-prefill"]
    text, value = flops.text_tokens_for(config, 32, 0.848, **settings)
    assert value == flops.reduction(config, 32, text_tokens=text, **settings)
    for neighbour in (text - 1, text + 1):
        other = flops.reduction(config, 32, text_tokens=neighbour, **settings)
        assert abs(other - 0.848) >= abs(value - 0.848)
    # More text dilutes the visual tokens' share: the reduction falls as the prompt grows.
    assert flops.reduction(config, 32, text_tokens=text + 10, **settings) < value


def test_markdown_report(tmp_path):
    import flops_report  # benchmarks/flops_report.py

    path = tmp_path / "FLOPS.md"
    flops_report.main(["--markdown", str(path)])
    text = path.read_text()
    assert "LLaVA-1.5-7B" in text and "LLaVA-1.5-13B" in text and "84.8%" in text
    assert text.count("| 576 |") == 3  # 7B, 7B with decoding, 13B
