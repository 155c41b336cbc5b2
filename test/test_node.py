"""vlm_node over real DDS: captions stamped with their source frames, ~/ask, errors, start-up.

The node runs as its own process on random:tiny; this process publishes camera frames and listens
and calls like any other ROS 2 node would.
"""

from __future__ import annotations

import json
import shutil
import socket
import time

import pytest
from sensor_msgs.msg import CompressedImage, Image

from ros_helpers import NodeProcess, image_msg, jpeg_msg, wait_for
from smolvlm_ros.engine.backends.registry import choose
from smolvlm_ros.msg import Caption
from smolvlm_ros.srv import AskQuestion

pytestmark = pytest.mark.ros  # ROS 2: rclpy, messages, nodes over DDS

CAM_RAW = "/front/image_raw"
CAM_JPEG = "/rear/image_raw/compressed"


@pytest.fixture(scope="module")
def running_node(ros, tmp_path_factory):
    """One node for the module's tests: two cameras (raw and JPEG), fast captions."""
    node = NodeProcess(
        tmp_path_factory.mktemp("node"),
        {
            "model": "random:tiny",
            "device": "cpu",
            "image_topics": [CAM_RAW, CAM_JPEG],
            "caption_rate_hz": 5.0,
            "max_new_tokens": 6,
        },
    )
    ask = ros.node.create_client(AskQuestion, node.topic("ask"))
    ready = wait_for(lambda: ask.service_is_ready() or node.proc.poll() is not None, 120)
    assert ready and node.proc.poll() is None, f"node did not come up:\n{node.log}"
    yield node, ask
    code = node.stop()
    assert code == 0, f"node exited with {code} on SIGINT:\n{node.log}"


