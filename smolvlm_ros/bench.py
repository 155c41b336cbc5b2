"""`python -m smolvlm_ros.bench`: the engine against two transformers anchors, in one run.

One model (a checkpoint or `random:<shape>`) on one device, the same weights and the same real
photographs for every row, so that every comparison comes from ONE run:

- cameras:    a sweep over --cameras (default 1,4,8,16) frames, one caption each. Three rows
              per camera count, each batched the same way (all frames in one call):
              engine     Engine.caption_batch (whatever backend --backend picked)
              generate   the checkpoint's processor + plain `model.generate()` (dynamic cache)
              static     the same with `cache_implementation="static"`; on CUDA transformers
                         compiles its decode step itself (recorded: see STATIC_COMPILE_RULE),
                         and the warm-up runs, which pay that compilation, are not timed
- questions:  --questions questions about one frame: the engine as independent requests
              (embedding cache off) and with encode-once + shared prompt prefix (ask_many),
              against plain `generate()` one question at a time
- answers:    what each answer type costs on one frame whose image encoding is shared (cached,
              as on a robot asking several questions about the newest frame): free text of
              exactly --max-new-tokens tokens, yes_no and choice (all options scored in one
              batched pass), count (digits-only decoding) and json (decoding under a schema),
              their timed runs alternating; "x prefill" is a row's time over the free-text
              answer's prefill (its TTFT without vision), the unit a typed answer is priced in

Per row: time to first token (TTFT: preprocessing, vision and prefill), per-token decode time
(per decode step: a batch makes one token for every caption per step), end to end, captions/s
and tokens/s, and peak memory (CUDA: the allocator's peak, reset per row; CPU: sampled process
RSS, which counts whatever the process holds, the anchors' torch weights included). The
engine's TTFT and decode come from its own stage timing; an anchor's TTFT is the wall time of
the same call limited to one new token, its decode (end to end - TTFT) / (tokens - 1), paired
run by run. Ratios > 1 mean the engine (or the static anchor) is faster. On CUDA the rows run
path by path (every engine row first), so compiled anchors' memory pools never inflate the
engine's peak; on the CPU, a shared machine whose load drifts, the timed runs of all paths
alternate (engine, generate, static, engine, ...) per camera count, and so do the questions'.

The bandwidth floor: a decode step must read every weight of the language model once, so it
cannot take less than those bytes / the memory bandwidth. The bandwidth is measured in the same
run (a large device-to-device copy on CUDA, a memcpy on CPU), never taken from a data sheet.

Every generation makes exactly --max-new-tokens tokens (random weights rarely stop by
themselves, real ones do: forcing the count keeps runs comparable). Medians of --repeats runs
after --warmup runs. Results go to stdout and a JSON file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import torch

from smolvlm_ros.engine import DEFAULT_CAPTION_PROMPT, Engine, Frame, Result
from smolvlm_ros.engine.answers import AnswerSpec
from smolvlm_ros.engine.reference import reference_inputs
from smolvlm_ros.photos import PHOTO_NAMES, photo
from smolvlm_ros.settings import Group, Settings, SettingsError, names_in
from smolvlm_ros.settings.cli import add_setting_flags, settings_from_flags

# The engine's settings and those that shape the work: every engine and tiling setting, and the
# answer length (the benchmark forces exactly max_new_tokens so every run does the same work).
BENCH_SETTINGS = [*names_in(Group.ENGINE, Group.TILING), "max_new_tokens"]
BENCH_DEFAULTS = {"model": "random:256m"}

# One question per answer type, about the same frame (the "answers" scenario).
ANSWER_TYPES: dict[str, tuple[str, AnswerSpec]] = {
    "text": ("Is the path ahead clear?", AnswerSpec()),
    "yes_no": ("Is the path ahead clear?", AnswerSpec.parse("yes_no")),
    "choice": ("Which side is clearer?", AnswerSpec.parse("choice", ["left", "right", "neither"])),
    "count": ("How many people are there?", AnswerSpec.parse("count")),
    "json": (
        "Describe the path ahead.",
        AnswerSpec.parse(
            "json",
            schema=json.dumps(
                {
                    "type": "object",
                    "properties": {"clear": {"type": "boolean"}, "people": {"type": "integer"}},
                    "required": ["clear", "people"],
                    "additionalProperties": False,
                }
            ),
        ),
    ),
}

QUESTIONS = [
    "What is in this image?",
    "Is there a person?",
    "What colour is the largest object?",
    "Is the path ahead clear?",
    "How many objects are there?",
    "Where was this taken?",
    "What is on the left?",
    "What is on the right?",
]

ENGINE, GENERATE, STATIC = "engine", "generate", "static"
# Anchor path -> transformers' cache_implementation (None: generate()'s default, dynamic).
ANCHORS: dict[str, str | None] = {GENERATE: None, STATIC: "static"}
SCENARIOS = ("cameras", "questions", "answers")
MAX_CAMERAS = 64

# How transformers 5.23 decides to compile generate()'s decode step by itself
# (GenerationMixin._valid_auto_compile_criteria); the bench records the decision it made.
STATIC_COMPILE_RULE = (
    "transformers compiles the decode step (torch.compile, its CompileConfig: inductor, "
    "mode reduce-overhead) when the model is on cuda/xpu/neuron/tpu (or compile_config asks "
    "for all devices), the cache is compileable and not a DynamicCache (the static cache is), "
    "no quantizer or CPU/disk offload forbids it and disable_compile is not set"
)


# -- memory -----------------------------------------------------------------------------------


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak on GPU, sampled process RSS on CPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_bytes = max(self.peak_bytes, self._rss())

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak_bytes = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._rss())


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# -- the bandwidth floor ----------------------------------------------------------------------


def measure_bandwidth(device: str, mib: int, repeats: int = 5) -> dict:
    """Memory bandwidth measured here and now: one buffer of ``mib`` MiB copied into another,
    counted as read + write bytes over the best of ``repeats`` copies (the floor wants the
    fastest the memory goes, not a typical copy). CUDA: a device-to-device copy timed with
    events; CPU: torch's (multi-threaded) memcpy."""
    size = mib * 2**20
    cuda = device.startswith("cuda")
    src = torch.ones(size, dtype=torch.uint8, device=device)  # pages touched, not lazily zero
    dst = torch.zeros_like(src)
    dst.copy_(src)  # first copy: allocations, page faults, clocks
    _sync(device)
    times = [_timed_copy(dst, src, cuda) for _ in range(repeats)]
    del src, dst
    if cuda:
        torch.cuda.empty_cache()
    best = min(times)
    method = (
        f"device-to-device copy of {mib} MiB on {torch.cuda.get_device_name()}"
        if cuda
        else f"CPU memcpy (torch copy_ of {mib} MiB, {torch.get_num_threads()} threads)"
    )
    return {
        "method": method,
        "bytes_per_copy": 2 * size,
        "repeats": repeats,
        "seconds": times,
        "gb_per_s": 2 * size / best / 1e9,
    }


