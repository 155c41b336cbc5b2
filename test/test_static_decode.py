"""The static-cache backend (torch_static) against plain ``generate()`` and the eager backend.

On CPU the decode step runs eagerly (compiling is for CUDA, where it becomes a CUDA graph), but
everything else of the fast path runs here: the preallocated cache and its reuse, batch and
length buckets, bucket padding rows, the on-device stop bookkeeping, prefix copies, sampling.
Float32 greedy output must equal plain ``generate()`` token for token.
"""

from __future__ import annotations

import copy
import itertools

import pytest

from smolvlm_ros.engine import Engine, Frame
from smolvlm_ros.engine.backends.registry import choose
from smolvlm_ros.engine.backends.torch_static import (
    CACHE_BUCKET,
    MAX_CACHES,
    TorchStaticBackend,
    batch_bucket,
    length_bucket,
    should_compile,
)
from smolvlm_ros.engine.engine import DEFAULT_CAPTION_PROMPT
from smolvlm_ros.engine.reference import reference_generate
from smolvlm_ros.engine.types import FINISH_CANCELLED, FINISH_STOP

QUESTIONS = ["What is this?", "Is there a cup on the table?", "Which colour is the largest thing?"]


def _static_engine(loaded, **engine_kwargs) -> Engine:
    backend = TorchStaticBackend(loaded.model, loaded.device, loaded.dtype, compile_step=False)
    return Engine(loaded, backend, backend_choice=choose("torch_static", "cpu"), **engine_kwargs)


@pytest.fixture(scope="module")
def static_engine(tiny_engine):
    """torch_static on the same weights as the float32 random:tiny torch engine."""
    return _static_engine(tiny_engine.loaded)


def test_buckets_round_up_to_few_shapes():
    assert [batch_bucket(n) for n in (1, 2, 3, 4, 5, 9, 16)] == [1, 2, 4, 4, 8, 16, 16]
    assert length_bucket(1) == length_bucket(CACHE_BUCKET) == CACHE_BUCKET
    assert length_bucket(CACHE_BUCKET + 1) == 2 * CACHE_BUCKET
    with pytest.raises(ValueError, match="at least one row"):
        batch_bucket(0)


def test_compile_mode_auto_compiles_on_cuda_only():
    assert should_compile("auto", "cuda:0") and not should_compile("auto", "cpu")
    assert should_compile("on", "cpu") and not should_compile("off", "cuda")
    with pytest.raises(ValueError, match="auto, on, off"):
        should_compile("yes", "cuda")


def test_auto_picks_the_static_path_on_cuda_only():
    assert choose("auto", "cuda").name == "torch_static"
    assert choose("auto", "cpu").name in ("torch", "openvino")  # openvino where installed


@pytest.mark.parametrize("name", ["coffee", "astronaut", "chelsea"])
def test_greedy_float32_equals_plain_generate(static_engine, photos, name):
    frame = Frame(photos[name])
    result = static_engine.caption(frame, max_new_tokens=12)
    assert result.token_ids == reference_generate(static_engine, frame, DEFAULT_CAPTION_PROMPT, 12)
    assert result.backend == "torch_static"


def test_batches_with_padding_rows_equal_separate_captions(static_engine, tiny_engine, photos):
    """Three frames run as a bucket of four (one padding row), with left-padded prompts."""
    frames = [Frame(photos[n], camera=n) for n in ("coffee", "astronaut", "chelsea")]
    batched = static_engine.caption_batch(frames, max_new_tokens=10)
    separate = [tiny_engine.caption(f, max_new_tokens=10) for f in frames]
    assert [r.token_ids for r in batched] == [r.token_ids for r in separate]
    assert [r.camera for r in batched] == ["coffee", "astronaut", "chelsea"]


