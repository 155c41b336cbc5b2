"""Shared fixtures: real photographs, a random:tiny engine, and real ROS 2 over DDS.

Every test run speaks DDS in its own domain on loopback only, so it neither sees nor disturbs
other ROS traffic on the machine. These variables must be set before rclpy is imported.
"""

from __future__ import annotations

import os

os.environ["ROS_DOMAIN_ID"] = str(100 + os.getpid() % 100)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from smolvlm_ros.photos import PHOTO_NAMES, photo


@pytest.fixture(scope="session")
def photos() -> dict[str, np.ndarray]:
    """scikit-image's sample photographs at 640x480, RGB."""
    return {name: photo(name) for name in PHOTO_NAMES}


@pytest.fixture(scope="session")
def tiny_engine():
    """An engine on random:tiny in float32 (exact, deterministic on CPU)."""
    from smolvlm_ros.engine import Engine, EngineConfig

    return Engine.from_config(EngineConfig("random:tiny", device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def ros():
    """A ROS 2 client node of this process, for one test module."""
    from ros_helpers import RosClient

    client = RosClient()
    yield client
    client.close()
