"""GQA and TextVQA evaluation of a local LLaVA-1.5 checkpoint with SVD-Prune, from LLaVA's eval files.

    python -m svdprune eval --task gqa --model /ckpt/llava-1.5-7b-hf \\
        --questions llava_gqa_testdev_balanced.jsonl --images gqa/images \\
        --annotations testdev_balanced_questions.json --answers answers/gqa_k64.jsonl --budget 64

Inputs are the files LLaVA-1.5's evaluation uses:

- ``--questions``: jsonl, one ``{"question_id", "image", "text"}`` per line (``text`` is the full
  question prompt, e.g. ending in "Answer the question using a single word or phrase.");
- ``--images``: the folder the ``image`` names are relative to;
- ``--annotations``: GQA's ``testdev_balanced_questions.json`` or TextVQA's
  ``TextVQA_0.5.1_val.json``.

Answers are appended to ``--answers`` (LLaVA's answer-file format: ``question_id``, ``prompt``,
``text``, ``model_id``, ``metadata``) batch by batch as they are produced; a restarted run skips
the questions already there, and refuses a file written with other settings. Decoding is greedy,
as in LLaVA's evaluation. The score is printed (and written to ``--summary``) at the end; with
``--score-only`` nothing is generated.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from . import scoring

__all__ = [
    "TASKS", "SYSTEM_PROMPT", "read_questions", "read_answers", "build_prompt", "answer_questions", "score",
    "add_arguments", "run", "main",
]

TASKS = ("gqa", "textvqa")
# LLaVA-1.5's evaluation conversation template (vicuna_v1).
SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def read_questions(path, limit: int | None = None) -> list[dict]:
    """Questions of a LLaVA question jsonl (``question_id``, ``image``, ``text`` on every line)."""
    questions = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = [key for key in ("question_id", "image", "text") if key not in record]
            if missing:
                raise ValueError(f"{path}:{number}: question lacks {', '.join(missing)}")
            questions.append(record)
            if limit is not None and len(questions) == limit:
                break
    return questions


def _key(record: dict) -> tuple[str, str]:
    # TextVQA question files repeat question_id (the image id) for every question on an image,
    # so a question is identified by its id and its prompt together.
    return str(record["question_id"]), record.get("prompt", record.get("text"))


def read_answers(path) -> list[dict]:
    """Complete answer lines of ``path`` ([] if absent). A last line cut short by an interrupted
    run is dropped from the file, so appending continues on a clean line."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        path.write_bytes(data)
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def build_prompt(question: str, image_token: str, system_prompt: str = SYSTEM_PROMPT) -> str:
    """LLaVA-1.5's single-turn prompt: ``{system} USER: <image>\\n{question} ASSISTANT:``."""
    prefix = f"{system_prompt} " if system_prompt else ""
    return f"{prefix}USER: {image_token}\n{question} ASSISTANT:"


