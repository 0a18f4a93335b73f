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

Qwen2.5-VL and Qwen3-VL (``build_qwen_processor``, ``build_qwen_model``, ``family="qwen2_5_vl"`` or
``"qwen3_vl"``) keep their real structure too: native-resolution images resized to multiples of the
merged patch (14 px patches merged 2x2 for Qwen2.5-VL, with window attention; 16 px for Qwen3-VL,
with deepstack), 3-D rotary positions, but at most 64 merged tokens per image.
``qwen_video_inputs`` builds their video inputs from still frames.

``save_checkpoint`` writes any of them to a directory as checkpoints on the Hub are laid out, with
a chat template, for tools that load a model by its path (``from_pretrained``, ``AutoProcessor``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "Sizes",
    "TINY",
    "build_tokenizer",
    "build_processor",
    "build_model",
    "build_next_processor",
    "build_next_model",
    "build_onevision_processor",
    "build_onevision_model",
    "video_inputs",
    "build_qwen_processor",
    "build_qwen_model",
    "qwen_video_inputs",
    "save_checkpoint",
    "LLAVA_CHAT_TEMPLATE",
    "QWEN_CHAT_TEMPLATE",
    "QWEN_IMAGE",
    "QWEN_VIDEO",
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



@dataclass(frozen=True)
class Sizes:
    """How wide and deep a model's vision tower and language model are (the geometry of images and
    tokens is each family's own)."""

    vision_hidden: int = 32
    vision_layers: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4


TINY = Sizes()  # the tests' models: a forward pass takes milliseconds

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
    sizes: Sizes = TINY,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A randomly initialised ``LlavaForConditionalGeneration`` matching ``processor``'s tokenizer."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tokenizer = processor.tokenizer
    config = LlavaConfig(
        vision_config=_vision_config("CLIPVisionConfig", sizes, IMAGE_SIZE),
        text_config=_text_config(tokenizer, sizes),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    return _finish(LlavaForConditionalGeneration, config, tokenizer, seed, dtype)


def _text_settings(tokenizer, sizes: Sizes) -> dict:
    """The language model's sizes and the tokenizer's vocabulary and special tokens."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=sizes.text_hidden,
        intermediate_size=2 * sizes.text_hidden,
        num_hidden_layers=sizes.text_layers,
        num_attention_heads=sizes.text_heads,
        num_key_value_heads=sizes.text_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _text_config(tokenizer, sizes: Sizes):
    from transformers import LlamaConfig

    return LlamaConfig(**_text_settings(tokenizer, sizes))


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


def _vision_config(kind: str, sizes: Sizes, image_size: int = TILE_SIZE):
    """A CLIP or SigLIP tower (``kind``) for ``image_size`` px images or crops."""
    import transformers

    return getattr(transformers, kind)(
        image_size=image_size,
        patch_size=PATCH_SIZE,
        hidden_size=sizes.vision_hidden,
        intermediate_size=4 * sizes.vision_hidden,
        num_hidden_layers=sizes.vision_layers,
        num_attention_heads=max(1, sizes.vision_hidden // 32),
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
    sizes: Sizes = TINY,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A randomly initialised ``LlavaNextForConditionalGeneration`` (CLIP tower, Llama text model)
    for ``processor``'s crops."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    tokenizer = processor.tokenizer
    tile_size = processor.image_processor.crop_size["height"]
    config = LlavaNextConfig(
        vision_config=_vision_config("CLIPVisionConfig", sizes, tile_size),
        text_config=_text_config(tokenizer, sizes),
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

    tokenizer = build_tokenizer(padding_side)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN, VIDEO_TOKEN]})
    return _without_video_processor(LlavaOnevisionProcessor)(
        image_processor=_anyres_image_processor("LlavaOnevisionImageProcessor", SIGLIP_MEAN, SIGLIP_STD),
        tokenizer=tokenizer,
        num_image_tokens=(TILE_SIZE // PATCH_SIZE) ** 2,
        vision_feature_select_strategy="full",
    )


def build_onevision_model(
    processor,
    sizes: Sizes = TINY,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A randomly initialised ``LlavaOnevisionForConditionalGeneration`` (SigLIP tower, Llama text model)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    tokenizer = processor.tokenizer
    config = LlavaOnevisionConfig(
        vision_config=_vision_config("SiglipVisionConfig", sizes),
        text_config=_text_config(tokenizer, sizes),
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
    """Records the keyword arguments (``calls``) and the ``inputs_embeds`` (``embeds``) of every call
    of ``model``'s language model (a context manager)."""

    def __init__(self, model):
        self.calls, self.embeds = [], []
        self.handle = model.model.language_model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.calls.append(dict(kwargs))
        self.embeds.append(kwargs["inputs_embeds"])

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.handle.remove()


def last_real_logits(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Next-token logits of each row: at its last attended position, whatever the padding side."""
    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).long().argmax(1)
    return logits[torch.arange(logits.shape[0]), last]


# -- Qwen2.5-VL and Qwen3-VL ------------------------------------------------------------------------

VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"
QWEN_IMAGE_TOKEN, QWEN_VIDEO_TOKEN = "<|image_pad|>", "<|video_pad|>"
QWEN_IMAGE = VISION_START + QWEN_IMAGE_TOKEN + VISION_END  # what a prompt writes for one image
QWEN_VIDEO = VISION_START + QWEN_VIDEO_TOKEN + VISION_END
QWEN_MERGE = 2  # 2x2 patches merge into one visual token
# Qwen's image preprocessing in small: images are resized to multiples of patch * merge px with
# between 4 and 64 merged tokens (real checkpoints allow up to 1,280 or more).
QWEN_MIN_TOKENS, QWEN_MAX_TOKENS = 4, 64
QWEN_PATCH = {"qwen2_vl": 14, "qwen2_5_vl": 14, "qwen3_vl": 16}
QWEN_PROCESSORS = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}
QWEN_MEAN = [0.48145466, 0.4578275, 0.40821073]
QWEN_STD = [0.26862954, 0.26130258, 0.27577711]


def _without_video_processor(processor_class):
    """``processor_class`` without its video processor, which needs torchvision (not installed)."""

    class ImageTextProcessor(processor_class):
        # transformers 4.57 reads these: the parts, and the tokenizer class it accepts (any).
        attributes = ["image_processor", "tokenizer"]
        tokenizer_class = "PreTrainedTokenizerFast"

        def __init__(self, image_processor=None, tokenizer=None, **kwargs):  # 5.x reads this signature
            super().__init__(image_processor, tokenizer, None, **kwargs)

    return ImageTextProcessor


def build_qwen_processor(family: str = "qwen2_5_vl", padding_side: str = "left", *, max_tokens: int = QWEN_MAX_TOKENS):
    """A Qwen2-VL (``family="qwen2_vl"``), Qwen2.5-VL (``"qwen2_5_vl"``, 14 px patches) or Qwen3-VL
    (``"qwen3_vl"``, 16 px) processor with the tiny tokenizer: ``QWEN_IMAGE`` in a prompt becomes
    one placeholder per merged 2x2 patch group of that image (resized to at most ``max_tokens``)."""
    import transformers

    processor_class = QWEN_PROCESSORS[family]
    unit = QWEN_PATCH[family] * QWEN_MERGE
    tokenizer = build_tokenizer(padding_side)
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [VISION_START, VISION_END, QWEN_IMAGE_TOKEN, QWEN_VIDEO_TOKEN]}
    )
    image_processor = _image_processor(
        "Qwen2VLImageProcessor",
        min_pixels=QWEN_MIN_TOKENS * unit * unit,
        max_pixels=max_tokens * unit * unit,
        patch_size=QWEN_PATCH[family],
        merge_size=QWEN_MERGE,
        temporal_patch_size=2,
        image_mean=QWEN_MEAN,
        image_std=QWEN_STD,
    )
    processor = _without_video_processor(getattr(transformers, processor_class))
    return processor(image_processor=image_processor, tokenizer=tokenizer)


def build_qwen_model(
    processor,
    family: str = "qwen2_5_vl",
    sizes: Sizes = TINY,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    rope_theta: float | None = None,
):
    """A randomly initialised ``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``
    or ``Qwen3VLForConditionalGeneration``.

    Qwen2-VL: a tower of global attention only. Qwen2.5-VL: window attention in windows of 4 x 4
    merged tokens (112 px, as the real tower) with the last block global, as the real tower
    alternates them. Qwen3-VL: learned position grid, deepstack features from every vision
    block into the first language-model layers. ``rope_theta``: the language model's rotary base
    instead of the family's (10^6 or 5 * 10^5); with a small one (100) a tiny model's output
    depends on where in an image's grid its tokens are (their height and width frequencies
    rotate by at most 10^-2 rad across a 64-token image at the family's own).
    """
    import transformers

    tokenizer = processor.tokenizer
    head_dim = sizes.text_hidden // sizes.text_heads
    quarter = head_dim // 8
    mrope_section = [head_dim // 2 - 2 * quarter, quarter, quarter]  # time, height, width frequencies
    text = _text_settings(tokenizer, sizes)
    text["num_key_value_heads"] = sizes.text_heads // 2  # grouped-query attention, as Qwen's
    if rope_theta is not None:
        text["rope_theta"] = rope_theta
    vision = dict(
        depth=sizes.vision_layers,
        hidden_size=sizes.vision_hidden,
        intermediate_size=2 * sizes.vision_hidden,
        num_heads=max(1, sizes.vision_hidden // 16),
        patch_size=QWEN_PATCH[family],
        spatial_merge_size=QWEN_MERGE,
        temporal_patch_size=2,
        out_hidden_size=sizes.text_hidden,
    )
    if family == "qwen2_vl":  # the tower's width is embed_dim, its output hidden_size
        text["rope_scaling"] = {"type": "mrope", "mrope_section": mrope_section}
        vision.update(embed_dim=sizes.vision_hidden, hidden_size=sizes.text_hidden, mlp_ratio=2)
        for name in ("intermediate_size", "out_hidden_size"):
            del vision[name]
        names = ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration")
    elif family == "qwen2_5_vl":
        text["rope_scaling"] = {"type": "mrope", "mrope_section": mrope_section}
        vision.update(window_size=4 * QWEN_MERGE * QWEN_PATCH[family], fullatt_block_indexes=[sizes.vision_layers - 1],
                      tokens_per_second=2)
        names = ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration")
    else:
        text.update(head_dim=head_dim, rope_scaling={"rope_type": "default", "mrope_section": mrope_section,
                                                     "mrope_interleaved": True})
        vision.update(num_position_embeddings=64, deepstack_visual_indexes=list(range(sizes.vision_layers)))
        names = ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration")
    config_class, model_class = (getattr(transformers, name) for name in names)
    config = config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=tokenizer.convert_tokens_to_ids(QWEN_IMAGE_TOKEN),
        video_token_id=tokenizer.convert_tokens_to_ids(QWEN_VIDEO_TOKEN),
        vision_start_token_id=tokenizer.convert_tokens_to_ids(VISION_START),
        vision_end_token_id=tokenizer.convert_tokens_to_ids(VISION_END),
    )
    return _finish(model_class, config, tokenizer, seed, dtype)


def qwen_video_inputs(processor, family: str, clips, prompts, *, images=None, frame_size: tuple[int, int] | None = None):
    """Qwen inputs for ``clips`` (each a list of an even number of RGB uint8 frames) and one
    ``QWEN_VIDEO`` per prompt, as the video processor (which needs torchvision) would make them;
    with ``images`` for the prompts' ``QWEN_IMAGE``s too.

    Frames are resized to ``frame_size`` (height, width; default 3 x 4 merged tokens), normalised
    and cut into the model's patches, two frames per temporal patch. Qwen2.5-VL: each video becomes
    ``frames / 2 * tokens per frame`` placeholders in one run, one second per temporal patch
    (``second_per_grid_ts``). Qwen3-VL: each temporal patch gets its own run after a timestamp.
    """
    import numpy as np
    from PIL import Image

    image_processor = processor.image_processor
    patch, merge, temporal = image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size
    unit = patch * merge
    height, width = frame_size or (3 * unit, 4 * unit)
    mean, std = np.asarray(QWEN_MEAN)[:, None, None], np.asarray(QWEN_STD)[:, None, None]

    def patches(clip):
        frames = np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC), dtype=np.float64)
                           for f in clip]).transpose(0, 3, 1, 2)
        frames = (frames / 255.0 - mean) / std
        t, h, w = len(clip) // temporal, height // patch, width // patch
        # The image processor's order: merged 2x2 groups row by row, each patch channels-first.
        grouped = frames.reshape(t, temporal, 3, h // merge, merge, patch, w // merge, merge, patch)
        flat = grouped.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(t * h * w, -1)
        return torch.from_numpy(flat).float(), [t, h, w]

    pixel_values, grids = zip(*(patches(clip) for clip in clips))
    texts = []
    for (t, h, w), prompt in zip(grids, prompts):
        per_frame = QWEN_VIDEO_TOKEN * (h * w // merge**2)
        if family == "qwen3_vl":
            runs = "".join(f"<{i * temporal / 2:.1f} seconds>{VISION_START}{per_frame}{VISION_END}" for i in range(t))
        else:
            runs = VISION_START + per_frame * t + VISION_END
        texts.append(prompt.replace(QWEN_VIDEO, runs))
    pictures = image_processor(images=images, return_tensors="pt") if images else {}
    if images:  # each image's placeholder, once per merged token, in prompt order
        counts = iter((pictures["image_grid_thw"].prod(-1) // merge**2).tolist())
        texts = ["".join(part + QWEN_IMAGE_TOKEN * next(counts) for part in text.split(QWEN_IMAGE_TOKEN)[:-1])
                 + text.split(QWEN_IMAGE_TOKEN)[-1] for text in texts]
    inputs = processor.tokenizer(texts, return_tensors="pt", padding=True)
    inputs.update(pictures)
    inputs["pixel_values_videos"] = torch.cat(pixel_values)
    inputs["video_grid_thw"] = torch.tensor(grids)
    if family == "qwen2_5_vl":
        inputs["second_per_grid_ts"] = torch.ones(len(clips))
    if getattr(processor, "return_mm_token_type_ids", False) is True:  # transformers 5.x models want them
        ids, token = inputs["input_ids"], processor.tokenizer.convert_tokens_to_ids
        inputs["mm_token_type_ids"] = (ids == token(QWEN_IMAGE_TOKEN)).int() + 2 * (ids == token(QWEN_VIDEO_TOKEN)).int()
    return inputs


# -- checkpoints on disk ----------------------------------------------------------------------------

# llava-hf's LLaVA-1.5 conversation format: "USER: <image>\n<question> ASSISTANT:" (the tokenizer
# adds <s>).
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for part in message['content'] | selectattr('type', 'equalto', 'text') %}{{ part['text'] + ' ' }}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
# Qwen2.5-VL's ChatML, with its default system prompt.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + QWEN_IMAGE + "{% elif part['type'] == 'video' %}" + QWEN_VIDEO +
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_checkpoint(model, processor, directory) -> None:
    """Write ``model`` and its ``processor`` (from this module's builders) to ``directory`` as a
    checkpoint on the Hub is laid out, with the family's chat template (``LLAVA_CHAT_TEMPLATE``,
    ``QWEN_CHAT_TEMPLATE``).

    A Qwen processor is written as the full processor class with a video processor for the same
    patches and frames of as many pixels as an image, a OneVision processor with one for frames of
    a crop's size, which ``AutoProcessor`` needs to load them (and which needs torchvision).
    """
    import transformers

    model_type = model.config.model_type
    if model_type in QWEN_PROCESSORS:
        image_processor = processor.image_processor
        video_processor_class = "Qwen3VLVideoProcessor" if model_type == "qwen3_vl" else "Qwen2VLVideoProcessor"
        video_processor = getattr(transformers, video_processor_class)(
            size=dict(image_processor.size),
            patch_size=image_processor.patch_size,
            merge_size=image_processor.merge_size,
            temporal_patch_size=image_processor.temporal_patch_size,
            image_mean=QWEN_MEAN,
            image_std=QWEN_STD,
        )
        processor = getattr(transformers, QWEN_PROCESSORS[model_type])(
            image_processor=image_processor, tokenizer=processor.tokenizer, video_processor=video_processor
        )
    elif model_type == "llava_onevision":
        processor = transformers.LlavaOnevisionProcessor(
            image_processor=processor.image_processor,
            tokenizer=processor.tokenizer,
            video_processor=transformers.LlavaOnevisionVideoProcessor(
                size={"height": TILE_SIZE, "width": TILE_SIZE}, image_mean=SIGLIP_MEAN, image_std=SIGLIP_STD
            ),
            num_image_tokens=processor.num_image_tokens,
            vision_feature_select_strategy=processor.vision_feature_select_strategy,
        )
    processor.chat_template = QWEN_CHAT_TEMPLATE if model_type in QWEN_PROCESSORS else LLAVA_CHAT_TEMPLATE
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
