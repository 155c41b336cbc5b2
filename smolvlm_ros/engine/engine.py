"""The one engine every front end (node, replay, benchmark) calls for model work.

It owns what is the same whatever the hardware: tiling plans, preprocessing (the checkpoint's
own image processor), the prompt and its image-token layout (the reference processor's, checked
token for token by the parity tests), the embedding cache, batching, bounds (max_new_tokens,
deadline, cancel), the timing split and the provenance of each result. The two model stages run
on a :class:`~smolvlm_ros.engine.backends.base.Backend`, picked by name or ``auto`` through the
:mod:`~smolvlm_ros.engine.backends.registry`; the engine uses only what crosses that seam and
asks the backend's capabilities before batching, reusing a prefix or streaming tokens.

Not thread-safe: one worker drives an engine.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import PIL.Image
import torch

from smolvlm_ros.engine.answers import (
    AnswerSpec,
    AnswerType,
    CountConstraint,
    JsonGrammars,
    TypedAnswer,
    count_tokens,
    parse_count,
    parse_json,
    pick_option,
)
from smolvlm_ros.engine.backends.base import (
    Backend,
    BackendOptions,
    Generation,
    GenerationRequest,
    Sampling,
    StopCheck,
    TokenCallback,
    WholeAnswer,
    WholeRequest,
)
from smolvlm_ros.engine.backends.registry import AUTO, BackendChoice, Capability, choose
from smolvlm_ros.engine.cache import EmbeddingCache, frame_key
from smolvlm_ros.engine.tiling import ModelGeometry, TilePlan, TilingConfig, plan_tiles
from smolvlm_ros.engine.types import (
    ANSWER,
    CAPTION,
    FINISH_CANCELLED,
    FINISH_DEADLINE,
    FINISH_LENGTH,
    FINISH_STOP,
    FinishReason,
    Frame,
    Result,
    Timing,
)
from smolvlm_ros.models.loading import LoadedModel, load_model, select_device, select_dtype

DEFAULT_CAPTION_PROMPT = "Describe this image in one sentence."
DEFAULT_MAX_NEW_TOKENS = 32
DEFAULT_EMBEDDING_CACHE = 8  # frames whose image embeddings are kept
WARM_UP_FRAME = (480, 640)  # height, width of the grey frame Engine.warm_up runs


class TokenBudgetError(ValueError):
    """The request would not fit the model's context; nothing was run."""


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed before any token was generated."""


@dataclass(frozen=True)
class EngineConfig:
    """How to build an engine: which model, where, and how to tile and decode."""

    model: str
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    backend: str = AUTO  # auto | a registered backend name (registry.backend_names())
    tiling: TilingConfig = field(default_factory=TilingConfig)
    sampling: Sampling = field(default_factory=Sampling)
    embedding_cache_size: int = DEFAULT_EMBEDDING_CACHE  # 0: off
    compile: str = "auto"  # compile the decode step (backends that can): auto | on | off
    cpu_threads: int = 0  # runtimes that take a thread count (openvino); 0: the usable cores
    quantization: str = "none"  # backends that offer it (openvino): none | int8
    remote: object | None = None  # backend remote: its RemoteOptions (server, key, images)
    rknn_model: str = ""  # backend rknn: a converted model's folder; "": found in the cache
    npu_core_mask: str = "auto"  # backend rknn: the NPU cores (auto, 0, 1, 2, 0_1, 0_1_2)

    def backend_options(self) -> BackendOptions:
        """What every backend is built with (each takes the fields it has a use for)."""
        return BackendOptions(
            compile=self.compile,
            cpu_threads=self.cpu_threads,
            quantization=self.quantization,
            remote=self.remote,
            rknn_model=self.rknn_model,
            npu_core_mask=self.npu_core_mask,
        )


@dataclass(frozen=True)
class Limits:
    """Bounds and hooks of one request."""

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    min_new_tokens: int = 0  # benchmarks: exactly max_new_tokens whatever the model says
    deadline: float | None = None  # time.monotonic() after which generation stops
    should_stop: StopCheck | None = None  # True: cancel (generation ends after this token)
    on_token: TokenCallback | None = None  # each new token id, as it is made

    def validate(self) -> Limits:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(
                f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}"
            )
        return self


@dataclass
class _Encoded:
    """A frame through the vision stage (or found in the cache)."""

    frame: Frame
    plan: TilePlan
    embeddings: torch.Tensor
    preprocess_s: float
    encode_s: float
    reused: bool


class _StopWatch:
    """The request's stop check, remembering why it stopped."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.reason: str | None = None

    def __call__(self) -> bool:
        if self.limits.should_stop is not None and self.limits.should_stop():
            self.reason = FINISH_CANCELLED
        elif self.limits.deadline is not None and time.monotonic() > self.limits.deadline:
            self.reason = FINISH_DEADLINE
        return self.reason is not None

    def check_before_start(self) -> None:
        if self.limits.deadline is not None and time.monotonic() > self.limits.deadline:
            raise DeadlineExceeded("the request's deadline passed before generation started")


