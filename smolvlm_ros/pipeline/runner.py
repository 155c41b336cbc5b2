"""Turn a scheduled job into a result: decode, gate, compose, run the engine, account for drops.

Shared by the node's worker thread and the replay tool, so both treat every frame alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smolvlm_ros.engine.engine import DEFAULT_CAPTION_PROMPT, DEFAULT_MAX_NEW_TOKENS, Engine
from smolvlm_ros.engine.types import Frame, Result
from smolvlm_ros.pipeline.change import ChangeGate
from smolvlm_ros.pipeline.intake import ImageDecodeError
from smolvlm_ros.pipeline.mosaic import compose_mosaic
from smolvlm_ros.pipeline.scheduler import (
    DECODE_ERROR,
    INFERENCE_ERROR,
    UNCHANGED,
    CaptionJob,
    FrameScheduler,
    Job,
    MosaicJob,
    QuestionJob,
)

log = logging.getLogger(__name__)


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
        warn: Callable[[str], None] = log.warning,
    ) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.to_frame = to_frame
        self.captions = captions or CaptionSettings()
        self.change_gate = change_gate or ChangeGate(0.0)
        self.should_stop = should_stop
        self.warn = warn

    def run(self, job: Job) -> list[Result]:
        """The job's results: a caption and the standing questions' answers, or one answer;
        empty when the frame was dropped (the reason is counted)."""
        if isinstance(job, QuestionJob):
            result = self._answer(job)
            return [result] if result is not None else []
        frame_and_cameras = self._mosaic(job) if isinstance(job, MosaicJob) else self._frame(job)
        if frame_and_cameras is None:
            return []
        frame, cameras = frame_and_cameras
        caption = self._caption_frame(frame, cameras)
        if caption is None:
            return []
        return [caption, *self._standing_answers(frame, cameras)]

    def _stop_check(self, cancel: Callable[[], bool] | None) -> Callable[[], bool] | None:
        checks = [c for c in (self.should_stop, cancel) if c is not None]
        if len(checks) < 2:
            return checks[0] if checks else None
        return lambda: any(check() for check in checks)

    def _decode(self, camera: str, item: Any) -> Frame | None:
        try:
            return item if isinstance(item, Frame) else self.to_frame(item)
        except ImageDecodeError as err:
            self.scheduler.record_drop(camera, DECODE_ERROR)
            self.warn(f"dropped a frame from {camera}: {err}")
            return None

    def _caption_frame(self, frame: Frame, cameras: list[str]) -> Result | None:
        try:
            return self.engine.caption(
                frame,
                self.captions.prompt,
                max_new_tokens=self.captions.max_new_tokens,
                should_stop=self.should_stop,
            )
        except Exception as err:  # keep serving: one bad frame must not stop the pipeline
            for camera in cameras:
                self.scheduler.record_drop(camera, INFERENCE_ERROR)
            self.warn(f"captioning {', '.join(cameras)} failed: {err}")
            return None

    def _standing_answers(self, frame: Frame, cameras: list[str]) -> list[Result]:
        if not self.captions.questions:
            return []
        try:  # the caption left the frame's embeddings in the cache: no second vision pass
            return self.engine.ask_many(
                frame,
                list(self.captions.questions),
                max_new_tokens=self.captions.max_new_tokens,
                should_stop=self.should_stop,
            )
        except Exception as err:
            self.warn(f"standing questions about {', '.join(cameras)} failed: {err}")
            return []

    def _frame(self, job: CaptionJob) -> tuple[Frame, list[str]] | None:
        frame = self._decode(job.camera, job.item)
        if frame is None:
            return None
        if not self.change_gate.admit(job.camera, frame.image):
            self.scheduler.record_drop(job.camera, UNCHANGED)
            return None
        return frame, [job.camera]

    def _mosaic(self, job: MosaicJob) -> tuple[Frame, list[str]] | None:
        decoded = [
            (c, self._decode(c, item)) for c, item in zip(job.cameras, job.items, strict=True)
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
        try:
            frame = job.item if isinstance(job.item, Frame) else self.to_frame(job.item)
            result = self.engine.ask(
                frame,
                job.question,
                max_new_tokens=job.max_new_tokens,
                deadline=job.deadline,
                should_stop=self._stop_check(job.cancel),
                on_token=job.on_token,
            )
        except Exception as err:  # the caller learns why through the future
            job.future.set_exception(err)
            return None
        job.future.set_result(result)
        return result