def _timed_copy(dst: torch.Tensor, src: torch.Tensor, cuda: bool) -> float:
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    dst.copy_(src)
    return time.perf_counter() - t0


def language_model_weights(model: torch.nn.Module) -> dict:
    """The bytes one decode step must read: the text model's and lm_head's parameters, each
    tensor once. The input embedding table is left out unless lm_head shares it: a step reads
    one row of it, not the table."""
    text, head = model.model.text_model, model.lm_head
    embedding = text.get_input_embeddings().weight
    tied = embedding is head.weight
    tensors: dict[int, torch.Tensor] = {}  # by identity: a backend that runs its own export
    for p in [*text.parameters(), *head.parameters()]:  # leaves a meta skeleton (no storage)
        if p is embedding and not tied:
            continue
        tensors.setdefault(id(p), p)
    return {
        "params": sum(p.numel() for p in tensors.values()),
        "bytes": sum(p.numel() * p.element_size() for p in tensors.values()),
        "dtype": str(head.weight.dtype).removeprefix("torch."),
        "tied_embeddings": tied,
        "embedding_bytes_left_out": 0 if tied else embedding.numel() * embedding.element_size(),
    }


def bandwidth_floor(model: torch.nn.Module, device: str, mib: int) -> dict:
    """The lower bound on a decode step (ms): language-model weight bytes / measured bandwidth."""
    weights = language_model_weights(model)
    bandwidth = measure_bandwidth(device, mib)
    return {
        "weights": weights,
        "bandwidth": bandwidth,
        "floor_ms_per_token": weights["bytes"] / (bandwidth["gb_per_s"] * 1e9) * 1e3,
    }


def floor_line(floor: dict) -> str:
    w, b = floor["weights"], floor["bandwidth"]
    left_out = "" if w["tied_embeddings"] else "; input embeddings left out"
    return (
        f"# bandwidth floor: {floor['floor_ms_per_token']:.3f} ms per decode step = "
        f"LM weights {w['bytes'] / 1e6:.1f} MB ({w['params'] / 1e6:.1f}M params, "
        f"{w['dtype']}{left_out}) / {b['gb_per_s']:.1f} GB/s measured "
        f"({b['method']}, read+write, best of {b['repeats']})"
    )


