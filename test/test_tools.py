"""The sample bags of real photographs, and `make demo` end to end on random:tiny."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_typestore

from smolvlm_ros.photos import photo
from smolvlm_ros.pipeline.intake import message_to_rgb
from smolvlm_ros.tools.sample_bag import DEMO_CAMERAS, write_sample_bag

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_sample_bag_holds_the_photographs(tmp_path, storage):
    bag = write_sample_bag(
        tmp_path / "bag", DEMO_CAMERAS, rate_hz=5.0, seconds_per_photo=0.4, storage=storage
    )
    typestore = get_typestore(Stores.LATEST)
    with Reader(bag) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        assert topics == {
            "/front_camera/image_raw": "sensor_msgs/msg/Image",
            "/rear_camera/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
        }
        first = {}
        stamps = []
        for connection, timestamp, raw in reader.messages():
            msg = typestore.deserialize_cdr(raw, connection.msgtype)
            stamps.append(timestamp)
            assert timestamp == msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            first.setdefault(connection.topic, message_to_rgb(msg))
        assert reader.message_count == 2 * 5 * 2  # 2 cameras x 5 photos x 2 frames each
    assert stamps == sorted(stamps)
    assert np.array_equal(first["/front_camera/image_raw"], photo("astronaut"))
    # JPEG: close to the photograph, not equal
    jpeg = first["/rear_camera/image_raw/compressed"].astype(int)
    assert np.abs(jpeg - photo("motorcycle").astype(int)).mean() < 4


def test_bags_are_never_overwritten(tmp_path):
    (tmp_path / "bag").mkdir()
    with pytest.raises(FileExistsError):
        write_sample_bag(tmp_path / "bag", DEMO_CAMERAS)


@pytest.mark.ros
def test_demo_runs_end_to_end(tmp_path):
    env = dict(os.environ, SMOLVLM_ROS_CACHE=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "smolvlm_ros.tools.demo", "--model", "random:tiny",
         "--caption-rate-hz", "2", "--max-new-tokens", "4"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300, check=False,
    )  # fmt: skip
    output = out.stdout + out.stderr
    assert out.returncode == 0, output
    assert "RANDOM WEIGHTS" in output
    assert output.count("[caption] /front_camera/image_raw") >= 2
    assert output.count("[caption] /rear_camera/image_raw/compressed") >= 2
    assert "[ask] 'What is in this image?' ->" in output
    assert "node exit code 0" in output
