"""FrameScheduler with a hand-driven clock: latest wins, pacing, fair turns, age, mosaic,
batches of due cameras."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from smolvlm_ros.pipeline.scheduler import (
    STALE,
    SUPERSEDED,
    UNCHANGED,
    CameraConfig,
    CaptionBatchJob,
    CaptionJob,
    FrameScheduler,
    ManualClock,
    MosaicJob,
    QuestionJob,
    SchedulerClosed,
    SchedulerFull,
)


def make(cameras=("a",), rate=1.0, priorities=None, **kwargs):
    clock = ManualClock()
    configs = [CameraConfig(name, rate, (priorities or {}).get(name, 1.0)) for name in cameras]
    return FrameScheduler(configs, clock=clock, **kwargs), clock


def test_latest_frame_wins_and_memory_is_one_slot():
    sched, _ = make()
    for i in range(10_000):
        sched.offer("a", i, stamp=0.0)
    job = sched.next_job(timeout=0)
    assert isinstance(job, CaptionJob) and job.item == 9_999
    stats = sched.stats()["a"]
    assert (stats.received, stats.captioned, stats.dropped[SUPERSEDED]) == (10_000, 1, 9_999)
    assert sched.next_job(timeout=0) is None  # nothing new since


def test_captions_are_paced_by_rate():
    sched, clock = make(rate=2.0)  # every 0.5 s
    sched.offer("a", 1, 0.0)
    assert sched.next_job(timeout=0).item == 1
    clock.now = 0.3
    sched.offer("a", 2, 0.3)
    assert sched.next_job(timeout=0) is None  # not due yet
    clock.now = 0.5
    assert sched.next_job(timeout=0).item == 2


def test_30hz_camera_at_1hz_gives_one_caption_per_second_of_the_newest_frame():
    sched, clock = make(rate=1.0)
    captioned = []
    for i in range(300):  # 10 s at 30 Hz
        clock.now = i / 30
        sched.offer("a", i, clock.now)
        job = sched.next_job(timeout=0)
        if job is not None:
            captioned.append(job.item)
    assert captioned == [0, 30, 60, 90, 120, 150, 180, 210, 240, 270]


def test_a_long_stall_does_not_cause_a_burst():
    sched, clock = make(rate=1.0)
    sched.offer("a", 1, 0.0)
    sched.next_job(timeout=0)
    clock.now = 10.0  # e.g. a slow inference
    sched.offer("a", 2, 10.0)
    assert sched.next_job(timeout=0).item == 2
    sched.offer("a", 3, 10.0)
    assert sched.next_job(timeout=0) is None  # next one is due at 11, not immediately
    clock.now = 11.0
    assert sched.next_job(timeout=0).item == 3


def test_cameras_take_turns():
    sched, clock = make(cameras=("a", "b", "c"), rate=1000.0)
    order = []
    for step in range(9):
        clock.now = step
        for cam in "abc":
            sched.offer(cam, f"{cam}{step}", clock.now)
        order.append(sched.next_job(timeout=0).camera)
    assert order == ["a", "b", "c"] * 3


def test_priorities_share_the_model_by_weight():
    sched, clock = make(cameras=("a", "b"), rate=1000.0, priorities={"a": 3.0})
    turns = Counter()
    for step in range(40):
        clock.now = step
        sched.offer("a", step, clock.now)
        sched.offer("b", step, clock.now)
        turns[sched.next_job(timeout=0).camera] += 1
    assert turns == {"a": 30, "b": 10}


def test_an_idle_camera_does_not_bank_turns():
    sched, clock = make(cameras=("a", "b"), rate=1000.0)
    for step in range(10):  # only a publishes for a while
        clock.now = step
        sched.offer("a", step, clock.now)
        assert sched.next_job(timeout=0).camera == "a"
    order = []
    for step in range(10, 16):  # then both: they alternate, b does not get 10 turns in a row
        clock.now = step
        sched.offer("a", step, clock.now)
        sched.offer("b", step, clock.now)
        order.append(sched.next_job(timeout=0).camera)
    assert order.count("b") == 3 and order.count("a") == 3


def test_stale_frames_are_dropped_and_counted():
    sched, clock = make(rate=1000.0, max_frame_age_s=0.5)
    clock.now = 100.0
    sched.offer("a", "old", stamp=99.0)  # a second old on arrival (e.g. a lagging driver)
    assert sched.next_job(timeout=0) is None
    sched.offer("a", "fresh", stamp=99.8)
    assert sched.next_job(timeout=0).item == "fresh"
    stats = sched.stats()["a"]
    assert stats.dropped[STALE] == 1 and stats.captioned == 1
    assert sched.latest("a") == "fresh"  # questions still see the newest frame


def test_drops_reported_by_the_worker_are_counted():
    sched, _ = make()
    sched.offer("a", 1, 0.0)
    sched.next_job(timeout=0)
    sched.record_drop("a", UNCHANGED)
    stats = sched.stats()["a"]
    assert stats.captioned == 0 and stats.dropped[UNCHANGED] == 1
    with pytest.raises(ValueError, match="unknown drop reason"):
        sched.record_drop("a", "bored")


def test_mosaic_takes_every_cameras_latest_frame_at_the_mosaic_rate():
    sched, clock = make(cameras=("a", "b", "c"), mosaic=True, mosaic_rate_hz=2.0)
    sched.offer("a", "a0", 0.0)
    sched.offer("c", "c0", 0.0)
    job = sched.next_job(timeout=0)
    assert isinstance(job, MosaicJob)
    assert (job.cameras, job.items) == (["a", "c"], ["a0", "c0"])  # b has no frame yet
    sched.offer("b", "b1", 0.1)
    clock.now = 0.2
    assert sched.next_job(timeout=0) is None  # due again at 0.5
    clock.now = 0.5
    job = sched.next_job(timeout=0)
    assert (job.cameras, job.items) == (["a", "b", "c"], ["a0", "b1", "c0"])
    assert job.fresh == {"b"}  # a0 and c0 were counted in the first mosaic


def test_questions_jump_ahead_of_due_captions():
    sched, _ = make()
    sched.offer("a", "frame", 0.0)
    question = QuestionJob(camera="a", item="frame", question="q?", max_new_tokens=4)
    sched.ask(question)
    assert sched.next_job(timeout=0) is question
    assert isinstance(sched.next_job(timeout=0), CaptionJob)


def test_a_stream_of_questions_cannot_starve_a_due_caption():
    sched, clock = make(rate=1.0, max_questions_per_caption=2)
    sched.offer("a", "frame", 0.0)
    for i in range(6):
        sched.ask(QuestionJob("a", "frame", f"q{i}?", 4))

    def next_name() -> str:
        job = sched.next_job(timeout=0)
        return job.question if isinstance(job, QuestionJob) else "caption"

    assert [next_name() for _ in range(5)] == ["q0?", "q1?", "caption", "q2?", "q3?"]
    assert next_name() == "q4?"  # no caption is due (one a second): questions go on
    clock.now = 1.0
    sched.offer("a", "frame2", 1.0)
    assert next_name() == "q5?"  # the 2nd in a row since the caption was last checked
    sched.ask(QuestionJob("a", "frame2", "q6?", 4))
    assert next_name() == "caption"
    assert next_name() == "q6?"
    sched.reconfigure(max_questions_per_caption=1)
    with pytest.raises(ValueError, match="max_questions_per_caption must be >= 1"):
        sched.reconfigure(max_questions_per_caption=0)


def test_questions_whose_caller_gave_up_take_no_turn():
    sched, _ = make(rate=0.0)
    expired, live = QuestionJob("a", None, "q1?", 1), QuestionJob("a", None, "q2?", 1)
    sched.ask(expired)
    sched.ask(live)
    assert expired.future.cancel()  # the node's watchdog expired it
    assert sched.pending_questions() == 1
    assert sched.next_job(timeout=0) is live


def test_too_many_questions_are_refused():
    sched, _ = make(max_pending_questions=2)
    for _ in range(2):
        sched.ask(QuestionJob("a", None, "q", 1))
    with pytest.raises(SchedulerFull, match="2 questions are already waiting"):
        sched.ask(QuestionJob("a", None, "q", 1))


def test_rate_zero_keeps_frames_for_questions_but_never_captions():
    sched, clock = make(rate=0.0)
    sched.offer("a", "frame", 0.0)
    clock.now = 100.0
    assert sched.next_job(timeout=0) is None
    assert sched.latest("a") == "frame"
    assert sched.stats()["a"].dropped[SUPERSEDED] == 0  # nothing was due: nothing dropped


def test_a_waiting_worker_wakes_for_a_question():
    sched, _ = make()
    results = []
    worker = threading.Thread(target=lambda: results.append(sched.next_job(timeout=10)))
    worker.start()
    sched.ask(QuestionJob("a", None, "q", 1))
    worker.join(timeout=5)
    assert results and results[0].question == "q"


def test_close_wakes_the_worker_and_fails_waiting_questions():
    sched, _ = make()
    late = QuestionJob("a", None, "q", 1)
    sched.ask(late)
    sched.close()
    assert sched.next_job(timeout=1) is None
    with pytest.raises(SchedulerClosed, match="shutting down"):
        late.future.result(timeout=1)
    with pytest.raises(SchedulerClosed, match="shutting down"):
        sched.ask(QuestionJob("a", None, "q4", 1))


def _captions(job) -> list[str]:
    """The cameras a caption job covers (a single turn or a batch); [] for anything else."""
    if isinstance(job, CaptionBatchJob):
        return list(job.cameras)
    return [job.camera] if isinstance(job, CaptionJob) else []


def test_due_cameras_are_batched_up_to_max_batch():
    sched, clock = make(cameras=("a", "b", "c", "d", "e"), rate=1.0, max_batch=3)
    for cam in "abcde":
        sched.offer(cam, f"{cam}0", 0.0)
    job = sched.next_job(timeout=0)
    assert isinstance(job, CaptionBatchJob)
    assert (job.cameras, job.items) == (["a", "b", "c"], ["a0", "b0", "c0"])
    job = sched.next_job(timeout=0)  # the two left over: still a batch
    assert (job.cameras, job.items) == (["d", "e"], ["d0", "e0"])
    assert sched.next_job(timeout=0) is None  # each camera paced as if captioned alone
    sched.offer("b", "b1", 0.5)
    clock.now = 1.0
    job = sched.next_job(timeout=0)  # only b has a new frame: a plain single turn
    assert isinstance(job, CaptionJob) and (job.camera, job.item) == ("b", "b1")
    stats = sched.stats()
    assert {name: (s.received, s.captioned) for name, s in stats.items()} == {
        "a": (1, 1), "b": (2, 2), "c": (1, 1), "d": (1, 1), "e": (1, 1),
    }  # fmt: skip


def test_max_batch_1_hands_out_single_turns_as_before():
    sched, _ = make(cameras=("a", "b", "c"), rate=1000.0)  # the default
    for cam in "abc":
        sched.offer(cam, cam, 0.0)
    jobs = [sched.next_job(timeout=0) for _ in range(3)]
    assert all(isinstance(job, CaptionJob) for job in jobs)
    assert [job.camera for job in jobs] == ["a", "b", "c"]


def _shares(cameras, priorities, max_batch, captions=600) -> Counter:
    """Captions per camera over ``captions`` captions, the model being the bottleneck: every
    camera has a new frame at every turn."""
    sched, clock = make(cameras, rate=1000.0, priorities=priorities, max_batch=max_batch)
    counts: Counter = Counter()
    step = 0
    while sum(counts.values()) < captions:
        clock.now = step
        for cam in cameras:
            sched.offer(cam, step, clock.now)
        job = sched.next_job(timeout=0)
        assert len(_captions(job)) == min(max_batch, len(cameras))
        counts.update(_captions(job))
        step += 1
    return counts


@pytest.mark.parametrize(
    ("priorities", "max_batch"),
    [
        ({"a": 3.0}, 2),  # a: 3/7 of the captions, the others 1/7 each
        ({"a": 2.0, "b": 2.0}, 3),
        ({"a": 1.5, "c": 0.5}, 2),
        ({}, 4),
    ],
)
def test_batched_turns_give_each_camera_its_unbatched_share(priorities, max_batch):
    """A batch of k is the next k single turns: over many turns each camera gets exactly the
    captions it gets unbatched (600 captions, a multiple of every max_batch here)."""
    cameras = ("a", "b", "c", "d", "e")
    assert _shares(cameras, priorities, max_batch) == _shares(cameras, priorities, 1)


def test_a_share_above_one_per_batch_is_capped_and_the_rest_keep_their_weights():
    """A camera holds one frame, so it is in a batch at most once: with a share above
    1/max_batch it is in every batch, and the other slots go by the others' weights."""
    cameras = ("a", "b", "c", "d", "e")
    counts = _shares(cameras, {"a": 5.0, "b": 0.2}, max_batch=3)  # 200 batches
    assert counts["a"] == 200
    assert counts["c"] == counts["d"] == counts["e"] == pytest.approx(5 * counts["b"], abs=5)


