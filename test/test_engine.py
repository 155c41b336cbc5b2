"""The engine on random:tiny: same tokens as transformers' generate(), tiling, timing, bounds."""

from __future__ import annotations

import numpy as np
import pytest

from smolvlm_ros.engine import ANSWER, CAPTION, Frame, TilingConfig
from smolvlm_ros.engine.reference import reference_generate


def reference_tokens(engine, frame: Frame, prompt: str, max_new_tokens: int) -> list[int]:
    """What the checkpoint's processor + plain ``model.generate()`` make with the same settings."""
    return reference_generate(engine, frame, prompt, max_new_tokens)


@pytest.mark.parametrize("splitting", [False, True])
@pytest.mark.parametrize("name", ["astronaut", "rocket"])
def test_generation_equals_transformers_generate(tiny_engine, photos, name, splitting):
    tiny_engine.tiling = TilingConfig(image_splitting=splitting)
    try:
        frame = Frame(photos[name], camera="/cam", stamp_ns=1, frame_id="f")
        result = tiny_engine.caption(frame, "Describe this image.", max_new_tokens=12)
        assert result.token_ids == reference_tokens(tiny_engine, frame, "Describe this image.", 12)
        assert (
            result.text
            == tiny_engine.processor.decode(result.token_ids, skip_special_tokens=True).strip()
        )
    finally:
        tiny_engine.tiling = TilingConfig()


def test_tile_grid_and_image_tokens(tiny_engine, photos):
    frame = Frame(photos["coffee"])  # 640x480
    single = tiny_engine.caption(frame, max_new_tokens=1)
    assert (single.tile_rows, single.tile_cols, single.num_images) == (0, 0, 1)
    assert single.timing.image_tokens == 16

    tiny_engine.tiling = TilingConfig(image_splitting=True)
    try:
        split = tiny_engine.caption(frame, max_new_tokens=1)
    finally:
        tiny_engine.tiling = TilingConfig()
    # tiny: longest edge 512 -> 512x384 -> 3 rows x 4 cols of 128 px tiles + 1 global image
    assert (split.tile_rows, split.tile_cols, split.num_images) == (3, 4, 13)
    assert split.timing.image_tokens == 13 * 16


def test_result_carries_source_and_provenance(tiny_engine, photos):
    frame = Frame(photos["chelsea"], camera="/front/image_raw", stamp_ns=12_345, frame_id="front")
    result = tiny_engine.ask(frame, "Is there a cat?", max_new_tokens=5)
    assert result.kind == ANSWER
    assert (result.camera, result.stamp_ns, result.frame_id) == (
        "/front/image_raw",
        12_345,
        "front",
    )
    assert (result.model, result.backend, result.device, result.dtype) == (
        "random:tiny",
        "torch",
        "cpu",
        "float32",
    )
    assert result.prompt == "Is there a cat?"
    t = result.timing
    assert t.generated_tokens == len(result.token_ids) <= 5
    assert min(t.preprocess_ms, t.encode_ms, t.prefill_ms, t.decode_ms) >= 0
    assert t.total_ms >= t.preprocess_ms + t.encode_ms + t.prefill_ms + t.decode_ms
    assert t.prompt_tokens > t.image_tokens == 16
    assert tiny_engine.caption(frame, max_new_tokens=2).kind == CAPTION


def test_tokens_stream_as_they_are_made(tiny_engine, photos):
    seen: list[int] = []
    result = tiny_engine.caption(Frame(photos["rocket"]), max_new_tokens=8, on_token=seen.append)
    assert seen == result.token_ids


def test_should_stop_ends_generation_early(tiny_engine, photos):
    frame = Frame(photos["rocket"])
    # Polled after each token: a stop requested from the start still yields the first token.
    stopped = tiny_engine.caption(frame, max_new_tokens=20, should_stop=lambda: True)
    assert len(stopped.token_ids) == 1
    seen: list[int] = []
    result = tiny_engine.caption(
        frame, max_new_tokens=20, on_token=seen.append, should_stop=lambda: len(seen) >= 3
    )
    # transformers checks stopping criteria just before streaming the token it made: one more.
    assert 3 <= len(result.token_ids) <= 4


