"""Live replay: play a bag into a running vlm_node over DDS and record what it publishes.

The bag's image messages go out as recorded (their own CDR bytes, header stamps untouched)
together with /clock at the bag's time, so a node running with use_sim_time schedules exactly
as it would have on the robot. Captions and answers are recorded into the same outputs as an
offline replay, so the same scoring and report apply to the real node. Needs ROS 2 (rclpy).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.serialization import serialize_message
from rosbags.typesys import Stores, get_typestore

from smolvlm_ros.engine.types import ANSWER, CAPTION, Result, Timing
from smolvlm_ros.msg import Caption, VqaAnswer
from smolvlm_ros.replay.outputs import result_record
from smolvlm_ros.replay.run import NS, ReplayStats
from smolvlm_ros.tools.bag_player import keep_clock_running, play_images


def message_record(msg, kind: str, published_ns: int) -> dict:
    """A results.jsonl line from a Caption / VqaAnswer message: the message is turned back into
    the engine's Result, so live and offline runs write lines through one function."""
    p, t = msg.provenance, msg.timing
    result = Result(
        kind=kind,
        text=msg.answer if kind == ANSWER else msg.text,
        prompt=p.prompt,
        camera=msg.camera,
        stamp_ns=msg.header.stamp.sec * NS + msg.header.stamp.nanosec,
        frame_id=msg.header.frame_id,
        model=p.model,
        backend=p.backend,
        device=p.device,
        dtype=p.dtype,
        tile_rows=p.tile_rows,
        tile_cols=p.tile_cols,
        num_images=p.num_images,
        timing=Timing(**{f.name: getattr(t, f.name) for f in fields(Timing)}),
        finish_reason=t.finish_reason,
        tiling_note=p.tiling_note,
        reused_encoding=p.reused_encoding,
    )
    return result_record(result, published_ns)


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

    client.create_subscription(Caption, f"{node}/caption", record(CAPTION), 100)
    client.create_subscription(VqaAnswer, f"{node}/answer", record(ANSWER), 100)
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
