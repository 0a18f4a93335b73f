"""GQA / TextVQA scorers on hand-made cases from the official metric definitions, and the
evaluation harness end to end on a tiny random LLaVA and a tiny dataset written here."""

import json

import pytest

from svdprune import evaluate as evaluation
from svdprune import scoring

# ----------------------------------------------------------------------------- VQA normalisation


@pytest.mark.parametrize(
    "raw, normalised",
    [
        ("Two", "2"),  # number words become digits
        ("none", "0"),
        ("the cat", "cat"),  # articles dropped
        ("A Dog", "dog"),
        ("dont", "don't"),  # contractions restored
        ("yes.", "yes"),  # a period not before a digit is removed
        ("3.5", "3.5"),  # a decimal point stays
        ("hello, world", "hello world"),  # commas removed
        ("coca-cola", "coca cola"),  # a mark inside a word separates
        ("left - right", "left right"),  # a mark next to a space is deleted
        ("what?", "what"),
        ("  Stop\tSign \n", "stop sign"),
        ("it's", "it 's"),  # the official tokenizer splits the possessive
        ("1,000", "1000"),
    ],
)
def test_normalize_vqa_answer(raw, normalised):
    assert scoring.normalize_vqa_answer(raw) == normalised


# ----------------------------------------------------------------------------- VQA accuracy


@pytest.mark.parametrize(
    "matches, expected",
    [
        # min(#matching others / 3, 1) averaged over the 10 leave-one-out subsets:
        (0, 0.0),
        (1, 0.3),  # 9 subsets see it once: 9 * (1/3) / 10
        (2, 0.6),  # 2 subsets see it once, 8 twice: (2/3 + 16/3) / 10
        (3, 0.9),  # 3 subsets see it twice, 7 three times: (2 + 7) / 10
        (4, 1.0),  # every subset sees it at least 3 times
        (10, 1.0),
    ],
)
def test_vqa_accuracy_by_number_of_humans(matches, expected):
    humans = ["cat"] * matches + ["dog"] * (10 - matches)
    assert scoring.vqa_accuracy("cat", humans) == pytest.approx(expected)


def test_vqa_accuracy_normalises_both_sides():
    humans = ["Two", "2", "two ", "2.", "three"] + ["four"] * 5
    assert scoring.vqa_accuracy("2", humans) == pytest.approx(1.0)
    assert scoring.vqa_accuracy("The Four.", humans) == pytest.approx(1.0)
    assert scoring.vqa_accuracy("three", humans) == pytest.approx(0.3)


def test_vqa_accuracy_needs_ten_answers():
    with pytest.raises(ValueError, match="10 answers"):
        scoring.vqa_accuracy("cat", ["cat"] * 9)


# ----------------------------------------------------------------------------- GQA


@pytest.mark.parametrize(
    "prediction, gold, correct",
    [
        ("yes", "yes", True),
        ("Yes.", "yes", True),  # LLaVA's conversion: strip, drop trailing periods, lower-case
        (" Left \n", "left", True),
        ("no", "yes", False),
        ("the cup", "cup", False),  # GQA does no article removal
        ("2", "two", False),  # nor number mapping
        ("yes, it is", "yes", False),
    ],
)
def test_gqa_exact_match(prediction, gold, correct):
    assert scoring.gqa_correct(prediction, gold) is correct


def test_score_gqa():
    annotations = {"1": {"answer": "yes"}, "2": {"answer": "table"}, "3": {"answer": "red"}}
    answers = [
        {"question_id": "1", "text": "Yes."},
        {"question_id": 2, "text": "chair"},  # ids compared as strings
        {"question_id": "3", "text": "red"},
        {"question_id": "99", "text": "red"},  # not annotated
    ]
    assert scoring.score_gqa(answers, annotations) == {"accuracy": pytest.approx(2 / 3), "count": 3, "unmatched": 1}


# ----------------------------------------------------------------------------- TextVQA


