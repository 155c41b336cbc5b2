"""Play a rosbag2's image topics into ROS over DDS, at the recorded pace (rosbag2 is not needed).

Messages are published as the bag's own CDR bytes, untouched: header stamps stay those of the
recording, exactly as `ros2 bag play` does.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path

from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rosbags.rosbag2 import Reader

from smolvlm_ros.pipeline.intake import IMAGE_TYPES


def message_class(typename: str):
    package, kind, name = typename.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


def play_images(
    node: Node,
    bag: Path,
    rate: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Publish the bag's image messages on their topics at ``rate`` x real time; returns the count.

    Publishers use the sensor-data QoS, as camera drivers do.
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    count = 0
    with Reader(bag) as reader:
        connections = [c for c in reader.connections if c.msgtype in IMAGE_TYPES]
        if not connections:
            raise ValueError(f"{bag} has no Image or CompressedImage topics")
        publishers = {
            c.topic: node.create_publisher(
                message_class(c.msgtype), c.topic, qos_profile_sensor_data
            )
            for c in connections
        }
        # Give subscribers a moment to match the new publishers before the first frame.
        time.sleep(0.5)
        wall_start = time.monotonic()
        bag_start = None
        for connection, timestamp, rawdata in reader.messages(connections=connections):
            if should_stop():
                break
            bag_start = timestamp if bag_start is None else bag_start
            due = wall_start + (timestamp - bag_start) / 1e9 / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            publishers[connection.topic].publish(bytes(rawdata))
            count += 1
        for publisher in publishers.values():
            node.destroy_publisher(publisher)
    return count