def test_priorities_order_the_cameras_within_a_batch():
    sched, clock = make(cameras=("a", "b", "c"), rate=1000.0, priorities={"c": 4.0}, max_batch=2)
    order = []
    for step in range(4):
        clock.now = step
        for cam in "abc":
            sched.offer(cam, step, clock.now)
        order.append(_captions(sched.next_job(timeout=0)))
    # c (4x) goes first or second in every batch, a and b share the other slot
    assert order == [["a", "b"], ["c", "a"], ["c", "b"], ["c", "a"]]


def test_questions_jump_ahead_of_a_batch_that_counts_as_one_caption_turn():
    sched, clock = make(cameras=("a", "b", "c"), rate=1.0, max_questions_per_caption=2, max_batch=3)
    for cam in "abc":
        sched.offer(cam, cam, 0.0)
    for i in range(5):
        sched.ask(QuestionJob("a", "a", f"q{i}?", 4))

    def next_name() -> str:
        job = sched.next_job(timeout=0)
        return job.question if isinstance(job, QuestionJob) else ",".join(_captions(job))

    assert [next_name() for _ in range(4)] == ["q0?", "q1?", "a,b,c", "q2?"]  # q2: none due
    clock.now = 1.0
    for cam in "abc":
        sched.offer(cam, cam, 1.0)
    assert [next_name() for _ in range(3)] == ["q3?", "a,b,c", "q4?"]


