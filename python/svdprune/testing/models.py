"""LLaVA-family models with random weights, built locally with nothing downloaded.

LLaVA-1.5 (``build_processor``, ``build_model``):

The geometry that matters for token pruning is the real one: CLIP at 336 px with 14 px patches,
so every image becomes 576 visual tokens (577 with CLS, dropped by the ``"default"`` feature
strategy), the penultimate vision layer feeds a 2-layer GELU projector, and the processor expands
``<image>`` into 576 placeholder tokens. Only the widths and depths are small. The tokenizer is a
byte-level BPE trained on a few sentences with the ``tokenizers`` library, so any prompt encodes.

LLaVA-NeXT (``build_next_processor``, ``build_next_model``) and LLaVA-OneVision
(``build_onevision_processor``, ``build_onevision_model``) keep their real structure (anyres base
view plus tiles chosen from ``image_grid_pinpoints``, unpadding, a newline after each row; OneVision's
2x2-pooled video frames) at a small scale: 112 px crops of 14 px patches, 64 tokens per crop and up
to four tiles, so an image is at most 5 x 64 tokens plus newlines and the tests run in seconds.
``video_inputs`` builds OneVision video inputs from still frames (the video processor needs
torchvision, which these models do not).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "build_tokenizer",
    "build_processor",
    "build_model",
    "build_next_processor",
    "build_next_model",
    "build_onevision_processor",
    "build_onevision_model",
    "video_inputs",
    "LanguageModelInputs",
    "last_real_logits",
    "IMAGE_SIZE",
    "PATCH_SIZE",
    "IMAGE_TOKEN",
    "VIDEO_TOKEN",
    "TILE_SIZE",
    "GRID_PINPOINTS",
]

IMAGE_SIZE = 336
PATCH_SIZE = 14
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
# The anyres models' crops: 112 px, so 8 x 8 = 64 tokens per crop; tile grids of up to 2 x 2.
TILE_SIZE = 112
GRID_PINPOINTS = [[112, 224], [224, 112], [224, 224], [112, 336], [336, 112]]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

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
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
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
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tokenizer = processor.tokenizer
    config = LlavaConfig(
        vision_config=_vision_config("CLIPVisionConfig", vision_hidden, vision_layers, IMAGE_SIZE),
        text_config=_text_config(tokenizer, text_hidden, text_layers, text_heads),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    return _finish(LlavaForConditionalGeneration, config, tokenizer, seed, dtype)


def _text_config(tokenizer, hidden: int, layers: int, heads: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _finish(model_class, config, tokenizer, seed: int, dtype: torch.dtype):
    """``model_class(config)`` with seeded random weights, the tokenizer's special tokens, eval mode."""
    config.pad_token_id = tokenizer.pad_token_id
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.to(dtype).eval()


def _image_processor(name: str, **kwargs):
    # transformers 5.x names the PIL-backed image processors ...Pil; 4.57's are PIL-backed already.
    import transformers

    pil = f"{name}Pil"
    return getattr(transformers, pil if hasattr(transformers, pil) else name)(**kwargs)


