"""The node as planners and operators meet it, over real DDS: standing questions, ~/ask
priority, saturation, freshness limits, live reconfiguration and diagnostics."""

from __future__ import annotations

import time

import pytest
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import Image

from ros_helpers import (
    Camera,
    Collector,
    camera_stats,
    image_msg,
    stamp_ns_of,
    start,
    stop,
    wait_for,
)
from smolvlm_ros.msg import VqaAnswer
from smolvlm_ros.srv import AskQuestion

pytestmark = pytest.mark.ros  # ROS 2: rclpy, messages, nodes over DDS


def test_standing_questions_are_answered_with_source_stamps(ros, tmp_path, photos):
    questions = ["Is the door open?", "Is anyone there?"]
    node = start(ros, tmp_path, image_topics=["/door/image_raw"], questions=questions)
    try:
        captions = Collector(ros, node.topic("caption"))
        answers = Collector(ros, node.topic("answer"), VqaAnswer)
        with Camera(ros, "/door/image_raw", photos["coffee"], 15.0) as camera:
            assert wait_for(lambda: len(answers.items) >= 4, 60), node.log
        for answer in answers.items:
            assert answer.question in questions and answer.camera == "/door/image_raw"
            assert stamp_ns_of(answer) in camera.sent
        caption_stamps = {stamp_ns_of(c) for c in captions.items}
        assert {stamp_ns_of(a) for a in answers.items} <= caption_stamps  # same frames
        assert all(a.provenance.reused_encoding for a in answers.items)
    finally:
        stop(node)


def test_a_question_is_answered_ahead_of_streaming_captions(ros, tmp_path, photos):
    topics = ["/a/image_raw", "/b/image_raw"]
    node = start(ros, tmp_path, image_topics=topics, caption_rate_hz=100.0, max_new_tokens=40)
    ask = ros.node.create_client(AskQuestion, node.topic("ask"))
    try:
        captions = Collector(ros, node.topic("caption"))
        with (
            Camera(ros, topics[0], photos["coffee"], 15.0),
            Camera(ros, topics[1], photos["rocket"], 15.0),
        ):
            assert wait_for(lambda: len(captions.items) >= 3, 60), node.log
            before = len(captions.items)
            response = ros.call(ask, AskQuestion.Request(question="What is there?"))
            during = len(captions.items) - before
        assert response.success, response.error
        # Both cameras always have a caption due; the question waited for at most the caption
        # in progress, not behind the queue of due captions.
        assert during <= 1, during
    finally:
        stop(node)


def test_saturation_is_refused_with_a_clear_error(ros, tmp_path, photos):
    # The 256M architecture: each answer takes about a second here (random:tiny answers in
    # milliseconds, and may end at once with an end token), so the queue really fills up.
    node = start(
        ros, tmp_path, model="random:256m", image_topics=["/s/image_raw"], caption_rate_hz=0.0,
        max_pending_questions=1, max_new_tokens=4,
    )  # fmt: skip
    ask = ros.node.create_client(AskQuestion, node.topic("ask"))
    try:
        image = image_msg(photos["coffee"][:240, :320].copy(), 1, "cam")
        assert ask.wait_for_service(timeout_sec=30)
        futures = [
            ask.call_async(AskQuestion.Request(question=f"Question {i}?", image=image))
            for i in range(6)
        ]
        assert wait_for(lambda: all(f.done() for f in futures), 120), node.log
        responses = [f.result() for f in futures]
        busy = [r for r in responses if not r.success]
        assert any(r.success for r in responses)  # served, bounded ...
        assert busy and all(r.error.startswith("node is busy:") for r in busy)  # ... and refused
    finally:
        stop(node)


