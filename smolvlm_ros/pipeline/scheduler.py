"""Decide which frame the model works on next, whatever rate the cameras publish at.

Cameras publish at 15-60 Hz; the model handles a frame every few hundred milliseconds at best.
So each camera keeps only its latest frame (a newer one replaces an unprocessed older one: memory
is bounded and the model never works through a stale backlog), captions are paced per camera,
cameras share the model fairly (weighted by priority), frames older than a maximum age are
dropped rather than described, and on-demand questions jump ahead of periodic captions, but at
most ``max_questions_per_caption`` of them in a row while a caption is due, so a steady stream
of questions cannot starve the cameras. Every frame that is not captioned is counted with the
reason. When several cameras are due at once, up to ``max_batch`` of them are handed out as one
:class:`CaptionBatchJob`, in the order single turns would have given them, so that a GPU
captions them in one pass (its cost barely grows with the batch); each camera is accounted
exactly as if it had had its own turn.

Plain Python, no ROS. Time comes from ``clock`` (seconds): ROS time in the node, so that
``use_sim_time`` replays decide exactly like live runs; the bag's time in replay; a hand-driven
clock in tests. Frame stamps are in the same clock's seconds.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from smolvlm_ros.compat import StrEnum

Clock = Callable[[], float]


class ManualClock:
    """A clock that moves only when told: the bag's time in replay, a hand-driven one in tests."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class DropReason(StrEnum):
    """Why a received frame was not captioned (diagnostics keys, replay statistics)."""

    SUPERSEDED = "superseded"  # a newer frame replaced it first (the caption rate or the model)
    STALE = "stale"  # older than max_frame_age_s when its turn came
    UNCHANGED = "unchanged"  # the scene barely changed since the last caption (change gating)
    DECODE_ERROR = "decode_error"  # the message could not be decoded
    INFERENCE_ERROR = "inference_error"  # the model failed on it
    INACTIVE = "inactive"  # received while the node was not active (lifecycle: deactivated)


# The names the rest of the code imports.
SUPERSEDED, STALE, UNCHANGED = DropReason.SUPERSEDED, DropReason.STALE, DropReason.UNCHANGED
DECODE_ERROR, INFERENCE_ERROR = DropReason.DECODE_ERROR, DropReason.INFERENCE_ERROR
DROP_REASONS = tuple(DropReason)


@dataclass
class CameraStats:
    """Counters for one camera since start."""

    received: int = 0
    captioned: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason -> frames
    last_stamp: float | None = None  # stamp of the newest frame received (clock seconds)


@dataclass(frozen=True)
class CameraConfig:
    """How one camera is scheduled."""

    name: str
    caption_rate_hz: float = 1.0  # at most; 0: no periodic captions (questions only)
    priority: float = 1.0  # share of the model when cameras compete: 2 gets twice 1's turns

    def validate(self) -> CameraConfig:
        if not self.name:
            raise ValueError("a camera needs a name")
        if self.caption_rate_hz < 0:
            raise ValueError(
                f"{self.name}: caption rate must be >= 0 (0 = no captions), "
                f"got {self.caption_rate_hz}"
            )
        if self.priority <= 0:
            raise ValueError(f"{self.name}: priority must be > 0, got {self.priority}")
        return self


@dataclass
class CaptionJob:
    """Caption ``item`` (the camera's latest frame, in whatever form the caller stored it)."""

    camera: str
    item: Any


@dataclass
class CaptionBatchJob:
    """Caption several cameras' latest frames in one engine pass, one caption each.

    ``cameras`` are in the order their single turns would have come (weighted fair turns), and
    every one of them has a new frame, counted as captioned when the job was handed out.
    """

    cameras: list[str]
    items: list[Any]


@dataclass
class MosaicJob:
    """Caption the latest frames of several cameras together (mosaic mode).

    A camera that sent nothing new since the last mosaic is shown with its previous frame; only
    the cameras in ``fresh`` have a frame not counted yet (as captioned by this job), so only
    theirs may be counted as dropped if the job fails.
    """

    cameras: list[str]
    items: list[Any]
    fresh: frozenset[str] = frozenset()


