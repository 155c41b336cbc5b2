"""What keeps the node alive and honest for days: logging that cannot raise, failure counters,
a worker heartbeat for the watchdog, and a worker thread that is restarted when it dies.

No rclpy import: the logger is anything with rclpy's ``info``/``warning``/``error``/``fatal``
methods, so these pieces are tested directly.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from smolvlm_ros.pipeline.runner import OUT_OF_MEMORY
from smolvlm_ros.pipeline.scheduler import DECODE_ERROR, INFERENCE_ERROR

# Failure reasons counted in /diagnostics (`failures_<reason>`): the runner's (a frame or request
# image that does not decode, a model that raises, out of memory among them), and the node's.
EXPIRED = "expired"  # a question timed out before the worker could answer it
CALLBACK_ERROR = "callback_error"  # an unexpected exception in a ROS callback, contained
WORKER_RESTART = "worker_restart"  # the worker thread died and was started again
FAILURE_REASONS = (
    DECODE_ERROR,
    INFERENCE_ERROR,
    OUT_OF_MEMORY,
    EXPIRED,
    CALLBACK_ERROR,
    WORKER_RESTART,
)


class SafeLogger:
    """Logging that never raises into its caller, rate-limited per key.

    rclpy's own throttling identifies a call site by its caller frame and refuses a call whose
    filters differ from that site's first call (``ValueError: Requested logging filters cannot
    be changed between calls``); through the deprecated ``warn`` wrapper every call shares one
    site, so one throttled warning after an unthrottled one raised, and that exception killed
    the worker thread (a change of severity at one site is refused the same way). Here rate
    limiting is ours, every rclpy call is unfiltered and each severity has its own call site,
    and any exception from the logger falls back to stderr.
    """

    def __init__(self, logger: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def info(self, text: str, every_s: float = 0.0, key: str | None = None) -> None:
        self._log("info", text, every_s, key)

    def warning(self, text: str, every_s: float = 0.0, key: str | None = None) -> None:
        self._log("warning", text, every_s, key)

    def error(self, text: str, every_s: float = 0.0, key: str | None = None) -> None:
        self._log("error", text, every_s, key)

    def fatal(self, text: str) -> None:
        self._log("fatal", text, 0.0, None)

    def _log(self, level: str, text: str, every_s: float, key: str | None) -> None:
        try:
            if every_s > 0:
                key = key or text
                with self._lock:
                    now = self._clock()
                    if now - self._last.get(key, -float("inf")) < every_s:
                        self._suppressed[key] += 1
                        return
                    self._last[key] = now
                    suppressed = self._suppressed.pop(key, 0)
                if suppressed:
                    text += f" ({suppressed} more like this in the last {every_s:g} s)"
            self._emit(level, text)
        except Exception as err:  # the logger itself failed: say so where it cannot fail
            with contextlib.suppress(Exception):
                sys.stderr.write(f"[{level}] {text} (logging failed: {err!r})\n")

    def _emit(self, level: str, text: str) -> None:
        # One line per severity: rclpy also refuses a change of severity at one call site.
        if level == "info":
            self._logger.info(text)
        elif level == "warning":
            self._logger.warning(text)
        elif level == "error":
            self._logger.error(text)
        else:
            self._logger.fatal(text)


class FailureCounts:
    """Failures per reason since start, and the latest reason, for /diagnostics."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.last: str = ""

    def add(self, reason: str, detail: str) -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown failure reason {reason!r}")
        with self._lock:
            self._counts[reason] += 1
            self.last = f"{reason}: {detail}"

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {reason: self._counts[reason] for reason in FAILURE_REASONS}


class Heartbeat:
    """When the worker last made progress (started or finished a job, produced a token).

    The watchdog reads it from another thread: a worker that is busy and silent for longer
    than its timeout is stuck (a hung backend, a deadlock), which no exception would reveal.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._busy_with: str | None = None
        self._last_progress = clock()

    def start(self, what: str) -> None:
        self._busy_with, self._last_progress = what, self._clock()

    def beat(self) -> None:
        self._last_progress = self._clock()

    def idle(self) -> None:
        self._busy_with, self._last_progress = None, self._clock()

    def stalled(self) -> tuple[str, float] | None:
        """(what the worker is busy with, seconds without progress), or None when idle."""
        busy_with = self._busy_with
        if busy_with is None:
            return None
        return busy_with, self._clock() - self._last_progress


@dataclass
class Crash:
    """Why the worker thread died, and when (monotonic seconds)."""

    reason: str
    at: float


class RestartingThread:
    """A thread running ``target`` that is started again when it dies, until stopped.

    ``check()`` (called periodically by the watchdog) restarts a dead thread and records why it
    died; more than ``max_restarts`` within ``window_s`` means the failure is not transient and
    ``check()`` returns False so the node can exit non-zero for its supervisor to restart it.
    """

    def __init__(
        self,
        target: Callable[[], None],
        name: str,
        max_restarts: int = 5,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._target = target
        self._name = name
        self._max_restarts = max_restarts
        self._window_s = window_s
        self._clock = clock
        self.crashes: deque[Crash] = deque(maxlen=max_restarts + 1)
        self._death: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._death = None
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._target()
        except BaseException as err:  # anything: the reason is reported, the thread restarted
            self._death = f"{type(err).__name__}: {err}"

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def check(self) -> bool:
        """Restart the thread if it died; False when it died too often to keep trying."""
        if self.is_alive():
            return True
        self.crashes.append(Crash(self._death or "the thread ended", self._clock()))
        recent = [c for c in self.crashes if self._clock() - c.at <= self._window_s]
        if len(recent) > self._max_restarts:
            return False
        self.start()
        return True

    def last_crash(self, within_s: float) -> Crash | None:
        """The latest crash if it happened within the last ``within_s`` seconds."""
        if self.crashes and self._clock() - self.crashes[-1].at <= within_s:
            return self.crashes[-1]
        return None

    def join(self, timeout: float) -> bool:
        """Wait for the thread to end; False if it is still running (e.g. stuck in a backend)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.is_alive()