def test_ask_refuses_a_frame_older_than_max_age(ros, tmp_path, photos):
    node = start(ros, tmp_path, image_topics=["/old/image_raw"], caption_rate_hz=0.0)
    ask = ros.node.create_client(AskQuestion, node.topic("ask"))
    pub = ros.node.create_publisher(Image, "/old/image_raw", qos_profile_sensor_data)
    old = image_msg(photos["coffee"][:240, :320].copy(), int((time.time() - 30) * 1e9), "cam")
    try:
        probe = AskQuestion.Request(question="Anything?", max_age_s=5.0)

        def refused_as_old() -> bool:
            pub.publish(old)
            return "s old (max_age_s 5.0)" in ros.call(ask, probe).error

        assert wait_for(refused_as_old, 30, 0.2), node.log
        response = ros.call(ask, AskQuestion.Request(question="Anything?"))  # any age
        assert response.success, response.error
    finally:
        stop(node)


def _set(ros, node, name: str, value: ParameterValue):
    client = ros.node.create_client(SetParameters, f"{node.namespace}/smolvlm/set_parameters")
    request = SetParameters.Request(parameters=[ParameterMsg(name=name, value=value)])
    return ros.call(client, request).results[0]


def test_live_reconfiguration_and_refused_changes(ros, tmp_path, photos):
    node = start(ros, tmp_path, image_topics=["/live/image_raw"], caption_rate_hz=0.0)
    try:
        captions = Collector(ros, node.topic("caption"))
        with Camera(ros, "/live/image_raw", photos["coffee"], 15.0):
            time.sleep(1.5)
            assert captions.items == []  # captions off
            result = _set(
                ros, node, "caption_rate_hz",
                ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=5.0),
            )  # fmt: skip
            assert result.successful, result.reason
            assert wait_for(lambda: len(captions.items) >= 3, 30), node.log
        prompt = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="  ")
        result = _set(ros, node, "caption_prompt", prompt)
        assert not result.successful and result.reason == "caption_prompt is empty"
        model = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="random:256m")
        result = _set(ros, node, "model", model)
        assert not result.successful and "read-only" in result.reason
    finally:
        stop(node)


def test_diagnostics_reflect_a_camera_that_stopped(ros, tmp_path, photos):
    node = start(ros, tmp_path, image_topics=["/quiet/image_raw"], caption_rate_hz=2.0)
    try:
        with Camera(ros, "/quiet/image_raw", photos["coffee"], 15.0):
            assert wait_for(
                lambda: camera_stats(ros, node, "/quiet/image_raw")["_message"] == "receiving",
                30,
            )
        assert wait_for(
            lambda: camera_stats(ros, node, "/quiet/image_raw")["_message"].startswith(
                "no frames for"
            ),
            30,
            0.5,
        ), node.log
        stats = camera_stats(ros, node, "/quiet/image_raw")
        assert stats["_level"] == str(bytes([1]))  # WARN
    finally:
        stop(node)


def _send_goal(ros, node, goal, on_feedback):
    from rclpy.action import ActionClient

    from smolvlm_ros.action import Describe

    client = ActionClient(ros.node, Describe, f"{node.namespace}/smolvlm/describe")
    assert client.wait_for_server(timeout_sec=30), node.log
    sent = client.send_goal_async(goal, feedback_callback=lambda m: on_feedback(m.feedback))
    assert wait_for(sent.done, 30)
    handle = sent.result()
    assert handle.accepted
    return handle


def test_describe_streams_partial_text_and_finishes(ros, tmp_path, photos):
    from smolvlm_ros.action import Describe

    node = start(ros, tmp_path, image_topics=["/d/image_raw"], caption_rate_hz=0.0)
    try:
        image = image_msg(photos["astronaut"][:240, :320].copy(), 5, "cam")
        feedback = []
        goal = Describe.Goal(prompt="Describe everything.", image=image, max_new_tokens=12)
        handle = _send_goal(ros, node, goal, feedback.append)
        result_future = handle.get_result_async()
        assert wait_for(result_future.done, 60), node.log
        result = result_future.result().result
        assert result.success, result.error
        tokens = result.answer.timing.generated_tokens
        assert [f.generated_tokens for f in feedback] == list(range(1, tokens + 1))
        # every piece of feedback is the answer so far; the last ones may be lost: rclpy's
        # ActionClient drops feedback that arrives after the goal's result (feedback and
        # result travel on different topics), so the result, not feedback, carries the whole
        assert all(result.answer.answer.startswith(f.partial_text.strip()) for f in feedback), (
            [f.partial_text for f in feedback],
            result.answer.answer,
        )
        assert result.answer.question == "Describe everything."
    finally:
        stop(node)


