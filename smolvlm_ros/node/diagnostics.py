"""The node's state as diagnostic_msgs/DiagnosticArray, for /diagnostics (rqt_robot_monitor,
diagnostic_aggregator): one status for the model, one per camera."""

from __future__ import annotations

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from smolvlm_ros.engine import Engine
from smolvlm_ros.pipeline.scheduler import DROP_REASONS, CameraStats

# A camera silent for longer than this is reported as a warning.
SILENT_AFTER_S = 5.0


def _kv(key: str, value: object) -> KeyValue:
    return KeyValue(key=key, value=str(value))


def diagnostics(
    node_name: str,
    stamp: Time,
    cameras: dict[str, CameraStats],
    now_s: float,
    engine: Engine,
    pending_questions: int,
) -> DiagnosticArray:
    backend = engine.backend
    model = DiagnosticStatus(
        level=DiagnosticStatus.OK,
        name=f"{node_name}: model",
        hardware_id=backend.device,
        message=f"{engine.loaded.spec} loaded" + (" (RANDOM weights)" if engine.is_random else ""),
        values=[
            _kv("model", engine.loaded.spec),
            _kv("backend", backend.name),
            _kv("device", backend.device),
            _kv("dtype", backend.dtype),
            _kv("pending_questions", pending_questions),
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