def test_stale_and_superseded_frames_are_counted_as_without_batches():
    sched, clock = make(cameras=("a", "b", "c"), rate=1000.0, max_frame_age_s=0.5, max_batch=3)
    clock.now = 10.0
    sched.offer("a", "a-old", 9.0)  # stale on arrival
    sched.offer("b", "b0", 9.9)
    sched.offer("b", "b1", 9.95)  # supersedes b0
    sched.offer("c", "c0", 10.0)
    job = sched.next_job(timeout=0)
    assert (job.cameras, job.items) == (["b", "c"], ["b1", "c0"])
    stats = sched.stats()
    counts = {n: (s.captioned, s.dropped[STALE], s.dropped[SUPERSEDED]) for n, s in stats.items()}
    assert counts == {"a": (0, 1, 0), "b": (1, 0, 1), "c": (1, 0, 0)}
    assert sched.latest("a") == "a-old"  # questions still see the newest frame


def test_a_camera_due_while_a_batch_runs_joins_the_next_batch():
    sched, clock = make(cameras=("a", "b", "c"), rate=1.0, max_batch=3)
    sched.offer("a", "a0", 0.0)
    sched.offer("b", "b0", 0.0)
    assert _captions(sched.next_job(timeout=0)) == ["a", "b"]
    clock.now = 0.5  # while that batch runs: c sends its first frame, a a new one
    sched.offer("c", "c0", 0.5)
    sched.offer("a", "a1", 0.5)
    clock.now = 1.0  # the batch is done: c (no turn yet) first, then a, due again
    job = sched.next_job(timeout=0)
    assert (job.cameras, job.items) == (["c", "a"], ["c0", "a1"])
    assert sched.stats()["a"].dropped[SUPERSEDED] == 0  # a0 was in the batch, not replaced