def test_textvqa_question_layouts():
    suffix = "Answer the question using a single word or phrase."
    assert scoring.textvqa_question(f"What Brand?\nReference OCR token: Nikon, D90\n{suffix}") == "what brand?"
    assert scoring.textvqa_question(f"Reference OCR token: Nikon\nWhat brand?\n{suffix}") == "what brand?"
    assert scoring.textvqa_question(f"What brand?\n{suffix}") == "what brand?"
    assert scoring.textvqa_question("OCR tokens: a b Question: What brand? Short answer:") == "what brand?"
    with pytest.raises(ValueError, match="prompt"):
        scoring.textvqa_question("no newline at all")


def test_score_textvqa_matches_like_llava():
    suffix = "\nAnswer the question using a single word or phrase."
    annotations = {
        "data": [
            {"question_id": 10, "image_id": "img1", "question": "What brand?", "answers": ["nikon"] * 10},
            {"question_id": 11, "image_id": "img1", "question": "What year?", "answers": ["1990"] * 2 + ["1999"] * 8},
            {"question_id": 12, "image_id": "img2", "question": "Which word?", "answers": ["stop"] * 10},
        ]
    }
    answers = [
        # LLaVA's question files give the image id as question_id; the question comes from the prompt
        {"question_id": "img1", "prompt": "What brand?\nReference OCR token: NIKON" + suffix, "text": "Nikon"},
        {"question_id": "img1", "prompt": "what year?" + suffix, "text": "1990"},
        # TextVQA's own question id also works
        {"question_id": 12, "prompt": "Which word?" + suffix, "text": "go"},
        {"question_id": "img9", "prompt": "Which word?" + suffix, "text": "stop"},  # not annotated
    ]
    result = scoring.score_textvqa(answers, annotations)
    assert result == {"accuracy": pytest.approx((1.0 + 0.6 + 0.0) / 3), "count": 3, "unmatched": 1}


# ----------------------------------------------------------------------------- harness pieces


def test_build_prompt():
    assert evaluation.build_prompt("Q?", "<image>", "") == "USER: <image>\nQ? ASSISTANT:"
    assert evaluation.build_prompt("Q?", "<image>").startswith("A chat between")


def test_read_answers_drops_a_cut_last_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": 1, "prompt": "p", "text": "a"}\n{"question_id": 2, "pro')
    assert [a["question_id"] for a in evaluation.read_answers(path)] == [1]
    assert path.read_text().endswith("\n")
    assert evaluation.read_answers(tmp_path / "missing.jsonl") == []


def test_read_questions_names_missing_fields(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "text": "q"}\n')
    with pytest.raises(ValueError, match="image"):
        evaluation.read_questions(path)


