"""Change gating, mosaics and the job runner shared by the node and replay (no ROS)."""

from __future__ import annotations

import numpy as np
import pytest

from smolvlm_ros.engine import Frame
from smolvlm_ros.pipeline.change import ChangeGate, scene_change
from smolvlm_ros.pipeline.intake import ImageDecodeError
from smolvlm_ros.pipeline.mosaic import CELL, LABEL_HEIGHT, compose_mosaic
from smolvlm_ros.pipeline.runner import CaptionSettings, JobRunner
from smolvlm_ros.pipeline.scheduler import (
    DECODE_ERROR,
    UNCHANGED,
    CameraConfig,
    FrameScheduler,
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


def _runner(engine, threshold=0.0, cameras=("a", "b")):
    scheduler = FrameScheduler([CameraConfig(c, 1000.0) for c in cameras], mosaic=False)

    def to_frame(item):
        if item == "garbage":
            raise ImageDecodeError("not an image")
        return item

    runner = JobRunner(
        engine, scheduler, to_frame, CaptionSettings(max_new_tokens=2), ChangeGate(threshold)
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
