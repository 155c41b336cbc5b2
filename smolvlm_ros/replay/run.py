"""Drive a bag's image messages through FrameScheduler + JobRunner on the bag's own clock.

Two modes:

- ``every``: every frame is captioned (rates ignored), for evaluating prompts and models.
- ``live``: emulate the node at a given compute speed: each job (a caption with its standing
  answers, or a batch of cameras when ``max_batch`` > 1, which costs a GPU about as much as one)
  occupies the worker for ``compute_s`` seconds of bag time, frames arriving meanwhile replace
  each other, captions are paced by the caption rate, exactly as the live node's scheduler would
  decide. Because the compute time is a parameter rather than measured, the run is
  deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from smolvlm_ros.compat import StrEnum
from smolvlm_ros.engine import Engine, Result
from smolvlm_ros.engine.answers import AnswerSpec
from smolvlm_ros.engine.types import Frame
from smolvlm_ros.pipeline.change import ChangeGate
from smolvlm_ros.pipeline.intake import NS_PER_S, stamp_to_ns
from smolvlm_ros.pipeline.runner import CaptionSettings, JobRunner, ReceivedImage
from smolvlm_ros.pipeline.scheduler import (
    CameraConfig,
    CameraStats,
    CaptionBatchJob,
    CaptionJob,
    FrameScheduler,
    Job,
    ManualClock,
)
from smolvlm_ros.replay.bags import BagReader, image_connections
from smolvlm_ros.replay.scoring import Reference


class Mode(StrEnum):
    """How a bag is replayed (see the module's text)."""

    EVERY = "every"
    LIVE = "live"


MODES = tuple(Mode)


@dataclass(frozen=True)
class ReplayConfig:
    """How to replay: which topics, which mode, what to ask."""

    mode: str = Mode.EVERY
    topics: tuple[str, ...] = ()  # empty: every Image / CompressedImage topic in the bag
    compute_s: float = 1.0  # live mode: bag seconds each job (single or batch) occupies the worker
    caption_rate_hz: float = 1.0  # live mode: per camera
    max_frame_age_s: float = 0.0
    change_threshold: float = 0.0
    max_batch: int = 1  # cameras due at once captioned in one engine pass, as the node does
    captions: CaptionSettings = field(default_factory=CaptionSettings)

    def validate(self) -> ReplayConfig:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.compute_s <= 0:
            raise ValueError(f"compute_s must be > 0, got {self.compute_s}")
        if self.caption_rate_hz <= 0:
            raise ValueError(f"caption_rate_hz must be > 0, got {self.caption_rate_hz}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        return self


@dataclass
class ReplayStats:
    """What happened to the bag's frames, per camera."""

    frames: int = 0
    results: int = 0
    jobs: int = 0  # scheduler jobs handed out, run or skipped (a resumed run's job index)
    skipped_jobs: int = 0  # finished by the run this one resumes
    cameras: dict[str, CameraStats] = field(default_factory=dict)
    # Header stamps (ns) of each camera's messages in bag order: frame index -> stamp.
    frame_stamps: dict[str, list[int]] = field(default_factory=dict)
    first_ns: int | None = None  # bag (log) time of the first and last frame replayed
    last_ns: int | None = None

    def frame_at(self, log_ns: int) -> None:
        """A frame went out at bag time ``log_ns``: the span that results per bag second use."""
        self.first_ns = log_ns if self.first_ns is None else self.first_ns
        self.last_ns = log_ns


def image_topics(reader: BagReader, wanted: tuple[str, ...]) -> list:
    """The bag's image connections, or the requested topics (kept for existing callers)."""
    return image_connections(reader, wanted)


Asked = tuple[str, AnswerSpec | None]  # a reference question and its answer type (None: text)


class FrameQuestions:
    """The reference questions to ask about each frame, found by camera and frame index or
    header stamp as the bag is read (frame indices need no second pass over the bag)."""

    def __init__(self, references: Sequence[Reference] = ()) -> None:
        self._by_index: dict[tuple[str, int], list[Asked]] = {}
        self._by_stamp: dict[tuple[str, int], list[Asked]] = {}
        for ref in references:
            if ref.question is None:
                continue
            asked = (ref.question, ref.answer)
            if ref.frame is not None:
                self._by_index.setdefault((ref.camera, ref.frame), []).append(asked)
            else:
                self._by_stamp.setdefault((ref.camera, ref.stamp), []).append(asked)
        # (camera, stamp ns) of a frame read -> its questions, looked up when it is captioned
        self.asked: dict[tuple[str, int], tuple[Asked, ...]] = {}

    def frame_read(self, camera: str, index: int, stamp_ns: int) -> None:
        questions = [
            *self._by_index.get((camera, index), ()),
            *self._by_stamp.get((camera, stamp_ns), ()),
        ]
        if questions:
            before = self.asked.get((camera, stamp_ns), ())
            self.asked[(camera, stamp_ns)] = tuple(dict.fromkeys((*before, *questions)))

    def about(self, frame: Frame) -> tuple[Asked, ...]:
        return self.asked.get((frame.camera, frame.stamp_ns), ())


class ReplayRunner(JobRunner):
    """The node's job runner, asking each captioned frame its reference questions too (after
    the standing ones, in the same pass over the cached image: no second vision pass)."""

    def __init__(self, *args: Any, frame_questions: FrameQuestions, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frame_questions = frame_questions

    def _standing_answers(self, frame: Frame, cameras: list[str]) -> list[Result]:
        standing = self.captions
        about = self.frame_questions.about(frame)
        extra = tuple(
            q for q, spec in about if spec is None and q not in standing.questions
        )  # free-text ones join the standing questions' batch
        typed = [(q, spec) for q, spec in about if spec is not None]
        if not extra:
            return super()._standing_answers(frame, cameras) + self._typed_answers(frame, typed)
        self.captions = replace(standing, questions=(*standing.questions, *extra))
        try:
            answers = super()._standing_answers(frame, cameras)
        finally:
            self.captions = standing
        return answers + self._typed_answers(frame, typed)

    def skip(self, job: Job) -> None:
        """A job the stopped run finished (``--resume``): no engine call, but its frames go
        through decoding and the change gate as they did then, so the gate's memory and the
        drop counts stay those of an uninterrupted run."""
        if isinstance(job, CaptionJob):
            self._admit(job.camera, job.item)
        elif isinstance(job, CaptionBatchJob):
            for camera, item in zip(job.cameras, job.items, strict=True):
                self._admit(camera, item)

    def _typed_answers(self, frame: Frame, typed: list[Asked]) -> list[Result]:
        """Typed reference questions, one at a time (the frame's encoding is cached)."""
        results = []
        for question, spec in typed:
            try:
                results.append(
                    self.engine.ask(
                        frame,
                        question,
                        spec,
                        max_new_tokens=self.captions.max_new_tokens,
                        should_stop=self._stop_check(),
                    )
                )
            except Exception as err:
                self._inference_failed(err, f"typed question {question[:40]!r}")
        return results


def replay(
    bag: Path,
    engine: Engine,
    config: ReplayConfig,
    on_result: Callable[[Result, int], None],
    on_image: Callable[[Any, int, bytes], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    references: Sequence[Reference] = (),
    done_jobs: Collection[int] = (),
    on_job: Callable[[int, int], None] | None = None,
) -> ReplayStats:
    """Replay ``bag``; ``on_result(result, publish_ns)`` gets every caption and answer with the
    bag time it would have been published at; ``on_image(connection, log_ns, cdr)`` every
    input image message as ROS 2 CDR (to copy them into an output bag); ``progress(done,
    total)``. Each captioned frame is also asked the questions of ``references`` about it.

    Jobs are numbered in the order the scheduler hands them out, which the bag and the config
    alone decide; those in ``done_jobs`` (finished by a stopped run) are skipped, and
    ``on_job(index, results)`` hears of each job finished, after its results went out."""
    config.validate()
    frame_questions = FrameQuestions(references)
    with BagReader(Path(bag)) as reader:
        connections = image_connections(reader, config.topics)
        cameras = sorted({c.topic for c in connections})
        clock = ManualClock()  # the bag's time, in seconds
        rate = config.caption_rate_hz if config.mode == Mode.LIVE else 1e9
        scheduler = FrameScheduler(
            [CameraConfig(c, rate) for c in cameras],
            max_frame_age_s=config.max_frame_age_s,
            max_batch=config.max_batch,
            clock=clock,
        )
        runner = ReplayRunner(
            engine,
            scheduler,
            to_frame=ReceivedImage.to_frame,
            captions=config.captions,
            change_gate=ChangeGate(config.change_threshold),
            frame_questions=frame_questions,
        )
        stats = ReplayStats()
        busy_until = float("-inf")  # live mode: bag time at which the worker is free again

        def work_until(t: float) -> None:
            """Let the (emulated) worker take every job it could start before bag time t."""
            nonlocal busy_until
            while True:
                start = max(busy_until, clock.now)
                if start > t:
                    return
                clock.now = start
                job = scheduler.next_job(timeout=0)
                if job is None:
                    return
                index = stats.jobs
                stats.jobs += 1
                if index in done_jobs:
                    runner.skip(job)
                    stats.skipped_jobs += 1
                    results = []
                else:
                    results = runner.run(job)
                done = start + (config.compute_s if config.mode == Mode.LIVE else 0.0)
                for result in results:
                    on_result(result, round(done * NS_PER_S))
                stats.results += len(results)
                if on_job is not None and index not in done_jobs:
                    on_job(index, len(results))
                if config.mode == Mode.LIVE:
                    busy_until = done

        total = sum(c.msgcount for c in connections)
        for connection, log_ns, raw in reader.messages(connections=connections):
            t = log_ns / NS_PER_S
            work_until(t)
            clock.now = t
            msg = reader.deserialize(raw, connection)
            stamp_ns = stamp_to_ns(msg.header.stamp)
            seen = stats.frame_stamps.setdefault(connection.topic, [])
            frame_questions.frame_read(connection.topic, len(seen), stamp_ns)
            seen.append(stamp_ns)
            item = ReceivedImage(connection.topic, msg)
            scheduler.offer(connection.topic, item, stamp_ns / NS_PER_S)
            if on_image is not None:
                on_image(connection, log_ns, reader.cdr(raw, connection))
            stats.frames += 1
            stats.frame_at(log_ns)
            if config.mode == Mode.EVERY:
                work_until(t)
            if progress is not None:
                progress(stats.frames, total)
        if config.mode == Mode.LIVE:  # the bag ended: the node would still caption what is due
            clock.now = max(clock.now, busy_until) + 1.0 / config.caption_rate_hz
        work_until(float("inf"))
        stats.cameras = scheduler.stats()
    return stats