# -- the transformers anchors -----------------------------------------------------------------


def anchor_inputs(engine: Engine, frames: Sequence[Frame], text: str) -> Any:
    """The checkpoint's processor on a batch of frames, one prompt each, left-padded (decoding
    starts where every prompt ends). One frame: exactly the parity tests' reference inputs."""
    if len(frames) == 1:
        return reference_inputs(engine, frames[0], text)
    plans = {(p.longest_edge, p.splitting) for p in map(engine.plan, frames)}
    if len(plans) != 1:
        raise ValueError("batched anchors need frames that tile alike (the same size)")
    ((longest_edge, splitting),) = plans
    return engine.processor(
        text=[engine.chat_prompt(text)] * len(frames),
        images=[[PIL.Image.fromarray(f.image)] for f in frames],
        size={"longest_edge": longest_edge},
        do_image_splitting=splitting,
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )


@torch.inference_mode()
def anchor_generate(
    engine: Engine, frames: Sequence[Frame], text: str, new_tokens: int, cache: str | None
) -> list[list[int]]:
    """Greedy new token ids per frame from ``model.generate()``, all frames in one batch, with
    transformers' ``cache_implementation`` ``cache`` (None: its default dynamic cache)."""
    inputs = anchor_inputs(engine, frames, text).to(engine.backend.device)
    # ensure_weights: a backend running its own export (openvino) left the torch weights
    # unloaded; the anchors load them on first use, after the engine's rows.
    out = engine.loaded.ensure_weights().generate(
        **inputs,
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        cache_implementation=cache,
    )
    _sync(engine.backend.device)
    return out[:, inputs["input_ids"].shape[1] :].tolist()


class CompileProbe:
    """Records transformers' own auto-compile decisions on a model while active: wraps the
    model's ``_valid_auto_compile_criteria`` (an instance attribute shadowing the method, taken
    away again on exit), so the record is what generate() decided, not a guess at its rule."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.decisions: list[tuple[str | None, bool]] = []  # (cache_implementation, decision)

    @contextlib.contextmanager
    def active(self) -> Iterator[CompileProbe]:
        original = getattr(self.model, "_valid_auto_compile_criteria", None)
        if original is None:  # a transformers without the hook: nothing to record
            yield self
            return

        def probe(model_kwargs: dict, generation_config: Any) -> bool:
            decision = original(model_kwargs, generation_config)
            self.decisions.append((generation_config.cache_implementation, bool(decision)))
            return decision

        self.model._valid_auto_compile_criteria = probe
        try:
            yield self
        finally:
            del self.model._valid_auto_compile_criteria

    def report(self, cache: str = "static") -> dict:
        """Whether generate() chose to compile with ``cache``, and whether a compiled forward
        exists."""
        decisions = [d for c, d in self.decisions if c == cache]
        return {
            "auto_compile": any(decisions) if decisions else None,
            "decisions_seen": len(decisions),
            "compiled_call": hasattr(self.model, "_compiled_call"),
            "rule": STATIC_COMPILE_RULE,
        }


# -- timing -----------------------------------------------------------------------------------


@dataclass
class Timed:
    """One timed call: wall seconds, peak memory and what the call returned."""

    wall_s: float
    peak_mb: float
    out: Any


def measure(device: str, work: Callable[[], Any]) -> Timed:
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        out = work()
        _sync(device)
        wall = time.perf_counter() - start
    return Timed(wall, memory.peak_bytes / 2**20, out)


def repeat(device: str, work: Callable[[], Any], warmup: int, repeats: int) -> dict:
    """``warmup`` untimed calls (their wall times kept: they show compilation), then
    ``repeats`` timed ones."""
    return interleave(device, [work], [warmup], repeats)[0]


def interleave(
    device: str, works: Sequence[Callable[[], Any]], warmups: Sequence[int], repeats: int
) -> list[dict]:
    """:func:`repeat` for several calls whose times are compared with each other: the timed
    calls alternate (a, b, a, b, ...), so that a machine whose load changes over minutes
    slows both alike and run i of one pairs with run i of the other."""
    warm = [
        [_warm_up(device, work) for _ in range(n)] for work, n in zip(works, warmups, strict=True)
    ]
    runs: list[list[Timed]] = [[] for _ in works]
    for _ in range(repeats):
        for work, timed in zip(works, runs, strict=True):
            timed.append(measure(device, work))
    return [{"warmup_s": w, "runs": r} for w, r in zip(warm, runs, strict=True)]


def _warm_up(device: str, work: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    work()
    _sync(device)
    return time.perf_counter() - t0


def row_summary(runs: list[Timed], ttft_ms: float, decode_ms: float | None, unit: str) -> dict:
    """The figures every row has, from its timed runs (token lists or Results per run)."""
    walls = [r.wall_s for r in runs]
    e2e = statistics.median(walls)
    first = runs[0].out
    requests = len(first)
    tokens = [len(t) for t in _token_ids(first)]
    return {
        "e2e_s": e2e,
        "e2e_s_min": min(walls),
        "ttft_ms": ttft_ms,
        "decode_ms_per_token": decode_ms,
        "requests": requests,
        "generated_tokens": tokens[0],
        f"{unit}_per_s": requests / e2e,
        "tokens_per_s": sum(tokens) / e2e,
        "peak_mb": max(r.peak_mb for r in runs),
    }


def _token_ids(out: list[Result] | list[list[int]]) -> list[list[int]]:
    return [r.token_ids if isinstance(r, Result) else r for r in out]


def engine_row(timed: dict, unit: str, batch: bool = True) -> dict:
    """An engine row: TTFT and decode from its own stage timing (medians over runs). For a batch
    the preprocessing of every request counts and vision and prefill are the batch's; for
    separate requests the first request's stages are its TTFT."""
    runs: list[Timed] = timed["runs"]
    ttft, decode, stages = [], [], []
    for run in runs:
        results: list[Result] = run.out if batch else run.out[:1]
        head = results[0].timing
        preprocess = sum(r.timing.preprocess_ms for r in results)
        ttft.append(preprocess + head.encode_ms + head.prefill_ms)
        decode.append(head.decode_ms / max(head.generated_tokens - 1, 1))
        stages.append(head)
    med = statistics.median
    summary = row_summary(runs, med(ttft), med(decode), unit)
    summary.update(
        preprocess_ms=med(sum(r.timing.preprocess_ms for r in run.out) for run in runs),
        encode_ms=med(s.encode_ms for s in stages),
        prefill_ms=med(s.prefill_ms for s in stages),
        prompt_tokens=stages[0].prompt_tokens,
        image_tokens=stages[0].image_tokens,
    )
    row = _row(summary, timed)
    row["reused_encoding"] = [r.reused_encoding for r in runs[0].out]
    return row


