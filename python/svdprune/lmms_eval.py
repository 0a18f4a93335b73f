"""``--model svdprune`` for lmms-eval: lmms-eval's own models, run with :func:`svdprune.prune`.

    python -m lmms_eval --model svdprune --model_args pretrained=llava-hf/llava-1.5-7b-hf,budget=64 --tasks gqa

lmms-eval finds the model through the ``lmms_eval.models`` entry point of the installed package
(``pip install svdprune[eval]``). It is lmms-eval's model for the checkpoint's family, ``llava_hf``
(LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision), ``qwen2_5_vl`` or ``qwen3_vl``, so prompts, chat
templates and generation are the harness's (tasks that set prompts or generation settings per
model give it those of the wrapped model); only the model it loads is pruned. ``model_args``:

- every keyword of :func:`svdprune.prune`: ``budget`` (visual tokens per image, ``full`` for no
  pruning, ``adaptive`` for ``budget=None``), ``variance``, ``method``, ``strategy``, ``source``,
  ``scope``, ``positions``, ``newlines``, with prune's defaults. ``svdprune.prune`` itself checks them as soon
  as the model is loaded, before any sample runs (with ``budget=full`` too);
- ``family``: the lmms-eval model to run, by default the one for the checkpoint's ``model_type``;
- everything else goes to that model (``pretrained``, ``device``, ``max_pixels``, ...).

lmms-eval runs the chat model unless ``--force_simple`` is given, as for the wrapped model itself.
The results gain an ``"svdprune"`` entry: the family, the settings in force and
``selection_seconds``, the time spent choosing tokens (as
:attr:`svdprune.integrations.PruneHandle.selection_seconds` counts it).
"""

from __future__ import annotations

import functools
import inspect

from lmms_eval.api.model import lmms

import svdprune

__all__ = ["SvdPrune", "SvdPruneSimple", "manifest", "FAMILIES", "SETTINGS"]

# What this module relies on in lmms-eval, as read from lmms-eval 0.7.3's source:
# - lmms_eval.models.registry_v2: ModelManifest, loaded from the "lmms_eval.models" entry-point
#   group when lmms_eval.models is imported (ModelRegistryV2.load_entrypoint_manifests; a callable
#   payload is called); lmms_eval.models.get_model(name, force_simple) imports a registered class.
# - lmms_eval.api.model.lmms: create_from_arg_string(model_args) calls cls(**parsed model_args).
# - the wrapped classes load the model in __init__, expose it as .model, generate with
#   self.model.generate and keep their processor in this attribute:
PROCESSOR_ATTRIBUTES = {"llava_hf": "_image_processor", "qwen2_5_vl": "processor", "qwen3_vl": "processor"}
# - lmms.clean(), at the end of lmms_eval.evaluator.evaluate (after every sample), frees the model.
# - lmms_eval.evaluator.simple_evaluate makes the model, then builds the tasks with
#   lmms_eval.evaluator.get_task_dict(tasks, task_manager, ...), whose TaskManager picks each task's
#   model-specific prompts and generation settings by its model_name (the --model name), and then
#   its results from what lmms_eval.evaluator.evaluate returns; both are looked up when called.
LMMS_EVAL_VERSION = "0.7.3"

# The wrapped lmms-eval model per transformers model_type.
FAMILIES = {
    "llava": "llava_hf",
    "llava_next": "llava_hf",
    "llava_onevision": "llava_hf",
    "qwen2_5_vl": "qwen2_5_vl",
    "qwen3_vl": "qwen3_vl",
}
# svdprune.prune's settings and their defaults.
SETTINGS = {
    name: parameter.default
    for name, parameter in inspect.signature(svdprune.integrations.prune).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
}


def manifest():
    """The ``svdprune`` model for lmms-eval's registry (the package's ``lmms_eval.models`` entry point)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(
        model_id="svdprune", chat_class_path=f"{__name__}.SvdPrune", simple_class_path=f"{__name__}.SvdPruneSimple"
    )


class SvdPrune(lmms):
    """lmms-eval's chat model for ``pretrained``'s family, pruned; see the module docstring.

    Calling it makes an instance of :func:`pruned_class` ``(family, simple=False)``.
    """

    is_simple = False

    def __new__(cls, pretrained: str, family: str | None = None, **model_args):
        if family is None:
            family = _family_of(pretrained)
        return pruned_class(family, cls.is_simple)(pretrained=pretrained, **model_args)


class SvdPruneSimple(SvdPrune):
    """As :class:`SvdPrune`, with lmms-eval's simple (non-chat) model (``--force_simple``)."""

    is_simple = True