@dataclass(eq=False)  # a job is itself, not its fields: kept in sets while it is open
class QuestionJob:
    """Answer ``question`` about ``item``; the answer (or an exception) goes to ``future``."""

    camera: str
    item: Any
    question: str
    max_new_tokens: int
    deadline: float | None = None  # time.monotonic() by which the answer must be done
    on_token: Callable[[int], None] | None = None  # streams the answer's tokens
    cancel: Callable[[], bool] | None = None  # True: stop generating (the caller gave up)
    future: Future = field(default_factory=Future)
    answer: Any = None  # an engine AnswerSpec for a typed answer; None: free text


Job = CaptionJob | CaptionBatchJob | MosaicJob | QuestionJob


class SchedulerFull(RuntimeError):
    """Too many questions are waiting; the caller should refuse the request."""


class SchedulerClosed(RuntimeError):
    """The scheduler was closed (the node is shutting down): no more work is taken."""


@dataclass
class _Camera:
    config: CameraConfig
    period_s: float  # seconds between captions; 0 = captions off for this camera
    latest: Any = None
    latest_stamp: float = 0.0
    fresh: bool = False  # latest has not been captioned (nor dropped) yet
    next_due: float = float("-inf")
    pass_value: float = 0.0  # stride scheduling: the lowest pass goes next
    stats: CameraStats = field(default_factory=CameraStats)


