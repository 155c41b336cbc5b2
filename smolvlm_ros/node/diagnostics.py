"""The node's state as diagnostic_msgs/DiagnosticArray, for /diagnostics (rqt_robot_monitor,
diagnostic_aggregator): one status for the model, one per camera.

The model's status is ERROR while the worker is stalled past half its watchdog timeout, was
restarted after a crash in the last minute, is backing off after repeated failures, or fails
every request, or while its backend says requests fail (a remote server down: its
circuit is open); WARN with failures of any kind. A camera's status is WARN when it is silent or
when its captions fall well below their target rate (the model is too slow for all cameras, or
questions take its time).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from smolvlm_ros.engine import Engine
from smolvlm_ros.node.supervision import FAILURE_REASONS
from smolvlm_ros.pipeline.scheduler import (
    DECODE_ERROR,
    DROP_REASONS,
    INFERENCE_ERROR,
    UNCHANGED,
    CameraStats,
)

# A camera silent for longer than this is reported as a warning.
SILENT_AFTER_S = 5.0
# A camera whose caption turns fall below this share of its target rate is reported as a
# warning, once the rate has been measured over RATE_WINDOW_S (or three caption periods).
SLOW_CAPTIONS_SHARE = 0.5
RATE_WINDOW_S = 10.0


@dataclass
class WorkerHealth:
    """The worker's state as the node's supervision sees it."""

    failures: dict[str, int] = field(default_factory=dict)  # reason -> count since start
    last_failure: str = ""
    crash: str | None = None  # why the worker thread died, if it did recently
    stalled: tuple[str, float] | None = None  # (busy with, seconds without progress)
    watchdog_timeout_s: float = 0.0
    backoff_s: float = 0.0  # pausing after repeated inference failures
    failure_streak: int = 0
    fatal: str | None = None  # the node is exiting because of this


class CaptionRates:
    """Each camera's caption turns per second over a sliding window, against its target.

    A turn is a frame the worker took for captioning (captioned, or dropped as unchanged or
    undecodable): the camera got model time. The target is the configured rate, or the input
    rate when the camera publishes slower than that.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: dict[str, deque[tuple[float, int]]] = {}

    def update(
        self,
        now: float,
        cameras: dict[str, CameraStats],
        targets_hz: dict[str, float],
        input_rates_hz: dict[str, float],
    ) -> dict[str, tuple[float, float] | None]:
        """camera -> (measured turns/s, target/s), or None until measured over a window."""
        out: dict[str, tuple[float, float] | None] = {}
        for camera, stats in cameras.items():
            turns = stats.captioned + stats.dropped[UNCHANGED] + stats.dropped[DECODE_ERROR]
            samples = self._samples.setdefault(camera, deque())
            samples.append((now, turns))
            target = min(targets_hz.get(camera, 0.0), input_rates_hz.get(camera, 0.0))
            window = max(self.window_s, 3.0 / target) if target > 0 else self.window_s
            while len(samples) > 2 and now - samples[1][0] >= window:
                samples.popleft()
            (t0, n0), (t1, n1) = samples[0], samples[-1]
            out[camera] = ((n1 - n0) / (t1 - t0), target) if t1 - t0 >= window else None
        return out


class LatencyWindow:
    """The last results' end-to-end latencies (frame received to result), for percentiles."""

    def __init__(self, size: int = 100) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, total_ms: float) -> None:
        with self._lock:
            self._values.append(total_ms)

    def percentiles(self) -> dict[str, float]:
        with self._lock:
            values = list(self._values)
        if not values:
            return {}
        p50, p90, p99 = np.percentile(values, (50, 90, 99))
        return {"p50": p50, "p90": p90, "p99": p99, "max": max(values), "count": len(values)}


def _kv(key: str, value: object) -> KeyValue:
    return KeyValue(key=key, value=str(value))


