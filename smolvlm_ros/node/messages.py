"""Core values <-> ROS messages: the only place that knows both sides."""

from __future__ import annotations

from builtin_interfaces.msg import Time
from std_msgs.msg import Header

from smolvlm_ros.engine.types import Result
from smolvlm_ros.msg import Caption, Provenance, Timing, VqaAnswer
from smolvlm_ros.pipeline.intake import stamp_fields, stamp_to_ns

__all__ = ["ns_to_stamp", "stamp_to_ns", "to_caption", "to_vqa_answer"]


def ns_to_stamp(ns: int) -> Time:
    return Time(**stamp_fields(ns))


def _header(result: Result) -> Header:
    """The SOURCE frame's stamp and frame_id, so results line up with the images they describe."""
    return Header(stamp=ns_to_stamp(result.stamp_ns), frame_id=result.frame_id)


def _provenance(result: Result) -> Provenance:
    return Provenance(**result.provenance_fields())


def _timing(result: Result) -> Timing:
    return Timing(**result.timing_fields())


def to_caption(result: Result) -> Caption:
    return Caption(
        header=_header(result),
        camera=result.camera,
        text=result.text,
        provenance=_provenance(result),
        timing=_timing(result),
    )


def to_vqa_answer(result: Result) -> VqaAnswer:
    return VqaAnswer(
        header=_header(result),
        camera=result.camera,
        question=result.prompt,
        answer=result.text,
        answer_type=result.typed.type if result.typed else "text",
        yes=result.typed.yes if result.typed else False,
        count=result.typed.count if result.typed else 0,
        choice=result.typed.choice if result.typed else "",
        json=result.typed.json if result.typed else "",
        confidence=result.typed.confidence if result.typed else 0.0,
        provenance=_provenance(result),
        timing=_timing(result),
    )
