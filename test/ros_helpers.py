"""Real rclpy over DDS for tests: a client node spinning in the background, and vlm_node started
as its own process, exactly as `ros2 run` would start it."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rclpy
import yaml
from builtin_interfaces.msg import Time
from rclpy.executors import MultiThreadedExecutor
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

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
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.executor.shutdown()
        self._thread.join()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)

    def call(self, client, request, timeout: float = 60.0):
        assert client.wait_for_service(timeout_sec=30.0), f"{client.srv_name} not available"
        future = client.call_async(request)
        assert wait_for(future.done, timeout), f"{client.srv_name} did not answer in {timeout} s"
        return future.result()


class NodeProcess:
    """vlm_node in its own process with a params file; stopped by SIGINT like Ctrl-C."""

    def __init__(self, tmp_path: Path, params: dict, namespace: str | None = None) -> None:
        self.namespace = namespace or unique_namespace()
        self.params_file = tmp_path / f"params{next(_names)}.yaml"
        self.params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
        self.log_path = tmp_path / f"node{next(_names)}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "smolvlm_ros.node",
                "--ros-args",
                "--params-file",
                str(self.params_file),
                "-r",
                f"__ns:={self.namespace}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
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