def test_queue_wait_is_measured_from_arrival(tiny_engine, photos):
    import time

    frame = Frame(photos["coffee"], received_at=time.monotonic() - 0.25)
    result = tiny_engine.caption(frame, max_new_tokens=1)
    assert result.timing.queue_wait_ms >= 250
    assert result.timing.total_ms >= result.timing.queue_wait_ms


def test_same_input_same_output(tiny_engine, photos):
    frame = Frame(photos["astronaut"])
    assert tiny_engine.caption(frame, max_new_tokens=8).token_ids == (
        tiny_engine.caption(frame, max_new_tokens=8).token_ids
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": "  "}, "empty"),
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
    ],
)
def test_bad_requests_raise(tiny_engine, photos, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_engine.caption(Frame(photos["coffee"]), **kwargs)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((4, 4), np.uint8),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((4, 4, 3), np.float32),
        np.zeros((0, 4, 3), np.uint8),
    ],
)
def test_frames_must_be_rgb_uint8(image):
    with pytest.raises(ValueError, match="frame image"):
        Frame(image)


@pytest.mark.slow
def test_256m_generation_equals_transformers_generate(photos):
    """The real 256M architecture, bf16 as auto picks it on CPUs with native bf16."""
    from smolvlm_ros.engine import Engine, EngineConfig

    engine = Engine.from_config(EngineConfig("random:256m", device="cpu"))
    frame = Frame(photos["astronaut"])
    result = engine.caption(frame, "Describe this image.", max_new_tokens=8)
    assert result.timing.image_tokens == 64
    assert result.token_ids == reference_tokens(engine, frame, "Describe this image.", 8)


def test_ask_many_equals_separate_asks_and_encodes_once(tiny_engine, photos):
    frame = Frame(photos["coffee"], camera="/cam", stamp_ns=9)
    questions = ["What is on the table?", "Is there a cup?", "What colour is the saucer?"]
    tiny_engine.clear_cache()
    together = tiny_engine.ask_many(frame, questions, max_new_tokens=8)
    assert [r.reused_encoding for r in together] == [False, True, True]
    assert [r.timing.encode_ms > 0 for r in together] == [True, False, False]
    tiny_engine.clear_cache()
    separate = [tiny_engine.ask(frame, q, max_new_tokens=8) for q in questions]
    assert [r.token_ids for r in together] == [r.token_ids for r in separate]
    assert [r.prompt for r in together] == questions
    assert all(r.stamp_ns == 9 and r.camera == "/cam" for r in together)


def test_a_second_request_on_the_same_frame_reuses_its_embeddings(tiny_engine, photos):
    tiny_engine.clear_cache()
    frame = Frame(photos["rocket"])
    first = tiny_engine.caption(frame, max_new_tokens=2)
    again = tiny_engine.ask(frame, "Is it a rocket?", max_new_tokens=2)
    other = tiny_engine.ask(Frame(photos["coffee"]), "Is it a rocket?", max_new_tokens=2)
    assert (first.reused_encoding, again.reused_encoding, other.reused_encoding) == (
        False,
        True,
        False,
    )


def test_batched_captions_equal_separate_ones(tiny_engine, photos):
    frames = [
        Frame(photos["astronaut"], camera="/a"),
        Frame(photos["chelsea"], camera="/b"),
        Frame(photos["rocket"][:300], camera="/c"),  # a different size: a different prompt length
    ]
    tiny_engine.tiling = TilingConfig(image_splitting=True)
    try:
        tiny_engine.clear_cache()
        batch = tiny_engine.caption_batch(frames, max_new_tokens=8)
        tiny_engine.clear_cache()
        alone = [tiny_engine.caption(f, max_new_tokens=8) for f in frames]
    finally:
        tiny_engine.tiling = TilingConfig()
    assert [r.camera for r in batch] == ["/a", "/b", "/c"]
    assert [r.token_ids for r in batch] == [r.token_ids for r in alone]
    assert len({r.timing.prompt_tokens for r in batch}) > 1  # padding was really exercised


