"""The seam between the engine and the hardware that runs the model.

A SmolVLM request is two stages: the vision stage turns preprocessed tiles into image embeddings
(SigLIP encoder + pixel-shuffle connector) and the language stage turns prompt ids plus those
embeddings into new tokens (SmolLM2 decoder). Backends implement the two stages; the engine owns
prompts, tiling, caching, batching and timing and never knows which backend runs a stage, so a
stage can live on different hardware (e.g. vision on a Rockchip NPU, language on the CPU).

Tensors crossing the seam are torch tensors on the CPU or on the stage's device; a stage moves
what it receives to where it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

# Called with each new token id as it is produced (single-sequence generations only).
TokenCallback = Callable[[int], None]
# Polled between tokens; True ends the generation early (cancel, deadline, shutdown).
StopCheck = Callable[[], bool]
# (row index, that row's token ids so far as a 1-D tensor) -> the tokens allowed next: a list of
# ids, or a boolean mask over the vocabulary.
AllowedTokens = Callable[[int, Any], list[int]]


@dataclass(frozen=True)
class Sampling:
    """Decoding strategy. Greedy by default: the same frame and prompt give the same text."""

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int | None = None  # with do_sample: seeds each request, for reproducible sampling

    def validate(self) -> Sampling:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        return self


COMPILE_MODES = ("auto", "on", "off")
QUANTIZATIONS = ("none", "int8", "int4")  # int4: int4 decoder weights, int8 vision


@dataclass(frozen=True)
class BackendOptions:
    """Settings a backend is built with, beyond the loaded model (same for every backend: one
    that has no use for a field ignores it)."""

    # Compile the decode step: auto (where it pays: CUDA), on, off. Eager is the fallback when
    # a compiler is missing or misbehaves on a platform.
    compile: str = "auto"
    # Threads of runtimes that take a count (openvino); 0: the cores this process may use.
    cpu_threads: int = 0
    # Quantisation, for backends that offer it (openvino): none | int8.
    quantization: str = "none"
    # The remote backend's server, key, image encoding and failure handling (RemoteOptions).
    remote: Any = None
    # Rockchip NPU (rknn): the converted model's directory or .rknn file ("": the conversion of
    # this checkpoint for this board's SoC in the cache), and the NPU cores to run on
    # (auto | 0 | 1 | 2 | 0_1 | 0_1_2; rknn_backend.CORE_MASKS).
    rknn_model: str = ""
    npu_core_mask: str = "auto"


@dataclass(frozen=True)
class GenerationRequest:
    """What the language stage is asked to do for a batch of prompts."""

    input_ids: Any  # [batch, length] int64; padded as Engine._generate documents
    attention_mask: Any  # [batch, length]
    image_embeddings: Any | None  # [image tokens of the whole batch, hidden]; None with a prefix
    max_new_tokens: int
    min_new_tokens: int = 0  # benchmarks: force exactly max_new_tokens
    sampling: Sampling = Sampling()
    on_token: TokenCallback | None = None
    should_stop: StopCheck | None = None
    prefix: Any | None = None  # from prefill(): covers the first tokens of every row
    # Constrained decoding (counts, grammars): (row, that row's ids so far) -> the token ids
    # allowed next, transformers' ``prefix_allowed_tokens_fn`` contract.
    allowed_tokens: AllowedTokens | None = None
    want_logprobs: bool = False  # fill Generation.token_logprobs (under any constraint)


@dataclass
class Generation:
    """What the language stage produced for one prompt, with the batch's time split."""

    token_ids: list[int]
    prefill_s: float  # prompt processing up to and including the first new token
    decode_s: float  # the remaining tokens
    # log-probability of each token as chosen (after constraints), when asked for
    token_logprobs: list[float] | None = None


class VisionStage(Protocol):
    """Image tiles -> image embeddings."""

    def encode(self, pixel_values: Any, pixel_attention_mask: Any) -> Any:
        """[n, 3, T, T] tiles (and [n, T, T] masks) -> [n * tokens_per_tile, hidden]."""
        ...


class LanguageStage(Protocol):
    """Prompt ids + image embeddings -> new token ids."""

    # The checkpoint's stop tokens: a generation ends after the first one it makes (and says so:
    # the engine reports finish_reason "stop" when the last token is one of these).
    eos_ids: frozenset[int]

    def generate(self, request: GenerationRequest) -> list[Generation]:
        """One Generation per row of ``request.input_ids``."""
        ...

    def prefill(self, input_ids: Any, image_embeddings: Any) -> Any:
        """Run the model over a shared prompt prefix once; the result seeds later generations."""
        ...

    def score(self, prompt_ids: Any, image_embeddings: Any, options: list[Any]) -> list[float]:
        """Summed log-probability of each option's tokens continuing the prompt (1-D ids, its
        image tokens filled from ``image_embeddings``): typed answers compare options. The
        prompt runs once; single-token options need nothing more (a yes/no answer costs one
        prefill), longer ones one batched pass over their tokens from the prompt's cache."""
        ...


@dataclass(frozen=True)
class WholeRequest:
    """One request as a backend that runs the whole model takes it (a remote inference
    server: the backend's ``whole``): images and text in, text out. The engine
    still owns the prompt text, the tile plan, bounds, timing and provenance."""

    images: tuple[Any, ...]  # RGB uint8 arrays, in prompt order (frames, or the engine's tiles)
    text: str  # the user text: caption prompt or question
    max_new_tokens: int
    min_new_tokens: int = 0
    sampling: Sampling = Sampling()
    deadline: float | None = None  # time.monotonic() by which the answer must be back
    on_text: Callable[[str], None] | None = None  # each piece of text as the server streams it
    should_stop: StopCheck | None = None  # polled between streamed pieces: True cancels


@dataclass
class WholeAnswer:
    """What the server made of a :class:`WholeRequest`."""

    text: str
    finish_reason: str  # stop | length | deadline | cancelled
    model: str  # the model as the server names it (and its build, where it says)
    prompt_tokens: int  # the server's counts (0 where it gives none)
    generated_tokens: int
    encode_s: float  # images -> JPEG / PNG on this machine
    prefill_s: float  # the server's prompt time where it reports one, else 0
    decode_s: float  # the server's generation time, else the request's round trip
    round_trip_s: float  # request sent to answer read, retries included


class WholeRequestStage(Protocol):
    """Whole requests -> answers, many in flight at once where the server batches them."""

    def run(self, requests: list[WholeRequest]) -> list[WholeAnswer]:
        """One answer per request, in order; the first failure is raised."""
        ...

    def problem(self) -> str | None:
        """Why requests fail fast right now (the server is down), for /diagnostics; None: ok."""
        ...


class Backend(Protocol):
    """A pair of stages plus what to report as provenance. A backend that runs the whole model
    per request (a remote server) has ``whole``, a :class:`WholeRequestStage`, instead (its
    stages are None); the engine looks for it."""

    name: str
    device: str
    dtype: str
    vision: VisionStage
    language: LanguageStage
