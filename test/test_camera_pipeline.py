"""The camera pipeline over real DDS: rate, freshness, fairness, flat memory, stale frames,
ROS time (use_sim_time), mosaics and unusual encodings, against vlm_node on random:tiny."""

from __future__ import annotations

import itertools
import time

import cv2
import numpy as np
import pytest
from rclpy.qos import qos_profile_sensor_data
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image

from ros_helpers import (
    Camera,
    Collector,
    camera_stats,
    image_msg,
    stamp_ns_of,
    start,
    stop,
    wait_for,
)

pytestmark = pytest.mark.ros  # ROS 2: rclpy, messages, nodes over DDS


def test_30hz_camera_at_1hz_gives_a_caption_a_second_of_the_newest_frame(ros, tmp_path, photos):
    node = start(ros, tmp_path, image_topics=["/cam30/image_raw"], caption_rate_hz=1.0)
    try:
        captions = Collector(ros, node.topic("caption"))
        with Camera(ros, "/cam30/image_raw", photos["coffee"], 30.0) as camera:
            assert wait_for(lambda: len(captions.items) >= 1, 30), node.log
            time.sleep(6.0)
            window = [c for c in captions.items]
            while_publishing = camera_stats(ros, node, "/cam30/image_raw")
        stamps = [stamp_ns_of(c) for c in window]
        gaps = np.diff(stamps) / 1e9
        assert len(window) >= 5, (len(camera.sent), camera_stats(ros, node, "/cam30/image_raw"))
        # one caption per second: paced on a grid (a late caption does not shift the next), so
        # the typical gap is 1 s. When the loaded machine stalls the camera's sender, the newest
        # frame at a due time is still the one sent just after the previous caption's: two
        # adjacent gaps fall outside the band (CI saw 1.15 s then 0.02 s, and 0.03 s then
        # 1.97 s), never more, and the grid holds (a backlog would make every gap one frame)
        assert 0.9 < float(np.median(gaps)) < 1.1, gaps
        outside = np.flatnonzero((gaps <= 0.8) | (gaps >= 1.3))
        assert len(outside) <= 2 and np.all(np.diff(outside) == 1), gaps
        assert np.all(gaps > 0), gaps  # never the same frame twice
        for caption in window:  # every caption is of a frame that was sent ...
            assert stamp_ns_of(caption) in camera.sent
        stats = camera_stats(ros, node, "/cam30/image_raw")
        assert int(stats["received"]) >= 150  # ... and ~29 of every 30 were skipped, not queued
        assert 10 < float(while_publishing["input_rate_hz"]) < 40  # the camera's ~30 Hz
        assert int(stats["dropped_superseded"]) >= 0.9 * int(stats["received"]) - 5
        # the newest frame at the time: picked up within a frame period or so of arriving (a
        # backlog would make this wait grow caption after caption). The one exception is the
        # stalled sender above: its frame sent just after a caption is still the newest at the
        # next due time, ~1 s later (a fresh clone saw one wait of 991 ms among 26 ms ones), and
        # that caption's stamp gap is then the one out of the band.
        waits = np.array([c.timing.queue_wait_ms for c in window])
        slow = np.flatnonzero(waits >= 250)
        assert len(slow) <= 1 and all(index - 1 in outside for index in slow), (waits, gaps)
    finally:
        stop(node)


def test_two_cameras_alternate_fairly(ros, tmp_path, photos):
    topics = ["/left/image_raw", "/right/image_raw"]
    # Captions of 16 tokens take longer than a 30 Hz frame period, so both cameras always have
    # a fresh frame waiting: the model is the bottleneck, and fairness decides every turn.
    node = start(ros, tmp_path, image_topics=topics, caption_rate_hz=100.0, max_new_tokens=16)
    try:
        captions = Collector(ros, node.topic("caption"))
        with (
            Camera(ros, topics[0], photos["coffee"], 30.0),
            Camera(ros, topics[1], photos["rocket"], 30.0),
        ):
            assert wait_for(lambda: len(captions.items) >= 21, 60), node.log
        order = [c.camera for c in captions.items[1:21]]
        assert abs(order.count(topics[0]) - order.count(topics[1])) <= 1
        assert all(a != b for a, b in itertools.pairwise(order)), order  # strictly taking turns
    finally:
        stop(node)


