"""svdprune.lmms_eval: lmms-eval's `--model svdprune` on tiny random LLaVA-1.5, Qwen2.5-VL and
Qwen3-VL checkpoints, over a task of this module's own (YAML over a local JSON file and local images).

Its answers equal svdprune.prune + generate called directly with the prompt lmms-eval's chat model
builds; budget=full equals lmms-eval's own model; a bad setting fails before any sample runs.
Runs in .venv-eval (scripts/setup_eval_env.sh installs lmms-eval and svdprune there; scripts/test.sh
runs this module with it); skipped where lmms-eval is not installed. Nothing is downloaded.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("lmms_eval", reason="needs lmms-eval (scripts/setup_eval_env.sh installs it in .venv-eval)")
for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[name] = "1"

import torch  # noqa: E402
import transformers  # noqa: E402
from lmms_eval import evaluator  # noqa: E402
from lmms_eval.tasks import TaskManager  # noqa: E402
from PIL import Image  # noqa: E402

import svdprune  # noqa: E402
from svdprune.testing import images, models  # noqa: E402

pytestmark = pytest.mark.slow

TASK = "svdprune_tiny_vqa"
DOCS = [
    {"file_name": "astronaut.png", "question": "What is shown in this picture?", "answer": "an astronaut"},
    {"file_name": "coffee.png", "question": "What colour is the cup?", "answer": "white"},
    {"file_name": "chelsea.png", "question": "How many objects are there?", "answer": "one"},
]
# Answer lengths: the task's default, and the ones it sets for lmms-eval's models by name.
MAX_NEW_TOKENS = {"default": 6, "llava_hf": 4, "qwen2_5_vl": 5, "qwen3_vl": 3}
TASK_YAML = """\
task: {task}
dataset_path: imagefolder
dataset_kwargs:
  data_dir: {data}
test_split: train
output_type: generate_until
doc_to_visual: image
doc_to_text: "{{{{question}}}}"
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens[default]}
  do_sample: false
model_specific_generation_kwargs:
  llava_hf:
    max_new_tokens: {max_new_tokens[llava_hf]}
  qwen2_5_vl:
    max_new_tokens: {max_new_tokens[qwen2_5_vl]}
  qwen3_vl:
    max_new_tokens: {max_new_tokens[qwen3_vl]}
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""
# Qwen's processors at the tiny models' image sizes, as lmms-eval's models and the direct runs
# load them; every run of lmms-eval's model is on the CPU.
PROCESSOR_OPTIONS = {
    "llava_hf": {},
    "qwen2_5_vl": {"min_pixels": 3136, "max_pixels": 50176},
    "qwen3_vl": {"min_pixels": 4096, "max_pixels": 65536},
}
MODEL_ARGS = {
    family: ",".join(["device=cpu", "device_map=cpu", *(f"{key}={value}" for key, value in options.items())])
    for family, options in PROCESSOR_OPTIONS.items()
}
MODEL_CLASSES = {  # lmms-eval's classes load LLaVA in the checkpoint's dtype, Qwen in bfloat16
    "llava_hf": (transformers.LlavaForConditionalGeneration, torch.float32),
    "qwen2_5_vl": (transformers.Qwen2_5_VLForConditionalGeneration, torch.bfloat16),
    "qwen3_vl": (transformers.Qwen3VLForConditionalGeneration, torch.bfloat16),
}
FAMILIES = list(MODEL_ARGS)


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """(directory, TaskManager) of the YAML task over the photos, each 224 x 224 px (a multiple of
    Qwen2.5-VL's 28 px and Qwen3-VL's 32 px, so that lmms-eval's resizing leaves them as they are)."""
    directory = tmp_path_factory.mktemp("task")
    data = directory / "data"
    data.mkdir()
    for doc, photo in zip(DOCS, images.load_photos([doc["file_name"].removesuffix(".png") for doc in DOCS]).values()):
        Image.fromarray(photo).resize((224, 224), Image.BICUBIC).save(data / doc["file_name"])
    (data / "metadata.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in DOCS))
    (directory / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data=data, max_new_tokens=MAX_NEW_TOKENS))
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("LMMS_EVAL_DATASETS_CACHE", str(directory / "datasets-cache"))
        yield directory, TaskManager(include_path=str(directory))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Per family, a tiny random checkpoint in the Hub's layout."""
    directory = tmp_path_factory.mktemp("checkpoints")
    llava = models.build_processor()
    models.save_checkpoint(models.build_model(llava), llava, directory / "llava_hf")
    for family in ("qwen2_5_vl", "qwen3_vl"):
        qwen = models.build_qwen_processor(family)
        models.save_checkpoint(models.build_qwen_model(qwen, family), qwen, directory / family)
    return {family: directory / family for family in FAMILIES}


def evaluate(task, model: str, model_args: str, **options):
    """lmms-eval's results of ``model`` on the task, and its answers in the task's order."""
    task[1].model_name = model  # as lmms-eval's CLI makes its TaskManager, after --model
    results = evaluator.simple_evaluate(
        model=model, model_args=model_args, tasks=[TASK], task_manager=task[1], bootstrap_iters=0, **options
    )
    samples = sorted(results["samples"][TASK], key=lambda sample: sample["doc_id"])
    return results, [sample["resps"][0][0] for sample in samples]