def anchor_row(timed: dict, first_token: dict, unit: str, in_sequence: int = 1) -> dict:
    """An anchor row: TTFT from the same call limited to one new token. ``in_sequence``: the
    call makes that many requests one after another (the TTFT call makes the first alone), so
    one request's decode is measured from its share of the end-to-end time."""
    runs: list[Timed] = timed["runs"]
    firsts: list[Timed] = first_token["runs"]
    ttft = statistics.median(r.wall_s for r in firsts) * 1e3
    steps = len(runs[0].out[0]) - 1
    decode = (  # (one request's end to end - TTFT) / steps per interleaved pair, the median
        statistics.median(
            (full.wall_s / in_sequence - first.wall_s) * 1e3 / steps
            for full, first in zip(runs, firsts, strict=True)
        )
        if steps
        else None
    )
    row = _row(row_summary(runs, ttft, decode, unit), timed)
    row["ttft_runs_s"] = [r.wall_s for r in firsts]
    return row


def _row(summary: dict, timed: dict) -> dict:
    return {
        "summary": summary,
        "warmup_s": timed["warmup_s"],
        "runs_s": [r.wall_s for r in timed["runs"]],
        "token_ids": _token_ids(timed["runs"][0].out),
    }


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> dict:
    """How far a path's greedy tokens agree with plain generate()'s, caption by caption."""
    prefixes = []
    for ours, theirs in zip(tokens, reference, strict=True):
        common = next(
            (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None
        )
        prefixes.append(min(len(ours), len(theirs)) if common is None else common)
    return {
        "identical": sum(a == b for a, b in zip(tokens, reference, strict=True)) / len(tokens),
        "mean_common_prefix": statistics.mean(prefixes),
    }


def ratio(slower: dict | None, faster: dict | None) -> float | None:
    """End-to-end time of ``slower`` / that of ``faster`` (> 1: ``faster`` is faster)."""
    if slower is None or faster is None:
        return None
    return slower["summary"]["e2e_s"] / faster["summary"]["e2e_s"]


# -- the benchmark ----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings: Settings = args.settings
        t0 = time.perf_counter()
        self.engine = Engine.from_config(self.settings.engine_config())
        self.load_s = time.perf_counter() - t0
        self.device = self.engine.backend.device
        self.frames = [
            Frame(photo(PHOTO_NAMES[i % len(PHOTO_NAMES)]), camera=f"/camera_{i}/image_raw")
            for i in range(max(args.cameras))
        ]
        self.tokens = self.settings.max_new_tokens
        self.limits = {"max_new_tokens": self.tokens, "min_new_tokens": self.tokens}
        self.probe: CompileProbe | None = None  # while the anchors run (camera_sweep)
        self.started = time.perf_counter()

    def _repeat(self, work: Callable[[], Any], warmup: int | None = None) -> dict:
        warmup = self.args.warmup if warmup is None else warmup
        return repeat(self.device, work, warmup, self.args.repeats)

    def _progress(self, what: str) -> None:
        """One line on stderr per row: the table prints at the end, a slow CPU run takes long."""
        elapsed = time.perf_counter() - self.started
        print(f"# [{elapsed:7.1f} s] {what}", file=sys.stderr, flush=True)

    # -- camera sweep --------------------------------------------------------------------------

    def _engine_captions(self, count: int) -> Callable[[], list[Result]]:
        def work() -> list[Result]:
            self.engine.clear_cache()
            return self.engine.caption_batch(self.frames[:count], **self.limits)

        return work

    def _anchor_captions(self, path: str, count: int, tokens: int) -> Callable[[], list]:
        frames, cache = self.frames[:count], ANCHORS[path]
        return lambda: anchor_generate(self.engine, frames, DEFAULT_CAPTION_PROMPT, tokens, cache)

    def _anchor_warmup(self, path: str) -> int:
        """The static anchor always gets a warm-up: on CUDA its first call per batch size
        compiles (and records CUDA graphs), which is not what a caption costs."""
        return max(self.args.warmup, 1) if path == STATIC else self.args.warmup

    def engine_cameras(self, count: int) -> dict:
        self._progress(f"{count} camera(s): engine")
        return engine_row(self._repeat(self._engine_captions(count)), "captions")

    def anchor_cameras(self, path: str, count: int) -> dict:
        self._progress(f"{count} camera(s): {path}")
        timed, first = interleave(
            self.device,
            [
                self._anchor_captions(path, count, self.tokens),
                self._anchor_captions(path, count, 1),
            ],
            [self._anchor_warmup(path), self.args.warmup],
            self.args.repeats,
        )
        return anchor_row(timed, first, "captions")

    def cameras_alternating(self, count: int, anchors: Sequence[str]) -> dict[str, dict]:
        """One camera count, every path's timed runs alternating (engine, each anchor's full
        and one-token call, then again), so load drifting on a shared CPU hits all alike."""
        self._progress(f"{count} camera(s): {', '.join((ENGINE, *anchors))}, runs alternating")
        works: list[Callable[[], Any]] = [self._engine_captions(count)]
        warmups = [self.args.warmup]
        for path in anchors:
            works += [
                self._anchor_captions(path, count, self.tokens),
                self._anchor_captions(path, count, 1),
            ]
            warmups += [self._anchor_warmup(path), self.args.warmup]
        timed = interleave(self.device, works, warmups, self.args.repeats)
        rows = {ENGINE: engine_row(timed[0], "captions")}
        for index, path in enumerate(anchors):
            rows[path] = anchor_row(timed[1 + 2 * index], timed[2 + 2 * index], "captions")
        return rows

    def camera_sweep(self, anchors: Sequence[str]) -> list[dict]:
        """The rows per camera count, their ratios and token agreement. On CUDA path by path,
        every engine row first: compiled anchors keep memory pools that would count in the
        engine's peak, and a GPU is not shared. On the CPU the paths' runs alternate per
        count: a shared machine's load drifts over the minutes a path takes."""
        counts = self.args.cameras
        if not self.device.startswith("cuda"):
            with self._probe(anchors):
                rows = {n: self.cameras_alternating(n, anchors) for n in counts}
            return [self._sweep_entry(n, rows[n]) for n in counts]
        by_path = {ENGINE: {n: self.engine_cameras(n) for n in counts}}
        with self._probe(anchors):
            for path in anchors:
                by_path[path] = {n: self.anchor_cameras(path, n) for n in counts}
        return [self._sweep_entry(n, {p: r[n] for p, r in by_path.items()}) for n in counts]

    @contextlib.contextmanager
    def _probe(self, anchors: Sequence[str]) -> Iterator[None]:
        """Record transformers' compile decisions while the anchors run. Their torch weights
        load here, after any engine rows before, if the engine's backend did not need them."""
        if not anchors:
            yield
            return
        self.probe = CompileProbe(self.engine.loaded.ensure_weights())
        with self.probe.active():
            yield

    @staticmethod
    def _sweep_entry(count: int, rows: dict[str, dict]) -> dict:
        engine, generate, static = rows[ENGINE], rows.get(GENERATE), rows.get(STATIC)
        entry: dict = {"cameras": count, **rows}
        entry["engine_vs_generate"] = ratio(generate, engine)
        entry["engine_vs_static"] = ratio(static, engine)
        entry["static_vs_generate"] = ratio(generate, static)
        if generate is not None:
            entry["agreement_with_generate"] = {
                path: agreement(row["token_ids"], generate["token_ids"])
                for path, row in rows.items()
                if path != GENERATE
            }
        return entry

    # -- questions about one frame -------------------------------------------------------------

    def questions(self, with_anchor: bool) -> dict:
        """Separate requests, ask_many and (``with_anchor``) plain generate() one question at a
        time, their timed runs alternating."""
        asked = QUESTIONS[: self.args.questions]
        frame = self.frames[0]
        self._progress(f"{len(asked)} question(s)")

        def separate() -> list[Result]:
            results = []
            for question in asked:
                self.engine.clear_cache()  # what a stateless server does: each from scratch
                results.append(self.engine.ask(frame, question, **self.limits))
            return results

        def shared() -> list[Result]:
            self.engine.clear_cache()
            return self.engine.ask_many(frame, asked, **self.limits)

        def answers(questions: Sequence[str], tokens: int) -> Callable[[], list[list[int]]]:
            return lambda: [
                anchor_generate(self.engine, [frame], q, tokens, None)[0] for q in questions
            ]

        works = [separate, shared]
        if with_anchor:
            works += [answers(asked, self.tokens), answers(asked[:1], 1)]
        timed = interleave(self.device, works, [self.args.warmup] * len(works), self.args.repeats)
        entry = {
            "questions": len(asked),
            "separate": engine_row(timed[0], "answers", batch=False),
            "shared": engine_row(timed[1], "answers"),
        }
        if with_anchor:
            entry[GENERATE] = anchor_row(timed[2], timed[3], "answers", in_sequence=len(asked))
            entry["separate_vs_generate"] = ratio(entry[GENERATE], entry["separate"])
            entry["shared_vs_generate"] = ratio(entry[GENERATE], entry["shared"])
        return entry

    # -- what each answer type costs -----------------------------------------------------------

    def answer_types(self) -> dict:
        """One question per answer type about one frame, its image encoding shared (cached)
        as when several questions are asked about the newest frame; timed runs alternate.
        Free text makes exactly --max-new-tokens tokens; typed answers stop where their
        constraint ends them (at most --max-new-tokens)."""
        frame = self.frames[0]
        self._progress(f"answer types: {', '.join(ANSWER_TYPES)}")
        self.engine.clear_cache()
        question, _ = ANSWER_TYPES["text"]
        cold = self.engine.ask(frame, question, **self.limits)  # encodes; the rest reuse it

        def ask(name: str) -> Callable[[], list[Result]]:
            question, spec = ANSWER_TYPES[name]
            limits = self.limits if name == "text" else {"max_new_tokens": self.tokens}
            return lambda: [self.engine.ask(frame, question, answer=spec, **limits)]

        names = list(ANSWER_TYPES)
        timed = interleave(
            self.device, [ask(n) for n in names], [self.args.warmup] * len(names),
            self.args.repeats,
        )  # fmt: skip
        rows = {name: engine_row(t, "answers") for name, t in zip(names, timed, strict=True)}
        text = rows["text"]["summary"]
        for row, t in zip(rows.values(), timed, strict=True):
            summary = row["summary"]
            summary["x_prefill"] = summary["e2e_s"] * 1e3 / text["prefill_ms"]
            summary["vs_text"] = text["e2e_s"] / summary["e2e_s"]
            typed = t["runs"][0].out[0].typed  # the first timed run's answer
            row["value"] = None if typed is None else repr(typed.value)
            row["confidence"] = None if typed is None else typed.confidence
        return {"encode_ms": cold.timing.encode_ms, **rows}


# -- the report -------------------------------------------------------------------------------


def environment(bench: Bench) -> dict:
    import transformers

    device, choice = bench.device, bench.engine.backend_choice
    return {
        "model": bench.settings.model,
        "random_weights": bench.engine.is_random,
        "device": device,
        "device_name": (
            torch.cuda.get_device_name() if device.startswith("cuda") else platform.machine()
        ),
        "cpu_threads": torch.get_num_threads(),
        "dtype": bench.engine.backend.dtype,
        "backend_requested": bench.settings.backend,
        "backend": bench.engine.backend.name,
        "backend_reason": choice.reason if choice else "built directly",
        "backend_skipped": [list(s) for s in choice.skipped] if choice else [],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "tiling": {name: getattr(bench.settings, name) for name in names_in(Group.TILING)},
        "max_new_tokens": bench.settings.max_new_tokens,
        "cameras": bench.args.cameras,
        "questions": bench.args.questions,
        "anchors": bench.args.anchors,
        "repeats": bench.args.repeats,
        "warmup": bench.args.warmup,
        "model_load_s": bench.load_s,
        "load_average": os.getloadavg(),
    }


COLUMNS = ("e2e s", "TTFT ms", "ms/tok", "x floor", "req/s", "tok/s", "peak MB")
RATIOS = ("vs gen", "vs static")
ANSWER_COLUMNS = ("e2e ms", "prefill ms", "ms/tok", "tokens", "x prefill", "vs text")


def _fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "-"


def table_line(label: str, path: str, row: dict, floor_ms: float, ratios: Sequence) -> str:
    s = row["summary"]
    per_s = next(v for k, v in s.items() if k.endswith("_per_s") and k != "tokens_per_s")
    decode = s["decode_ms_per_token"]
    cells = [
        _fmt(s["e2e_s"], ".3f"),
        _fmt(s["ttft_ms"], ".1f"),
        _fmt(decode, ".2f"),
        _fmt(decode / floor_ms if decode is not None else None, ".1f"),
        _fmt(per_s, ".2f"),
        _fmt(s["tokens_per_s"], ".1f"),
        _fmt(s["peak_mb"], ".0f"),
        *(_fmt(r, ".2f") for r in ratios),
    ]
    return f"{label:<14} {path:<9} " + " ".join(f"{c:>9}" for c in cells)


def print_sweep(sweep: list[dict], floor_ms: float, anchors: Sequence[str]) -> None:
    for entry in sweep:
        n = entry["cameras"]
        label = f"{n} camera" + ("s" if n > 1 else "")
        ratios = {
            ENGINE: (entry["engine_vs_generate"], entry["engine_vs_static"]),
            GENERATE: (None, None),
            STATIC: (entry["static_vs_generate"], None),
        }
        for path in (ENGINE, *anchors):
            print(table_line(label, path, entry[path], floor_ms, ratios[path]), flush=True)
            label = ""


def print_questions(entry: dict, floor_ms: float) -> None:
    count = entry["questions"]
    label = f"{count} question" + ("s" if count > 1 else "")
    vs = entry.get
    print(
        table_line(
            label, "separate", entry["separate"], floor_ms, (vs("separate_vs_generate"), None)
        )
    )
    print(table_line("", "ask_many", entry["shared"], floor_ms, (vs("shared_vs_generate"), None)))
    if GENERATE in entry:
        print(table_line("", GENERATE, entry[GENERATE], floor_ms, (None, None)))


def print_answer_types(entry: dict) -> None:
    """Its own small table: a typed answer is priced in prefills of the free-text answer."""
    print(f"# answer types, one frame, its encoding shared ({entry['encode_ms']:.0f} ms once):")
    print(f"{'type':<8} " + " ".join(f"{c:>9}" for c in ANSWER_COLUMNS))
    for name in ANSWER_TYPES:
        s = entry[name]["summary"]
        cells = [
            _fmt(s["e2e_s"] * 1e3, ".1f"),
            _fmt(s["prefill_ms"], ".1f"),
            _fmt(s["decode_ms_per_token"] if s["decode_ms_per_token"] else None, ".2f"),
            str(s["generated_tokens"]),
            _fmt(s["x_prefill"], ".2f"),
            _fmt(s["vs_text"], ".2f"),
        ]
        print(f"{name:<8} " + " ".join(f"{c:>9}" for c in cells))


def agreement_line(sweep: list[dict]) -> str | None:
    """One line: how many captions of each path match plain generate() token for token."""
    parts = []
    for path in (ENGINE, STATIC):
        found = [
            e["agreement_with_generate"][path]
            for e in sweep
            if path in e.get("agreement_with_generate", {})
        ]
        if found:
            identical = statistics.mean(a["identical"] for a in found)
            prefix = statistics.mean(a["mean_common_prefix"] for a in found)
            parts.append(f"{path} {identical:.0%} identical (mean common prefix {prefix:.1f})")
    return "# tokens vs plain generate(): " + ", ".join(parts) if parts else None


def compile_line(static: dict) -> str:
    decided = {True: "compiled", False: "not compiled", None: "no decision seen"}
    return (
        f'# static anchor (cache_implementation="static"): transformers auto-compile: '
        f"{decided[static['auto_compile']]} "
        f"(decode step compiled: {'yes' if static['compiled_call'] else 'no'}); "
        "its warm-up runs are not timed"
    )


# -- the command ------------------------------------------------------------------------------


def _camera_counts(text: str) -> list[int]:
    """``1,4,8,16`` -> [1, 4, 8, 16] (order kept, repeats dropped)."""
    counts: list[int] = []
    for part in text.split(","):
        try:
            count = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"camera counts are integers, got {part!r}") from None
        if not 1 <= count <= MAX_CAMERAS:
            raise argparse.ArgumentTypeError(f"camera counts must be 1-{MAX_CAMERAS}, got {count}")
        if count not in counts:
            counts.append(count)
    return counts


