"""Answer scoring of GQA and TextVQA as LLaVA-1.5's evaluation computes it.

GQA: exact match after LLaVA's conversion of the model output (``convert_gqa_for_eval.py``:
strip, drop trailing periods, lower-case) against the balanced test-dev question's ``answer``,
as GQA's own ``eval.py`` compares them (no other normalisation).

TextVQA: the standard VQA accuracy (m4c ``TextVQAAccuracyEvaluator``, EvalAI's answer
processing). Prediction and the 10 human answers are normalised (lower case, punctuation,
number words to digits, articles dropped, contractions restored); the score of a prediction is
``min(#humans who gave it / 3, 1)`` averaged over the 10 subsets of 9 human answers.
"""

from __future__ import annotations

import re

__all__ = [
    "normalize_vqa_answer",
    "vqa_accuracy",
    "normalize_gqa_answer",
    "gqa_correct",
    "textvqa_question",
    "score_gqa",
    "score_textvqa",
]

# EvalAI's answer processing (facebookresearch/mmf pythia/tasks/processors.py, as copied into
# LLaVA's m4c_evaluator.py), rule for rule.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = ("a", "an", "the")
# The official pattern reads "(?!<=\d)": a lookahead that never matches "<=" before a digit,
# so every period not followed by a digit is removed ("3.5" keeps its point, "yes." loses it).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
_PUNCTUATION = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]


def _process_punctuation(text: str) -> str:
    out = text
    for mark in _PUNCTUATION:
        # A mark next to a space (or any text with a digit-comma-digit) is deleted, else it
        # separates words.
        if (mark + " " in text or " " + mark in text) or _COMMA_STRIP.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out)


def _process_digits_and_articles(text: str) -> str:
    words = [_NUMBERS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_vqa_answer(answer: str) -> str:
    """EvalAI's VQA answer normalisation (used for TextVQA)."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _process_digits_and_articles(_process_punctuation(text))


def vqa_accuracy(prediction: str, human_answers: list[str]) -> float:
    """VQA accuracy of one prediction against the 10 human answers.

    ``min(#matches among the other 9 / 3, 1)`` averaged over leaving out each human answer in turn,
    all answers normalised with :func:`normalize_vqa_answer`.
    """
    if len(human_answers) != 10:
        raise ValueError(f"human_answers must hold the 10 answers of the question, got {len(human_answers)}")
    predicted = normalize_vqa_answer(prediction)
    answers = [normalize_vqa_answer(answer) for answer in human_answers]
    scores = []
    for left_out in range(len(answers)):
        matches = sum(1 for i, answer in enumerate(answers) if i != left_out and answer == predicted)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def normalize_gqa_answer(text: str) -> str:
    """LLaVA's GQA prediction conversion: strip, drop trailing periods, lower-case."""
    return text.strip().rstrip(".").lower()


def gqa_correct(prediction: str, answer: str) -> bool:
    """GQA exact match of a (converted) prediction with the gold answer."""
    return normalize_gqa_answer(prediction) == answer


def textvqa_question(prompt: str) -> str:
    """The question inside a LLaVA TextVQA prompt, lower-cased (LLaVA's ``prompt_processor``).

    Prompts are ``question\\nReference OCR token: ...\\nAnswer the question using a single word
    or phrase.`` (or without the OCR line), or ``OCR tokens: ... Question: q Short answer:``.
    """
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if match is None:
            raise ValueError(f"TextVQA prompt has no 'Question: ... Short answer:': {prompt!r}")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(f"unrecognised TextVQA prompt layout: {prompt!r}")
    return question.lower()


def score_gqa(answers: list[dict], annotations: dict) -> dict:
    """Accuracy of LLaVA-format ``answers`` (``question_id``, ``text``) against GQA's
    ``testdev_balanced_questions.json`` (``{question_id: {"answer": ...}}``).

    Returns ``accuracy`` over the answered questions found in the annotations, ``count`` of them
    and ``unmatched``: answered questions missing from the annotations.
    """
    return _mean_score(
        answers,
        find=lambda answer: annotations.get(str(answer["question_id"])),
        score=lambda answer, gold: gqa_correct(answer["text"], gold["answer"]),
    )


def score_textvqa(answers: list[dict], annotations: dict) -> dict:
    """VQA accuracy of LLaVA-format ``answers`` (``question_id``, ``prompt``, ``text``) against
    ``TextVQA_0.5.1_val.json`` (``{"data": [{question_id, image_id, question, answers}]}``).

    An answer is matched as LLaVA's ``eval_textvqa.py`` does, by ``(image_id, question)`` with the
    question read from its prompt and LLaVA's question files giving the image id as
    ``question_id``; failing that, by TextVQA's own ``question_id``.
    """
    entries = annotations["data"] if isinstance(annotations, dict) else annotations
    by_image_and_question = {(str(e["image_id"]), e["question"].lower()): e for e in entries}
    by_question_id = {str(e["question_id"]): e for e in entries if "question_id" in e}

    def find(answer: dict) -> dict | None:
        key = (str(answer["question_id"]), textvqa_question(answer["prompt"]))
        return by_image_and_question.get(key) or by_question_id.get(str(answer["question_id"]))

    return _mean_score(answers, find, score=lambda answer, entry: vqa_accuracy(answer["text"], entry["answers"]))


def _mean_score(answers: list[dict], find, score) -> dict:
    """Mean of ``score(answer, entry)`` over the answers whose annotation ``find(answer)`` locates;
    the others are counted as ``unmatched``."""
    total, count, unmatched = 0.0, 0, 0
    for answer in answers:
        entry = find(answer)
        if entry is None:
            unmatched += 1
            continue
        count += 1
        total += score(answer, entry)
    return {"accuracy": total / count if count else float("nan"), "count": count, "unmatched": unmatched}
