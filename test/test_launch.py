"""The launch file through the real launch system: `ros2 launch smolvlm_ros vlm.launch.py ...` as a
subprocess (the vendored launch / ros2 CLI wheels), and the lifecycle driven through the node's
~/change_state service (what `ros2 lifecycle set` calls) and `ros2 param set`, all over DDS in
this test run's domain."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from sensor_msgs.msg import Image

from ros_helpers import REPO, Collector, image_msg, unique_namespace, wait_for
from smolvlm_ros.srv import AskQuestion

VENV_BIN = Path(sys.executable).parent
ROS2 = VENV_BIN / "ros2"

pytestmark = [
    pytest.mark.ros,
    pytest.mark.skipif(not ROS2.exists(), reason="no ros2 CLI in the venv (make setup)"),
]


def _env() -> dict[str, str]:
    """The venv's python first on PATH (the installed vlm_node script runs `python3`), its
    prefix for ament_index, and this source tree ahead of the installed package."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["AMENT_PREFIX_PATH"] = str(VENV_BIN.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Launch:
    """`ros2 launch smolvlm_ros vlm.launch.py <args>`, in its own process group so that
    :meth:`interrupt` is a terminal's Ctrl-C (SIGINT to launch and the node alike)."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.log_path = tmp_path / f"launch{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [str(ROS2), "launch", "smolvlm_ros", "vlm.launch.py", "device:=cpu", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,
        )

    @property
    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float = 120.0) -> None:
        wait_for(lambda: text in self.log or self.proc.poll() is not None, timeout)
        assert text in self.log, self.log

    def interrupt(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.interrupt()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def ros2(*args: str, check: bool = True, timeout: float = 60.0) -> tuple[str, float]:
    """A ros2 CLI command without the daemon (it discovers the graph for 2 s first, and tries
    again if that was not enough, or if the CLI process itself died by a signal: a fresh clone
    once saw `ros2 param set` end with SIGSEGV and no output, which says nothing about the node;
    the commands used here are idempotent); its output and how long it took."""
    started = time.monotonic()
    for _ in range(3):
        done = subprocess.run(
            [str(ROS2), *args[:2], "--no-daemon", "--spin-time", "2", *args[2:]],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=timeout,
        )
        output = done.stdout + done.stderr
        if "not found" not in output.lower() and done.returncode >= 0:
            break
    assert done.returncode == 0 or not check, output
    return output, time.monotonic() - started


def transition(ros, node: str, label: str) -> float:
    """What `ros2 lifecycle set <node> <label>` does, through the node's ~/change_state service:
    the vendored ros2lifecycle imports ros2service, which is not vendored (nor on PyPI)."""
    client = ros.node.create_client(ChangeState, f"{node}/change_state")
    try:
        started = time.monotonic()
        request = ChangeState.Request(transition=Transition(label=label))
        assert ros.call(client, request, timeout=180).success, label
        seconds = time.monotonic() - started
    finally:
        ros.node.destroy_client(client)
    print(f"lifecycle {label} {node}: {seconds:.2f} s")
    return seconds


def state(ros, node: str) -> str:
    """The node's lifecycle state, from its ~/get_state service (`ros2 lifecycle get` needs
    ros2service, which is not vendored)."""
    client = ros.node.create_client(GetState, f"{node}/get_state")
    try:
        return ros.call(client, GetState.Request()).current_state.label
    finally:
        ros.node.destroy_client(client)


def test_arguments_namespace_remapping_profile_and_sim_time(ros, tmp_path, photos):
    ns = unique_namespace()
    launch = Launch(
        tmp_path,
        "model:=random:tiny",
        f"namespace:={ns}",
        "image_topic:=/front/image_raw",
        "profile:=cpu",
        "use_sim_time:=true",
    )
    try:
        launch.wait_log("listening on /front/image_raw")
        node = f"{ns}/smolvlm"
        assert f"captions on {node}/caption" in launch.log
        for name, value in (
            ("model", "random:tiny"),
            ("use_sim_time", "True"),
            ("device", "cpu"),
            ("autostart", "True"),
        ):
            output, _ = ros2("param", "get", node, name)
            assert value in output, (name, output)
        assert state(ros, node) == "active"
        captions = Collector(ros, f"{node}/caption")
        camera = ros.node.create_publisher(Image, "/front/image_raw", 10)
        # Sim time with no /clock is 0: frames stamped 0 are not "old".
        msg = image_msg(photos["astronaut"], 0, "front")
        assert wait_for(lambda: camera.publish(msg) or bool(captions.items), 60), launch.log
        assert captions.items[0].provenance.model == "random:tiny"
        assert captions.items[0].camera == "/front/image_raw"
        launch.interrupt()
        assert launch.wait() == 0, launch.log
    finally:
        launch.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model:=random:huge"], "unknown model shape 'huge'"),
        (["model:=random:tiny", "image_topics:=['/9cam/image']"], "is not a valid topic"),
    ],
)
def test_a_failed_start_ends_the_launch_non_zero(tmp_path, args, message):
    launch = Launch(tmp_path, *args)
    try:
        code = launch.wait(120)
        print(f"ros2 launch {' '.join(args)}: exit code {code}")
        assert code != 0, launch.log
        assert message in launch.log
        assert "failed to start (exit code 1)" in launch.log
    finally:
        launch.close()


def test_ctrl_c_while_the_model_loads_stops_within_seconds(tmp_path):
    """The load (random:256m, hundreds of MB of weights) is cut short: launch must not need to
    escalate to SIGTERM (after 5 s) or SIGKILL."""
    launch = Launch(tmp_path, "model:=random:256m")
    try:
        launch.wait_log("loading model")
        started = time.monotonic()
        launch.interrupt()
        code = launch.wait(60)
        seconds = time.monotonic() - started
        print(f"Ctrl-C while loading: ros2 launch exited {code} after {seconds:.1f} s")
        log = launch.log
        assert "interrupted while starting" in log, log  # it really was mid-load
        assert "SIGTERM" not in log and "SIGKILL" not in log, log
        assert seconds < 5.0, log
        assert code == 0, log
    finally:
        launch.close()


def test_lifecycle_transitions_and_a_model_swap(ros, tmp_path, photos):
    ns = unique_namespace()
    node = f"{ns}/smolvlm"
    launch = Launch(
        tmp_path, "model:=random:tiny", f"namespace:={ns}", "autostart:=false", "profile:=cpu"
    )
    camera = ros.node.create_publisher(Image, "/camera/image_raw", 10)
    captions = Collector(ros, f"{node}/caption")
    ask = ros.node.create_client(AskQuestion, f"{node}/ask")
    stamp = iter(range(10**9, 10**12, 10**8))

    def captions_flow(model: str) -> None:
        count = len(captions.items)

        def more() -> bool:
            camera.publish(image_msg(photos["astronaut"], next(stamp), "cam"))
            return len(captions.items) > count

        assert wait_for(more, 120, interval=0.2), launch.log
        assert captions.items[-1].provenance.model == model

    try:
        launch.wait_log("waiting for lifecycle transitions")
        assert state(ros, node) == "unconfigured"
        transition(ros, node, "configure")
        transition(ros, node, "activate")
        captions_flow("random:tiny")

        transition(ros, node, "deactivate")
        time.sleep(0.5)  # a caption already being generated may still arrive
        count = len(captions.items)
        for _ in range(10):
            camera.publish(image_msg(photos["astronaut"], next(stamp), "cam"))
            time.sleep(0.1)
        time.sleep(1.0)
        assert len(captions.items) == count
        answer = ros.call(ask, AskQuestion.Request(question="What is this?"))
        assert not answer.success and "the node is inactive" in answer.error

        transition(ros, node, "cleanup")
        output, _ = ros2("param", "set", node, "model", "random:256m")
        assert "Set parameter successful" in output, output
        transition(ros, node, "configure")
        output, _ = ros2("param", "set", node, "model", "random:tiny", check=False)
        assert "read-only" in output.lower() or "failed" in output.lower(), output
        transition(ros, node, "activate")
        captions_flow("random:256m")
        launch.interrupt()
        assert launch.wait() == 0, launch.log
    finally:
        ros.node.destroy_publisher(camera)
        ros.node.destroy_client(ask)
        launch.close()