class FrameScheduler:
    """Latest-wins frame slots per camera, pacing, weighted turns, age limit, questions first.

    Thread-safe: producers call :meth:`offer` / :meth:`ask` from any thread, one worker calls
    :meth:`next_job`.
    """

    def __init__(
        self,
        cameras: Sequence[CameraConfig],
        max_frame_age_s: float = 0.0,
        mosaic: bool = False,
        mosaic_rate_hz: float = 1.0,
        max_pending_questions: int = 8,
        max_questions_per_caption: int = 2,
        max_batch: int = 1,
        clock: Clock = time.monotonic,
    ) -> None:
        """``max_batch``: the most due cameras handed out together (1: one camera a turn)."""
        if not cameras:
            raise ValueError("at least one camera is needed")
        names = [c.name for c in cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"cameras are listed twice: {names}")
        if max_frame_age_s < 0:
            raise ValueError(f"max_frame_age_s must be >= 0 (0 = no limit), got {max_frame_age_s}")
        if mosaic_rate_hz < 0:
            raise ValueError(f"mosaic rate must be >= 0, got {mosaic_rate_hz}")
        if max_pending_questions < 1:
            raise ValueError(f"max_pending_questions must be >= 1, got {max_pending_questions}")
        _check_questions_per_caption(max_questions_per_caption)
        _check_max_batch(max_batch)
        self._cameras = {
            c.name: _Camera(c.validate(), 1.0 / c.caption_rate_hz if c.caption_rate_hz else 0.0)
            for c in cameras
        }
        self._order = names
        self._max_age = max_frame_age_s
        self._mosaic = mosaic
        self._mosaic_period = 1.0 / mosaic_rate_hz if mosaic_rate_hz else 0.0
        self._mosaic_due = float("-inf")
        self._virtual_time = 0.0
        self._questions: deque[QuestionJob] = deque()
        self._max_questions = max_pending_questions
        self._questions_per_caption = max_questions_per_caption
        self._questions_in_a_row = 0  # since the last caption turn (or since none was due)
        self._max_batch = max_batch
        self._clock = clock
        self._cond = threading.Condition()
        self._closed = False

    @property
    def cameras(self) -> list[str]:
        return list(self._order)

    # -- producers -----------------------------------------------------------------------------

    def offer(self, camera: str, item: Any, stamp: float) -> None:
        """A new frame from ``camera`` (source stamp in clock seconds): it replaces the last."""
        with self._cond:
            cam = self._cameras[camera]
            cam.stats.received += 1
            cam.stats.last_stamp = stamp
            if cam.fresh and self._captions_on(cam):
                cam.stats.dropped[SUPERSEDED] += 1
            cam.latest, cam.latest_stamp, cam.fresh = item, stamp, True
            self._cond.notify()

    def ask(self, job: QuestionJob) -> Future:
        """Queue a question ahead of all captions; :class:`SchedulerFull` when at capacity."""
        with self._cond:
            if self._closed:
                raise SchedulerClosed("the node is shutting down")
            if len(self._questions) >= self._max_questions:
                raise SchedulerFull(
                    f"{len(self._questions)} questions are already waiting (max_pending_questions)"
                )
            self._questions.append(job)
            self._cond.notify()
        return job.future

    def record_drop(self, camera: str, reason: str, count: int = 1) -> None:
        """The worker did not caption a frame it was given (unchanged scene, decode error...)."""
        if reason not in DROP_REASONS:
            raise ValueError(f"unknown drop reason {reason!r}")
        with self._cond:
            cam = self._cameras[camera]
            cam.stats.dropped[reason] += count
            cam.stats.captioned -= count  # it was counted as captioned when handed out

    def reconfigure(
        self,
        rates_hz: dict[str, float] | None = None,
        max_frame_age_s: float | None = None,
        mosaic_rate_hz: float | None = None,
        max_questions_per_caption: int | None = None,
        max_batch: int | None = None,
    ) -> None:
        """Change pacing while running (validated values); frames already held are kept, and a
        new ``max_batch`` applies from the next job (a batch already handed out runs as is)."""
        with self._cond:
            for name, rate in (rates_hz or {}).items():
                cam = self._cameras[name]
                cam.config = CameraConfig(name, rate, cam.config.priority).validate()
                cam.period_s = 1.0 / rate if rate else 0.0
                cam.next_due = float("-inf")
            if max_frame_age_s is not None:
                self._max_age = max_frame_age_s
            if mosaic_rate_hz is not None:
                self._mosaic_period = 1.0 / mosaic_rate_hz if mosaic_rate_hz else 0.0
                self._mosaic_due = float("-inf")
            if max_questions_per_caption is not None:
                _check_questions_per_caption(max_questions_per_caption)
                self._questions_per_caption = max_questions_per_caption
            if max_batch is not None:
                _check_max_batch(max_batch)
                self._max_batch = max_batch
            self._cond.notify()

    # -- reading -------------------------------------------------------------------------------

    def latest(self, camera: str) -> Any:
        """The camera's newest frame (captioned or not), or None before the first one."""
        with self._cond:
            return self._cameras[camera].latest

    def latest_stamp(self, camera: str) -> float | None:
        with self._cond:
            cam = self._cameras[camera]
            return cam.latest_stamp if cam.latest is not None else None

    def stats(self) -> dict[str, CameraStats]:
        with self._cond:
            return {
                name: CameraStats(
                    cam.stats.received,
                    cam.stats.captioned,
                    Counter(cam.stats.dropped),
                    cam.stats.last_stamp,
                )
                for name, cam in self._cameras.items()
            }

    def pending_questions(self) -> int:
        with self._cond:
            self._discard_settled_questions()
            return len(self._questions)

    # -- the worker ----------------------------------------------------------------------------

    def next_job(self, timeout: float | None = None) -> Job | None:
        """The next piece of work, waiting up to ``timeout`` seconds; None on timeout or close."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                self._discard_settled_questions()
                if self._questions and self._questions_in_a_row < self._questions_per_caption:
                    self._questions_in_a_row += 1
                    return self._questions.popleft()
                job, wait_s = self._next_mosaic() if self._mosaic else self._next_caption()
                if job is not None:
                    self._questions_in_a_row = 0
                    return job
                if self._questions:  # no caption is due: questions go on
                    self._questions_in_a_row = 1
                    return self._questions.popleft()
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return None
                    wait_s = remaining if wait_s is None else min(wait_s, remaining)
                # Waits are in real seconds; with simulated time the clock may run at another
                # pace, so never sleep long before looking again.
                self._cond.wait(None if wait_s is None else min(wait_s, 0.5))
            return None

    def _discard_settled_questions(self) -> None:
        """Questions whose caller gave up (timed out, cancelled) take no worker time."""
        if any(job.future.done() for job in self._questions):
            self._questions = deque(job for job in self._questions if not job.future.done())

    def _captions_on(self, cam: _Camera) -> bool:
        return self._mosaic_period > 0 if self._mosaic else cam.period_s > 0

    def _drop_if_stale(self, cam: _Camera, now: float) -> bool:
        if self._max_age and cam.fresh and now - cam.latest_stamp > self._max_age:
            cam.fresh = False
            cam.stats.dropped[STALE] += 1
            return True
        return False

    def _next_caption(self) -> tuple[CaptionJob | CaptionBatchJob | None, float | None]:
        """The due cameras with the lowest passes (weighted fair turns), up to ``max_batch`` of
        them; else how long to wait until one is due."""
        now = self._clock()
        due: list[_Camera] = []
        soonest: float | None = None
        for name in self._order:
            cam = self._cameras[name]
            if not cam.fresh or cam.period_s <= 0 or self._drop_if_stale(cam, now):
                continue
            if cam.next_due > now:
                wait = cam.next_due - now
                soonest = wait if soonest is None else min(soonest, wait)
                continue
            due.append(cam)
        if not due:
            return None, soonest
        # Pick one at a time exactly as successive single turns would: a batch of k is the
        # next k turns, except that a camera holds one frame and so appears at most once.
        chosen: list[_Camera] = []
        while due and len(chosen) < self._max_batch:
            # min() keeps the first of equals: ties go to the camera listed first.
            best = min(due, key=lambda c: max(c.pass_value, self._virtual_time))
            due.remove(best)
            self._take_turn(best, now)
            chosen.append(best)
        # A camera already in this batch would have competed for the later turns, had it a
        # second frame: it is not idle, so the virtual time must not overtake it (it would
        # lose turns it is owed when it rejoins).
        self._virtual_time = min(self._virtual_time, *(c.pass_value for c in chosen))
        if len(chosen) == 1:
            return CaptionJob(camera=chosen[0].config.name, item=chosen[0].latest), None
        return CaptionBatchJob([c.config.name for c in chosen], [c.latest for c in chosen]), None

    def _take_turn(self, cam: _Camera, now: float) -> None:
        """Account one caption turn of ``cam``: its pass, its pacing and its counters."""
        # A camera that sat idle does not bank turns: it rejoins at the current virtual time.
        cam.pass_value = max(cam.pass_value, self._virtual_time)
        self._virtual_time = cam.pass_value
        cam.pass_value += 1.0 / cam.config.priority
        cam.next_due = _next_due(cam.next_due, cam.period_s, now)
        cam.fresh = False
        cam.stats.captioned += 1

    def _next_mosaic(self) -> tuple[MosaicJob | None, float | None]:
        """All cameras' latest (non-stale) frames together, at the mosaic rate."""
        now = self._clock()
        if self._mosaic_period <= 0:
            return None, None
        cams = [self._cameras[n] for n in self._order]
        for cam in cams:
            self._drop_if_stale(cam, now)
        if not any(cam.fresh for cam in cams):
            return None, None
        if self._mosaic_due > now:
            return None, self._mosaic_due - now
        self._mosaic_due = _next_due(self._mosaic_due, self._mosaic_period, now)
        chosen = [
            cam
            for cam in cams
            if cam.latest is not None
            and not (self._max_age and now - cam.latest_stamp > self._max_age)
        ]
        fresh = frozenset(cam.config.name for cam in chosen if cam.fresh)
        for cam in chosen:
            if cam.fresh:
                cam.stats.captioned += 1
            cam.fresh = False
        names, items = [c.config.name for c in chosen], [c.latest for c in chosen]
        return MosaicJob(names, items, fresh), None

    def close(self) -> None:
        """Wake the worker and refuse new work; waiting questions get :class:`SchedulerClosed`."""
        with self._cond:
            self._closed = True
            while self._questions:
                job = self._questions.popleft()
                if not job.future.done():
                    job.future.set_exception(SchedulerClosed("the node is shutting down"))
            self._cond.notify_all()


def _check_questions_per_caption(value: int) -> None:
    if value < 1:
        raise ValueError(f"max_questions_per_caption must be >= 1, got {value}")


def _check_max_batch(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"max_batch must be an integer >= 1 (1: one camera per caption turn), got {value!r}"
        )


def _next_due(due: float, period: float, now: float) -> float:
    """Pace from when a caption was due, not from when it ran, so the rate holds on average;
    after a stall longer than a period, restart from now instead of bursting to catch up."""
    return now + period if now - due > period else due + period
