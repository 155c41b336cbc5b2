"""Change gating, mosaics and the job runner shared by the node and replay (no ROS)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smolvlm_ros.engine import Frame
from smolvlm_ros.engine.answers import parse_standing
from smolvlm_ros.pipeline.change import ChangeGate, scene_change
from smolvlm_ros.pipeline.intake import ImageDecodeError
from smolvlm_ros.pipeline.mosaic import CELL, LABEL_HEIGHT, compose_mosaic
from smolvlm_ros.pipeline.runner import CaptionSettings, JobRunner, is_out_of_memory
from smolvlm_ros.pipeline.scheduler import (
    DECODE_ERROR,
    INFERENCE_ERROR,
    UNCHANGED,
    CameraConfig,
    CaptionBatchJob,
    FrameScheduler,
    ManualClock,
    QuestionJob,
)


def test_scene_change_separates_noise_from_a_new_scene(photos):
    rng = np.random.default_rng(0)
    a = photos["coffee"]
    noisy = np.clip(a.astype(int) + rng.normal(0, 3, a.shape), 0, 255).astype(np.uint8)
    assert scene_change(a, a) == 0
    assert scene_change(a, noisy) < 1.5
    assert scene_change(a, photos["rocket"]) > 20


def test_change_gate_admits_only_real_changes(photos):
    gate = ChangeGate(threshold=5.0)
    assert gate.admit("cam", photos["coffee"])  # first frame always
    assert not gate.admit("cam", photos["coffee"])
    assert gate.admit("other", photos["coffee"])  # per camera
    assert gate.admit("cam", photos["rocket"])
    assert ChangeGate(0.0).admit("cam", photos["rocket"])  # off
    with pytest.raises(ValueError, match="change threshold must be >= 0"):
        ChangeGate(-1)


def test_mosaic_grid_and_labels(photos):
    images = [photos["astronaut"], photos["coffee"][:200], photos["rocket"]]
    mosaic = compose_mosaic(images, ["/front", "/left", "/rear"])
    width, height = CELL
    assert mosaic.shape == (2 * height, 2 * width, 3)  # 3 cameras: a 2x2 grid
    assert mosaic[height:, width:].max() == 0  # the fourth cell stays empty
    assert mosaic[:LABEL_HEIGHT, :width].max() == 255  # a white label on the dark bar
    # each camera's picture is in its cell: the astronaut cell resembles the astronaut photo
    cell = mosaic[LABEL_HEIGHT:height, :width]
    assert cell.mean() > 20
    with pytest.raises(ValueError, match="one label per image"):
        compose_mosaic(images, ["/front"])


def _runner(engine, threshold=0.0, cameras=("a", "b"), report=None, max_batch=1):
    scheduler = FrameScheduler(
        [CameraConfig(c, 1000.0) for c in cameras], mosaic=False, max_batch=max_batch
    )

    def to_frame(item):
        if item == "garbage":
            raise ImageDecodeError("not an image")
        return item

    runner = JobRunner(
        engine,
        scheduler,
        to_frame,
        CaptionSettings(max_new_tokens=2),
        ChangeGate(threshold),
        report=report,
    )
    return scheduler, runner


def test_runner_captions_and_drops_with_reasons(tiny_engine, photos):
    scheduler, runner = _runner(tiny_engine, threshold=5.0)
    frame = Frame(photos["coffee"], camera="a", stamp_ns=5)
    scheduler.offer("a", frame, 0.0)
    (result,) = runner.run(scheduler.next_job(timeout=0))
    assert result.camera == "a" and result.stamp_ns == 5
    scheduler.offer("a", frame, 0.0)  # the same scene again
    assert runner.run(scheduler.next_job(timeout=0)) == []
    scheduler.offer("b", "garbage", 0.0)
    assert runner.run(scheduler.next_job(timeout=0)) == []
    stats = scheduler.stats()
    assert (stats["a"].captioned, stats["a"].dropped[UNCHANGED]) == (1, 1)
    assert (stats["b"].captioned, stats["b"].dropped[DECODE_ERROR]) == (0, 1)


def test_runner_answers_questions_through_the_future(tiny_engine, photos):
    scheduler, runner = _runner(tiny_engine)
    job = QuestionJob("a", Frame(photos["rocket"]), "What is it?", 3)
    scheduler.ask(job)
    runner.run(scheduler.next_job(timeout=0))
    assert job.future.result(timeout=0).prompt == "What is it?"
    bad = QuestionJob("a", "garbage", "What is it?", 3)
    scheduler.ask(bad)
    runner.run(scheduler.next_job(timeout=0))
    with pytest.raises(ImageDecodeError):
        bad.future.result(timeout=0)


def test_runner_mosaic_lists_the_cameras(tiny_engine, photos):
    scheduler = FrameScheduler(
        [CameraConfig("/front"), CameraConfig("/rear")], mosaic=True, mosaic_rate_hz=10.0
    )
    runner = JobRunner(tiny_engine, scheduler, lambda item: item, CaptionSettings(max_new_tokens=2))
    scheduler.offer("/front", Frame(photos["astronaut"], camera="/front", stamp_ns=3), 0.0)
    scheduler.offer("/rear", Frame(photos["coffee"], camera="/rear", stamp_ns=9, frame_id="r"), 0.0)
    (result,) = runner.run(scheduler.next_job(timeout=0))
    assert result.camera == "/front,/rear"
    assert (result.stamp_ns, result.frame_id) == (9, "r")  # the newest frame's


class _FailingEngine:
    def caption(self, *args, **kwargs):
        raise RuntimeError("the model failed")


def test_a_mosaic_that_fails_counts_only_its_new_frames():
    """A mosaic repeats a camera's last frame when it sent no new one; when the mosaic fails (or
    that frame does not decode) the old frame must not be uncounted again: every frame is
    counted once, captioned or dropped, and no count goes below zero."""
    clock = ManualClock()
    cameras = [CameraConfig("/front"), CameraConfig("/rear"), CameraConfig("/side")]
    scheduler = FrameScheduler(cameras, mosaic=True, clock=clock)

    def to_frame(item):
        if item == "garbage":
            raise ImageDecodeError("not an image")
        return Frame(np.zeros((4, 4, 3), np.uint8))

    runner = JobRunner(_FailingEngine(), scheduler, to_frame, report=lambda reason, text: None)
    scheduler.offer("/rear", "r0", 0.0)
    scheduler.offer("/side", "garbage", 0.0)
    for i in range(3):  # only /front sends new frames: /rear's and /side's are in every mosaic
        clock.now = float(i)
        scheduler.offer("/front", f"f{i}", clock.now)
        job = scheduler.next_job(timeout=0)
        assert job.cameras == ["/front", "/rear", "/side"]
        assert runner.run(job) == []
    stats = scheduler.stats()
    counts = {
        name: (s.received, s.captioned, s.dropped[INFERENCE_ERROR], s.dropped[DECODE_ERROR])
        for name, s in stats.items()
    }
    assert counts == {"/front": (3, 0, 3, 0), "/rear": (1, 0, 1, 0), "/side": (1, 0, 0, 1)}


def test_runner_answers_standing_questions_about_each_captioned_frame(tiny_engine, photos):
    scheduler, runner = _runner(tiny_engine)
    runner.captions = CaptionSettings(max_new_tokens=2, questions=("Is it open?", "Any people?"))
    tiny_engine.clear_cache()
    scheduler.offer("a", Frame(photos["coffee"], camera="a", stamp_ns=11), 0.0)
    caption, *answers = runner.run(scheduler.next_job(timeout=0))
    assert caption.kind == "caption"
    assert [a.prompt for a in answers] == ["Is it open?", "Any people?"]
    assert all(a.kind == "answer" and a.stamp_ns == 11 and a.camera == "a" for a in answers)
    assert all(a.reused_encoding for a in answers)  # one vision pass for caption and answers


def test_typed_standing_questions_are_answered_typed_in_their_order(tiny_engine, photos):
    questions = (
        "Is it open?",
        "yes_no: Is the door open?",
        "Any people?",
        "choice[left|right]: Which side is clear?",
        "count: How many people?",
    )
    scheduler, runner = _runner(tiny_engine)
    runner.captions = CaptionSettings(max_new_tokens=4, questions=questions)
    tiny_engine.clear_cache()
    frame = Frame(photos["coffee"], camera="a", stamp_ns=12)
    scheduler.offer("a", frame, 0.0)
    caption, *answers = runner.run(scheduler.next_job(timeout=0))
    assert caption.kind == "caption"
    assert [a.prompt for a in answers] == [
        "Is it open?", "Is the door open?", "Any people?", "Which side is clear?",
        "How many people?",
    ]  # fmt: skip
    assert [a.typed.type if a.typed else None for a in answers[:4]] == [
        None, "yes_no", None, "choice",
    ]  # fmt: skip
    assert isinstance(answers[1].typed.value, bool) and 0 <= answers[1].typed.confidence <= 1
    assert answers[3].typed.value in ("left", "right")
    assert answers[4].typed is None or answers[4].typed.type == "count"  # may be cut short
    assert all(a.reused_encoding and a.stamp_ns == 12 for a in answers)  # one vision pass
    # the free-text ones are what ask_many gives them; the typed what ask() gives
    expected = tiny_engine.ask_many(frame, ["Is it open?", "Any people?"], max_new_tokens=4)
    assert [answers[0].token_ids, answers[2].token_ids] == [e.token_ids for e in expected]
    alone = tiny_engine.ask(frame, "Is the door open?", answer=parse_standing(questions[1])[1])
    assert answers[1].typed == alone.typed


def test_runner_reports_failures_and_backs_off_until_a_success(tiny_engine, photos):
    """A real engine failure (a request beyond the model's context) fails that job only."""
    reports: list[tuple[str, str]] = []
    scheduler, runner = _runner(
        tiny_engine, cameras=("a",), report=lambda reason, text: reports.append((reason, text))
    )
    runner.captions = CaptionSettings(max_new_tokens=10**6)
    frame = Frame(photos["coffee"], camera="a", stamp_ns=5)
    for i in range(3):
        scheduler.offer("a", frame, float(i))
        assert runner.run(scheduler.next_job(timeout=0)) == []
    assert [reason for reason, _ in reports] == ["inference_error"] * 3
    assert "TokenBudgetError" in reports[0][1]
    assert runner.failure_streak == 3
    assert 0.5 < runner.backoff_s() <= 1.0  # 0.5 s after the 2nd failure, 1 s after the 3rd
    assert scheduler.stats()["a"].dropped["inference_error"] == 3
    runner.captions = CaptionSettings(max_new_tokens=2)
    scheduler.offer("a", frame, 9.0)
    assert len(runner.run(scheduler.next_job(timeout=0))) == 1
    assert runner.failure_streak == 0 and runner.backoff_s() == 0.0


def test_a_failing_reporter_never_stops_the_runner(tiny_engine):
    def broken(reason: str, text: str) -> None:
        raise ValueError("Requested logging filters cannot be changed between calls")

    scheduler, runner = _runner(tiny_engine, cameras=("a",), report=broken)
    scheduler.offer("a", "garbage", 0.0)
    assert runner.run(scheduler.next_job(timeout=0)) == []
    assert scheduler.stats()["a"].dropped["decode_error"] == 1


BATCH_PHOTOS = {"a": "coffee", "b": "rocket", "c": "chelsea"}  # camera -> its photo


def _offer_batch(scheduler, items: dict) -> CaptionBatchJob:
    """Every camera of ``items`` gets a new frame; the job that takes them all at once."""
    for camera, item in items.items():
        scheduler.offer(camera, item, 0.0)
    job = scheduler.next_job(timeout=0)
    assert isinstance(job, CaptionBatchJob) and job.cameras == list(items)
    return job


def test_a_batch_equals_separate_captions_token_for_token(tiny_engine, photos):
    questions = ("Is it open?", "Any people?")
    scheduler, runner = _runner(tiny_engine, cameras=("a", "b", "c"), max_batch=3)
    runner.captions = CaptionSettings(max_new_tokens=8, questions=questions)
    frames = {
        camera: Frame(photos[name], camera=camera, stamp_ns=10 + i, frame_id=f"{camera}_optical")
        for i, (camera, name) in enumerate(BATCH_PHOTOS.items())
    }
    tiny_engine.clear_cache()
    results = runner.run(_offer_batch(scheduler, frames))

    expected = []
    for frame in frames.values():  # each camera alone, as with max_batch 1
        expected.append(tiny_engine.caption(frame, runner.captions.prompt, max_new_tokens=8))
        expected += [tiny_engine.ask(frame, q, max_new_tokens=8) for q in questions]
    seen = [(r.kind, r.camera, r.prompt, r.stamp_ns, r.frame_id, r.token_ids) for r in results]
    assert seen == [
        (r.kind, r.camera, r.prompt, r.stamp_ns, r.frame_id, r.token_ids) for r in expected
    ]
    assert [r.text for r in results] == [r.text for r in expected]
    captions = [r for r in results if r.kind == "caption"]
    assert len({r.timing.prefill_ms for r in captions}) == 1  # one language pass for all three
    assert all(r.reused_encoding for r in results if r.kind == "answer")  # no 2nd vision pass
    stats = scheduler.stats()
    assert {name: s.captioned for name, s in stats.items()} == {"a": 1, "b": 1, "c": 1}


def test_a_frame_that_does_not_decode_or_change_drops_only_its_camera(tiny_engine, photos):
    scheduler, runner = _runner(
        tiny_engine, threshold=5.0, cameras=("a", "b", "c"), report=lambda *_: None, max_batch=3
    )
    a, c = Frame(photos["coffee"], camera="a"), Frame(photos["rocket"], camera="c")
    results = runner.run(_offer_batch(scheduler, {"a": a, "b": "garbage", "c": c}))
    assert [r.camera for r in results] == ["a", "c"]
    b, c = Frame(photos["chelsea"], camera="b"), Frame(photos["astronaut"], camera="c")
    results = runner.run(_offer_batch(scheduler, {"a": a, "b": b, "c": c}))  # a: same scene
    assert [r.camera for r in results] == ["b", "c"]
    stats = scheduler.stats()
    counts = {
        name: (s.received, s.captioned, s.dropped[DECODE_ERROR], s.dropped[UNCHANGED])
        for name, s in stats.items()
    }
    assert counts == {"a": (2, 1, 0, 1), "b": (2, 1, 1, 0), "c": (2, 2, 0, 0)}


def test_an_engine_failure_drops_every_camera_of_the_batch_and_is_reported_once(
    tiny_engine, photos
):
    """A real engine failure (a request beyond the model's context) fails the whole pass."""
    reports: list[tuple[str, str]] = []
    scheduler, runner = _runner(
        tiny_engine,
        cameras=("a", "b", "c"),
        report=lambda reason, text: reports.append((reason, text)),
        max_batch=3,
    )
    runner.captions = CaptionSettings(max_new_tokens=10**6)
    frames = {camera: Frame(photos[name], camera=camera) for camera, name in BATCH_PHOTOS.items()}
    assert runner.run(_offer_batch(scheduler, frames)) == []
    assert [reason for reason, _ in reports] == [INFERENCE_ERROR]
    assert "a, b, c" in reports[0][1] and "TokenBudgetError" in reports[0][1]
    assert runner.failure_streak == 1  # one failure, not three
    stats = scheduler.stats()
    counts = {name: (s.captioned, s.dropped[INFERENCE_ERROR]) for name, s in stats.items()}
    assert counts == {"a": (0, 1), "b": (0, 1), "c": (0, 1)}


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("[rknn] NPU out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