def test_max_batch_is_validated_and_reconfigurable():
    sched, clock = make(cameras=("a", "b", "c"), rate=1000.0)
    for cam in "abc":
        sched.offer(cam, cam, 0.0)
    assert _captions(sched.next_job(timeout=0)) == ["a"]
    sched.reconfigure(max_batch=8)
    assert _captions(sched.next_job(timeout=0)) == ["b", "c"]
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_batch must be an integer >= 1"):
            sched.reconfigure(max_batch=bad)
        with pytest.raises(ValueError, match="max_batch must be an integer >= 1"):
            FrameScheduler([CameraConfig("a")], max_batch=bad)
    clock.now = 1.0
    for cam in "abc":
        sched.offer(cam, cam, 1.0)
    assert _captions(sched.next_job(timeout=0)) == ["a", "b", "c"]  # 8 kept after the refusals


@pytest.mark.parametrize(
    ("cameras", "kwargs", "message"),
    [
        ([], {}, "at least one camera"),
        ([CameraConfig("a"), CameraConfig("a")], {}, "listed twice"),
        ([CameraConfig("a", -1.0)], {}, "caption rate must be >= 0"),
        ([CameraConfig("a", 1.0, 0.0)], {}, "priority must be > 0"),
        ([CameraConfig("a")], {"max_frame_age_s": -1}, "max_frame_age_s must be >= 0"),
    ],
)
def test_bad_configuration(cameras, kwargs, message):
    with pytest.raises(ValueError, match=message):
        FrameScheduler(cameras, **kwargs)
