"""Live replay: play a bag into a running vlm_node over DDS and record what it publishes.

The bag's image messages go out as recorded (their own CDR bytes, header stamps untouched)
together with /clock at the bag's time, so a node running with use_sim_time schedules exactly
as it would have on the robot. Captions and answers are recorded into the same outputs as an
offline replay, so the same scoring and report apply to the real node. Needs ROS 2 (rclpy).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.serialization import serialize_message
from rosbags.typesys import Stores, get_typestore

from smolvlm_ros.msg import Caption, VqaAnswer
from smolvlm_ros.replay.run import NS, ReplayStats
from smolvlm_ros.tools.bag_player import keep_clock_running, play_images

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
    context = rclpy.Context()
    rclpy.init(context=context)
    client = rclpy.create_node("smolvlm_replay", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(client)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    sim_now = [0]  # bag time of the latest frame sent: when a result arrives, "published"

    def record(kind: str):
        def callback(msg) -> None:
            on_record(message_record(msg, kind, sim_now[0]), bytes(serialize_message(msg)))

        return callback

    client.create_subscription(Caption, f"{node}/caption", record(CAPTION_KIND), 100)
    client.create_subscription(VqaAnswer, f"{node}/answer", record(ANSWER_KIND), 100)
    stats = ReplayStats()
    typestore = get_typestore(Stores.LATEST)

    def sent(connection, log_ns: int, raw: bytes) -> None:
        sim_now[0] = log_ns
        on_image(connection, log_ns, raw)
        msg = typestore.deserialize_cdr(raw, connection.msgtype)
        stamp = msg.header.stamp.sec * NS + msg.header.stamp.nanosec
        stats.frame_stamps.setdefault(connection.topic, []).append(stamp)
        stats.frames += 1

    try:
        play_images(
            client, bag, rate, topics=topics, clock=True, on_message=sent,
            subscriber_timeout_s=ready_timeout_s,
        )  # fmt: skip
        keep_clock_running(
            client, sim_now[0], settle_s, rate, on_tick=lambda ns: sim_now.__setitem__(0, ns)
        )
    finally:
        executor.shutdown()
        spinner.join()
        client.destroy_node()
        rclpy.shutdown(context=context)
    return stats
