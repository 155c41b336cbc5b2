"""Faults inside the model, over real DDS: a failure ends only its request, repeated failures
back off and recover, a dead worker thread is restarted, and a stuck backend or a worker that
keeps dying ends the process with a non-zero code (so a supervisor restarts it).

The node runs through ``faulty_node.py``, which injects faults into the real backend when a
prompt carries a trigger word (see its docstring).
"""

from __future__ import annotations

import signal
import sys
import time

import numpy as np
import pytest
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters

from ros_helpers import (
    REPO,
    Camera,
    Collector,
    camera_stats,
    image_msg,
    stamp_ns_of,
    start,
    stop,
    wait_for,
)
from smolvlm_ros.srv import AskQuestion

pytestmark = pytest.mark.ros  # ROS 2: rclpy, messages, nodes over DDS

FAULTY = [sys.executable, str(REPO / "test" / "faulty_node.py")]
CAM = "/fault/image_raw"


def _image() -> object:
    return image_msg(np.full((32, 32, 3), 120, np.uint8), 42, "supplied")


def _ask(ros, node, question: str, **fields):
    client = ros.node.create_client(AskQuestion, node.topic("ask"))
    try:
        return ros.call(client, AskQuestion.Request(question=question, image=_image(), **fields))
    finally:
        ros.node.destroy_client(client)


def _model(ros, node, until=None) -> dict[str, str]:
    return camera_stats(ros, node, "model", until=until)


def test_model_exceptions_fail_only_their_request(ros, tmp_path, photos):
    node = start(ros, tmp_path, launcher=FAULTY, image_topics=[CAM], caption_rate_hz=5.0)
    try:
        captions = Collector(ros, node.topic("caption"))
        with Camera(ros, CAM, photos["coffee"], 10.0) as camera:
            failed = _ask(ros, node, "FAULT_RAISE What is it?")
            assert not failed.success
            assert failed.error == "inference failed: RuntimeError: injected backend failure"
            oom = _ask(ros, node, "FAULT_OOM What is it?")
            assert not oom.success
            assert oom.error.startswith("inference failed: OutOfMemoryError: CUDA out of memory")
            fine = _ask(ros, node, "What is it?")
            assert fine.success, fine.error
            after = len(captions.items)
            assert wait_for(lambda: len(captions.items) > after + 2, 30), node.log
            assert stamp_ns_of(captions.items[-1]) in camera.sent
        model = _model(ros, node)
        assert model["failures_inference_error"] == "1", model
        assert model["failures_out_of_memory"] == "1", model
        assert "injected" in model["last_failure"]
    finally:
        stop(node)


def _set_parameter(ros, node, name: str, value: str):
    client = ros.node.create_client(SetParameters, node.topic("set_parameters"))
    param = ParameterMsg(
        name=name, value=ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    )
    try:
        return ros.call(client, SetParameters.Request(parameters=[param])).results[0]
    finally:
        ros.node.destroy_client(client)


def test_repeated_failures_back_off_and_the_node_recovers(ros, tmp_path, photos):
    node = start(
        ros, tmp_path, launcher=FAULTY, image_topics=[CAM], caption_rate_hz=5.0,
        caption_prompt="FAULT_RAISE Describe this image.",
    )  # fmt: skip
    try:
        captions = Collector(ros, node.topic("caption"))
        with Camera(ros, CAM, photos["coffee"], 10.0):
            assert wait_for(lambda: "pausing" in _model(ros, node)["_message"], 30), node.log
            model = _model(ros, node)
            assert model["_level"] == str(bytes([2])), model  # ERROR
            # At 5 Hz, 8 s would be 40 failed captions; backing off (0.5, 1, 2, 4 s) allows ~6.
            time.sleep(8)
            failed = int(_model(ros, node)["failures_inference_error"])
            assert failed <= 10, failed
            assert not captions.items
            assert _set_parameter(ros, node, "caption_prompt", "Describe this image.").successful
            # The pause in progress ends (at most 30 s), then captions flow again.
            assert wait_for(lambda: len(captions.items) >= 3, 60), node.log
            assert wait_for(lambda: _model(ros, node)["_level"] != str(bytes([2])), 30)
    finally:
        stop(node)