def test_several_cameras_in_one_prompt(tiny_engine, photos):
    frames = [
        Frame(photos["astronaut"], camera="/front", stamp_ns=5, frame_id="front"),
        Frame(photos["coffee"], camera="/rear", stamp_ns=7, frame_id="rear"),
    ]
    result = tiny_engine.describe_frames(frames, "Describe both views.", max_new_tokens=4)
    assert result.camera == "/front,/rear"
    assert (result.stamp_ns, result.frame_id) == (7, "rear")  # the newest frame
    assert result.num_images == 2 and result.timing.image_tokens == 32


def test_region_of_interest(tiny_engine, photos):
    frame = Frame(photos["astronaut"], camera="/cam", stamp_ns=3)
    roi = frame.crop(100, 50, 200, 120)
    assert roi.image.shape == (120, 200, 3) and (roi.camera, roi.stamp_ns) == ("/cam", 3)
    assert np.array_equal(roi.image, photos["astronaut"][50:170, 100:300])
    assert tiny_engine.caption(roi, max_new_tokens=2).timing.image_tokens == 16
    with pytest.raises(ValueError, match="is not inside the 640x480 frame"):
        frame.crop(600, 0, 100, 100)


def test_finish_reasons(tiny_engine, photos):
    frame = Frame(photos["chelsea"])
    assert tiny_engine.caption(frame, max_new_tokens=3).finish_reason == "length"
    cancelled = tiny_engine.caption(frame, max_new_tokens=10, should_stop=lambda: True)
    assert (cancelled.finish_reason, len(cancelled.token_ids)) == ("cancelled", 1)


def test_a_deadline_ends_generation(tiny_engine, photos):
    import time

    def slow_consumer(token: int) -> None:
        time.sleep(0.02)  # e.g. a slow network link: 500 tokens would take 10 s

    result = tiny_engine.caption(
        Frame(photos["coffee"]),
        max_new_tokens=500,
        deadline=time.monotonic() + 1.0,
        on_token=slow_consumer,
    )
    assert result.finish_reason == "deadline"
    assert 1 <= len(result.token_ids) < 500


def test_a_deadline_already_past_runs_nothing(tiny_engine, photos):
    import time

    from smolvlm_ros.engine import DeadlineExceeded

    tiny_engine.clear_cache()
    with pytest.raises(DeadlineExceeded):
        tiny_engine.ask(Frame(photos["coffee"]), "Too late?", deadline=time.monotonic() - 1)


def test_a_prompt_too_long_for_the_context_is_refused(tiny_engine, photos):
    from smolvlm_ros.engine import TokenBudgetError

    with pytest.raises(TokenBudgetError, match="exceeds the model's context of 8192 tokens"):
        tiny_engine.caption(Frame(photos["coffee"]), max_new_tokens=8190)


def test_prompts_may_not_smuggle_image_tokens(tiny_engine, photos):
    with pytest.raises(ValueError, match="must not contain '<image>'"):
        tiny_engine.ask(Frame(photos["coffee"]), "What is <image>?")


def test_sampling_is_seeded_and_reproducible(photos):
    from smolvlm_ros.engine import Engine, EngineConfig, Sampling

    config = EngineConfig(
        "random:tiny",
        device="cpu",
        dtype="float32",
        sampling=Sampling(do_sample=True, temperature=1.5, seed=7),
    )
    engine = Engine.from_config(config)
    frame = Frame(photos["coffee"])
    first = engine.caption(frame, max_new_tokens=12).token_ids
    assert engine.caption(frame, max_new_tokens=12).token_ids == first
    greedy = Engine.from_config(EngineConfig("random:tiny", device="cpu", dtype="float32"))
    assert greedy.caption(frame, max_new_tokens=12).token_ids != first
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Sampling(temperature=0).validate()