def direct_answers(checkpoint, family: str, task_directory, budget, **settings) -> list[str]:
    """The answers of the checkpoint's model, loaded with transformers, pruned with
    ``svdprune.prune(..., budget=budget, **settings)`` (``"full"``: not pruned), to the task's
    questions, each asked as lmms-eval's chat model asks it: the checkpoint's chat template over
    one user turn holding the image and the question, greedy for as many tokens as the task
    sets for the family's lmms-eval model."""
    model_class, dtype = MODEL_CLASSES[family]
    model = model_class.from_pretrained(checkpoint, dtype=dtype)
    processor = transformers.AutoProcessor.from_pretrained(checkpoint, **PROCESSOR_OPTIONS[family])
    if budget != "full":
        svdprune.prune(model, processor, budget=budget, **settings)
    answers = []
    for doc in DOCS:
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": doc["question"]}]}]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        image = Image.open(task_directory / "data" / doc["file_name"])
        inputs = processor(images=[image], text=[prompt], return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS[family], do_sample=False)
        answer = output[:, inputs["input_ids"].shape[1] :]
        answers.append(processor.batch_decode(answer, skip_special_tokens=True, clean_up_tokenization_spaces=False)[0])
    return answers


@pytest.mark.parametrize("family, budget", [*((family, 16) for family in FAMILIES), ("llava_hf", "adaptive")])
def test_answers_equal_prune_and_generate(task, checkpoints, family, budget):
    checkpoint = checkpoints[family]
    results, answers = evaluate(task, "svdprune", f"pretrained={checkpoint},budget={budget},{MODEL_ARGS[family]}")
    assert answers == direct_answers(checkpoint, family, task[0], budget=None if budget == "adaptive" else budget)
    assert answers != direct_answers(checkpoint, family, task[0], budget="full")  # pruning shows
    assert results["config"]["model_backend"].startswith("svdprune.lmms_eval.")
    report = results["svdprune"]
    assert report.pop("selection_seconds") > 0
    positions = "compact" if family == "llava_hf" else "keep"
    assert report == dict(family=family, budget=budget, variance=0.9, method="auto", strategy="leverage",
                          source="projector", scope="image", positions=positions, newlines=None)


@pytest.mark.parametrize("family", FAMILIES)
def test_full_budget_equals_lmms_evals_own_model(task, checkpoints, family):
    options = f"pretrained={checkpoints[family]},{MODEL_ARGS[family]}"
    results, answers = evaluate(task, "svdprune", f"{options},budget=full")
    assert answers == evaluate(task, family, options)[1]
    assert results["svdprune"]["budget"] == "full" and results["svdprune"]["selection_seconds"] == 0


def test_force_simple_prunes_the_simple_model(task, checkpoints):
    options = f"pretrained={checkpoints['llava_hf']},{MODEL_ARGS['llava_hf']}"
    unpruned = evaluate(task, "llava_hf", options, force_simple=True)[1]
    results, answers = evaluate(task, "svdprune", f"{options},budget=16", force_simple=True)
    assert results["config"]["model_backend"].endswith("(simple)") and results["svdprune"]["budget"] == 16
    assert answers != unpruned
    assert evaluate(task, "svdprune", f"{options},budget=full", force_simple=True)[1] == unpruned


def test_cli_writes_the_settings_with_the_results(task, checkpoints, tmp_path):
    family, checkpoint = "llava_hf", checkpoints["llava_hf"]
    settings = dict(budget=32, variance=0.8, method="exact", strategy="pivoted", source="vision")
    model_args = f"pretrained={checkpoint},{MODEL_ARGS[family]}," + ",".join(f"{k}={v}" for k, v in settings.items())
    environment = {**os.environ, "PYTHONSAFEPATH": "1"}  # lmms-eval finds the installed svdprune
    run = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "svdprune", "--model_args", model_args, "--tasks", TASK,
         "--include_path", str(task[0]), "--output_path", str(tmp_path), "--log_samples"],
        env=environment, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    (results_file,) = tmp_path.rglob("*_results.json")
    report = json.loads(results_file.read_text())["svdprune"]
    assert report.pop("selection_seconds") > 0
    assert report == dict(family=family, scope="image", positions="compact", newlines=None, **settings)
    (samples_file,) = tmp_path.rglob(f"*_samples_{TASK}.jsonl")
    samples = sorted((json.loads(line) for line in samples_file.read_text().splitlines()), key=lambda s: s["doc_id"])
    # The file holds each answer as the task scores it: stripped.
    answers = [answer.strip() for answer in direct_answers(checkpoint, family, task[0], **settings)]
    assert [sample["filtered_resps"] for sample in samples] == answers


@pytest.mark.parametrize(
    "family, setting, message",
    [
        ("llava_hf", "budget=0", "budget must be"),
        ("llava_hf", "budget=577", "budget must be"),
        ("llava_hf", "budget=many", "budget must be"),
        ("llava_hf", "variance=1.5", "variance must be"),
        ("llava_hf", "method=fast", "method must be"),
        ("llava_hf", "budget=full,strategy=best", "strategy must be"),
        ("llava_hf", "budget=adaptive,strategy=pivoted", "strategy 'pivoted' needs an int budget"),
        ("llava_hf", "source=pixels", "source must be"),
        ("llava_hf", "scope=video", "scope must be"),
        ("qwen2_5_vl", "positions=compact", "positions must be"),
        ("llava_hf", "family=llava", "family must be"),
        ("llava_hf", "budegt=64", "budegt"),  # not a setting: lmms-eval's model refuses it
    ],
)
def test_bad_setting_fails_before_any_sample(task, checkpoints, monkeypatch, family, setting, message):
    def no_sample(*args, **kwargs):
        pytest.fail("a sample ran")  # not an Exception, which lmms-eval's models catch

    monkeypatch.setattr(transformers.GenerationMixin, "generate", no_sample)
    with pytest.raises((ValueError, AssertionError), match=message):
        evaluate(task, "svdprune", f"pretrained={checkpoints[family]},{MODEL_ARGS[family]},{setting}")
