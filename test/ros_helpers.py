"""Real rclpy over DDS for tests: a client node spinning in the background, and vlm_node started
as its own process, exactly as `ros2 run` would start it."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import rclpy
import yaml
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from smolvlm_ros.msg import Caption

REPO = Path(__file__).resolve().parents[1]
_names = itertools.count()


def unique_namespace() -> str:
    """A fresh namespace per node, so tests never hear each other's outputs."""
    return f"/t{next(_names)}_{int(time.time() * 1000) % 100000}"


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def image_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str, encoding: str = "rgb8") -> Image:
    import cv2

    data = rgb if encoding == "rgb8" else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    return Image(
        header=Header(
            stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id
        ),
        height=rgb.shape[0],
        width=rgb.shape[1],
        encoding=encoding,
        step=rgb.shape[1] * 3,
        data=data.tobytes(),
    )


def jpeg_msg(rgb: np.ndarray, stamp_ns: int, frame_id: str) -> CompressedImage:
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return CompressedImage(
        header=Header(
            stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame_id
        ),
        format="jpeg",
        data=buf.tobytes(),
    )


class RosClient:
    """A node of the test process, spun by a background executor."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("smolvlm_test_client", context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=2, context=self.context)
        self.executor.add_node(self.node)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        """``executor.spin()``, but surviving what tests do to the node while it waits.

        A test that destroys a publisher, subscription or client (its camera or collector is
        done) can do so while the executor is building its wait set: rclpy then raises
        InvalidHandle from the executor thread, and a plain ``spin()`` ends for good, silently
        leaving every later test of the module without responses.
        """
        from rclpy._rclpy_pybind11 import InvalidHandle
        from rclpy.executors import ExternalShutdownException, ShutdownException

        while not self._closing.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.1)
            except InvalidHandle:
                continue  # an entity destroyed mid-wait: the next wait set no longer has it
            except (ExternalShutdownException, ShutdownException):
                break

    def close(self) -> None:
        self._closing.set()
        self.executor.shutdown()
        self._thread.join()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    def call(self, client, request, timeout: float = 60.0):
        assert client.wait_for_service(timeout_sec=30.0), f"{client.srv_name} not available"
        future = client.call_async(request)
        assert wait_for(future.done, timeout), f"{client.srv_name} did not answer in {timeout} s"
        return future.result()


def _environment(changes: dict[str, str | None]) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


class NodeProcess:
    """vlm_node in its own process with a params file; stopped by SIGINT like Ctrl-C."""

    def __init__(
        self,
        tmp_path: Path,
        params: dict,
        namespace: str | None = None,
        launcher: list[str] | None = None,
        env: dict[str, str | None] | None = None,
    ) -> None:
        """``launcher``: the command that runs the node (default ``python -m smolvlm_ros.node``);
        the fault tests use ``faulty_node.py``, which wraps the backend first. ``env``: variables
        to set (None: to remove) for the node's process."""
        self.namespace = namespace or unique_namespace()
        self.params_file = tmp_path / f"params{next(_names)}.yaml"
        self.params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
        self.log_path = tmp_path / f"node{next(_names)}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                *(launcher or [sys.executable, "-m", "smolvlm_ros.node"]),
                "--ros-args",
                "--params-file",
                str(self.params_file),
                "-r",
                f"__ns:={self.namespace}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=_environment(env or {}),
        )

    def topic(self, name: str) -> str:
        return f"{self.namespace}/smolvlm/{name}"

    @property
    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.wait_exit(timeout)


def start(ros, tmp_path, launcher: list[str] | None = None, **params) -> NodeProcess:
    """vlm_node on random:tiny with ``params``, once it says it is listening."""
    node = NodeProcess(
        tmp_path,
        {"model": "random:tiny", "device": "cpu", "max_new_tokens": 3, **params},
        launcher=launcher,
    )
    wait_for(lambda: node.proc.poll() is not None or "listening on" in node.log, 120)
    assert node.proc.poll() is None and "listening on" in node.log, node.log
    return node


def stop(node: NodeProcess) -> None:
    assert node.stop() == 0, node.log


class Collector:
    def __init__(self, ros, topic, msg_type=Caption):
        self.items: list = []
        self.times: list[float] = []
        self.sub = ros.node.create_subscription(msg_type, topic, self._on, 50)

    def _on(self, msg) -> None:
        self.items.append(msg)
        self.times.append(time.monotonic())


def camera_stats(
    ros,
    node: NodeProcess,
    camera: str,
    timeout: float = 10.0,
    until: Callable[[dict[str, str]], bool] | None = None,
) -> dict[str, str]:
    """The node's /diagnostics entry for ``camera``, as a dict: the first one published, or
    with ``until`` the first that satisfies it (the last one seen if none did in time)."""
    name = f"{node.namespace}/smolvlm: {camera}"
    found: dict[str, str] = {}
    matched = threading.Event()

    def on(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == name and not matched.is_set():
                found.clear()
                found.update({kv.key: kv.value for kv in status.values})
                found["_level"] = str(status.level)
                found["_message"] = status.message
                if until is None or until(found):
                    matched.set()

    sub = ros.node.create_subscription(DiagnosticArray, "/diagnostics", on, 10)
    try:
        assert wait_for(lambda: bool(found), timeout), f"no diagnostics for {name}"
        if until is not None:
            matched.wait(max(0.0, timeout))
        return dict(found)
    finally:
        ros.node.destroy_subscription(sub)


def stamp_ns_of(msg) -> int:
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


class Camera:
    """Publishes a photo at a fixed rate from a thread, stamping frames with the wall clock.

    Frames are 320x240: best-effort DDS over loopback drops many 640x480 frames (each is
    fragmented into a dozen datagrams) when a 2-core machine is busy, which would make counts
    in these tests depend on the machine's load rather than on the node.
    """

    def __init__(
        self,
        ros,
        topic: str,
        rgb: np.ndarray,
        rate_hz: float,
        stamp_offset_s: float = 0,
        size: tuple[int, int] = (320, 240),
    ):
        self.pub = ros.node.create_publisher(Image, topic, qos_profile_sensor_data)
        self.rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        self.period, self.offset = 1.0 / rate_hz, stamp_offset_s
        self.sent: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            stamp = int((time.time() + self.offset) * 1e9)
            self.pub.publish(image_msg(self.rgb, stamp, "cam"))
            self.sent.append(stamp)
            next_at += self.period
            time.sleep(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Camera:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