def test_shared_prefix_questions_equal_the_eager_backend(static_engine, tiny_engine, photos):
    frame = Frame(photos["coffee"])
    fast = static_engine.ask_many(frame, QUESTIONS, max_new_tokens=10)
    eager = tiny_engine.ask_many(frame, QUESTIONS, max_new_tokens=10)
    assert [r.token_ids for r in fast] == [r.token_ids for r in eager]
    alone = [static_engine.ask(frame, q, max_new_tokens=10).token_ids for q in QUESTIONS]
    assert [r.token_ids for r in fast] == alone


def test_the_cache_is_reused_per_bucket_and_bounded(tiny_engine, photos):
    """Prompts of different lengths in one bucket share one preallocated cache (so a captured
    step stays valid); more buckets than MAX_CACHES evict the least recently used."""
    engine = _static_engine(tiny_engine.loaded)
    language = engine.backend.language
    frame = Frame(photos["coffee"])
    engine.ask(frame, "Hi?", max_new_tokens=4)
    (cache,) = language._caches.values()
    engine.ask(frame, "A much longer question about the picture and its objects?", max_new_tokens=4)
    assert list(language._caches.values()) == [cache]
    frames = [frame] * 9
    for rows in (2, 3, 5, 9):  # buckets 2, 4, 8, 16: five in all, one too many
        engine.caption_batch(frames[:rows], max_new_tokens=4)
    assert MAX_CACHES == 4
    assert set(language._caches) == {(2, 256), (4, 256), (8, 256), (16, 256)}


def test_min_new_tokens_and_long_answers_cross_check_intervals(static_engine, tiny_engine, photos):
    """More tokens than the host's check interval, forced to the full count."""
    frame = Frame(photos["astronaut"])
    fast = static_engine.caption(frame, max_new_tokens=21, min_new_tokens=21)
    eager = tiny_engine.caption(frame, max_new_tokens=21, min_new_tokens=21)
    assert len(fast.token_ids) == 21
    assert fast.token_ids == eager.token_ids


def test_a_stop_check_ends_after_that_token(static_engine, photos):
    calls = itertools.count(1)
    result = static_engine.caption(
        Frame(photos["coffee"]), max_new_tokens=20, should_stop=lambda: next(calls) >= 5
    )
    assert len(result.token_ids) == 5
    assert result.finish_reason == FINISH_CANCELLED


def test_streamed_tokens_are_the_answer(static_engine, photos):
    streamed: list[int] = []
    result = static_engine.ask(
        Frame(photos["chelsea"]), "What is it?", max_new_tokens=9, on_token=streamed.append
    )
    assert streamed == result.token_ids and len(streamed) == 9


def test_end_of_sequence_stops_each_row_like_generate(tiny_engine, photos):
    """With the 4th greedy token made a stop token, rows end there, as generate() ends them."""
    frames = [Frame(photos["coffee"]), Frame(photos["astronaut"])]
    first = tiny_engine.caption(frames[0], max_new_tokens=8).token_ids
    loaded = copy.copy(tiny_engine.loaded)
    loaded.model = copy.deepcopy(tiny_engine.loaded.model)
    eos = tiny_engine.loaded.model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    loaded.model.generation_config.eos_token_id = [*eos, first[3]]
    engine = _static_engine(loaded)
    results = engine.caption_batch(frames, max_new_tokens=8)
    assert results[0].token_ids == first[:4]
    assert results[0].finish_reason == FINISH_STOP
    expected = reference_generate(engine, frames[1], DEFAULT_CAPTION_PROMPT, 8)
    stop = expected.index(first[3]) + 1 if first[3] in expected else len(expected)
    assert results[1].token_ids == expected[:stop]


def test_seeded_sampling_equals_generate_sampling(tiny_engine, photos):
    """Sampling goes through transformers' warpers in generate's order: with one seed, the
    same draws as ``generate(do_sample=True)``."""
    from smolvlm_ros.engine.backends.base import Sampling

    sampling = Sampling(do_sample=True, temperature=0.7, top_p=0.9, top_k=20, seed=3)
    fast = _static_engine(tiny_engine.loaded, sampling=sampling)
    eager = Engine(tiny_engine.loaded, tiny_engine.backend, sampling=sampling, backend_choice=None)
    frame = Frame(photos["coffee"])
    once = fast.caption(frame, max_new_tokens=10).token_ids
    assert fast.caption(frame, max_new_tokens=10).token_ids == once
    assert eager.caption(frame, max_new_tokens=10).token_ids == once