def test_three_cameras_batched_each_get_captions_of_their_own_frames(ros, tmp_path, photos):
    photo_of = {
        "/one/image_raw": "coffee",
        "/two/image_raw": "rocket",
        "/three/image_raw": "chelsea",
    }
    topics = list(photo_of)
    # As above the model is the bottleneck, so all three cameras are due at every turn and go
    # through the model together (max_batch 3). Stamps 1000 s apart tell the cameras apart.
    node = start(
        ros, tmp_path, image_topics=topics, caption_rate_hz=100.0, max_new_tokens=16, max_batch=3
    )
    try:
        captions = Collector(ros, node.topic("caption"))
        cameras = {
            topic: Camera(ros, topic, photos[name], 30.0, stamp_offset_s=-1000.0 * i)
            for i, (topic, name) in enumerate(photo_of.items())
        }
        with cameras[topics[0]], cameras[topics[1]], cameras[topics[2]]:

            def every_camera_has_three() -> bool:
                counts = [sum(c.camera == topic for c in captions.items) for topic in topics]
                return min(counts) >= 3

            assert wait_for(every_camera_has_three, 60), node.log
        passes: dict[tuple[float, float], set[str]] = {}  # a batch shares its stage times
        for caption in captions.items:
            assert caption.camera in cameras, caption.camera
            assert stamp_ns_of(caption) in cameras[caption.camera].sent, "not its own frame"
            key = (caption.timing.prefill_ms, caption.timing.decode_ms)
            passes.setdefault(key, set()).add(caption.camera)
        assert any(len(cams) == 3 for cams in passes.values()), passes  # batched, not in turn
    finally:
        stop(node)


def test_memory_stays_flat_over_thousands_of_frames(ros, tmp_path, photos):
    node = start(ros, tmp_path, image_topics=["/flood/image_raw"], caption_rate_hz=100.0)
    pub = ros.node.create_publisher(Image, "/flood/image_raw", qos_profile_sensor_data)
    frame = image_msg(cv2.resize(photos["chelsea"], (320, 240)), 1, "cam")

    def rss_mb() -> float:
        with open(f"/proc/{node.proc.pid}/status") as status:
            line = next(line for line in status if line.startswith("VmRSS"))
        return int(line.split()[1]) / 1024

    try:
        assert wait_for(lambda: pub.get_subscription_count() > 0, 10)
        readings = []
        for _ in range(6):
            for _ in range(500):
                pub.publish(frame)
                time.sleep(0.001)
            readings.append(rss_mb())
        stats = camera_stats(ros, node, "/flood/image_raw")
        assert int(stats["received"]) >= 2000, stats  # thousands arrived ...
        # ... and after the first batch warmed everything up, memory did not grow with them
        assert max(readings[1:]) - readings[1] < 25, readings
    finally:
        stop(node)


def test_stale_frames_are_dropped_and_counted(ros, tmp_path, photos):
    node = start(
        ros, tmp_path, image_topics=["/lag/image_raw"], caption_rate_hz=10.0, max_frame_age_s=1.0
    )
    try:
        captions = Collector(ros, node.topic("caption"))
        with Camera(ros, "/lag/image_raw", photos["coffee"], 15.0, stamp_offset_s=-10.0):
            time.sleep(3.0)
        assert captions.items == []
        stats = camera_stats(ros, node, "/lag/image_raw")
        assert int(stats["dropped_stale"]) >= 10 and int(stats["captioned"]) == 0, stats
        with Camera(ros, "/lag/image_raw", photos["coffee"], 15.0):
            assert wait_for(lambda: len(captions.items) >= 2, 30), node.log
    finally:
        stop(node)


