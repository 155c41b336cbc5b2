"""The engine on random:tiny: same tokens as transformers' generate(), tiling, timing, bounds."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from smolvlm_ros.engine import ANSWER, CAPTION, Frame, TilingConfig


def reference_tokens(engine, frame: Frame, prompt: str, max_new_tokens: int) -> list[int]:
    """What the checkpoint's processor + plain ``model.generate()`` make with the same settings."""
    plan = engine.plan(frame)
    inputs = engine.processor(
        text=engine.chat_prompt(prompt),
        images=[[PIL.Image.fromarray(frame.image)]],
        size={"longest_edge": plan.longest_edge},
        do_image_splitting=plan.splitting,
        return_tensors="pt",
    )
    out = engine.loaded.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return out[0, inputs["input_ids"].shape[1] :].tolist()


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
