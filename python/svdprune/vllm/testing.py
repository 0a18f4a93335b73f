"""Randomly initialised LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL and Qwen3-VL written to disk as checkpoints vLLM can
serve (nothing downloaded).

vLLM 0.32 loads LLaVA weights by the names of the llava-hf checkpoints on the Hub
(``language_model.model.…``, ``vision_tower.vision_model.…``, ``multi_modal_projector.…``,
``language_model.lm_head.…``), so the state dict is written under those names rather than with
``save_pretrained``. vLLM's CPU attention needs a head size of at least 32: the defaults here
give the language model 64.

Qwen (:func:`write_qwen_checkpoint`) is saved by ``svdprune.testing.models.save_checkpoint``, in
the names vLLM maps, with a complete processor (its video processor needs torchvision, which vLLM
installs).
"""

from __future__ import annotations

from pathlib import Path

from svdprune.testing import models

__all__ = ["write_checkpoint", "write_llava_next_checkpoint", "write_qwen_checkpoint", "CHAT_TEMPLATE"]

# LLaVA-1.5's conversation format: "<s>USER: <image>\n<question> ASSISTANT: <answer></s>" (the
# <s> is written here because vLLM does not add special tokens to a rendered chat)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% else %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_HUB_PREFIXES = {
    "model.language_model.": "language_model.model.",
    "model.vision_tower.": "vision_tower.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "lm_head.": "language_model.lm_head.",
}


def _hub_name(name: str) -> str:
    for prefix, hub_prefix in _HUB_PREFIXES.items():
        if name.startswith(prefix):
            name = hub_prefix + name[len(prefix) :]
            break
    if name.startswith("vision_tower.") and not name.startswith("vision_tower.vision_model."):
        name = "vision_tower.vision_model." + name[len("vision_tower.") :]
    return name


def _write_hub_weights(model, directory) -> None:
    """``model``'s weights as ``directory/model.safetensors``, by the Hub checkpoints' names."""
    from safetensors.torch import save_file

    weights = {_hub_name(name): tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(weights, str(Path(directory) / "model.safetensors"), metadata={"format": "pt"})


def write_checkpoint(directory, **model_options):
    """Build a tiny LLaVA-1.5 (``svdprune.testing.models.build_model``; ``model_options`` are fields
    of its ``Sizes``) and write it to ``directory`` (config, safetensors, tokenizer, processor, chat
    template).

    Returns ``(model, processor)``: the same weights, in memory, as transformers objects.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sizes = models.Sizes(**{"text_hidden": 128, "text_heads": 2, **model_options})
    processor = models.build_processor()
    processor.chat_template = CHAT_TEMPLATE
    processor.tokenizer.chat_template = CHAT_TEMPLATE
    model = models.build_model(processor, sizes)
    _write_hub_weights(model, directory)
    model.config.architectures = [type(model).__name__]  # vLLM picks its model class by this
    model.config.save_pretrained(directory)
    model.generation_config.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model, processor


def write_qwen_checkpoint(directory, family: str = "qwen2_5_vl", *, max_tokens: int = models.QWEN_MAX_TOKENS, **model_options):
    """Build a tiny Qwen2.5-VL (``family="qwen2_5_vl"``) or Qwen3-VL (``"qwen3_vl"``) with
    ``svdprune.testing.models.build_qwen_model`` (``model_options`` are fields of its ``Sizes``)
    and write it to ``directory`` with its processor and chat template.

    Images and video frames become 4 to ``max_tokens`` merged tokens. Returns the transformers model.
    """
    sizes = models.Sizes(**{"text_hidden": 128, "text_heads": 2, **model_options})
    processor = models.build_qwen_processor(family, max_tokens=max_tokens)
    # A small rotary base: the output depends on every kept token's position (models.build_qwen_model).
    model = models.build_qwen_model(processor, family, sizes, rope_theta=100.0)
    models.save_checkpoint(model, processor, directory)
    return model


def write_llava_next_checkpoint(
    directory, family: str = "llava_next", *, tile_size: int = models.TILE_SIZE, **model_options
):
    """Build a tiny LLaVA-NeXT (``family="llava_next"``, CLIP) or LLaVA-OneVision
    (``"llava_onevision"``, SigLIP) of 112 px crops, 64 tokens each, with
    ``svdprune.testing.models`` (``model_options`` are fields of its ``Sizes``) and write it to
    ``directory`` with its processor and chat template, its weights by the Hub checkpoints' names
    (as :func:`write_checkpoint`). ``tile_size=336`` gives LLaVA-NeXT its own crops (576 tokens
    each; LLaVA-NeXT only). Returns the transformers model."""
    sizes = models.Sizes(**{"text_hidden": 128, "text_heads": 2, **model_options})
    if family == "llava_next":
        processor = models.build_next_processor(tile_size=tile_size)
        model = models.build_next_model(processor, sizes)
    elif tile_size != models.TILE_SIZE:
        raise ValueError(f"tile_size: only LLaVA-NeXT takes another crop size, got {tile_size} for {family!r}")
    else:
        processor = models.build_onevision_processor()
        model = models.build_onevision_model(processor, sizes)
    models.save_checkpoint(model, processor, directory)
    _write_hub_weights(model, directory)  # the vision tower's weights by the names vLLM loads
    return model