def _family_of(pretrained: str) -> str:
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(pretrained).model_type
    if model_type not in FAMILIES:
        supported = ", ".join(FAMILIES)
        raise ValueError(f"svdprune: no lmms-eval model for model_type {model_type!r}; supported: {supported}")
    return FAMILIES[model_type]


@functools.cache
def pruned_class(family: str, simple: bool) -> type:
    """lmms-eval's ``family`` model class (chat, or ``simple``) with :class:`Pruned` mixed in."""
    if family not in PROCESSOR_ATTRIBUTES:
        raise ValueError(f"family must be one of {tuple(PROCESSOR_ATTRIBUTES)}, got {family!r}")
    from lmms_eval.models import get_model

    base = get_model(family, force_simple=simple)
    return type(f"SvdPrune{base.__name__}", (Pruned, base), {"__module__": __name__, "family": family})


class Pruned:
    """Mixed into an lmms-eval model class: its model is loaded, then pruned with the settings
    taken from its ``model_args``. ``svdprune_results`` is what the results report (its
    ``selection_seconds`` once lmms-eval has run every sample)."""

    family: str  # the wrapped lmms-eval model

    def __init__(self, **model_args):
        settings = {name: model_args.pop(name, default) for name, default in SETTINGS.items()}
        super().__init__(**model_args)
        budget = settings["budget"]
        if budget == "adaptive":
            settings["budget"] = None
        processor = getattr(self, PROCESSOR_ATTRIBUTES[self.family])
        # budget=full runs the model as it is; prune still checks the other settings (with a
        # budget every model takes) and is undone at once.
        handle = svdprune.prune(self.model, processor, **({**settings, "budget": 1} if budget == "full" else settings))
        if budget == "full":
            handle.remove()
        self._svdprune_handle = handle
        self.svdprune_results = {
            "family": self.family,
            "budget": budget if budget in ("full", "adaptive") else handle.budget,
            **{name: getattr(handle, name) for name in SETTINGS if name != "budget"},
            "selection_seconds": 0.0,
        }
        _adapt_evaluator(self.family)

    def clean(self):
        # lmms-eval frees the model here, which the handle holds too, and then puts the results
        # together.
        if self._svdprune_handle is not None:
            self.svdprune_results["selection_seconds"] = self._svdprune_handle.selection_seconds
            self._svdprune_handle.remove()
            self._svdprune_handle = None
        super().clean()


_latest_family: str | None = None  # the family of the model made last, which simple_evaluate runs


def _adapt_evaluator(family: str) -> None:
    """Makes lmms-eval's simple_evaluate, which runs right after it makes the model, build the
    tasks as for ``family`` and put an ``"svdprune"`` entry into the results of a pruned model."""
    from lmms_eval import evaluator

    global _latest_family
    _latest_family = family
    if getattr(evaluator, "adapted_by_svdprune", False):
        return
    get_task_dict, evaluate = evaluator.get_task_dict, evaluator.evaluate

    @functools.wraps(get_task_dict)
    def get_task_dict_as_for_the_family(tasks, task_manager=None, *args, **kwargs):
        # Tasks choose model-specific prompts and generation settings by the name lmms-eval was
        # given: the wrapped model's, not "svdprune", so that they are the unpruned model's.
        if task_manager is None or task_manager.model_name != "svdprune":
            return get_task_dict(tasks, task_manager, *args, **kwargs)
        task_manager.model_name = _latest_family
        try:
            return get_task_dict(tasks, task_manager, *args, **kwargs)
        finally:
            task_manager.model_name = "svdprune"

    @functools.wraps(evaluate)
    def evaluate_and_report(*args, **kwargs):
        results = evaluate(*args, **kwargs)
        lm = kwargs.get("lm", args[0] if args else None)
        if results is not None and isinstance(lm, Pruned):
            results["svdprune"] = dict(lm.svdprune_results)
        return results

    evaluator.get_task_dict, evaluator.evaluate = get_task_dict_as_for_the_family, evaluate_and_report
    evaluator.adapted_by_svdprune = True
