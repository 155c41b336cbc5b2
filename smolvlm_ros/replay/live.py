"""Live replay: play a bag into a running vlm_node over DDS and record what it publishes.

The bag's image messages go out as recorded (their own CDR bytes, header stamps untouched)
together with /clock at the bag's time, so a node running with use_sim_time schedules exactly
as it would have on the robot. Captions and answers are recorded into the same outputs as an
offline replay, so the same scoring and report apply to the real node. Needs ROS 2 (rclpy).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import rclpy
from builtin_interfaces.msg import Time
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from rclpy.serialization import serialize_message
from rosbags.highlevel import AnyReader
from rosgraph_msgs.msg import Clock

from smolvlm_ros.msg import Caption, VqaAnswer
from smolvlm_ros.replay.run import NS, ReplayStats, image_topics
from smolvlm_ros.tools.bag_player import message_class

CAPTION_KIND, ANSWER_KIND = "caption", "answer"
TIMING_FIELDS = (
    "queue_wait_ms",
    "preprocess_ms",
    "encode_ms",
    "prefill_ms",
    "decode_ms",
    "total_ms",
    "prompt_tokens",
    "image_tokens",
    "generated_tokens",
)


def message_record(msg, kind: str, published_ns: int) -> dict:
    """A results.jsonl line from a Caption / VqaAnswer message (same fields as offline)."""
    t = msg.timing
    p = msg.provenance
    return {
        "kind": kind,
        "camera": msg.camera,
        "stamp": msg.header.stamp.sec * NS + msg.header.stamp.nanosec,
        "frame_id": msg.header.frame_id,
        "published": published_ns,
        "question": msg.question if kind == ANSWER_KIND else None,
        "prompt": p.prompt,
        "text": msg.answer if kind == ANSWER_KIND else msg.text,
        "finish_reason": t.finish_reason,
        "model": p.model,
        "backend": p.backend,
        "device": p.device,
        "dtype": p.dtype,
        "tiles": [p.tile_rows, p.tile_cols],
        "timing": {name: getattr(t, name) for name in TIMING_FIELDS},
    }


def replay_live(
    bag: Path,
    node: str,
    topics: tuple[str, ...],
    on_record: Callable[[dict, bytes], None],
    on_image: Callable[[object, int, bytes], None],
    rate: float = 1.0,
    settle_s: float = 10.0,
    ready_timeout_s: float = 60.0,
) -> ReplayStats:
    """Play ``bag`` into the node named ``node`` (e.g. /smolvlm); ``on_record(record, cdr)``
    gets each caption / answer it publishes. Waits ``settle_s`` after the last frame for the
    node to finish what it is working on."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    context = rclpy.Context()
    rclpy.init(context=context)
    client = rclpy.create_node("smolvlm_replay", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(client)
    sim_now = [0]

    def record(kind: str):
        def callback(msg) -> None:
            on_record(message_record(msg, kind, sim_now[0]), bytes(serialize_message(msg)))

        return callback

    client.create_subscription(Caption, f"{node}/caption", record(CAPTION_KIND), 100)
    client.create_subscription(VqaAnswer, f"{node}/answer", record(ANSWER_KIND), 100)
    clock_pub = client.create_publisher(Clock, "/clock", 10)
    stats = ReplayStats()
    try:
        with AnyReader([Path(bag)]) as reader:
            connections = image_topics(reader, topics)
            publishers = {
                c.topic: client.create_publisher(
                    message_class(c.msgtype), c.topic, qos_profile_sensor_data
                )
                for c in connections
            }
            deadline = time.monotonic() + ready_timeout_s
            while any(p.get_subscription_count() == 0 for p in publishers.values()):
                if time.monotonic() > deadline:
                    missing = [t for t, p in publishers.items() if p.get_subscription_count() == 0]
                    raise TimeoutError(f"no node subscribed to {', '.join(missing)}")
                executor.spin_once(timeout_sec=0.1)
            wall_start, bag_start = time.monotonic(), None
            for connection, log_ns, raw in reader.messages(connections=connections):
                bag_start = log_ns if bag_start is None else bag_start
                due = wall_start + (log_ns - bag_start) / NS / rate
                while (delay := due - time.monotonic()) > 0:
                    executor.spin_once(timeout_sec=min(delay, 0.05))
                sim_now[0] = log_ns
                clock_pub.publish(Clock(clock=Time(sec=log_ns // NS, nanosec=log_ns % NS)))
                publishers[connection.topic].publish(bytes(raw))
                on_image(connection, log_ns, bytes(raw))
                msg = reader.deserialize(raw, connection.msgtype)
                stamp = msg.header.stamp.sec * NS + msg.header.stamp.nanosec
                stats.frame_stamps.setdefault(connection.topic, []).append(stamp)
                stats.frames += 1
            # Keep /clock ticking past the bag's end so the node can finish due work.
            end = time.monotonic() + settle_s
            while time.monotonic() < end:
                sim_now[0] += int(0.1 * NS * rate)
                clock_pub.publish(Clock(clock=Time(sec=sim_now[0] // NS, nanosec=sim_now[0] % NS)))
                executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()
        client.destroy_node()
        rclpy.shutdown(context=context)
    return stats
