"""Shared fixtures: real photographs, a random:tiny engine, and real ROS 2 over DDS.

Every test run speaks DDS in its own domain on loopback only, so it neither sees nor disturbs
other ROS traffic on the machine. These variables must be set before rclpy is imported.
"""

from __future__ import annotations

import os

os.environ["ROS_DOMAIN_ID"] = str(100 + os.getpid() % 100)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

from smolvlm_ros.photos import PHOTO_NAMES, photo

ROS_MODULE = re.compile(r"^pytestmark = .*pytest\.mark\.ros\b", re.M)


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """Without ROS 2, test modules marked ``ros`` as a whole are not even imported (their ROS
    imports would fail), so the core runs alone (``-m "not ros"``) where only it is installed."""
    if importlib.util.find_spec("rclpy") is not None or collection_path.suffix != ".py":
        return None
    if collection_path.name.startswith("test_") and ROS_MODULE.search(collection_path.read_text()):
        return True
    return None


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """scikit-image's sample photographs at 640x480, RGB."""
    return {name: photo(name) for name in PHOTO_NAMES}


@pytest.fixture(scope="session")
def tiny_engine():
    """An engine on random:tiny in float32 on the torch backend: exact, deterministic, the
    reference the others are compared with (``auto`` picks openvino on CPUs that have it)."""
    from smolvlm_ros.engine import Engine, EngineConfig

    return Engine.from_config(
        EngineConfig("random:tiny", device="cpu", dtype="float32", backend="torch")
    )


@pytest.fixture(scope="module")
def ros():
    """A ROS 2 client node of this process, for one test module."""
    from ros_helpers import RosClient

    client = RosClient()
    yield client
    client.close()