def test_help_exits_cleanly(capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluation.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--budget" in out and "--strategy" in out


def test_eval_is_a_command_of_the_package(capsys):
    from svdprune.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--help"])
    assert exit_info.value.code == 0
    assert "--strategy" in capsys.readouterr().out


def test_score_only_with_nothing_answered_has_no_settings(tmp_path):
    (tmp_path / "questions.jsonl").write_text(json.dumps(GQA_QUESTIONS[0]) + "\n")
    (tmp_path / "annotations.json").write_text(json.dumps({"q1": {"answer": "yes"}}))
    result = evaluation.main([
        "--task", "gqa", "--questions", str(tmp_path / "questions.jsonl"), "--annotations",
        str(tmp_path / "annotations.json"), "--answers", str(tmp_path / "answers.jsonl"), "--score-only",
    ])
    assert result["answered"] == 0 and result["settings"] is None


# ----------------------------------------------------------------------------- end to end

try:  # the LLaVA integration; the end-to-end tests need it
    from svdprune import llava  # noqa: F401
    from svdprune.testing import models as tiny_models

    LLAVA_MISSING = None
except ImportError as error:  # pragma: no cover - only before the integration exists
    LLAVA_MISSING = f"svdprune.llava is not importable ({error})"

needs_llava = pytest.mark.skipif(LLAVA_MISSING is not None, reason=LLAVA_MISSING or "")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    if LLAVA_MISSING:
        pytest.skip(LLAVA_MISSING)
    path = tmp_path_factory.mktemp("tiny-llava")
    processor = tiny_models.build_processor()
    model = tiny_models.build_model(processor)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def write_dataset(folder, questions):
    from PIL import Image

    from svdprune.testing import images

    (folder / "images").mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(images.load_photo(name)).save(folder / "images" / f"{name}.jpg")
    with open(folder / "questions.jsonl", "w") as handle:
        for question in questions:
            handle.write(json.dumps(question) + "\n")


GQA_QUESTIONS = [
    {"question_id": "q1", "image": "astronaut.jpg", "text": "Who is it?\nAnswer the question using a single word or phrase."},
    {"question_id": "q2", "image": "coffee.jpg", "text": "What is in the cup?\nAnswer the question using a single word or phrase."},
    {"question_id": "q3", "image": "chelsea.jpg", "text": "Is it a cat?\nAnswer the question using a single word or phrase."},
    {"question_id": "q4", "image": "astronaut.jpg", "text": "What colour?\nAnswer the question using a single word or phrase."},
]


def gqa_args(tmp_path, checkpoint, *extra):
    return [
        "--task", "gqa", "--model", str(checkpoint), "--questions", str(tmp_path / "questions.jsonl"),
        "--images", str(tmp_path / "images"), "--annotations", str(tmp_path / "annotations.json"),
        "--answers", str(tmp_path / "answers.jsonl"), "--device", "cpu", "--batch-size", "3",
        "--max-new-tokens", "4", "--no-progress", *extra,
    ]


@pytest.mark.slow
@needs_llava
def test_gqa_end_to_end_resumable(tmp_path, tiny_checkpoint, monkeypatch):
    import svdprune_cuda

    write_dataset(tmp_path, GQA_QUESTIONS)
    (tmp_path / "annotations.json").write_text(json.dumps({q["question_id"]: {"answer": "zzz"} for q in GQA_QUESTIONS}))
    budgets = []
    select = svdprune_cuda.select
    monkeypatch.setattr(svdprune_cuda, "select", lambda x, budget, *a, **k: budgets.append(budget) or select(x, budget, *a, **k))

    result = evaluation.main(gqa_args(tmp_path, tiny_checkpoint, "--budget", "16"))
    answers = evaluation.read_answers(tmp_path / "answers.jsonl")
    assert [a["question_id"] for a in answers] == ["q1", "q2", "q3", "q4"]
    assert budgets == [16, 16]  # two batches (3 + 1), each pruned to 16 tokens per image
    assert result["answered"] == 4 and result["count"] == 4 and result["accuracy"] == 0.0
    assert all(a["metadata"]["settings"]["budget"] == 16 for a in answers)

    # Gold = what the model said for q2 (after LLaVA's conversion): accuracy exactly 1/4.
    gold = {q["question_id"]: {"answer": "zzz"} for q in GQA_QUESTIONS}
    gold["q2"] = {"answer": scoring.normalize_gqa_answer(answers[1]["text"])}
    (tmp_path / "annotations.json").write_text(json.dumps(gold))
    rescored = evaluation.main(gqa_args(tmp_path, tiny_checkpoint, "--score-only"))
    assert rescored["accuracy"] == 0.25 and rescored["settings"]["budget"] == 16

    # A restart skips what is there: nothing generated, the file unchanged.
    before = (tmp_path / "answers.jsonl").read_text()
    budgets.clear()
    evaluation.main(gqa_args(tmp_path, tiny_checkpoint, "--budget", "16"))
    assert budgets == [] and (tmp_path / "answers.jsonl").read_text() == before

    # An interrupted run (last answer cut mid-line) is completed with the same greedy answer.
    lines = before.splitlines(keepends=True)
    (tmp_path / "answers.jsonl").write_text("".join(lines[:3]) + lines[3][:20])
    evaluation.main(gqa_args(tmp_path, tiny_checkpoint, "--budget", "16"))
    assert budgets == [16] and (tmp_path / "answers.jsonl").read_text() == before

    # Other settings are refused rather than mixed into the same file.
    with pytest.raises(ValueError, match="settings"):
        evaluation.main(gqa_args(tmp_path, tiny_checkpoint, "--budget", "32"))


@pytest.mark.slow
@needs_llava
def test_gqa_end_to_end_unpruned(tmp_path, tiny_checkpoint, monkeypatch):
    import svdprune_cuda

    write_dataset(tmp_path, GQA_QUESTIONS[:2])
    (tmp_path / "annotations.json").write_text(json.dumps({"q1": {"answer": "a"}, "q2": {"answer": "b"}}))
    monkeypatch.setattr(svdprune_cuda, "select", lambda *a, **k: pytest.fail("no selection without pruning"))
    result = evaluation.main(gqa_args(tmp_path, tiny_checkpoint, "--budget", "full"))
    assert result["answered"] == 2 and result["settings"]["budget"] == "full"


@pytest.mark.slow
@needs_llava
def test_strategy_is_used_and_recorded(tmp_path, tiny_checkpoint, monkeypatch):
    import svdprune_cuda

    write_dataset(tmp_path, GQA_QUESTIONS[:1])
    (tmp_path / "annotations.json").write_text(json.dumps({"q1": {"answer": "a"}}))
    strategies = []
    select = svdprune_cuda.select
    monkeypatch.setattr(svdprune_cuda, "select", lambda *a, **k: strategies.append(k.get("strategy")) or select(*a, **k))
    result = evaluation.main(gqa_args(tmp_path, tiny_checkpoint, "--budget", "16", "--strategy", "pivoted"))
    assert strategies == ["pivoted"] and result["settings"]["strategy"] == "pivoted"
    assert evaluation.read_answers(tmp_path / "answers.jsonl")[0]["metadata"]["settings"]["strategy"] == "pivoted"
    # The same answers with the default strategy are other settings.
    with pytest.raises(ValueError, match="settings"):
        evaluation.main(gqa_args(tmp_path, tiny_checkpoint, "--budget", "16"))


@pytest.mark.slow
@needs_llava
def test_answering_leaves_the_tokenizer_padding_as_it_was(tmp_path):
    write_dataset(tmp_path, GQA_QUESTIONS[:2])
    processor = tiny_models.build_processor(padding_side="right")
    model = tiny_models.build_model(processor)
    new = evaluation.answer_questions(
        model, processor, GQA_QUESTIONS[:2], tmp_path / "images", tmp_path / "answers.jsonl",
        settings={"budget": "full"}, max_new_tokens=2, progress=False,
    )
    assert new == 2 and processor.tokenizer.padding_side == "right"


@pytest.mark.slow
@needs_llava
def test_textvqa_end_to_end(tmp_path, tiny_checkpoint):
    suffix = "\nAnswer the question using a single word or phrase."
    questions = [  # LLaVA's TextVQA layout: question_id is the image id, two questions on one image
        {"question_id": "coffee", "image": "coffee.jpg", "text": "What is written?\nReference OCR token: cafe" + suffix},
        {"question_id": "coffee", "image": "coffee.jpg", "text": "What colour is the cup?" + suffix},
    ]
    write_dataset(tmp_path, questions)
    (tmp_path / "annotations.json").write_text(json.dumps({"data": []}))
    args = [
        "--task", "textvqa", "--model", str(tiny_checkpoint), "--questions", str(tmp_path / "questions.jsonl"),
        "--images", str(tmp_path / "images"), "--annotations", str(tmp_path / "annotations.json"),
        "--answers", str(tmp_path / "answers.jsonl"), "--device", "cpu", "--budget", "adaptive",
        "--max-new-tokens", "3", "--no-progress", "--summary", str(tmp_path / "summary.json"),
    ]
    evaluation.main(args)
    answers = evaluation.read_answers(tmp_path / "answers.jsonl")
    assert len(answers) == 2
    # Three of ten humans gave the model's answer to the first question: VQA accuracy 0.9.
    data = [
        {"question_id": 1, "image_id": "coffee", "question": "What is written?", "answers": [answers[0]["text"]] * 3 + ["zzz"] * 7},
        {"question_id": 2, "image_id": "coffee", "question": "What colour is the cup?", "answers": ["zzz"] * 10},
    ]
    (tmp_path / "annotations.json").write_text(json.dumps({"data": data}))
    result = evaluation.main(args + ["--score-only"])
    assert result["count"] == 2 and result["accuracy"] == pytest.approx(0.45)
    assert json.loads((tmp_path / "summary.json").read_text())["accuracy"] == pytest.approx(0.45)
