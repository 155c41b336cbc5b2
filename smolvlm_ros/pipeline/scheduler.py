"""Decide which frame the model works on next, whatever rate the cameras publish at.

Cameras publish at 15-60 Hz; the model handles a frame every few hundred milliseconds at best.
So each camera keeps only its latest frame (a newer one replaces an unprocessed older one: memory
is bounded and the model never works on a stale backlog), captions are paced per camera, cameras
take turns, and on-demand questions jump ahead of periodic captions.

Plain Python, no ROS: the node, replay and tests drive it with their own clock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

Clock = Callable[[], float]


@dataclass
class CameraStats:
    """Counters for one camera since start."""

    received: int = 0
    replaced: int = 0  # frames overwritten by a newer one before the model got to them
    captioned: int = 0


@dataclass
class CaptionJob:
    """Caption ``item`` (the camera's latest frame, in whatever form the caller stored it)."""

    camera: str
    item: Any


@dataclass
class QuestionJob:
    """Answer ``question`` about ``item``; the answer (or an exception) goes to ``future``."""

    camera: str
    item: Any
    question: str
    max_new_tokens: int
    future: Future = field(default_factory=Future)


class SchedulerFull(RuntimeError):
    """Too many questions are waiting; the caller should refuse the request."""


@dataclass
class _Camera:
    period_s: float  # seconds between captions; 0 = captions off for this camera
    latest: Any = None
    fresh: bool = False  # latest has not been captioned yet
    next_due: float = float("-inf")
    stats: CameraStats = field(default_factory=CameraStats)


class FrameScheduler:
    """Latest-wins frame slots per camera, caption pacing, round-robin, questions first.

    Thread-safe: producers call :meth:`offer` / :meth:`ask` from any thread, one worker calls
    :meth:`next_job`.
    """

    def __init__(
        self,
        cameras: list[str],
        caption_rate_hz: float,
        max_pending_questions: int = 8,
        clock: Clock = time.monotonic,
    ) -> None:
        if not cameras:
            raise ValueError("at least one camera is needed")
        if len(set(cameras)) != len(cameras):
            raise ValueError(f"cameras are listed twice: {cameras}")
        if caption_rate_hz < 0:
            raise ValueError(
                f"caption_rate_hz must be >= 0 (0 = no captions), got {caption_rate_hz}"
            )
        if max_pending_questions < 1:
            raise ValueError(f"max_pending_questions must be >= 1, got {max_pending_questions}")
        period = 1.0 / caption_rate_hz if caption_rate_hz > 0 else 0.0
        self._cameras = {name: _Camera(period_s=period) for name in cameras}
        self._order = list(cameras)
        self._turn = 0  # index in _order of the camera whose turn it is
        self._questions: deque[QuestionJob] = deque()
        self._max_questions = max_pending_questions
        self._clock = clock
        self._cond = threading.Condition()
        self._closed = False

    @property
    def cameras(self) -> list[str]:
        return list(self._order)

    def offer(self, camera: str, item: Any) -> None:
        """A new frame from ``camera``: it replaces the previous one."""
        with self._cond:
            cam = self._cameras[camera]
            cam.stats.received += 1
            if cam.fresh and cam.period_s > 0:
                cam.stats.replaced += 1
            cam.latest = item
            cam.fresh = True
            self._cond.notify()

    def latest(self, camera: str) -> Any:
        """The camera's newest frame (captioned or not), or None before the first one."""
        with self._cond:
            return self._cameras[camera].latest

    def stats(self) -> dict[str, CameraStats]:
        with self._cond:
            return {name: CameraStats(**vars(cam.stats)) for name, cam in self._cameras.items()}

    def ask(self, job: QuestionJob) -> Future:
        """Queue a question ahead of all captions; :class:`SchedulerFull` when at capacity."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            if len(self._questions) >= self._max_questions:
                raise SchedulerFull(
                    f"{len(self._questions)} questions are already waiting (max_pending_questions)"
                )
            self._questions.append(job)
            self._cond.notify()
        return job.future

    def next_job(self, timeout: float | None = None) -> CaptionJob | QuestionJob | None:
        """The next piece of work, waiting up to ``timeout`` seconds; None on timeout or close."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                if self._questions:
                    return self._questions.popleft()
                job, wait_s = self._next_caption()
                if job is not None:
                    return job
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    wait_s = remaining if wait_s is None else min(wait_s, remaining)
                self._cond.wait(wait_s)
            return None

    def _next_caption(self) -> tuple[CaptionJob | None, float | None]:
        """A due caption, taking cameras in turn; else how long until one may be due."""
        now = self._clock()
        soonest: float | None = None
        n = len(self._order)
        for offset in range(n):
            index = (self._turn + offset) % n
            name = self._order[index]
            cam = self._cameras[name]
            if not cam.fresh or cam.period_s <= 0:
                continue
            if cam.next_due <= now:
                cam.fresh = False
                cam.stats.captioned += 1
                # Pace from when it was due (not from now) so the rate holds on average; after a
                # stall longer than a period, restart from now instead of bursting to catch up.
                if now - cam.next_due > cam.period_s:
                    cam.next_due = now + cam.period_s
                else:
                    cam.next_due += cam.period_s
                self._turn = (index + 1) % n
                return CaptionJob(camera=name, item=cam.latest), None
            wait = cam.next_due - now
            soonest = wait if soonest is None else min(soonest, wait)
        return None, soonest

    def close(self) -> None:
        """Wake the worker and refuse new work; waiting questions get a RuntimeError."""
        with self._cond:
            self._closed = True
            while self._questions:
                job = self._questions.popleft()
                if not job.future.done():
                    job.future.set_exception(RuntimeError("the node is shutting down"))
            self._cond.notify_all()
