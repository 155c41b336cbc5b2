"""FrameScheduler with a hand-driven clock: latest wins, pacing, turns, questions first."""

from __future__ import annotations

import threading

import pytest

from smolvlm_ros.pipeline.scheduler import (
    CaptionJob,
    FrameScheduler,
    QuestionJob,
    SchedulerFull,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make(cameras=("a",), rate=1.0, **kwargs):
    clock = FakeClock()
    return FrameScheduler(list(cameras), rate, clock=clock, **kwargs), clock


def test_latest_frame_wins_and_memory_is_one_slot():
    sched, _ = make()
    for i in range(10_000):
        sched.offer("a", i)
    job = sched.next_job(timeout=0)
    assert isinstance(job, CaptionJob) and job.item == 9_999
    stats = sched.stats()["a"]
    assert (stats.received, stats.replaced, stats.captioned) == (10_000, 9_999, 1)
    assert sched.next_job(timeout=0) is None  # nothing new since


def test_captions_are_paced_by_rate():
    sched, clock = make(rate=2.0)  # every 0.5 s
    sched.offer("a", 1)
    assert sched.next_job(timeout=0).item == 1
    clock.now = 0.3
    sched.offer("a", 2)
    assert sched.next_job(timeout=0) is None  # not due yet
    clock.now = 0.5
    assert sched.next_job(timeout=0).item == 2


def test_a_long_stall_does_not_cause_a_burst():
    sched, clock = make(rate=1.0)
    sched.offer("a", 1)
    sched.next_job(timeout=0)
    clock.now = 10.0  # e.g. a slow inference
    sched.offer("a", 2)
    assert sched.next_job(timeout=0).item == 2
    sched.offer("a", 3)
    assert sched.next_job(timeout=0) is None  # next one is due at 11, not immediately
    clock.now = 11.0
    assert sched.next_job(timeout=0).item == 3


def test_cameras_take_turns():
    sched, clock = make(cameras=("a", "b"), rate=1000.0)
    order = []
    for step in range(6):
        clock.now = step
        sched.offer("a", f"a{step}")
        sched.offer("b", f"b{step}")
        order.append(sched.next_job(timeout=0).camera)
    assert order == ["a", "b", "a", "b", "a", "b"]


def test_questions_jump_ahead_of_due_captions():
    sched, _ = make()
    sched.offer("a", "frame")
    question = QuestionJob(camera="a", item="frame", question="q?", max_new_tokens=4)
    sched.ask(question)
    assert sched.next_job(timeout=0) is question
    assert isinstance(sched.next_job(timeout=0), CaptionJob)


def test_too_many_questions_are_refused():
    sched, _ = make(max_pending_questions=2)
    for _ in range(2):
        sched.ask(QuestionJob("a", None, "q", 1))
    with pytest.raises(SchedulerFull, match="2 questions are already waiting"):
        sched.ask(QuestionJob("a", None, "q", 1))


def test_rate_zero_keeps_frames_for_questions_but_never_captions():
    sched, clock = make(rate=0.0)
    sched.offer("a", "frame")
    clock.now = 100.0
    assert sched.next_job(timeout=0) is None
    assert sched.latest("a") == "frame"


def test_close_wakes_the_worker_and_fails_waiting_questions():
    sched, _ = make()
    waiting = sched.ask(QuestionJob("a", None, "q", 1))
    results = []
    sched.next_job(timeout=0)  # the worker takes that question ...
    worker = threading.Thread(target=lambda: results.append(sched.next_job()))
    worker.start()  # ... and then blocks with nothing to do
    queued = sched.ask(QuestionJob("a", None, "q2", 1))
    # the blocked worker picks q2 up at once
    worker.join(timeout=5)
    assert results and results[0].question == "q2"
    late = QuestionJob("a", None, "q3", 1)
    sched.ask(late)
    sched.close()
    assert sched.next_job(timeout=1) is None
    with pytest.raises(RuntimeError, match="shutting down"):
        late.future.result(timeout=1)
    with pytest.raises(RuntimeError, match="closed"):
        sched.ask(QuestionJob("a", None, "q4", 1))
    assert not waiting.done() and not queued.done()  # taken by the worker: theirs to answer


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([], 1.0), "at least one camera"),
        ((["a", "a"], 1.0), "listed twice"),
        ((["a"], -1.0), "caption_rate_hz must be >= 0"),
    ],
)
def test_bad_configuration(args, message):
    with pytest.raises(ValueError, match=message):
        FrameScheduler(*args)