def test_captions_carry_the_source_frame_header(ros, running_node, photos):
    node, _ = running_node
    captions: list[Caption] = []
    sub = ros.node.create_subscription(Caption, node.topic("caption"), captions.append, 10)
    raw_pub = ros.node.create_publisher(Image, CAM_RAW, 10)
    jpeg_pub = ros.node.create_publisher(CompressedImage, CAM_JPEG, 10)
    assert wait_for(lambda: raw_pub.get_subscription_count() > 0, 10)
    assert wait_for(lambda: jpeg_pub.get_subscription_count() > 0, 10)

    sent: dict[str, set[tuple[int, int, str]]] = {CAM_RAW: set(), CAM_JPEG: set()}
    names = list(photos)
    for i in range(40):
        stamp_ns = 1_000_000_000 * (1000 + i) + 123_456 * i
        rgb = photos[names[i % len(names)]]
        raw_pub.publish(image_msg(rgb, stamp_ns, "front_optical", "bgr8"))
        jpeg_pub.publish(jpeg_msg(rgb, stamp_ns + 1, "rear_optical"))
        sent[CAM_RAW].add((stamp_ns // 10**9, stamp_ns % 10**9, "front_optical"))
        sent[CAM_JPEG].add(((stamp_ns + 1) // 10**9, (stamp_ns + 1) % 10**9, "rear_optical"))
        if i % 5 == 0 and len({c.camera for c in captions}) == 2:
            break
        wait_for(lambda: False, 0.1)
    assert wait_for(lambda: len({c.camera for c in captions}) == 2, 60), node.log
    ros.node.destroy_subscription(sub)

    for caption in list(captions):
        assert caption.camera in sent, caption.camera
        key = (caption.header.stamp.sec, caption.header.stamp.nanosec, caption.header.frame_id)
        assert key in sent[caption.camera], f"caption header {key} is not a frame sent"
        assert caption.text
        assert caption.provenance.model == "random:tiny"
        assert caption.provenance.backend.split("-")[0] == choose("auto", "cpu").name
        assert caption.provenance.device == "cpu"
        assert caption.provenance.prompt == "Describe this image in one sentence."
        assert caption.timing.image_tokens == 16  # tiny: one 128 px image, 16 tokens
        assert 1 <= caption.timing.generated_tokens <= 6
        assert caption.timing.finish_reason in ("stop", "length")
        t = caption.timing
        assert t.total_ms >= t.encode_ms + t.prefill_ms + t.decode_ms > 0


def test_ask_answers_about_the_latest_frame(ros, running_node, photos):
    node, ask = running_node
    pub = ros.node.create_publisher(Image, CAM_RAW, 10)
    assert wait_for(lambda: pub.get_subscription_count() > 0, 10)
    stamp_ns = 7_000_000_000_123
    frame = image_msg(photos["coffee"], stamp_ns, "front_optical")
    probe = AskQuestion.Request(question="What is on the table?", camera=CAM_RAW)

    def node_has_the_frame() -> bool:
        # Camera QoS is best effort: a frame may be lost, as on a robot; send it again.
        pub.publish(frame)
        return ros.call(ask, probe).answer.header.stamp.sec == stamp_ns // 10**9

    assert wait_for(node_has_the_frame, 30, 0.2), node.log
    response = ros.call(ask, AskQuestion.Request(question="What is on the table?"))
    assert response.success, response.error
    answer = response.answer
    assert answer.camera == CAM_RAW  # the default camera is the first of image_topics
    assert (answer.header.stamp.sec, answer.header.stamp.nanosec) == (7000, 123)
    assert answer.question == "What is on the table?"
    assert answer.answer
    assert answer.provenance.prompt == "What is on the table?"


def test_ask_about_a_supplied_image(ros, running_node, photos):
    _, ask = running_node
    image = image_msg(photos["rocket"], 42_000_000_005, "supplied_frame")
    request = AskQuestion.Request(question="Is there a rocket?", image=image, max_new_tokens=3)
    response = ros.call(ask, request)
    assert response.success, response.error
    assert response.answer.camera == ""
    assert response.answer.header.frame_id == "supplied_frame"
    assert (response.answer.header.stamp.sec, response.answer.header.stamp.nanosec) == (42, 5)
    assert 1 <= response.answer.timing.generated_tokens <= 3


def test_typed_answers_over_dds(ros, running_node, photos):
    """yes/no, count and choice about a real photograph: the typed field is filled, the
    confidence is a probability, the text is the value; a text question stays text."""
    _, ask = running_node
    image = image_msg(photos["coffee"], 5_000_000_000, "table_cam")

    def typed(answer_type: str, question: str, options: tuple[str, ...] = ()):
        request = AskQuestion.Request(
            question=question, image=image, answer_type=answer_type, options=list(options)
        )
        response = ros.call(ask, request)
        assert response.success, response.error
        answer = response.answer
        assert answer.answer_type == answer_type and answer.header.frame_id == "table_cam"
        return answer

    yes_no = typed("yes_no", "Is there a cup?")
    assert yes_no.answer == ("Yes" if yes_no.yes else "No")
    assert 0.5 <= yes_no.confidence <= 1.0  # the better of two options
    count = typed("count", "How many cups are there?")
    assert count.count >= 0 and count.answer == str(count.count) and 0 < count.confidence <= 1
    choice = typed("choice", "Which drink is it?", ("coffee", "tea", "orange juice"))
    assert choice.choice in ("coffee", "tea", "orange juice") and choice.answer == choice.choice
    assert 1 / 3 <= choice.confidence <= 1.0
    schema = {
        "type": "object",
        "properties": {"cups": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["cups"],
        "additionalProperties": False,
    }
    request = AskQuestion.Request(
        question="Count the cups.",
        image=image,
        answer_type="json",
        json_schema=json.dumps(schema),
        max_new_tokens=40,
    )
    response = ros.call(ask, request)
    assert response.success, response.error
    assert set(json.loads(response.answer.json)) == {"cups"} and 0 < response.answer.confidence <= 1
    request.max_new_tokens = 2  # too few for any object: refused, with the fix
    response = ros.call(ask, request)
    assert not response.success and "no complete json answer" in response.error
    assert "raise max_new_tokens" in response.error
    text = typed("text", "What is it?")
    assert (text.yes, text.count, text.choice, text.json, text.confidence) == (False, 0, "", "", 0)


@pytest.mark.parametrize(
    ("request_fields", "error_part"),
    [
        ({"question": "   "}, "question is empty"),
        ({"question": "Which?", "answer_type": "choice", "options": ["A"]}, "at least two"),
        ({"question": "Open?", "answer_type": "maybe"}, "answer_type 'maybe': expected one of"),
        ({"question": "Door?", "answer_type": "json", "json_schema": "{x"}, "is not JSON"),
        ({"question": "What?", "camera": "/no/such/camera"}, "unknown camera '/no/such/camera'"),
        ({"question": "What?", "max_new_tokens": 100000}, "max_new_tokens 100000"),
    ],
)
def test_ask_refuses_bad_requests_clearly(ros, running_node, request_fields, error_part):
    _, ask = running_node
    response = ros.call(ask, AskQuestion.Request(**request_fields))
    assert not response.success
    assert error_part in response.error


def test_ask_refuses_an_undecodable_image(ros, running_node):
    _, ask = running_node
    bad = Image(height=4, width=4, encoding="rgb8", step=12, data=b"\x00" * 10)
    response = ros.call(ask, AskQuestion.Request(question="What?", image=bad))
    assert not response.success
    assert "the request's image" in response.error and "expected step*height = 48" in response.error


def test_ask_before_any_frame_says_so(ros, tmp_path):
    node = NodeProcess(tmp_path, {"model": "random:tiny", "image_topics": ["/silent/image_raw"]})
    try:
        ask = ros.node.create_client(AskQuestion, node.topic("ask"))
        response = ros.call(ask, AskQuestion.Request(question="Anything there?"), timeout=120)
        assert not response.success
        assert response.error == "no image received yet on /silent/image_raw"
    finally:
        assert node.stop() == 0, node.log


def test_integer_accepted_for_a_float_parameter(ros, tmp_path):
    """`caption_rate_hz: 0` in YAML is an int; the node must take it, not fail on the type."""
    node = NodeProcess(tmp_path, {"model": "random:tiny", "caption_rate_hz": 0, "ask_timeout_s": 5})
    try:
        ask = ros.node.create_client(AskQuestion, node.topic("ask"))
        assert ask.wait_for_service(timeout_sec=120), node.log
    finally:
        assert node.stop() == 0, node.log


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"caption_rate_hz": -1.0}, "caption_rate_hz -1.0: expected 0-1000"),
        ({"image_topics": [""]}, "image_topics has an empty item"),
        ({"model": "random:huge"}, "unknown model shape 'huge'"),
        ({"device": "tpu"}, "device 'tpu': expected one of auto, cpu, cuda"),
        ({"backend": "coral"}, "backend 'coral': expected one of auto, openvino"),
        # registered, but its runtime is for the board: exits with the reason, never half up
        ({"backend": "rknn", "device": "cpu"}, "rknn-toolkit-lite2 (rknnlite) is not installed"),
        ({"max_tiles": -1}, "Parameter max_tiles out of range. Min: 0, Max: 1024, value: -1"),
        ({"image_topics": ["/9cam/image"]}, "image_topics: '/9cam/image' is not a valid topic"),
        ({"camera_priorities": [1.0, 2.0]}, "camera_priorities has 2 values for 1 image_topics"),
        ({"max_new_tokens": "many"}, "start-up failed"),
        ({"caption_rate_hz": "fast"}, "caption_rate_hz must be a number, got 'fast'"),
        ({"caption_rate": 2.0}, "unknown parameter(s) caption_rate; known: image_topics"),
    ],
)
def test_bad_parameters_fail_start_up_clearly(tmp_path, params, message):
    node = NodeProcess(tmp_path, {"model": "random:tiny", **params})
    code = node.wait_exit(timeout=120)
    assert code == 1, node.log
    assert message in node.log


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nobody listens once the socket is closed


def test_an_unreachable_hub_fails_start_up_at_once_with_one_message(tmp_path):
    """It used to take 149 s and ~70 lines of HTTP retries; the hub here is a closed loopback
    port, so no traffic leaves the machine."""
    node = NodeProcess(
        tmp_path,
        {"model": "someorg/SmolVLM-nowhere", "device": "cpu"},
        env={
            "HF_HUB_OFFLINE": None,
            "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}",
            "HF_HOME": str(tmp_path / "hf"),
        },
    )
    started = time.monotonic()
    code = node.wait_exit(timeout=120)
    print(f"unreachable hub: exit {code} after {time.monotonic() - started:.1f} s")
    assert code == 1, node.log
    assert "'someorg/SmolVLM-nowhere' is not in the local Hugging Face cache" in node.log
    assert "is unreachable" in node.log
    assert node.log.count("Retrying") == 0 and node.log.count("\n[") <= 3, node.log


def test_a_corrupt_checkpoint_file_is_named(tmp_path):
    from smolvlm_ros.models.random_checkpoint import ensure_random_checkpoint
    from smolvlm_ros.models.shapes import get_shape

    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(ensure_random_checkpoint(get_shape("tiny")), checkpoint)
    weights = next(checkpoint.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    node = NodeProcess(tmp_path, {"model": str(checkpoint), "device": "cpu"})
    assert node.wait_exit(timeout=120) == 1, node.log
    assert f"checkpoint file {weights} is not a valid safetensors file" in node.log