def test_typed_standing_questions_and_describe_goals(ros, tmp_path, photos):
    """Standing questions with a type prefix come out typed on ~/answer; a ~/describe goal
    with an answer type returns the typed answer (scored types stream no feedback)."""
    from smolvlm_ros.action import Describe

    questions = ["yes_no: Is the door open?", "choice[left|right]: Which side is clear?"]
    node = start(
        ros, tmp_path, image_topics=["/t/image_raw"], questions=questions, max_new_tokens=4
    )
    try:
        answers = Collector(ros, node.topic("answer"), VqaAnswer)
        with Camera(ros, "/t/image_raw", photos["coffee"], 15.0) as camera:
            assert wait_for(lambda: len(answers.items) >= 2, 60), node.log
        by_question = {a.question: a for a in answers.items}
        door, side = by_question["Is the door open?"], by_question["Which side is clear?"]
        assert door.answer_type == "yes_no" and door.answer == ("Yes" if door.yes else "No")
        assert side.answer_type == "choice" and side.choice in ("left", "right")
        assert 0.5 <= door.confidence <= 1 and 0.5 <= side.confidence <= 1
        assert stamp_ns_of(door) in camera.sent  # stamped with its source frame

        image = image_msg(photos["astronaut"][:240, :320].copy(), 9, "cam")
        feedback = []
        goal = Describe.Goal(
            prompt="Is anyone there?", image=image, answer_type="yes_no", max_new_tokens=4
        )
        result = _goal_result(ros, node, goal, feedback.append)
        assert result.success, result.error
        assert result.answer.answer_type == "yes_no" and 0.5 <= result.answer.confidence <= 1
        assert feedback == []  # scored in one pass: nothing to stream
        goal = Describe.Goal(
            prompt="How many?", image=image, answer_type="count", max_new_tokens=8
        )  # 6 digits + the end fit
        result = _goal_result(ros, node, goal, feedback.append)
        assert result.success, result.error
        assert result.answer.answer_type == "count"
        assert result.answer.answer == str(result.answer.count)
        bad = Describe.Goal(prompt="Which?", image=image, answer_type="choice", options=["A"])
        result = _goal_result(ros, node, bad, feedback.append)
        assert not result.success and "at least two options" in result.error
    finally:
        stop(node)


def _goal_result(ros, node, goal, on_feedback):
    handle = _send_goal(ros, node, goal, on_feedback)
    result_future = handle.get_result_async()
    assert wait_for(result_future.done, 60), node.log
    return result_future.result().result


def test_describe_can_be_cancelled(ros, tmp_path, photos):
    from action_msgs.msg import GoalStatus

    from smolvlm_ros.action import Describe

    # 256M: generating 200 tokens takes many seconds here, so the cancel lands mid-way.
    node = start(
        ros, tmp_path, model="random:256m", image_topics=["/c/image_raw"], caption_rate_hz=0.0
    )
    try:
        image = image_msg(photos["rocket"][:240, :320].copy(), 5, "cam")
        feedback = []
        goal = Describe.Goal(image=image, max_new_tokens=200)
        handle = _send_goal(ros, node, goal, feedback.append)
        assert wait_for(lambda: len(feedback) >= 3, 60), node.log
        cancel = handle.cancel_goal_async()
        assert wait_for(cancel.done, 30)
        result_future = handle.get_result_async()
        assert wait_for(result_future.done, 60), node.log
        wrapped = result_future.result()
        assert wrapped.status == GoalStatus.STATUS_CANCELED
        assert wrapped.result.error == "cancelled"
        generated = wrapped.result.answer.timing.generated_tokens
        assert 3 <= generated < 200
        assert wrapped.result.answer.timing.finish_reason == "cancelled"
    finally:
        stop(node)