def test_decisions_follow_ros_time_under_use_sim_time(ros, tmp_path, photos):
    """With use_sim_time, a bag's old stamps are fresh by /clock, and stale ones still stale."""
    node = start(
        ros, tmp_path, image_topics=["/sim/image_raw"], caption_rate_hz=10.0,
        max_frame_age_s=1.0, use_sim_time=True,
    )  # fmt: skip
    clock_pub = ros.node.create_publisher(Clock, "/clock", 10)
    pub = ros.node.create_publisher(Image, "/sim/image_raw", qos_profile_sensor_data)
    try:
        captions = Collector(ros, node.topic("caption"))
        sim_now = 1000.0  # seconds: 1970, decades older than the wall clock

        def tick(frame_age_s: float) -> None:
            nonlocal sim_now
            sim_now += 0.1
            clock_pub.publish(Clock(clock=ros_time(sim_now)))
            pub.publish(image_msg(photos["coffee"], int((sim_now - frame_age_s) * 1e9), "cam"))
            time.sleep(0.05)

        def ros_time(seconds: float):
            from builtin_interfaces.msg import Time

            return Time(sec=int(seconds), nanosec=int((seconds % 1) * 1e9))

        for _ in range(40):
            tick(frame_age_s=5.0)  # 5 s old by /clock: stale
        assert captions.items == []
        assert wait_for(lambda: (tick(frame_age_s=0.2), len(captions.items) >= 2)[1], 30), node.log
        for caption in captions.items:
            assert 990 < stamp_ns_of(caption) / 1e9 < sim_now + 1  # sim-time frames, captioned
        stats = camera_stats(ros, node, "/sim/image_raw")
        # Every frame of the stale phase was dropped, not captioned (asserted above). Which
        # reason each gets depends on when the worker thread runs: one it looks at is stale,
        # one replaced before it looks is superseded (most of them on a loaded machine).
        assert int(stats["dropped_stale"]) >= 1
    finally:
        stop(node)


def test_mosaic_of_two_cameras(ros, tmp_path, photos):
    topics = ["/front/image_raw", "/rear/image_raw"]
    node = start(ros, tmp_path, image_topics=topics, mosaic=True, caption_rate_hz=5.0)
    try:
        captions = Collector(ros, node.topic("caption"))
        with (
            Camera(ros, topics[0], photos["coffee"], 15.0),
            Camera(ros, topics[1], photos["rocket"], 15.0),
        ):
            assert wait_for(lambda: any("," in c.camera for c in captions.items), 60), node.log
        mosaic = next(c for c in captions.items if "," in c.camera)
        assert mosaic.camera == "/front/image_raw,/rear/image_raw"
    finally:
        stop(node)


ODD_ENCODINGS = {
    "bayer_rggb8": lambda rgb: rgb[..., 1].copy(),  # a raw-sensor-shaped single channel
    "yuv422": lambda rgb: np.ascontiguousarray(rgb[:, :, :2]),
    "16UC1": lambda rgb: rgb[..., 0].astype(np.uint16) * 20 + 300,  # depth, mm
    "32FC1": lambda rgb: rgb[..., 0].astype(np.float32) / 50 + 0.3,  # depth, m
}


def test_the_node_captions_unusual_encodings(ros, tmp_path, photos):
    topics = {encoding: f"/cam_{encoding.lower()}/image_raw" for encoding in ODD_ENCODINGS}
    node = start(ros, tmp_path, image_topics=list(topics.values()), caption_rate_hz=10.0)
    messages = {}
    for encoding, make in ODD_ENCODINGS.items():
        pixels = make(cv2.resize(photos["chelsea"], (320, 240)))
        channels = pixels.shape[2] if pixels.ndim == 3 else 1
        messages[topics[encoding]] = Image(
            height=pixels.shape[0],
            width=pixels.shape[1],
            encoding=encoding,
            step=pixels.shape[1] * channels * pixels.itemsize,
            data=pixels.tobytes(),
        )
    pubs = {t: ros.node.create_publisher(Image, t, qos_profile_sensor_data) for t in messages}
    try:
        captions = Collector(ros, node.topic("caption"))

        def all_captioned() -> bool:
            for topic, msg in messages.items():
                pubs[topic].publish(msg)
            return {c.camera for c in captions.items} == set(messages)

        assert wait_for(all_captioned, 60, 0.2), node.log
        for topic in messages:
            assert camera_stats(ros, node, topic)["dropped_decode_error"] == "0"
    finally:
        stop(node)