def _names(text: str, known: Sequence[str], what: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what}(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return names


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m smolvlm_ros.bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_setting_flags(parser, BENCH_SETTINGS, defaults=BENCH_DEFAULTS)
    parser.add_argument(
        "--cameras", type=_camera_counts, default=[1, 4, 8, 16],
        help="camera counts of the sweep, comma-separated (default 1,4,8,16)",
    )  # fmt: skip
    parser.add_argument("--questions", type=int, default=4, help="questions about one frame")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--scenarios", type=lambda t: _names(t, SCENARIOS, "scenario"), default=list(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )  # fmt: skip
    parser.add_argument(
        "--anchors", type=lambda t: _names(t, tuple(ANCHORS), "anchor"), default=list(ANCHORS),
        help="transformers anchors, comma-separated subset of generate,static",
    )  # fmt: skip
    parser.add_argument("--no-reference", action="store_true", help="no anchors at all")
    parser.add_argument(
        "--copy-mib", type=int, default=1024, help="buffer size of the bandwidth measurement"
    )
    parser.add_argument("--json", type=Path, default=Path("bench.json"), help="where results go")
    args = parser.parse_args(argv)
    try:
        args.settings = settings_from_flags(
            args, BENCH_SETTINGS, Settings.from_mapping(BENCH_DEFAULTS)
        )
    except SettingsError as err:
        parser.error(str(err))
    if not 1 <= args.questions <= len(QUESTIONS):
        parser.error(f"--questions must be between 1 and {len(QUESTIONS)}")
    if args.repeats < 1 or args.warmup < 0 or args.copy_mib < 1:
        parser.error("--repeats and --copy-mib must be at least 1, --warmup at least 0")
    if args.no_reference:
        args.anchors = []
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    env = environment(bench)
    print(
        f"# smolvlm_ros bench: {env['model']} on {env['device']} ({env['device_name']}, "
        f"{env['dtype']}), {args.settings.max_new_tokens} new tokens, median of {args.repeats} "
        f"after {args.warmup} warm-up"
    )
    print(f"# backend: {env['backend']} ({env['backend_reason']})")
    if bench.engine.is_random:
        print("# (random weights: figures are real, generated text is not)")
    floor = bandwidth_floor(bench.engine.loaded.model, bench.device, args.copy_mib)
    print(floor_line(floor), flush=True)
    report: dict = {"environment": env, "floor": floor}
    print(f"{'workload':<14} {'path':<9} " + " ".join(f"{c:>9}" for c in (*COLUMNS, *RATIOS)))
    floor_ms = floor["floor_ms_per_token"]
    # Questions first: on CUDA the camera sweep ends with the static anchor, whose compiled
    # graphs keep memory pools that would count in later rows' peaks.
    if "questions" in args.scenarios:
        report["questions"] = bench.questions(GENERATE in args.anchors)
    if "cameras" in args.scenarios:
        report["cameras"] = bench.camera_sweep(args.anchors)
        print_sweep(report["cameras"], floor_ms, args.anchors)
    if "questions" in args.scenarios:
        print_questions(report["questions"], floor_ms)
    if "answers" in args.scenarios:
        report["answers"] = bench.answer_types()
        print_answer_types(report["answers"])
    if STATIC in args.anchors and bench.probe is not None:
        report["static_anchor"] = bench.probe.report()
        print(compile_line(report["static_anchor"]))
    line = agreement_line(report.get("cameras", []))
    if line:
        print(line)
    report["load_average_end"] = os.getloadavg()
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(
        "# TTFT: preprocess + vision + prefill; ms/tok: per decode step (a batch makes one token "
        "per caption per step); x floor: ms/tok over the bandwidth floor; vs: e2e ratio, > 1: "
        "this row faster"
    )
    print(f"# full results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
