"""The node's state as diagnostic_msgs/DiagnosticArray, for /diagnostics (rqt_robot_monitor,
diagnostic_aggregator): one status for the model, one per camera."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from smolvlm_ros.engine import Engine
from smolvlm_ros.pipeline.scheduler import DROP_REASONS, INFERENCE_ERROR, CameraStats

# A camera silent for longer than this is reported as a warning.
SILENT_AFTER_S = 5.0


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
) -> DiagnosticArray:
    backend = engine.backend
    failures = sum(s.dropped.get(INFERENCE_ERROR, 0) for s in cameras.values())
    captioned = sum(s.captioned for s in cameras.values())
    if failures and not captioned:
        level, message = DiagnosticStatus.ERROR, f"inference failing ({failures} failures)"
    elif failures:
        level, message = DiagnosticStatus.WARN, f"{failures} inference failures"
    else:
        level, message = DiagnosticStatus.OK, f"{engine.loaded.spec} loaded"
    if engine.is_random:
        message += " (RANDOM weights)"
    percentiles = latency.percentiles()
    model = DiagnosticStatus(
        level=level,
        name=f"{node_name}: model",
        hardware_id=backend.device,
        message=message,
        values=[
            _kv("model", engine.loaded.spec),
            _kv("backend", backend.name),
            _kv("device", backend.device),
            _kv("dtype", backend.dtype),
            _kv("pending_questions", pending_questions),
            _kv("inference_failures", failures),
            *(
                _kv(f"latency_{name}_ms" if name != "count" else "latency_samples", f"{v:.0f}")
                for name, v in percentiles.items()
            ),
        ],
    )
    statuses = [model]
    for camera, stats in cameras.items():
        age = None if stats.last_stamp is None else now_s - stats.last_stamp
        if age is None:
            level, message = DiagnosticStatus.WARN, "no frames received yet"
        elif age > SILENT_AFTER_S:
            level, message = DiagnosticStatus.WARN, f"no frames for {age:.1f} s"
        else:
            level, message = DiagnosticStatus.OK, "receiving"
        values = [
            _kv("input_rate_hz", f"{input_rates_hz.get(camera, 0.0):.1f}"),
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