def _ms(seconds: float) -> float:
    return seconds * 1000.0


def _queue_wait(frames: Sequence[Frame]) -> float:
    """Seconds the longest-waiting frame spent between arrival and now (the request's start)."""
    now = time.monotonic()
    return max((now - f.received_at for f in frames if f.received_at is not None), default=0.0)


class Engine:
    """Captions and answers for frames, with timing and provenance."""

    def __init__(
        self,
        loaded: LoadedModel,
        backend: Backend,
        tiling: TilingConfig | None = None,
        sampling: Sampling | None = None,
        embedding_cache_size: int = 8,
        backend_choice: BackendChoice | None = None,
    ) -> None:
        self.loaded = loaded
        self.backend = backend
        # How the backend was picked (name, reason); None when the caller built it directly,
        # and then the backend is taken to have every capability.
        self.backend_choice = backend_choice
        self.capabilities = (
            backend_choice.spec.capabilities if backend_choice else frozenset(Capability)
        )
        # A backend that runs the whole model per request (a remote server) has `whole` and no
        # stages: the engine hands it WholeRequests (see _whole).
        self.whole = getattr(backend, "whole", None)
        self.tiling = (tiling or TilingConfig()).validate()
        self.sampling = (sampling or Sampling()).validate()
        self.processor = loaded.processor
        self.tokenizer = loaded.processor.tokenizer
        self.geometry = ModelGeometry.from_processor(self.processor)
        self.image_token_id = loaded.model.config.image_token_id
        self.max_positions = loaded.model.config.text_config.max_position_embeddings
        self.cache = EmbeddingCache(embedding_cache_size)
        self._count_tokens: tuple[list[int], list[int]] | None = None  # built on first count
        self._grammars: JsonGrammars | None = None  # built on first json answer
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else self.tokenizer.eos_token_id

    @classmethod
    def from_config(cls, config: EngineConfig) -> Engine:
        """Pick the backend for the resolved device (before any weights load), load the model
        and build the backend on it. A backend that is unknown, unavailable or cannot run the
        device / dtype raises :class:`~smolvlm_ros.engine.backends.registry.BackendError`."""
        device = select_device(config.device)
        dtype = select_dtype(config.dtype, device)
        choice = choose(config.backend, device, None if config.dtype == "auto" else dtype)
        if dtype not in choice.spec.dtypes:  # dtype auto, and the backend does not run that one
            dtype = choice.spec.dtypes[0]
        loaded = load_model(config.model, device, dtype, weights=choice.spec.needs_weights)
        backend = choice.spec.build(loaded, config.backend_options())
        return cls(
            loaded, backend, config.tiling, config.sampling, config.embedding_cache_size, choice
        )

    def supports(self, capability: Capability) -> bool:
        """Whether the backend can do ``capability`` (batching, streaming, prefix reuse)."""
        return capability in self.capabilities

    def backend_problem(self) -> str | None:
        """Why the backend fails requests right now (a remote server down: its circuit is
        open), for /diagnostics; None when nothing is known to be wrong."""
        return self.whole.problem() if self.whole is not None else None

    @property
    def is_random(self) -> bool:
        return self.loaded.is_random

    # -- tasks ---------------------------------------------------------------------------------

    def caption(self, frame: Frame, prompt: str = DEFAULT_CAPTION_PROMPT, **limits) -> Result:
        """Describe ``frame`` following ``prompt``. Keyword arguments are :class:`Limits`."""
        return self.describe_frames([frame], prompt, CAPTION, **limits)

    def ask(
        self, frame: Frame, question: str, answer: AnswerSpec | None = None, **limits
    ) -> Result:
        """Answer ``question`` about ``frame``; with a typed ``answer`` (yes/no, count, choice)
        the result's ``typed`` holds the value and its confidence (see :mod:`.answers`)."""
        spec = (answer or AnswerSpec()).validate()
        if spec.type == AnswerType.TEXT:
            return self.describe_frames([frame], question, ANSWER, **limits)
        if spec.choices:
            return self._ask_options(frame, question, spec, **limits)
        return self._ask_constrained(frame, question, spec, **limits)

    def _ask_options(self, frame: Frame, question: str, spec: AnswerSpec, **limits) -> Result:
        """Score every complete option as the answer over the frame's (shared, cached) image
        embeddings: the prompt runs once, the options' tokens continue it in one batch; the
        most probable option is the answer."""
        started, queue_wait_s = time.perf_counter(), _queue_wait([frame])
        lim = Limits(**limits).validate()
        self._require(spec)
        self._check_text(question)
        (encoded,) = self._encode([frame], lim)
        t0 = time.perf_counter()
        prompt = self.prompt_ids(question + spec.instruction(), [encoded.plan])
        options = [self._answer_ids(option) for option in spec.choices]
        tokenize_s = time.perf_counter() - t0
        self._check_budget(len(prompt) + max(len(option) for option in options), 0)
        watch = _StopWatch(lim)
        watch.check_before_start()
        t0 = time.perf_counter()
        log_probs = self.backend.language.score(prompt, encoded.embeddings, options)
        typed = pick_option(spec, log_probs)
        best = spec.choices.index(typed.text)
        generation = Generation(options[best].tolist(), time.perf_counter() - t0, 0.0)
        result = self._result(
            ANSWER, question, [encoded], prompt, generation, lim, watch, started, queue_wait_s,
            tokenize_s,
        )  # fmt: skip
        return replace(result, text=typed.text, typed=typed, finish_reason=FINISH_STOP)

    def _ask_constrained(self, frame: Frame, question: str, spec: AnswerSpec, **limits) -> Result:
        """Decode under the type's constraint: digits only (count; the confidence is the
        probability of the digits made) or the JSON schema (the mean token probability).
        An answer cut short (max_new_tokens, deadline, cancel) has ``typed`` None."""
        started, queue_wait_s = time.perf_counter(), _queue_wait([frame])
        lim = Limits(**limits).validate()
        self._require(spec)
        self._check_text(question)
        (encoded,) = self._encode([frame], lim)
        t0 = time.perf_counter()
        ids = self.prompt_ids(question + spec.instruction(), [encoded.plan])
        if spec.type == AnswerType.COUNT:
            first, rest = self._count_vocabulary()
            constraint = CountConstraint(first, rest, self.backend.language.eos_ids, len(ids))
        else:
            constraint = self._json_grammars().constraint(spec.schema, 1, len(ids))
        tokenize_s = time.perf_counter() - t0
        watch = _StopWatch(lim)
        (generation,) = self._generate(
            [ids], encoded.embeddings, lim, watch, allowed_tokens=constraint, want_logprobs=True
        )
        result = self._result(
            ANSWER, question, [encoded], ids, generation, lim, watch, started, queue_wait_s,
            tokenize_s,
        )  # fmt: skip
        made = [t for t in generation.token_ids if t not in self.backend.language.eos_ids]
        logprobs = (generation.token_logprobs or [])[: len(made)]
        if not made or result.finish_reason != FINISH_STOP:
            return result  # cut short: no value to stand behind
        if spec.type == AnswerType.COUNT:
            value = parse_count(result.text)
            typed = TypedAnswer(spec.type, value, math.exp(sum(logprobs)), str(value))
        else:
            value = parse_json(result.text, spec.schema)
            mean = sum(math.exp(lp) for lp in logprobs) / len(logprobs)
            typed = TypedAnswer(spec.type, value, mean, json.dumps(value, ensure_ascii=False))
        return replace(result, text=typed.text, typed=typed)

    def unsupported_answer(self, spec: AnswerSpec) -> str | None:
        """Why this backend cannot answer questions of ``spec``'s type (None: it can), so front
        ends refuse them when asked, not when the worker gets to them."""
        if spec.type == AnswerType.TEXT:
            return None
        needed = Capability.SCORING if spec.choices else Capability.CONSTRAINED
        if self.supports(needed):
            return None
        return (
            f"backend {self.backend.name} cannot answer {spec.type} questions (it lacks "
            f"{needed.value}); ask for text, or use backend torch"
        )

    def _require(self, spec: AnswerSpec) -> None:
        reason = self.unsupported_answer(spec)
        if reason is not None:
            raise ValueError(reason)

    def _answer_ids(self, text: str) -> torch.Tensor:
        """An answer's tokens as the model would make them after the prompt ("Assistant:"
        is followed by a space, then the answer)."""
        ids = self.tokenizer(" " + text, add_special_tokens=False, return_tensors="pt")
        return ids["input_ids"][0]

    def _json_grammars(self) -> JsonGrammars:
        if self._grammars is None:
            vocab = self.loaded.model.config.text_config.vocab_size
            self._grammars = JsonGrammars(self.tokenizer, vocab, self.backend.language.eos_ids)
        return self._grammars

    def _count_vocabulary(self) -> tuple[list[int], list[int]]:
        if self._count_tokens is None:
            self._count_tokens = count_tokens(self.tokenizer)
        return self._count_tokens

    def describe_frames(
        self, frames: Sequence[Frame], user_text: str, kind: str = CAPTION, **limits
    ) -> Result:
        """One answer about several frames (e.g. cameras) together, all in one prompt."""
        started, queue_wait_s = time.perf_counter(), _queue_wait(frames)
        lim = Limits(**limits).validate()
        self._check_text(user_text)
        if self.whole is not None:
            return self._whole([frames], user_text, kind, lim, started, queue_wait_s)[0]
        encoded = self._encode(frames, lim)
        t0 = time.perf_counter()
        ids = self.prompt_ids(user_text, [e.plan for e in encoded])
        tokenize_s = time.perf_counter() - t0
        embeddings = torch.cat([e.embeddings for e in encoded])
        watch = _StopWatch(lim)
        (generation,) = self._generate([ids], embeddings, lim, watch)
        return self._result(
            kind, user_text, encoded, ids, generation, lim, watch, started, queue_wait_s, tokenize_s
        )

    def ask_many(self, frame: Frame, questions: Sequence[str], **limits) -> list[Result]:
        """Several questions about one frame, answered together: one vision pass, the shared
        prompt prefix (everything up to the question) through the decoder once, and the
        questions decoded as one batch. Answers equal separate :meth:`ask` calls; stage times
        in each result are the batch's (the vision pass is the first answer's)."""
        if not questions:
            return []
        if len(questions) == 1 or not (
            self.supports(Capability.BATCHING) and self.supports(Capability.PREFIX_REUSE)
        ):  # one at a time (the embedding cache still saves the repeated vision passes)
            return [self.ask(frame, question, **limits) for question in questions]
        started, queue_wait_s = time.perf_counter(), _queue_wait([frame])
        lim = Limits(**limits).validate()
        if lim.on_token is not None:
            raise ValueError("on_token streams single requests; ask_many answers as a batch")
        for question in questions:
            self._check_text(question)
        (encoded,) = self._encode([frame], lim)
        t0 = time.perf_counter()
        ids = [self.prompt_ids(q, [encoded.plan]) for q in questions]
        tokenize_s = time.perf_counter() - t0
        prefix_len = self._shared_prefix(ids)
        watch = _StopWatch(lim)
        watch.check_before_start()
        t0 = time.perf_counter()
        prefix = self.backend.language.prefill(ids[0][:prefix_len][None], encoded.embeddings)
        prefix_s = time.perf_counter() - t0
        generations = self._generate(ids, None, lim, watch, prefix=prefix, prefix_len=prefix_len)
        reused = _Encoded(frame, encoded.plan, encoded.embeddings, 0.0, 0.0, True)
        results = []
        for index, (question, prompt_ids, generation) in enumerate(
            zip(questions, ids, generations, strict=True)
        ):
            generation.prefill_s += prefix_s
            results.append(
                self._result(
                    ANSWER, question, [encoded if index == 0 else reused], prompt_ids,
                    generation, lim, watch, started, queue_wait_s, tokenize_s / len(questions),
                )
            )  # fmt: skip
        return results

    def caption_batch(
        self, frames: Sequence[Frame], prompt: str = DEFAULT_CAPTION_PROMPT, **limits
    ) -> list[Result]:
        """One caption per frame, the frames batched through both stages (results equal
        separate captions). Stage times in each result are the whole batch's."""
        started, queue_wait_s = time.perf_counter(), _queue_wait(frames)
        lim = Limits(**limits).validate()
        if lim.on_token is not None:
            raise ValueError("on_token streams single requests; it cannot follow a batch")
        if len(frames) > 1 and not self.supports(Capability.BATCHING):
            return [self.caption(frame, prompt, **limits) for frame in frames]
        self._check_text(prompt)
        if self.whole is not None:  # concurrent requests: the server batches
            return self._whole([[f] for f in frames], prompt, CAPTION, lim, started, queue_wait_s)
        encoded = self._encode(frames, lim)
        t0 = time.perf_counter()
        ids = [self.prompt_ids(prompt, [e.plan]) for e in encoded]
        tokenize_s = time.perf_counter() - t0
        embeddings = torch.cat([e.embeddings for e in encoded])
        watch = _StopWatch(lim)
        generations = self._generate(ids, embeddings, lim, watch)
        return [
            self._result(
                CAPTION, prompt, [e], i, g, lim, watch, started, queue_wait_s, tokenize_s / len(ids)
            )
            for e, i, g in zip(encoded, ids, generations, strict=True)
        ]

    # -- whole requests (a remote server runs the model) ------------------------------------

    def _images(self, frame: Frame) -> list[np.ndarray]:
        """What a server is sent for one frame: the frame itself, or (remote image mode
        ``tiles``) the engine's tile grid row by row, then the whole frame as the global image."""
        options = getattr(self.whole, "options", None)
        if getattr(options, "image_mode", "frame") != "tiles":
            return [frame.image]
        plan = self.plan(frame)
        height, width = frame.image.shape[:2]
        tiles = [
            frame.image[
                r * height // plan.rows : (r + 1) * height // plan.rows,
                c * width // plan.cols : (c + 1) * width // plan.cols,
            ]
            for r in range(plan.rows)
            for c in range(plan.cols)
        ]
        return [*tiles, frame.image]

    def _whole(
        self,
        groups: Sequence[Sequence[Frame]],
        user_text: str,
        kind: str,
        limits: Limits,
        started: float,
        queue_wait_s: float,
    ) -> list[Result]:
        """One result per group of frames, each group one request to a backend that runs the
        whole model; the groups go out together (the server batches them). Streamed text is
        passed on as token ids of this checkpoint's tokenizer (its byte-level BPE decodes the
        ids of consecutive pieces to exactly their concatenation)."""
        if not all(groups):
            raise ValueError("a request needs at least one frame")
        _StopWatch(limits).check_before_start()
        on_text = None
        if limits.on_token is not None:
            on_token = limits.on_token

            def on_text(piece: str) -> None:
                for token in self.tokenizer.encode(piece, add_special_tokens=False):
                    on_token(token)

        images = [[image for f in frames for image in self._images(f)] for frames in groups]
        requests = [
            WholeRequest(
                images=tuple(group_images),
                text=user_text,
                max_new_tokens=limits.max_new_tokens,
                min_new_tokens=limits.min_new_tokens,
                sampling=self.sampling,
                deadline=limits.deadline,
                on_text=on_text,
                should_stop=limits.should_stop,
            )
            for group_images in images
        ]
        answers = self.whole.run(requests)
        return [
            self._whole_result(kind, user_text, frames, len(imgs), answer, started, queue_wait_s)
            for frames, imgs, answer in zip(groups, images, answers, strict=True)
        ]

    def _whole_result(
        self,
        kind: str,
        user_text: str,
        frames: Sequence[Frame],
        num_images: int,
        answer: WholeAnswer,
        started: float,
        queue_wait_s: float,
    ) -> Result:
        newest = max(frames, key=lambda f: f.stamp_ns)
        tiled = getattr(getattr(self.whole, "options", None), "image_mode", "") == "tiles"
        plan = self.plan(frames[0]) if tiled else None
        try:
            finish = FinishReason(answer.finish_reason)
        except ValueError:  # e.g. content_filter: the server ended it
            finish = FINISH_STOP
        timing = Timing(
            queue_wait_ms=_ms(queue_wait_s),
            preprocess_ms=_ms(answer.encode_s),  # JPEG / PNG encoding here
            encode_ms=0.0,  # the vision stage runs on the server, inside its prompt time
            prefill_ms=_ms(answer.prefill_s),
            decode_ms=_ms(answer.decode_s),
            total_ms=_ms(queue_wait_s + time.perf_counter() - started),
            prompt_tokens=answer.prompt_tokens,
            image_tokens=0,  # the server's own tiling; it reports no image-token count
            generated_tokens=answer.generated_tokens,
        )
        return Result(
            kind=kind,
            text=answer.text,
            prompt=user_text,
            camera=",".join(f.camera for f in frames),
            stamp_ns=newest.stamp_ns,
            frame_id=newest.frame_id,
            model=answer.model,
            backend=self.backend.name,
            device=self.backend.device,
            dtype=self.backend.dtype,
            tile_rows=plan.rows if plan else 0,
            tile_cols=plan.cols if plan else 0,
            num_images=num_images,
            timing=timing,
            token_ids=self.tokenizer.encode(answer.text, add_special_tokens=False),
            finish_reason=finish,
            tiling_note=plan.note if plan else "",
        )

    def warm_up(
        self,
        max_batch: int = 1,
        prompt: str = DEFAULT_CAPTION_PROMPT,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        frame_shape: tuple[int, int] = WARM_UP_FRAME,
    ) -> float:
        """Run every batch size the caller will use (powers of two up to ``max_batch``) once
        on a grey frame, so that compilation, CUDA graph capture and first-call kernel set-up
        happen now and not on the first live frame. Returns the seconds it took; 0 when the
        backend has nothing to prepare (eager CPU)."""
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if not getattr(self.backend.language, "needs_warm_up", False):
            return 0.0
        started = time.perf_counter()
        frame = Frame(np.full((*frame_shape, 3), 128, np.uint8), camera="warm-up")
        rows = 1
        while True:
            tokens = min(max_new_tokens, 4)  # three decode steps: traced, recorded, replayed
            calls = itertools.count(1)
            self.caption_batch(
                [frame] * rows,
                prompt,
                max_new_tokens=max_new_tokens,  # the cache length of real requests
                min_new_tokens=tokens,
                should_stop=lambda calls=calls, tokens=tokens: next(calls) >= tokens,
            )
            if rows >= max_batch:
                break
            rows = min(rows * 2, max_batch)
        self.cache.clear()
        return time.perf_counter() - started

    def clear_cache(self) -> None:
        self.cache.clear()

    def free_memory(self) -> None:
        """After an out-of-memory error: drop cached embeddings and the allocator's spare blocks,
        so the next request starts from the model's own footprint."""
        self.cache.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- stages --------------------------------------------------------------------------------

    def plan(self, frame: Frame) -> TilePlan:
        """How ``frame`` will be tiled under this engine's settings."""
        height, width = frame.image.shape[:2]
        return plan_tiles(height, width, self.tiling, self.geometry)

    def preprocess_image(self, frame: Frame, plan: TilePlan) -> dict:
        """Pixel values and masks of one frame, from the checkpoint's own image processor."""
        return self.processor.image_processor(
            images=[[PIL.Image.fromarray(frame.image)]],
            size={"longest_edge": plan.longest_edge},
            do_image_splitting=plan.splitting,
            return_tensors="pt",
        )

    def _encode(self, frames: Sequence[Frame], limits: Limits) -> list[_Encoded]:
        """Image embeddings per frame: cached ones reused, the rest in ONE vision pass."""
        if not frames:
            raise ValueError("a request needs at least one frame")
        encoded: list[_Encoded | None] = []
        pending = []  # (index, plan, key, pixels, preprocess seconds)
        for frame in frames:
            t0 = time.perf_counter()
            plan = self.plan(frame)
            key = frame_key(frame.image, plan)
            cached = self.cache.get(key)
            if cached is not None:
                encoded.append(_Encoded(frame, plan, cached, time.perf_counter() - t0, 0.0, True))
                continue
            pixels = self.preprocess_image(frame, plan)
            pending.append((len(encoded), plan, key, pixels, time.perf_counter() - t0))
            encoded.append(None)
        if pending:
            _StopWatch(limits).check_before_start()
            t0 = time.perf_counter()
            embeddings = self.backend.vision.encode(
                torch.cat([p[3]["pixel_values"][0] for p in pending]),
                torch.cat([p[3]["pixel_attention_mask"][0] for p in pending]),
            )
            encode_s = time.perf_counter() - t0
            sizes = [p[1].num_images * self.geometry.tokens_per_tile for p in pending]
            if sum(sizes) != embeddings.shape[0]:
                raise RuntimeError(
                    f"vision stage returned {embeddings.shape[0]} embeddings for {sum(sizes)} "
                    "image tokens: backend and checkpoint disagree on the tokens per tile"
                )
            for (index, plan, key, _, prep_s), chunk in zip(
                pending, embeddings.split(sizes), strict=True
            ):
                self.cache.put(key, chunk)
                encoded[index] = _Encoded(frames[index], plan, chunk, prep_s, encode_s, False)
        return encoded  # type: ignore[return-value]

    def image_prompt(self, plan: TilePlan) -> str:
        """The text one image becomes in the prompt: the reference processor's layout."""
        p = self.processor
        image = p.image_token * p.image_seq_len
        global_image = f"{p.fake_image_token}{p.global_image_tag}{image}{p.fake_image_token}"
        if not plan.rows:
            return global_image
        grid = ""
        for row in range(1, plan.rows + 1):
            for col in range(1, plan.cols + 1):
                grid += f"{p.fake_image_token}<row_{row}_col_{col}>{image}"
            grid += "\n"
        return f"{grid}\n{global_image}"

    def chat_prompt(self, user_text: str, num_images: int = 1) -> str:
        """The model prompt with ``num_images`` image placeholders, from the chat template."""
        content = [{"type": "image"}] * num_images + [{"type": "text", "text": user_text}]
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def prompt_ids(self, user_text: str, plans: Sequence[TilePlan]) -> torch.Tensor:
        """Token ids of the full prompt for frames tiled as ``plans``, then ``user_text``."""
        parts = self.chat_prompt(user_text, len(plans)).split(self.processor.image_token)
        text = parts[0] + "".join(
            self.image_prompt(plan) + after for plan, after in zip(plans, parts[1:], strict=True)
        )
        return self.tokenizer(text, return_tensors="pt")["input_ids"][0]

    def _check_text(self, user_text: str) -> None:
        if not user_text.strip():
            raise ValueError("the prompt / question is empty")
        if self.processor.image_token in user_text:
            raise ValueError(f"the prompt must not contain {self.processor.image_token!r}")

    def _shared_prefix(self, ids: list[torch.Tensor]) -> int:
        """Tokens all prompts share; at least every image token, so the rest is plain text."""
        rows = [i.tolist() for i in ids]
        shortest = min(len(r) for r in rows)
        length = 0  # at most shortest - 1: every row keeps a token of its own to prefill
        while length < shortest - 1 and all(r[length] == rows[0][length] for r in rows):
            length += 1
        last_image = int((ids[0] == self.image_token_id).nonzero().max()) + 1
        if length < last_image:
            raise RuntimeError("prompts differ inside the image tokens: cannot share a prefix")
        return length

    def _generate(
        self,
        ids: list[torch.Tensor],
        embeddings: torch.Tensor | None,
        limits: Limits,
        watch: _StopWatch,
        prefix=None,
        prefix_len: int = 0,
        allowed_tokens=None,
        want_logprobs: bool = False,
    ) -> list[Generation]:
        """Pad the prompts into one batch and run the language stage.

        Without a prefix, rows are left-padded: every prompt ends where decoding starts. With
        a cached prefix (its first ``prefix_len`` tokens, shared by all rows), rows are
        [prefix | padding | rest of the prompt]: masked padding in the middle keeps the shared
        part aligned with the cache, and positions follow the attention mask.
        """
        self._check_budget(max(len(i) for i in ids), limits.max_new_tokens)
        watch.check_before_start()
        input_ids, attention_mask = self._pad_left(ids, prefix_len)
        # A backend that cannot stream gets no callback; its tokens are passed on at the end.
        streaming = self.supports(Capability.STREAMING)
        generations = self.backend.language.generate(
            GenerationRequest(
                input_ids=input_ids,
                attention_mask=attention_mask,
                image_embeddings=embeddings,
                max_new_tokens=limits.max_new_tokens,
                min_new_tokens=limits.min_new_tokens,
                sampling=self.sampling,
                on_token=limits.on_token if streaming else None,
                should_stop=watch,
                prefix=prefix,
                allowed_tokens=allowed_tokens,
                want_logprobs=want_logprobs,
            )
        )
        if limits.on_token is not None and not streaming:
            for token in generations[0].token_ids:
                limits.on_token(token)
        return generations

    def _check_budget(self, longest: int, max_new_tokens: int) -> None:
        if longest + max_new_tokens > self.max_positions:
            raise TokenBudgetError(
                f"prompt of {longest} tokens + max_new_tokens {max_new_tokens} exceeds "
                f"the model's context of {self.max_positions} tokens: lower max_new_tokens or "
                "the tiling (image_splitting, max_tiles, max_image_tokens)"
            )

    def _pad_left(
        self, ids: list[torch.Tensor], prefix_len: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows [prefix | padding | rest]: left padding when there is no prefix."""
        longest = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
        for row, prompt in enumerate(ids):
            input_ids[row, :prefix_len] = prompt[:prefix_len]
            attention_mask[row, :prefix_len] = 1
            rest = prompt[prefix_len:]
            input_ids[row, longest - len(rest) :] = rest
            attention_mask[row, longest - len(rest) :] = 1
        return input_ids, attention_mask

    def _finish_reason(self, generation: Generation, limits: Limits, watch: _StopWatch) -> str:
        tokens = generation.token_ids
        if tokens and tokens[-1] in self.backend.language.eos_ids:
            return FINISH_STOP
        if watch.reason is not None and len(tokens) < limits.max_new_tokens:
            return watch.reason
        return FINISH_LENGTH

    def _result(
        self,
        kind: str,
        user_text: str,
        encoded: Sequence[_Encoded],
        ids: torch.Tensor,
        generation: Generation,
        limits: Limits,
        watch: _StopWatch,
        started: float,
        queue_wait_s: float,
        tokenize_s: float,
    ) -> Result:
        frames = [e.frame for e in encoded]
        newest = max(frames, key=lambda f: f.stamp_ns)
        elapsed = time.perf_counter() - started
        first = encoded[0]
        timing = Timing(
            queue_wait_ms=_ms(queue_wait_s),
            preprocess_ms=_ms(sum(e.preprocess_s for e in encoded) + tokenize_s),
            encode_ms=_ms(max(e.encode_s for e in encoded)),
            prefill_ms=_ms(generation.prefill_s),
            decode_ms=_ms(generation.decode_s),
            total_ms=_ms(queue_wait_s + elapsed),
            prompt_tokens=len(ids),
            image_tokens=int((ids == self.image_token_id).sum()),
            generated_tokens=len(generation.token_ids),
        )
        return Result(
            kind=kind,
            text=self.tokenizer.decode(generation.token_ids, skip_special_tokens=True).strip(),
            prompt=user_text,
            camera=",".join(f.camera for f in frames),
            stamp_ns=newest.stamp_ns,
            frame_id=newest.frame_id,
            model=self.loaded.spec,
            backend=self.backend.name,
            device=self.backend.device,
            dtype=self.backend.dtype,
            tile_rows=first.plan.rows,
            tile_cols=first.plan.cols,
            num_images=sum(e.plan.num_images for e in encoded),
            timing=timing,
            token_ids=generation.token_ids,
            finish_reason=self._finish_reason(generation, limits, watch),
            tiling_note="; ".join(e.plan.note for e in encoded if e.plan.note),
            reused_encoding=all(e.reused for e in encoded),
        )