def _progress(total: int, description: str):
    """tqdm when installed, else a line every tenth of the way."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, desc=description, unit="q")
    except ImportError:
        return _PlainProgress(total, description)


class _PlainProgress:
    def __init__(self, total: int, description: str):
        self.total, self.done, self.description = total, 0, description
        self.start, self.next_report = time.perf_counter(), 0

    def update(self, count: int) -> None:
        self.done += count
        if self.done >= self.next_report or self.done == self.total:
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            print(f"{self.description}: {self.done}/{self.total} ({rate:.2f} q/s)", file=sys.stderr, flush=True)
            self.next_report = self.done + max(1, self.total // 10)

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _left_padding(tokenizer):
    """Pads on the left, so that generation continues every row at its end; afterwards the
    tokenizer pads as its owner had it."""
    owners_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = owners_side


def answer_questions(
    model,
    processor,
    questions: list[dict],
    images_dir,
    answers_path,
    *,
    settings: dict,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    system_prompt: str = SYSTEM_PROMPT,
    model_id: str = "llava-1.5",
    progress: bool = True,
) -> int:
    """Generate answers for the ``questions`` not yet in ``answers_path`` and append them.

    ``settings`` (budget, method, ...) are recorded in every line's ``metadata``; a file holding
    answers produced with other settings is refused. Returns the number of new answers. The
    tokenizer pads on the left while answering, and as before afterwards.
    """
    import torch
    from PIL import Image

    existing = read_answers(answers_path)
    for record in existing:
        recorded = record.get("metadata", {}).get("settings")
        if recorded != settings:
            raise ValueError(
                f"{answers_path} holds answers made with settings {recorded}, not {settings}: "
                "pass another --answers file"
            )
    done = {_key(record) for record in existing}
    todo = [q for q in questions if _key(q) not in done]
    if not todo:
        return 0

    image_token = getattr(processor, "image_token", "<image>")
    device = model.device
    bar = _progress(len(todo), "answering") if progress else None
    Path(answers_path).parent.mkdir(parents=True, exist_ok=True)
    with _left_padding(processor.tokenizer), open(answers_path, "a") as out:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            pictures = [Image.open(Path(images_dir) / q["image"]).convert("RGB") for q in batch]
            prompts = [build_prompt(q["text"], image_token, system_prompt) for q in batch]
            inputs = processor(images=pictures, text=prompts, padding=True, return_tensors="pt").to(device)
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            with torch.inference_mode():
                sequences = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            texts = processor.tokenizer.batch_decode(sequences[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for question, text in zip(batch, texts):
                record = {
                    "question_id": question["question_id"],
                    "prompt": question["text"],
                    "text": text.strip(),
                    "model_id": model_id,
                    "metadata": {"settings": settings},
                }
                out.write(json.dumps(record) + "\n")
            out.flush()
            os.fsync(out.fileno())
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    return len(todo)


def score(task: str, answers: list[dict], annotations_path) -> dict:
    """Score ``answers`` with the task's metric (see :mod:`svdprune.scoring`)."""
    with open(annotations_path) as handle:
        annotations = json.load(handle)
    if task == "gqa":
        return scoring.score_gqa(answers, annotations)
    if task == "textvqa":
        return scoring.score_textvqa(answers, annotations)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def _budget(text: str):
    if text in ("full", "adaptive"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget must be a number of tokens, 'full' or 'adaptive', not {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"budget must be >= 1, got {value}")
    return value


DESCRIPTION = (
    "GQA / TextVQA accuracy of a local LLaVA-1.5 checkpoint with SVD-Prune visual-token pruning, "
    "from LLaVA's evaluation files. Resumable: answers already in --answers are skipped."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``python -m svdprune eval``."""
    parser.add_argument("--task", choices=TASKS, required=True)
    parser.add_argument("--questions", type=Path, required=True, help="LLaVA question jsonl (question_id, image, text)")
    parser.add_argument("--images", type=Path, help="folder of the question images (needed unless --score-only)")
    parser.add_argument("--annotations", type=Path, required=True,
                        help="testdev_balanced_questions.json (GQA) or TextVQA_0.5.1_val.json (TextVQA)")
    parser.add_argument("--answers", type=Path, required=True, help="answer jsonl, appended to and resumed from")
    parser.add_argument("--model", help="local llava-hf checkpoint directory (needed unless --score-only)")
    parser.add_argument("--budget", type=_budget, default=64,
                        help="visual tokens kept per image, 'full' (no pruning, 576) or 'adaptive' (default 64)")
    parser.add_argument("--variance", type=float, default=0.9, help="SVD energy fraction τ (default 0.9)")
    parser.add_argument("--method", choices=["auto", "exact", "randomized"], default="auto")
    parser.add_argument("--strategy", choices=["leverage", "pivoted"], default="leverage",
                        help="top-K leverage (the paper's) or pivoted (non-redundant tokens); default leverage")
    parser.add_argument("--source", choices=["projector", "vision"], default="projector",
                        help="features the selection reads (default: projector output)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--limit", type=int, help="only the first LIMIT questions")
    parser.add_argument("--device", help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=["float16", "bfloat16", "float32"],
                        help="default: float16 on CUDA, float32 on CPU")
    parser.add_argument("--system-prompt", default=SYSTEM_PROMPT, help="conversation system prompt ('' for none)")
    parser.add_argument("--summary", type=Path, help="also write the score and settings to this json file")
    parser.add_argument("--score-only", action="store_true", help="score the answers file, generate nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> dict:
    """Answers what is not answered yet, then scores; returns (and prints) the score and settings."""
    questions = read_questions(args.questions, args.limit)
    settings = {
        "budget": args.budget, "variance": args.variance, "method": args.method, "strategy": args.strategy,
        "source": args.source, "max_new_tokens": args.max_new_tokens, "system_prompt": args.system_prompt,
    }
    if not args.score_only:
        if args.model is None or args.images is None:
            raise SystemExit("--model and --images are needed to generate answers (or pass --score-only)")
        import torch

        from . import llava

        dtype = getattr(torch, args.dtype) if args.dtype else None
        model, processor = llava.load(args.model, device=args.device, dtype=dtype)
        handle = None
        if args.budget != "full":
            budget = None if args.budget == "adaptive" else args.budget
            handle = llava.prune(model, processor, budget=budget, variance=args.variance, method=args.method,
                                 source=args.source, strategy=args.strategy)
        try:
            new = answer_questions(
                model, processor, questions, args.images, args.answers, settings=settings,
                batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, system_prompt=args.system_prompt,
                model_id=Path(args.model).name, progress=not args.no_progress,
            )
        finally:
            if handle is not None:
                handle.remove()
        print(f"{new} new answers, {len(questions) - new} already in {args.answers}", file=sys.stderr)

    wanted = {_key(q) for q in questions}
    answers = [a for a in read_answers(args.answers) if _key(a) in wanted]
    result = score(args.task, answers, args.annotations)
    if args.score_only:  # the settings the answers were made with, not this command line's
        recorded = [a.get("metadata", {}).get("settings") for a in answers]
        if not recorded:
            settings = None
        else:
            settings = recorded[0] if all(r == recorded[0] for r in recorded) else "mixed"
    result.update(task=args.task, questions=len(questions), answered=len(answers), settings=settings)
    print(json.dumps(result, indent=1))
    if args.summary:
        args.summary.parent.mkdir(parents=True, exist_ok=True)
        args.summary.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m svdprune eval", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