def _pinpoints(tile_size: int) -> list[list[int]]:
    return [[h * tile_size // TILE_SIZE, w * tile_size // TILE_SIZE] for h, w in GRID_PINPOINTS]


def _anyres_image_processor(name: str, mean, std, tile_size: int = TILE_SIZE):
    return _image_processor(
        name,
        size={"shortest_edge": tile_size} if name.startswith("LlavaNext") else {"height": tile_size, "width": tile_size},
        crop_size={"height": tile_size, "width": tile_size},
        image_grid_pinpoints=_pinpoints(tile_size),
        image_mean=mean,
        image_std=std,
        do_pad=True,
    )


def _vision_config(kind: str, hidden: int, layers: int, image_size: int = TILE_SIZE):
    """A small CLIP or SigLIP tower (``kind``) for ``image_size`` px images or crops."""
    import transformers

    return getattr(transformers, kind)(
        image_size=image_size,
        patch_size=PATCH_SIZE,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 32),
    )


def build_next_processor(padding_side: str = "left", *, tile_size: int = TILE_SIZE):
    """A ``LlavaNextProcessor`` for anyres crops of ``tile_size`` px (CLIP with CLS: 64 tokens per
    112 px crop; ``tile_size=336`` is LLaVA-NeXT's own geometry, 576 tokens per crop)."""
    from transformers import LlavaNextProcessor

    return LlavaNextProcessor(
        image_processor=_anyres_image_processor("LlavaNextImageProcessor", CLIP_MEAN, CLIP_STD, tile_size),
        tokenizer=build_tokenizer(padding_side),
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLS
    )


def build_next_model(
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
    """A randomly initialised ``LlavaNextForConditionalGeneration`` (CLIP tower, Llama text model)
    for ``processor``'s crops."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    tokenizer = processor.tokenizer
    tile_size = processor.image_processor.crop_size["height"]
    config = LlavaNextConfig(
        vision_config=_vision_config("CLIPVisionConfig", vision_hidden, vision_layers, tile_size),
        text_config=_text_config(tokenizer, text_hidden, text_layers, text_heads),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_grid_pinpoints=_pinpoints(tile_size),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    return _finish(LlavaNextForConditionalGeneration, config, tokenizer, seed, dtype)


SIGLIP_MEAN = SIGLIP_STD = [0.5, 0.5, 0.5]


def build_onevision_processor(padding_side: str = "left"):
    """A ``LlavaOnevisionProcessor`` for 112 px anyres crops (SigLIP, no CLS: 64 tokens per crop)."""
    from transformers import LlavaOnevisionProcessor

    class ImageTextProcessor(LlavaOnevisionProcessor):
        """OneVision's processor without its video processor, which needs torchvision."""

        attributes = ["image_processor", "tokenizer"]  # transformers 4.57 reads this list

        def __init__(self, image_processor=None, tokenizer=None, **kwargs):  # 5.x reads this signature
            super().__init__(image_processor, tokenizer, None, **kwargs)

    tokenizer = build_tokenizer(padding_side)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, VIDEO_TOKEN]})
    return ImageTextProcessor(
        image_processor=_anyres_image_processor("LlavaOnevisionImageProcessor", SIGLIP_MEAN, SIGLIP_STD),
        tokenizer=tokenizer,
        num_image_tokens=(TILE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="full",
    )


def build_onevision_model(
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
    """A randomly initialised ``LlavaOnevisionForConditionalGeneration`` (SigLIP tower, Llama text model)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    tokenizer = processor.tokenizer
    config = LlavaOnevisionConfig(
        vision_config=_vision_config("SiglipVisionConfig", vision_hidden, vision_layers),
        text_config=_text_config(tokenizer, text_hidden, text_layers, text_heads),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        video_token_index=tokenizer.convert_tokens_to_ids(VIDEO_TOKEN),
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
        projector_hidden_act="gelu",
    )
    return _finish(LlavaOnevisionForConditionalGeneration, config, tokenizer, seed, dtype)


def video_inputs(processor, clips, prompts):
    """OneVision inputs for ``clips`` (each a list of RGB uint8 frames) and one ``<video>`` per prompt.

    Every frame is resized to the tower's size and normalised as the video processor does; each
    ``<video>`` becomes ``frames * pooled tokens + 1`` placeholders (the newline after the clip).
    """
    import numpy as np
    from PIL import Image

    mean, std = np.asarray(SIGLIP_MEAN), np.asarray(SIGLIP_STD)

    def frame_pixels(frame):
        resized = np.asarray(Image.fromarray(frame).resize((TILE_SIZE, TILE_SIZE), Image.BICUBIC), dtype=np.float64)
        return torch.from_numpy(((resized / 255.0 - mean) / std).transpose(2, 0, 1)).float()

    pixel_values_videos = torch.stack([torch.stack([frame_pixels(f) for f in clip]) for clip in clips])
    pooled = math.ceil(TILE_SIZE // PATCH_SIZE / 2) ** 2  # the model pools each frame 2x2
    expanded = [
        prompt.replace(VIDEO_TOKEN, VIDEO_TOKEN * (len(clip) * pooled + 1)) for clip, prompt in zip(clips, prompts)
    ]
    inputs = processor.tokenizer(expanded, return_tensors="pt", padding=True)
    inputs["pixel_values_videos"] = pixel_values_videos
    return inputs


class LanguageModelInputs:
    """Records the ``inputs_embeds`` of every call of ``model``'s language model (a context manager)."""

    def __init__(self, model):
        self.embeds = []
        self.handle = model.model.language_model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.embeds.append(kwargs["inputs_embeds"])

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.handle.remove()


def last_real_logits(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token logits of each row: at its last attended position, whatever the padding side."""
    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).long().argmax(1)
    return logits[torch.arange(logits.shape[0]), last]
