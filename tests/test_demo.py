"""`python -m svdprune demo`: runs offline and writes the PNG of kept patches."""

import subprocess
import sys

import pytest

pytest.importorskip("transformers")
pytest.importorskip("skimage")
pytest.importorskip("matplotlib")

from svdprune.__main__ import main  # noqa: E402

pytestmark = pytest.mark.integration

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return imread(path)


def run_demo(tmp_path, capsys, *args, methods=("exact ", "randomized ")):
    """The random-weight demo at budget 16 with one repeat: what it printed, the (method, kept)
    rows of its table whose lines start with one of `methods`, and the PNG it wrote."""
    out = tmp_path / "demo.png"
    assert main(["demo", *args, "--budgets", "16", "--repeats", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed
    lines = [line.split() for line in printed.splitlines() if line.startswith(methods)]
    return printed, [(row[0], int(row[1])) for row in lines], read_png(out)


@pytest.mark.slow
def test_demo_prints_the_table_and_writes_the_png(tmp_path, capsys):
    printed, table, image = run_demo(tmp_path, capsys)
    assert "576 visual tokens" in printed
    assert table == [("exact", 16), ("randomized", 16)]
    assert image.shape[0] > 300 and image.shape[1] > 600


@pytest.mark.slow
def test_llava_next_demo_draws_the_base_view_and_every_tile(tmp_path, capsys):
    printed, table, image = run_demo(
        tmp_path, capsys, "--family", "llava-next", "--tile-size", "112", methods=("exact ", "pivoted  ")
    )
    assert "base view + 4 tiles of 112 px -> 320 visual tokens + 16 row newlines" in printed
    assert table == [("exact", 16), ("pivoted", 16)]
    assert image.shape[1] > 4 * image.shape[0] / 3  # five crops side by side, three rows


@pytest.mark.slow
def test_qwen_demo_draws_the_merged_tokens_at_the_photos_resolution(tmp_path, capsys):
    printed, table, image = run_demo(tmp_path, capsys, "--family", "qwen2.5-vl", "--image", "coffee")
    assert "600x400 px -> 588x392 px -> 294 visual tokens (14x21 merged tokens of 28 px)" in printed
    assert table == [("exact", 16), ("randomized", 16)]
    assert image.shape[1] > image.shape[0] / 2


@pytest.mark.slow
def test_demo_answers_with_a_local_checkpoint(tmp_path, capsys):
    from svdprune.testing import models as tiny_models

    processor = tiny_models.build_processor()
    tiny_models.build_model(processor).save_pretrained(tmp_path / "checkpoint")
    processor.save_pretrained(tmp_path / "checkpoint")
    out = tmp_path / "answer.png"
    args = ["demo", "--model", str(tmp_path / "checkpoint"), "--prompt", "What is it?", "--budgets", "16"]
    assert main([*args, "--max-new-tokens", "4", "--device", "cpu", "--out", str(out), "--image", "coffee"]) == 0
    printed = capsys.readouterr().out
    assert "all 576 visual tokens" in printed and "16 tokens, auto" in printed
    assert read_png(out).ndim == 3


def test_demo_reports_a_missing_checkpoint(tmp_path):
    with pytest.raises(SystemExit, match="not a checkpoint directory"):
        main(["demo", "--model", str(tmp_path / "absent"), "--out", str(tmp_path / "x.png")])


@pytest.mark.slow
def test_module_entry_point_help():
    result = subprocess.run([sys.executable, "-m", "svdprune", "demo", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--model" in result.stdout and "--out" in result.stdout
