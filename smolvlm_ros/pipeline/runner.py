"""Turn a scheduled job into a result: decode, gate, compose, run the engine, account for drops.

Shared by the node's worker thread and the replay tool, so both treat every frame alike. No job
can raise out of :meth:`JobRunner.run`: a frame that does not decode, a model that raises (out
of memory included) fails that job only, is counted and reported, and the runner goes on; after
repeated inference failures it asks its caller to back off. A batch of cameras
(:class:`CaptionBatchJob`) goes through the engine in one pass; a frame of it that does not
decode or did not change drops only its camera, a model failure drops the whole batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any

from smolvlm_ros.engine.answers import AnswerType, parse_standing
from smolvlm_ros.engine.engine import (
    DEFAULT_CAPTION_PROMPT,
    DEFAULT_MAX_NEW_TOKENS,
    DeadlineExceeded,
    Engine,
)
from smolvlm_ros.engine.types import Frame, Result
from smolvlm_ros.pipeline.change import ChangeGate
from smolvlm_ros.pipeline.intake import ImageDecodeError, message_to_rgb, stamp_to_ns
from smolvlm_ros.pipeline.mosaic import compose_mosaic
from smolvlm_ros.pipeline.scheduler import (
    DECODE_ERROR,
    INFERENCE_ERROR,
    UNCHANGED,
    CaptionBatchJob,
    CaptionJob,
    FrameScheduler,
    Job,
    MosaicJob,
    QuestionJob,
)

log = logging.getLogger(__name__)

OUT_OF_MEMORY = "out_of_memory"  # an inference failure that was the device running out of memory
# After this many inference failures in a row, wait before the next job: 0.5 s, doubling, to 30 s.
BACKOFF_AFTER = 2
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class ReceivedImage:
    """A camera message (rclpy's, or one deserialized from a bag) as the scheduler holds it:
    decoded by :meth:`to_frame` only if the model actually uses it."""

    camera: str
    msg: Any  # sensor_msgs Image or CompressedImage
    received_at: float | None = None  # time.monotonic() on arrival; None when replaying a bag

    def to_frame(self) -> Frame:
        return Frame(
            image=message_to_rgb(self.msg),
            camera=self.camera,
            stamp_ns=stamp_to_ns(self.msg.header.stamp),
            frame_id=self.msg.header.frame_id,
            received_at=self.received_at,
        )


def is_out_of_memory(err: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA), MemoryError (host), or a backend's own OOM message."""
    return (
        isinstance(err, MemoryError)
        or type(err).__name__ == "OutOfMemoryError"
        or "out of memory" in str(err).lower()
    )


def check_standing_questions(engine: Engine, questions: tuple[str, ...]) -> None:
    """Raise ValueError naming the first standing question the engine's backend cannot answer
    in its type: refused when configured, not once per captioned frame (where each would count
    as an inference error and back the captions off)."""
    for entry in questions:
        reason = engine.unsupported_answer(parse_standing(entry)[1])
        if reason is not None:
            raise ValueError(f"questions: standing question {entry!r}: {reason}")


@dataclass
class CaptionSettings:
    """What each captioned frame is asked (reconfigurable while running)."""

    prompt: str = DEFAULT_CAPTION_PROMPT
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    # Standing questions, answered about every captioned frame (one vision pass for all).
    questions: tuple[str, ...] = ()


class JobRunner:
    """Runs jobs from a :class:`FrameScheduler` on an :class:`Engine`.

    ``to_frame`` decodes whatever the caller stored in the scheduler (a ROS message, a bag
    record) into a :class:`Frame`, raising :class:`ImageDecodeError` when it cannot.
    """

    def __init__(
        self,
        engine: Engine,
        scheduler: FrameScheduler,
        to_frame: Callable[[Any], Frame],
        captions: CaptionSettings | None = None,
        change_gate: ChangeGate | None = None,
        should_stop: Callable[[], bool] | None = None,
        report: Callable[[str, str], None] | None = None,
        progress: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``report(reason, text)`` hears of every failure (reason: DECODE_ERROR,
        INFERENCE_ERROR or OUT_OF_MEMORY); ``progress()`` is called at every generated token,
        for a watchdog."""
        self.engine = engine
        self.scheduler = scheduler
        self.to_frame = to_frame
        self.captions = captions or CaptionSettings()
        self.change_gate = change_gate or ChangeGate(0.0)
        self.should_stop = should_stop
        self._report = report or (lambda reason, text: log.warning("%s: %s", reason, text))
        self.progress = progress
        self._clock = clock
        self.failure_streak = 0  # inference failures in a row
        self._backoff_until = float("-inf")

    def backoff_s(self) -> float:
        """Seconds the caller should wait before the next job (after repeated failures)."""
        return max(0.0, self._backoff_until - self._clock())

    def run(self, job: Job) -> list[Result]:
        """The job's results: a caption and the standing questions' answers (for a batch: for
        each camera in the job's order), or one answer; empty when the frame was dropped (the
        reason is counted)."""
        if isinstance(job, QuestionJob):
            result = self._answer(job)
            return [result] if result is not None else []
        if isinstance(job, CaptionBatchJob):
            return self._run_batch(job)
        frame_and_cameras = self._mosaic(job) if isinstance(job, MosaicJob) else self._frame(job)
        if frame_and_cameras is None:
            return []
        frame, cameras = frame_and_cameras
        fresh = job.fresh if isinstance(job, MosaicJob) else {job.camera}
        caption = self._caption_frame(frame, cameras, [c for c in cameras if c in fresh])
        if caption is None:
            return []
        return [caption, *self._standing_answers(frame, cameras)]

    def _stop_check(self, *extra: Callable[[], bool] | None) -> Callable[[], bool]:
        """The engine's per-token poll: a progress beat, then shutdown or the caller's cancel."""
        checks = [c for c in (self.should_stop, *extra) if c is not None]

        def should_stop() -> bool:
            if self.progress is not None:
                self.progress()
            return any(check() for check in checks)

        return should_stop

    def report(self, reason: str, text: str) -> None:
        """Tell the caller of a failure; a failing reporter never stops the work."""
        try:
            self._report(reason, text)
        except Exception:
            log.exception("reporting a failure failed")

    def _inference_failed(self, err: BaseException, what: str) -> str:
        """Count, report and back off; returns the failure reason."""
        reason = OUT_OF_MEMORY if is_out_of_memory(err) else INFERENCE_ERROR
        if reason == OUT_OF_MEMORY:
            try:
                self.engine.free_memory()
            except Exception:
                log.exception("freeing memory after an out-of-memory error failed")
        self.failure_streak += 1
        if self.failure_streak >= BACKOFF_AFTER:
            wait = min(BACKOFF_FIRST_S * 2 ** (self.failure_streak - BACKOFF_AFTER), BACKOFF_MAX_S)
            self._backoff_until = self._clock() + wait
            what += f" ({self.failure_streak} failures in a row: pausing {wait:g} s)"
        self.report(reason, f"{what} failed: {type(err).__name__}: {err}")
        return reason

    def _inference_succeeded(self) -> None:
        self.failure_streak = 0
        self._backoff_until = float("-inf")

    def _decode(self, camera: str, item: Any, counted: bool = True) -> Frame | None:
        """``counted``: the frame is new (counted as captioned), so a failure is its drop."""
        try:
            return item if isinstance(item, Frame) else self.to_frame(item)
        except ImageDecodeError as err:
            if counted:
                self.scheduler.record_drop(camera, DECODE_ERROR)
            self.report(DECODE_ERROR, f"dropped a frame from {camera}: {err}")
            return None

    def _caption_frame(self, frame: Frame, cameras: list[str], fresh: list[str]) -> Result | None:
        """``fresh``: the cameras whose new frame is in ``frame``: a failure is their drop (the
        others' frames were counted by an earlier job)."""
        try:
            result = self.engine.caption(
                frame,
                self.captions.prompt,
                max_new_tokens=self.captions.max_new_tokens,
                should_stop=self._stop_check(),
            )
        except Exception as err:  # keep serving: one bad frame must not stop the pipeline
            for camera in fresh:
                self.scheduler.record_drop(camera, INFERENCE_ERROR)
            self._inference_failed(err, f"captioning {', '.join(cameras)}")
            return None
        self._inference_succeeded()
        return result

    def _run_batch(self, job: CaptionBatchJob) -> list[Result]:
        """Every admitted frame of the batch captioned in one engine pass (results equal
        separate captions), then each frame's standing questions, camera by camera."""
        admitted = [
            (camera, frame)
            for camera, item in zip(job.cameras, job.items, strict=True)
            if (frame := self._admit(camera, item)) is not None
        ]
        if not admitted:
            return []
        cameras = [camera for camera, _ in admitted]
        frames = [frame for _, frame in admitted]
        try:
            captions = self.engine.caption_batch(
                frames,
                self.captions.prompt,
                max_new_tokens=self.captions.max_new_tokens,
                should_stop=self._stop_check(),
            )
        except Exception as err:  # one failure for the whole pass: every camera in it lost
            for camera in cameras:
                self.scheduler.record_drop(camera, INFERENCE_ERROR)
            self._inference_failed(err, f"captioning {', '.join(cameras)} (one batch)")
            return []
        self._inference_succeeded()
        results: list[Result] = []
        for camera, frame, caption in zip(cameras, frames, captions, strict=True):
            # The batch left each frame's embeddings in the cache (while it holds them all).
            results += [caption, *self._standing_answers(frame, [camera])]
        return results

    def _standing_answers(self, frame: Frame, cameras: list[str]) -> list[Result]:
        if not self.captions.questions:
            return []
        limits = {"max_new_tokens": self.captions.max_new_tokens, "should_stop": self._stop_check()}
        standing = [parse_standing(entry) for entry in self.captions.questions]
        free = [question for question, spec in standing if spec.type == AnswerType.TEXT]
        try:  # the caption left the frame's embeddings in the cache: no second vision pass
            # free-text questions share one prefill and one batched decode; typed ones are
            # scored or constrained one by one (over the same cached embeddings)
            answers = iter(self.engine.ask_many(frame, free, **limits) if free else [])
            results = [
                next(answers)
                if spec.type == AnswerType.TEXT
                else self.engine.ask(frame, question, answer=spec, **limits)
                for question, spec in standing
            ]
        except Exception as err:
            self._inference_failed(err, f"standing questions about {', '.join(cameras)}")
            return []
        self._inference_succeeded()
        return results

    def _admit(self, camera: str, item: Any) -> Frame | None:
        """The camera's new frame decoded and past the change gate; None (the drop counted
        with its reason) when it does not decode or barely changed since the last caption."""
        frame = self._decode(camera, item)
        if frame is None:
            return None
        if not self.change_gate.admit(camera, frame.image):
            self.scheduler.record_drop(camera, UNCHANGED)
            return None
        return frame

    def _frame(self, job: CaptionJob) -> tuple[Frame, list[str]] | None:
        frame = self._admit(job.camera, job.item)
        return None if frame is None else (frame, [job.camera])

    def _mosaic(self, job: MosaicJob) -> tuple[Frame, list[str]] | None:
        decoded = [
            (c, self._decode(c, item, counted=c in job.fresh))
            for c, item in zip(job.cameras, job.items, strict=True)
        ]
        frames = [(camera, frame) for camera, frame in decoded if frame is not None]
        if not frames:
            return None
        newest = max((f for _, f in frames), key=lambda f: f.stamp_ns)
        mosaic = Frame(
            image=compose_mosaic([f.image for _, f in frames], [c for c, _ in frames]),
            camera=",".join(camera for camera, _ in frames),
            stamp_ns=newest.stamp_ns,
            frame_id=newest.frame_id,
            received_at=min((f.received_at for _, f in frames if f.received_at), default=None),
        )
        return mosaic, [camera for camera, _ in frames]

    def _answer(self, job: QuestionJob) -> Result | None:
        if job.future.done():  # the caller gave up while the question waited
            return None
        try:
            frame = job.item if isinstance(job.item, Frame) else self.to_frame(job.item)
        except ImageDecodeError as err:  # the caller learns why through the future
            self.report(DECODE_ERROR, f"a question's image: {err}")
            _settle(job.future, exception=err)
            return None
        try:
            result = self.engine.ask(
                frame,
                job.question,
                job.answer,
                max_new_tokens=job.max_new_tokens,
                deadline=job.deadline,
                should_stop=self._stop_check(job.cancel, job.future.done),
                on_token=job.on_token,
            )
        except DeadlineExceeded as err:  # waited too long: not the model's failure
            _settle(job.future, exception=err)
            return None
        except Exception as err:
            self._inference_failed(err, f"answering {job.question[:40]!r}")
            _settle(job.future, exception=err)
            return None
        self._inference_succeeded()
        _settle(job.future, result=result)
        return result


def _settle(future: Future, result: Any = None, exception: BaseException | None = None) -> None:
    """Complete ``future`` unless its caller already gave up on it (timed out, cancelled)."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass
