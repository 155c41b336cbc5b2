"""Reliability over real DDS: malformed images and hostile requests never stop the node.

Each test here reproduces a defect seen when the node was tried as a new user would (issue 10)
and failed before its fix: a burst of bad frames silently killed the worker thread, one ~/ask
with an invalid camera name killed the executor, and both left a process exiting 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image

from ros_helpers import (
    Collector,
    camera_stats,
    image_msg,
    jpeg_msg,
    stamp_ns_of,
    start,
    stop,
    wait_for,
)
from smolvlm_ros.pipeline.requests import MAX_QUESTION_CHARS
from smolvlm_ros.srv import AskQuestion

pytestmark = pytest.mark.ros  # ROS 2: rclpy, messages, nodes over DDS

CAM = "/rel/image_raw"
CAM_JPEG = "/rel/image_raw/compressed"
REFUSED, ACCEPTED, EITHER = "refused", "accepted", "either"


@pytest.fixture(scope="module")
def node(ros, tmp_path_factory):
    """One node for the module: a raw and a JPEG camera, fast captions, short answers."""
    node = start(
        ros, tmp_path_factory.mktemp("reliability"), image_topics=[CAM, CAM_JPEG],
        caption_rate_hz=5.0, max_new_tokens=2,
    )  # fmt: skip
    yield node
    stop(node)  # exits 0 on SIGINT: nothing above stopped it


@pytest.fixture(scope="module")
def ask(ros, node):
    client = ros.node.create_client(AskQuestion, node.topic("ask"))
    assert client.wait_for_service(timeout_sec=30), node.log
    return client


def _header_fields(stamp_ns: int) -> dict[str, Any]:
    return image_msg(np.zeros((1, 1, 3), np.uint8), stamp_ns, "bad").header


def raw(stamp_ns: int, width: int, height: int, encoding: str, step: int, data: bytes, **kw):
    return Image(
        header=_header_fields(stamp_ns), width=width, height=height, encoding=encoding,
        step=step, data=data, **kw,
    )  # fmt: skip


def compressed(stamp_ns: int, fmt: str, data: bytes) -> CompressedImage:
    return CompressedImage(header=_header_fields(stamp_ns), format=fmt, data=data)


@dataclass
class BadFrame:
    name: str
    topic: str
    make: Any  # stamp_ns -> message
    expect: str  # REFUSED: ~/ask about it fails clearly; ACCEPTED: it is answered; EITHER


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def corpus(photo: np.ndarray) -> list[BadFrame]:
    """What misbehaving drivers send: every kind seen in the field, and the lies of headers."""
    small = np.ascontiguousarray(photo[:48, :64])
    rgb = small.tobytes()
    jpeg = _jpeg(small)
    depth = np.full((48, 64), 1.5, np.float32)
    depth[::3] = np.nan
    depth[1::3] = np.inf
    depth[2::5] = -np.inf
    depth[:, :4] = -2.0
    far_future = (2**31 - 1) * 10**9
    return [
        BadFrame("wrong step", CAM, lambda s: raw(s, 64, 48, "rgb8", 10, rgb), REFUSED),
        BadFrame("truncated data", CAM, lambda s: raw(s, 64, 48, "rgb8", 192, rgb[:100]), REFUSED),
        BadFrame("zero width", CAM, lambda s: raw(s, 0, 48, "rgb8", 0, b""), REFUSED),
        BadFrame(
            "20000x20000 declared, 100 bytes",
            CAM,
            lambda s: raw(s, 20000, 20000, "rgb8", 60000, b"\x01" * 100),
            REFUSED,
        ),
        BadFrame("unknown encoding", CAM, lambda s: raw(s, 64, 48, "foo42", 192, rgb), REFUSED),
        BadFrame(
            "lying is_bigendian on rgb8",
            CAM,
            lambda s: raw(s, 64, 48, "rgb8", 192, rgb, is_bigendian=1),
            ACCEPTED,
        ),
        BadFrame(
            "NaN / inf / negative depth",
            CAM,
            lambda s: raw(s, 64, 48, "32FC1", 256, depth.tobytes()),
            ACCEPTED,
        ),
        BadFrame(
            "odd width for YUV 4:2:2",
            CAM,
            lambda s: raw(s, 5, 4, "yuv422", 10, b"\x80" * 40),
            EITHER,
        ),
        BadFrame("stamp zero", CAM, lambda s: image_msg(small, 0, "cam"), ACCEPTED),
        BadFrame("far-future stamp", CAM, lambda s: image_msg(small, far_future, "cam"), ACCEPTED),
        BadFrame("far-past stamp", CAM, lambda s: image_msg(small, 1, "cam"), ACCEPTED),
        BadFrame(
            "corrupt JPEG",
            CAM_JPEG,
            lambda s: compressed(s, "jpeg", b"\xff\xd8" + b"\x13" * 500),
            REFUSED,
        ),
        BadFrame(
            "truncated JPEG",
            CAM_JPEG,
            lambda s: compressed(s, "jpeg", jpeg[: len(jpeg) // 3]),
            EITHER,
        ),
        BadFrame("empty JPEG", CAM_JPEG, lambda s: compressed(s, "jpeg", b""), REFUSED),
        BadFrame(
            "JPEG data, format says png", CAM_JPEG, lambda s: compressed(s, "png", jpeg), ACCEPTED
        ),
        BadFrame(
            "garbage with a bogus format",
            CAM_JPEG,
            lambda s: compressed(s, "bogus", b"\x00\x01\x02" * 50),
            REFUSED,
        ),
    ]


def _publisher(ros, topic: str):
    msg_type = CompressedImage if topic.endswith("/compressed") else Image
    pub = ros.node.create_publisher(msg_type, topic, qos_profile_sensor_data)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 10)
    return pub


def _good(topic: str, rgb: np.ndarray, stamp_ns: int):
    make = jpeg_msg if topic.endswith("/compressed") else image_msg
    return make(rgb, stamp_ns, "good")


def _outcome(ros, ask, topic: str, stamp_ns: int) -> str | None:
    """What ~/ask says about the camera's latest frame, if that frame is the one stamped so."""
    response = ros.call(ask, AskQuestion.Request(question="What is it?", camera=topic), 30)
    if response.success:
        return ACCEPTED if stamp_ns_of(response.answer) == stamp_ns else None
    return REFUSED if response.error.startswith("the camera's latest image:") else None


def test_every_bad_frame_is_refused_clearly_and_good_frames_still_flow(ros, node, ask, photos):
    publishers = {CAM: _publisher(ros, CAM), CAM_JPEG: _publisher(ros, CAM_JPEG)}
    good = np.ascontiguousarray(photos["coffee"][:120, :160])
    stamp = 10**12
    for bad in corpus(photos["rocket"]):
        pub = publishers[bad.topic]
        stamp += 10**9
        good_msg = _good(bad.topic, good, stamp)

        def good_frame_answered(msg=good_msg, s=stamp, pub=pub, topic=bad.topic) -> bool:
            pub.publish(msg)
            return _outcome(ros, ask, topic, s) == ACCEPTED

        # Best-effort QoS may lose a frame: publish until the node holds it.
        assert wait_for(good_frame_answered, 30, 0.1), f"before {bad.name}:\n{node.log}"
        stamp += 10**9
        msg = bad.make(stamp)
        expected_stamp = stamp_ns_of(msg)
        seen: list[str | None] = []

        def bad_frame_seen(msg=msg, s=expected_stamp, pub=pub, topic=bad.topic, seen=seen) -> bool:
            pub.publish(msg)
            seen.append(_outcome(ros, ask, topic, s))
            return seen[-1] is not None

        assert wait_for(bad_frame_seen, 30, 0.1), f"{bad.name}: never answered:\n{node.log}"
        assert bad.expect in (EITHER, seen[-1]), f"{bad.name}: {seen[-1]}"
    assert node.proc.poll() is None, node.log
    stats = camera_stats(ros, node, CAM)
    assert int(stats["received"]) > 0


def test_captions_continue_after_a_burst_of_bad_frames(ros, node, photos):
    """The burst goes to the caption worker too (at full speed, both cameras)."""
    publishers = {CAM: _publisher(ros, CAM), CAM_JPEG: _publisher(ros, CAM_JPEG)}
    bad_frames = corpus(photos["astronaut"])
    for _ in range(10):
        for i, bad in enumerate(bad_frames):
            publishers[bad.topic].publish(bad.make(5 * 10**12 + i))
            time.sleep(0.01)
    captions = Collector(ros, node.topic("caption"))
    good = np.ascontiguousarray(photos["coffee"][:120, :160])
    sent: dict[str, set[int]] = {CAM: set(), CAM_JPEG: set()}

    def both_cameras_captioned() -> bool:
        stamp = time.time_ns()
        for topic, pub in publishers.items():
            pub.publish(_good(topic, good, stamp))
            sent[topic].add(stamp)
        return {c.camera for c in captions.items if stamp_ns_of(c) in sent[c.camera]} == set(sent)

    assert wait_for(both_cameras_captioned, 60, 0.1), node.log
    for topic in (CAM, CAM_JPEG):
        stats = camera_stats(ros, node, topic)
        assert int(stats["dropped_decode_error"]) > 0, stats  # the burst was seen and counted
    model = camera_stats(ros, node, "model")
    assert int(model["failures_decode_error"]) > 0, model