def test_a_worker_thread_that_dies_is_restarted_and_reported(ros, tmp_path, photos):
    node = start(ros, tmp_path, launcher=FAULTY, image_topics=[CAM], caption_rate_hz=5.0)
    try:
        captions = Collector(ros, node.topic("caption"))
        with Camera(ros, CAM, photos["coffee"], 10.0):
            asked = time.monotonic()
            killed = _ask(ros, node, "FAULT_KILL What is it?", timeout_s=2.0)
            waited = time.monotonic() - asked
            assert not killed.success
            assert killed.error.startswith("no answer in time"), killed.error
            print(f"the caller of the request that killed the worker waited {waited:.2f} s")
            model = _model(ros, node)
            assert model["_level"] == str(bytes([2])), model  # ERROR, with the reason
            assert "worker thread died and was restarted: SystemExit" in model["_message"]
            assert model["failures_worker_restart"] == "1"
            assert _ask(ros, node, "What is it now?").success
            after = len(captions.items)
            assert wait_for(lambda: len(captions.items) > after + 2, 30), node.log
        assert node.proc.poll() is None
    finally:
        stop(node)


def test_a_worker_that_keeps_dying_ends_the_process_non_zero(ros, tmp_path, photos):
    node = start(
        ros, tmp_path, launcher=FAULTY, image_topics=[CAM], caption_rate_hz=5.0,
        caption_prompt="FAULT_KILL Describe this image.",
    )  # fmt: skip
    with Camera(ros, CAM, photos["coffee"], 10.0):
        code = node.wait_exit(timeout=60)
    assert code == 2, node.log
    assert "the worker thread keeps dying: SystemExit: injected thread-killing exit" in node.log


def test_a_stuck_backend_is_bounded_and_ends_the_process_non_zero(ros, tmp_path):
    node = start(
        ros, tmp_path, launcher=FAULTY, image_topics=[CAM], caption_rate_hz=0.0,
        watchdog_timeout_s=4.0,
    )  # fmt: skip
    client = ros.node.create_client(AskQuestion, node.topic("ask"))
    assert client.wait_for_service(timeout_sec=30)
    asked = time.monotonic()
    hung = client.call_async(
        AskQuestion.Request(question="FAULT_HANG What?", image=_image(), timeout_s=1.0)
    )
    assert wait_for(hung.done, 10), node.log
    waited = time.monotonic() - asked
    assert not hung.result().success
    assert hung.result().error == (
        "no answer in time (timeout_s, or the ask_timeout_s parameter); the model is busy or stuck"
    )
    print(f"the caller of the hung request had its answer after {waited:.2f} s (timeout_s 1.0)")
    # While the worker is stuck, other callers are answered at their deadlines too.
    other = ros.call(client, AskQuestion.Request(question="And?", image=_image(), timeout_s=0.5))
    assert not other.success and other.error.startswith("no answer in time")
    # ERROR from half of watchdog_timeout_s (2 s) on, until the exit at 4 s.
    model = _model(ros, node, until=lambda m: m["_level"] == str(bytes([2])))
    assert model["_level"] == str(bytes([2])) and "no progress for" in model["_message"], model
    code = node.wait_exit(timeout=30)
    assert code == 2, node.log
    assert "the model made no progress for" in node.log
    assert "(watchdog_timeout_s 4): the backend is stuck" in node.log


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_inference_stops_the_node_cleanly(ros, tmp_path, photos, signum):
    """random:256m takes seconds for 200 tokens here, so the signal lands mid-generation."""
    from rclpy.action import ActionClient

    from smolvlm_ros.action import Describe

    node = start(ros, tmp_path, model="random:256m", image_topics=[CAM], caption_rate_hz=0.0)
    client = ActionClient(ros.node, Describe, node.topic("describe"))
    assert client.wait_for_server(timeout_sec=30), node.log
    feedback = []
    image = image_msg(photos["rocket"][:240, :320].copy(), 5, "cam")
    sent = client.send_goal_async(
        Describe.Goal(image=image, max_new_tokens=200), feedback_callback=feedback.append
    )
    assert wait_for(lambda: len(feedback) >= 3, 60), node.log
    signalled = time.monotonic()
    node.proc.send_signal(signum)
    code = node.wait_exit(timeout=60)
    took = time.monotonic() - signalled
    print(f"{signal.Signals(signum).name} mid-inference: exited {code} after {took:.2f} s")
    assert code == 0, node.log
    assert sent.done()
