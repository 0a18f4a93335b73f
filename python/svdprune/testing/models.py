"""A LLaVA-1.5-shaped model with random weights, built locally with nothing downloaded.

The geometry that matters for token pruning is the real one: CLIP at 336 px with 14 px patches,
so every image becomes 576 visual tokens (577 with CLS, dropped by the ``"default"`` feature
strategy), the penultimate vision layer feeds a 2-layer GELU projector, and the processor expands
``<image>`` into 576 placeholder tokens. Only the widths and depths are small. The tokenizer is a
byte-level BPE trained on a few sentences with the ``tokenizers`` library, so any prompt encodes.
"""

from __future__ import annotations

import torch

__all__ = ["build_tokenizer", "build_processor", "build_model", "IMAGE_SIZE", "PATCH_SIZE", "IMAGE_TOKEN"]

IMAGE_SIZE = 336
PATCH_SIZE = 14
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]

_CORPUS = [
    "USER: What is shown in the image? ASSISTANT: A person in a white suit holding a helmet.",
    "USER: Describe the photo in detail. ASSISTANT: A cat with striped fur looks at the camera.",
    "USER: What colour is the cup? ASSISTANT: The cup of coffee sits on a saucer on a table.",
    "USER: How many objects are there? ASSISTANT: There are two images, a rocket and a flag.",
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "the a an of in on at to is are was were be this that these those with without from",
    "what where when which who why how yes no left right top bottom colour color shape size",
    "0 1 2 3 4 5 6 7 8 9 , . ? ! : ; ' \" ( ) - \n",
]


def build_tokenizer(padding_side: str = "left"):
    """A ``PreTrainedTokenizerFast`` (byte-level BPE, Llama-style ``<s>`` prefix, ``<image>`` token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS, trainer=trainer)
    bos = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side=padding_side,
        model_input_names=["input_ids", "attention_mask"],  # as Llama's tokenizer: no token_type_ids
    )


def _clip_image_processor():
    # transformers 5.x names the PIL-backed processor CLIPImageProcessorPil; CLIPImageProcessor
    # itself wants torchvision there and falls back to it with a warning.
    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor
    # LLaVA-1.5's preprocessing: resize the shortest edge to 336, centre-crop 336x336, CLIP mean/std.
    return ImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )


def build_processor(padding_side: str = "left"):
    """A ``LlavaProcessor`` that expands ``<image>`` into 576 placeholders, as llava-hf's does."""
    from transformers import LlavaProcessor

    return LlavaProcessor(
        image_processor=_clip_image_processor(),
        tokenizer=build_tokenizer(padding_side),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLS
    )


def build_model(
    processor,
    *,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    text_hidden: int = 64,
    text_layers: int = 2,
    text_heads: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A randomly initialised ``LlavaForConditionalGeneration`` matching ``processor``'s tokenizer."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = processor.tokenizer
    vision_config = CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=vision_hidden,
        intermediate_size=4 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=max(1, vision_hidden // 32),
        projection_dim=vision_hidden,
    )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=2 * text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    config.pad_token_id = tokenizer.pad_token_id
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.to(dtype).eval()
