"""Play a rosbag2's image topics into ROS over DDS, at the recorded pace (rosbag2 is not needed).

Messages are published as the bag's own CDR bytes, untouched: header stamps stay those of the
recording, exactly as `ros2 bag play` does; with ``clock=True`` /clock follows the bag's time,
as `ros2 bag play --clock` does, for nodes running with use_sim_time. Used by the demo and by
the live replay. The caller spins ``node``'s executor (in another thread).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from builtin_interfaces.msg import Time
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rosbags.highlevel import AnyReader
from rosgraph_msgs.msg import Clock

from smolvlm_ros.replay.run import NS, image_topics

# Called for each message published: (connection, bag time ns, CDR bytes).
MessageHook = Callable[[object, int, bytes], None]


def message_class(typename: str):
    package, kind, name = typename.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


def _time(ns: int) -> Time:
    return Time(sec=ns // NS, nanosec=ns % NS)


def play_images(
    node: Node,
    bag: Path,
    rate: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
    topics: Sequence[str] = (),
    clock: bool = False,
    on_message: MessageHook | None = None,
    subscriber_timeout_s: float = 60.0,
) -> int:
    """Publish the bag's image messages (or ``topics``) at ``rate`` x real time; the count.

    Publishers use the sensor-data QoS, as camera drivers do. Playback starts once every topic
    has a subscriber (TimeoutError after ``subscriber_timeout_s``), so no frame is lost to
    discovery.
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    count = 0
    clock_pub = node.create_publisher(Clock, "/clock", 10) if clock else None
    with AnyReader([Path(bag)]) as reader:
        connections = image_topics(reader, tuple(topics))
        publishers = {
            c.topic: node.create_publisher(
                message_class(c.msgtype), c.topic, qos_profile_sensor_data
            )
            for c in connections
        }
        deadline = time.monotonic() + subscriber_timeout_s
        while missing := [t for t, p in publishers.items() if p.get_subscription_count() == 0]:
            if time.monotonic() > deadline or should_stop():
                raise TimeoutError(f"nothing subscribed to {', '.join(missing)}")
            time.sleep(0.05)
        wall_start, bag_start = time.monotonic(), None
        for connection, log_ns, raw in reader.messages(connections=connections):
            if should_stop():
                break
            bag_start = log_ns if bag_start is None else bag_start
            delay = wall_start + (log_ns - bag_start) / NS / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if clock_pub is not None:
                clock_pub.publish(Clock(clock=_time(log_ns)))
            publishers[connection.topic].publish(bytes(raw))
            if on_message is not None:
                on_message(connection, log_ns, bytes(raw))
            count += 1
        for publisher in publishers.values():
            node.destroy_publisher(publisher)
    return count


def keep_clock_running(
    node: Node,
    from_ns: int,
    seconds: float,
    rate: float = 1.0,
    on_tick: Callable[[int], None] | None = None,
) -> int:
    """Go on publishing /clock after the bag ends, so a sim-time node finishes its due work."""
    clock_pub = node.create_publisher(Clock, "/clock", 10)
    now_ns, end = from_ns, time.monotonic() + seconds
    while time.monotonic() < end:
        now_ns += int(0.1 * NS * rate)
        clock_pub.publish(Clock(clock=_time(now_ns)))
        if on_tick is not None:
            on_tick(now_ns)
        time.sleep(0.1)
    node.destroy_publisher(clock_pub)
    return now_ns