def test_warm_up_runs_every_batch_bucket_up_to_max_batch(tiny_engine):
    engine = _static_engine(tiny_engine.loaded)
    assert engine.warm_up(max_batch=4) == 0.0  # eager CPU: nothing to compile, nothing run
    engine.backend.language.needs_warm_up = True  # as on CUDA
    seconds = engine.warm_up(max_batch=5)
    assert seconds > 0
    assert sorted(rows for rows, _ in engine.backend.language._caches) == [1, 2, 4, 8]
    assert len(engine.cache) == 0  # the grey frame is not left in the embedding cache
    with pytest.raises(ValueError, match="max_batch"):
        engine.warm_up(max_batch=0)


def test_unsupported_generation_config_is_refused(tiny_engine):
    from smolvlm_ros.engine.backends.registry import BackendError
    from smolvlm_ros.engine.backends.torch_static import StaticLanguage

    model = copy.deepcopy(tiny_engine.loaded.model)
    model.generation_config.repetition_penalty = 1.3
    with pytest.raises(BackendError, match=r"repetition_penalty.*backend torch"):
        StaticLanguage(model, "cpu", compile_step=False)


def test_bfloat16_agrees_with_float32_on_first_tokens(tiny_engine, photos):
    """bf16 is what GPUs run: same first tokens as fp32 on real photographs (random:tiny)."""
    from smolvlm_ros.engine.engine import EngineConfig

    bf16 = Engine.from_config(
        EngineConfig("random:tiny", device="cpu", dtype="bfloat16", backend="torch_static")
    )
    assert bf16.backend.dtype == "bfloat16"
    agree = 0
    for name in ("coffee", "astronaut", "chelsea"):
        frame = Frame(photos[name])
        fast = bf16.caption(frame, max_new_tokens=4).token_ids
        exact = tiny_engine.caption(frame, max_new_tokens=4).token_ids
        agree += fast[0] == exact[0]
    assert agree >= 2


def test_the_decode_step_traces_as_one_graph(static_engine, photos):
    """What CUDA graphs need: dynamo sees the whole step (decoder over the static cache) as one
    graph with no break, so ``reduce-overhead`` can capture and replay it."""
    import torch

    language = static_engine.backend.language
    static_engine.caption(Frame(photos["coffee"]), max_new_tokens=2)
    (rows, length), cache = next(iter(language._caches.items()))
    token = torch.full((rows, 1), 5, dtype=torch.long)
    with torch.inference_mode():
        explained = torch._dynamo.explain(language._forward_last)(
            language.text_model.get_input_embeddings()(token),
            torch.ones((rows, length), dtype=torch.long),
            torch.full((rows, 1), 90, dtype=torch.long),
            cache,
        )
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), [
        b.reason for b in explained.break_reasons
    ]


@pytest.mark.slow
def test_compiled_step_on_cpu_equals_eager(tiny_engine, photos):
    """compile=on through inductor on the CPU (no CUDA graph here, the same compiled step)."""
    backend = TorchStaticBackend(
        tiny_engine.loaded.model, "cpu", tiny_engine.loaded.dtype, compile_step=True
    )
    compiled = Engine(tiny_engine.loaded, backend, backend_choice=choose("torch_static", "cpu"))
    frames = [Frame(photos[n]) for n in ("coffee", "astronaut")]
    for rows in (1, 2):
        fast = compiled.caption_batch(frames[:rows], max_new_tokens=10)
        eager = tiny_engine.caption_batch(frames[:rows], max_new_tokens=10)
        assert [r.token_ids for r in fast] == [r.token_ids for r in eager]