@pytest.mark.parametrize(
    ("fields", "error_part"),
    [
        ({"camera": "bad name!!"}, "camera 'bad name!!' is not a valid topic name"),
        ({"camera": "9cam"}, "camera '9cam' is not a valid topic name"),
        ({"camera": "/a//b"}, "camera '/a//b' is not a valid topic name"),
        ({"camera": "{sub}"}, "camera '{sub}' is not a valid topic name"),
        ({"camera": "/no/such/cam"}, "unknown camera '/no/such/cam'"),
        (
            {"question": "x" * 100_000},
            f"question is 100000 characters; at most {MAX_QUESTION_CHARS}",
        ),
        ({"question": "What\x1b[2J is this?"}, "question contains control character U+001B"),
        ({"max_age_s": math.nan}, "max_age_s nan: expected a finite number of seconds"),
        ({"max_age_s": math.inf}, "max_age_s inf: expected a finite number of seconds"),
        ({"max_age_s": -1.0}, "max_age_s -1.0: expected 0 (any age) or more"),
        ({"timeout_s": math.nan}, "timeout_s nan: expected a finite number of seconds"),
        ({"timeout_s": -math.inf}, "timeout_s -inf: expected a finite number of seconds"),
        ({"timeout_s": -0.5}, "timeout_s -0.5: expected 0 (the node's ask_timeout_s) or more"),
        ({"timeout_s": 1e12}, "timeout_s 1000000000000.0: expected at most 86400"),
        ({"max_new_tokens": 2**32 - 1}, "max_new_tokens 4294967295 is above the limit 4096"),
    ],
)
def test_hostile_requests_get_a_clear_error_and_the_node_lives_on(
    ros, node, ask, fields, error_part
):
    request = AskQuestion.Request(**{"question": "What is it?", "camera": CAM, **fields})
    response = ros.call(ask, request, 30)
    assert not response.success
    assert error_part in response.error, response.error
    assert node.proc.poll() is None, node.log
    # ... and the next request is served as usual.
    image = image_msg(np.zeros((32, 32, 3), np.uint8), 77, "ok")
    fine = ros.call(ask, AskQuestion.Request(question="What is it?", image=image), 30)
    assert fine.success, fine.error


def test_hostile_describe_goals_are_aborted_clearly(ros, node):
    from rclpy.action import ActionClient

    from smolvlm_ros.action import Describe

    client = ActionClient(ros.node, Describe, node.topic("describe"))
    assert client.wait_for_server(timeout_sec=30), node.log
    for goal, error_part in [
        (Describe.Goal(camera="bad name!!"), "camera 'bad name!!' is not a valid topic name"),
        (Describe.Goal(prompt="y" * 50_000), "question is 50000 characters"),
        (Describe.Goal(prompt="ring \x07 the bell"), "control character U+0007"),
    ]:
        sent = client.send_goal_async(goal)
        assert wait_for(sent.done, 30), node.log
        result = sent.result().get_result_async()
        assert wait_for(result.done, 30), node.log
        assert not result.result().result.success
        assert error_part in result.result().result.error, result.result().result.error
    assert node.proc.poll() is None, node.log


def test_a_question_cut_at_a_nul_is_echoed_as_the_node_received_it(ros, node, ask):
    """ROS strings are C strings: rclpy cuts "abc\0def" at the NUL when the client serialises
    it, so the node never sees the rest. The answer echoes the question as received, so the
    caller can tell."""
    image = image_msg(np.zeros((32, 32, 3), np.uint8), 78, "ok")
    request = AskQuestion.Request(question="Is it red?\0 Ignore that, is it blue?", image=image)
    response = ros.call(ask, request, 30)
    assert response.success, response.error
    assert response.answer.question == "Is it red?"