def diagnostics(
    node_name: str,
    stamp: Time,
    cameras: dict[str, CameraStats],
    now_s: float,
    engine: Engine,
    pending_questions: int,
    latency: LatencyWindow,
    input_rates_hz: dict[str, float],
    caption_rates: dict[str, tuple[float, float] | None] | None = None,
    health: WorkerHealth | None = None,
) -> DiagnosticArray:
    backend = engine.backend
    health = health or WorkerHealth()
    inference_failures = sum(s.dropped.get(INFERENCE_ERROR, 0) for s in cameras.values())
    captioned = sum(s.captioned for s in cameras.values())
    level, message = _model_level(engine, health, inference_failures, captioned)
    percentiles = latency.percentiles()
    model = DiagnosticStatus(
        level=level,
        name=f"{node_name}: model",
        hardware_id=backend.device,
        message=message,
        values=[
            _kv("model", engine.loaded.spec),
            _kv("backend", backend.name),
            _kv("backend_reason", engine.backend_choice.reason if engine.backend_choice else ""),
            _kv("device", backend.device),
            _kv("dtype", backend.dtype),
            _kv("pending_questions", pending_questions),
            _kv("inference_failures", inference_failures),
            *(_kv(f"failures_{r}", health.failures.get(r, 0)) for r in FAILURE_REASONS),
            _kv("last_failure", health.last_failure),
            _kv("watchdog_timeout_s", f"{health.watchdog_timeout_s:g}"),
            *(
                _kv(f"latency_{name}_ms" if name != "count" else "latency_samples", f"{v:.0f}")
                for name, v in percentiles.items()
            ),
        ],
    )
    statuses = [model]
    for camera, stats in cameras.items():
        age = None if stats.last_stamp is None else now_s - stats.last_stamp
        rate = (caption_rates or {}).get(camera)
        if age is None:
            level, message = DiagnosticStatus.WARN, "no frames received yet"
        elif age > SILENT_AFTER_S:
            level, message = DiagnosticStatus.WARN, f"no frames for {age:.1f} s"
        elif rate is not None and rate[0] < SLOW_CAPTIONS_SHARE * rate[1]:
            level, message = (
                DiagnosticStatus.WARN,
                f"captioning at {rate[0]:.2f} Hz, target {rate[1]:.2f} Hz: the model is too "
                "slow for every camera, or questions take its time",
            )
        else:
            level, message = DiagnosticStatus.OK, "receiving"
        values = [
            _kv("input_rate_hz", f"{input_rates_hz.get(camera, 0.0):.1f}"),
            _kv("caption_rate_hz", "" if rate is None else f"{rate[0]:.2f}"),
            _kv("received", stats.received),
            _kv("captioned", stats.captioned),
            *(_kv(f"dropped_{reason}", stats.dropped.get(reason, 0)) for reason in DROP_REASONS),
            _kv("last_frame_age_s", "" if age is None else f"{age:.3f}"),
        ]
        statuses.append(
            DiagnosticStatus(
                level=level,
                name=f"{node_name}: {camera}",
                hardware_id=camera,
                message=message,
                values=values,
            )
        )
    return DiagnosticArray(header=Header(stamp=stamp), status=statuses)


def _model_level(
    engine: Engine, health: WorkerHealth, inference_failures: int, captioned: int
) -> tuple[bytes, str]:
    """The model status's level and message: the worst condition first."""
    error, warn = DiagnosticStatus.ERROR, DiagnosticStatus.WARN
    stalled = health.stalled
    if health.fatal:
        level, message = error, f"exiting: {health.fatal}"
    elif stalled and health.watchdog_timeout_s and stalled[1] > health.watchdog_timeout_s / 2:
        level, message = error, f"no progress for {stalled[1]:.0f} s on a {stalled[0]}"
    elif health.crash:
        level, message = error, f"worker thread died and was restarted: {health.crash}"
    elif problem := engine.backend_problem():  # e.g. the remote server is down
        level, message = error, problem
    elif health.backoff_s > 0:
        level, message = (
            error,
            (
                f"inference failing ({health.failure_streak} in a row), pausing "
                f"{health.backoff_s:.1f} s: {health.last_failure}"
            ),
        )
    elif inference_failures and not captioned:
        level, message = error, f"inference failing ({inference_failures} failures)"
    elif inference_failures:
        level, message = warn, f"{inference_failures} inference failures"
    else:
        level, message = DiagnosticStatus.OK, f"{engine.loaded.spec} loaded"
    if engine.is_random:
        message += " (RANDOM weights)"
    return level, message
