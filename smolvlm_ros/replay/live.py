"""Live replay: play a bag into a running vlm_node over DDS and record what it publishes.

The bag's image messages go out as recorded (their own CDR bytes, header stamps untouched, as
`ros2 bag play` does; rosbag2 is not needed) together with /clock at the bag's time (as
`ros2 bag play --clock`), so a node running with use_sim_time schedules exactly as it would
have on the robot. Captions and answers are recorded into the same outputs as an offline
replay, so the same scoring and report apply to the real node. The player (:func:`play_images`)
also serves the demo. The one module of replay that needs ROS 2 (rclpy).
"""

from __future__ import annotations

import copy
import importlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path

import rclpy
from builtin_interfaces.msg import Time
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import serialize_message
from rosbags.typesys import Stores, get_typestore
from rosgraph_msgs.msg import Clock

from smolvlm_ros.engine.types import ANSWER, CAPTION, Result, Timing
from smolvlm_ros.msg import Caption, VqaAnswer
from smolvlm_ros.pipeline.intake import NS_PER_S, stamp_fields, stamp_to_ns
from smolvlm_ros.replay.bags import BagReader, image_connections
from smolvlm_ros.replay.outputs import result_record
from smolvlm_ros.replay.run import ReplayStats

# Called for each message published: (connection, bag time ns, CDR bytes).
MessageHook = Callable[[object, int, bytes], None]


def message_class(typename: str):
    package, kind, name = typename.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


def play_images(
    node: Node,
    bag: Path,
    rate: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
    topics: Sequence[str] = (),
    clock: bool = False,
    on_message: MessageHook | None = None,
    subscriber_timeout_s: float = 60.0,
    reliable: bool = False,
) -> int:
    """Publish the bag's image messages (or ``topics``) at ``rate`` x real time; the count.
    The caller spins ``node``'s executor (in another thread).

    Publishers use the sensor-data QoS, as camera drivers do (best effort), or with
    ``reliable`` the same QoS made reliable: a raw 640x480 frame is ~0.9 MB, sent as ~15 UDP
    fragments, and with Linux's default socket buffers best effort over loopback loses whole
    frames when one fragment is dropped (the demo's raw camera got 4 captions where its
    compressed one got 20). Playback starts once every topic has a subscriber (TimeoutError
    after ``subscriber_timeout_s``), so no frame is lost to discovery.
    """
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    count = 0
    clock_pub = node.create_publisher(Clock, "/clock", 10) if clock else None
    with BagReader(Path(bag)) as reader:
        connections = image_connections(reader, tuple(topics))
        qos = copy.copy(qos_profile_sensor_data)
        if reliable:
            qos.reliability = ReliabilityPolicy.RELIABLE
        publishers = {
            c.topic: node.create_publisher(message_class(c.msgtype), c.topic, qos)
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
            delay = wall_start + (log_ns - bag_start) / NS_PER_S / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if clock_pub is not None:
                clock_pub.publish(Clock(clock=Time(**stamp_fields(log_ns))))
            cdr = reader.cdr(raw, connection)  # ROS 1 bags: converted, as ros2 bag play would
            publishers[connection.topic].publish(bytes(cdr))
            if on_message is not None:
                on_message(connection, log_ns, bytes(cdr))
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
        now_ns += int(0.1 * NS_PER_S * rate)
        clock_pub.publish(Clock(clock=Time(**stamp_fields(now_ns))))
        if on_tick is not None:
            on_tick(now_ns)
        time.sleep(0.1)
    node.destroy_publisher(clock_pub)
    return now_ns


def message_record(msg, kind: str, published_ns: int) -> dict:
    """A results.jsonl line from a Caption / VqaAnswer message: the message is turned back into
    the engine's Result, so live and offline runs write lines through one function."""
    p, t = msg.provenance, msg.timing
    result = Result(
        kind=kind,
        text=msg.answer if kind == ANSWER else msg.text,
        prompt=p.prompt,
        camera=msg.camera,
        stamp_ns=stamp_to_ns(msg.header.stamp),
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
    # Bag time of the latest frame (or, after the bag, /clock tick) sent: a result arriving now
    # is "published" then, so frame -> result latency is on the bag's clock, to a frame period.
    sim_now = [0]

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
        stats.frame_stamps.setdefault(connection.topic, []).append(stamp_to_ns(msg.header.stamp))
        stats.frames += 1
        stats.frame_at(log_ns)

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
