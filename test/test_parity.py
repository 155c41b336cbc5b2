"""Parity with the reference: for the same checkpoint, image and settings, the engine's pixel
values, image-token layout and input ids equal the Idefics3 processor's, and greedy generations
equal ``model.generate()`` token for token.

random:tiny runs in `make test`; random:256m (the real 256M architecture) is marked slow.
"""

from __future__ import annotations

import PIL.Image
import pytest
import torch

from smolvlm_ros.engine import Engine, EngineConfig, Frame, TilingConfig
from smolvlm_ros.engine.reference import reference_generate, reference_inputs
from smolvlm_ros.photos import photo

# (height, width): camera 4:3, portrait, very wide, very tall, smaller than one tile, odd sizes.
SIZES = [(480, 640), (640, 480), (360, 1280), (900, 300), (96, 120), (333, 777)]
TILINGS = [
    TilingConfig(image_splitting=False),
    TilingConfig(image_splitting=True),
    TilingConfig(image_splitting=True, allow_upsampling=True),  # the reference's own default
    TilingConfig(image_splitting=False, allow_upsampling=True),
]
PROMPT = "What is in front of the robot?"


@pytest.fixture(scope="module")
def engines():
    cache = {}

    def get(model: str, tiling: TilingConfig) -> Engine:
        if model not in cache:
            cache[model] = Engine.from_config(EngineConfig(model, device="cpu", dtype="float32"))
        engine = cache[model]
        engine.tiling = tiling
        engine.clear_cache()
        return engine

    return get


def frame_of(height: int, width: int) -> Frame:
    return Frame(photo("astronaut", width=width, height=height))


def check_inputs(engine: Engine, frame: Frame) -> None:
    plan = engine.plan(frame)
    ref = reference_inputs(engine, frame, PROMPT)
    ours = engine.preprocess_image(frame, plan)
    assert torch.equal(ours["pixel_values"], ref["pixel_values"])
    assert torch.equal(ours["pixel_attention_mask"], ref["pixel_attention_mask"])
    assert engine.prompt_ids(PROMPT, [plan]).tolist() == ref["input_ids"][0].tolist()
    assert ref["pixel_values"].shape[1] == plan.num_images
    ids = ref["input_ids"][0]
    assert int((ids == engine.image_token_id).sum()) == plan.image_tokens


def check_generation(engine: Engine, frame: Frame, max_new_tokens: int) -> None:
    expected = reference_generate(engine, frame, PROMPT, max_new_tokens)
    assert engine.ask(frame, PROMPT, max_new_tokens=max_new_tokens).token_ids == expected


@pytest.mark.parametrize(
    "tiling", TILINGS, ids=lambda t: f"split={t.image_splitting}-up={t.allow_upsampling}"
)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[1]}x{s[0]}")
def test_tiny_inputs_equal_the_processors(engines, size, tiling):
    check_inputs(engines("random:tiny", tiling), frame_of(*size))


@pytest.mark.parametrize("tiling", TILINGS[:3], ids=["single", "split", "split-reference"])
@pytest.mark.parametrize("size", [(480, 640), (900, 300), (360, 1280)], ids=["4:3", "tall", "wide"])
def test_tiny_generation_equals_generate(engines, size, tiling):
    check_generation(engines("random:tiny", tiling), frame_of(*size), max_new_tokens=10)


def test_reference_default_tiling_is_reproduced(engines):
    """allow_upsampling with the checkpoint's longest edge is exactly the processor's default."""
    engine = engines("random:tiny", TilingConfig(image_splitting=True, allow_upsampling=True))
    frame = frame_of(48, 64)  # tiny and far below one tile: the reference blows it up anyway
    default = engine.processor(
        text=engine.chat_prompt(PROMPT),
        images=[[PIL.Image.fromarray(frame.image)]],
        return_tensors="pt",
    )
    assert (
        engine.prompt_ids(PROMPT, [engine.plan(frame)]).tolist() == default["input_ids"][0].tolist()
    )
    assert engine.plan(frame).num_images == 13  # 4x3 tiles + global at tiny's 512 px edge


def test_several_frames_in_one_prompt_equal_the_processor(engines):
    engine = engines("random:tiny", TilingConfig(image_splitting=True))
    frames = [frame_of(480, 640), frame_of(900, 300)]
    plans = [engine.plan(f) for f in frames]
    ref = engine.processor(
        text=engine.chat_prompt(PROMPT, num_images=2),
        images=[[PIL.Image.fromarray(f.image) for f in frames]],
        size={"longest_edge": 512},  # both plans use 512 here: one processor call fits both
        do_image_splitting=True,
        return_tensors="pt",
    )
    assert [p.longest_edge for p in plans] == [512, 512]
    assert engine.prompt_ids(PROMPT, plans).tolist() == ref["input_ids"][0].tolist()
    out = engine.loaded.model.generate(**ref, max_new_tokens=8, do_sample=False)
    expected = out[0, ref["input_ids"].shape[1] :].tolist()
    assert engine.describe_frames(frames, PROMPT, max_new_tokens=8).token_ids == expected


@pytest.mark.slow
@pytest.mark.parametrize("tiling", TILINGS[:3], ids=["single", "split", "split-reference"])
def test_256m_inputs_and_generation_equal_the_reference(engines, tiling):
    engine = engines("random:256m", tiling)
    for size in [(480, 640), (900, 300)]:
        frame = frame_of(*size)
        check_inputs(engine, frame)
        if tiling.image_splitting and tiling.allow_upsampling and size == (480, 640):
            assert engine.plan(frame).image_tokens == 832  # 12 tiles + 1 global, as documented
        check_generation(engine, frame, max_new_tokens=6)
