"""Build rosbag2 bags of real photographs, without ROS.

The photographs are those of :mod:`smolvlm_ros.photos` (640x480), each written as a camera
stream at a fixed rate: sensor_msgs/Image for plain topics, sensor_msgs/CompressedImage (JPEG)
for topics ending in /compressed.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from smolvlm_ros.photos import PHOTO_NAMES, photo
from smolvlm_ros.pipeline.intake import NS_PER_S, is_compressed_topic, stamp_fields

# A fixed start time, so a bag built twice is identical.
BAG_START_NS = 1_767_225_600 * NS_PER_S  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class CameraSpec:
    """One camera stream in a sample bag: which photos it shows, in order."""

    topic: str
    photos: Sequence[str] = PHOTO_NAMES
    frame_id: str = ""

    @property
    def frame(self) -> str:
        return self.frame_id or self.topic.strip("/").split("/")[0] + "_optical_frame"


def _image_message(typestore, rgb: np.ndarray, topic: str, stamp_ns: int, frame_id: str):
    header = typestore.types["std_msgs/msg/Header"](
        stamp=typestore.types["builtin_interfaces/msg/Time"](**stamp_fields(stamp_ns)),
        frame_id=frame_id,
    )
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if is_compressed_topic(topic):
        ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        msg = typestore.types["sensor_msgs/msg/CompressedImage"](
            header=header, format="bgr8; jpeg compressed bgr8", data=jpeg.reshape(-1)
        )
        return msg, "sensor_msgs/msg/CompressedImage"
    msg = typestore.types["sensor_msgs/msg/Image"](
        header=header,
        height=bgr.shape[0],
        width=bgr.shape[1],
        encoding="bgr8",
        is_bigendian=0,
        step=bgr.shape[1] * 3,
        data=bgr.reshape(-1),
    )
    return msg, "sensor_msgs/msg/Image"


def write_sample_bag(
    path: Path,
    cameras: Sequence[CameraSpec],
    rate_hz: float = 10.0,
    seconds_per_photo: float = 2.0,
    storage: str = "mcap",
) -> Path:
    """Write a bag where each camera shows its photos in turn, ``seconds_per_photo`` each."""
    if path.exists():
        raise FileExistsError(f"{path} exists; rosbag2 bags are not overwritten")
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    typestore = get_typestore(Stores.LATEST)
    photos = {name: photo(name) for cam in cameras for name in cam.photos}
    frames_per_photo = max(1, round(rate_hz * seconds_per_photo))
    period_ns = round(NS_PER_S / rate_hz)
    with Writer(path, version=8, storage_plugin=plugin) as writer:
        connections = {}
        for cam in cameras:
            typename = (
                "sensor_msgs/msg/CompressedImage"
                if is_compressed_topic(cam.topic)
                else "sensor_msgs/msg/Image"
            )
            connections[cam.topic] = writer.add_connection(cam.topic, typename, typestore=typestore)
        n_frames = max(len(cam.photos) for cam in cameras) * frames_per_photo
        for i in range(n_frames):
            stamp = BAG_START_NS + i * period_ns
            for cam in cameras:
                name = cam.photos[(i // frames_per_photo) % len(cam.photos)]
                msg, typename = _image_message(typestore, photos[name], cam.topic, stamp, cam.frame)
                data = typestore.serialize_cdr(msg, typename)
                writer.write(connections[cam.topic], stamp, data)
    return path


DEMO_CAMERAS = (
    CameraSpec("/front_camera/image_raw", PHOTO_NAMES),
    CameraSpec("/rear_camera/image_raw/compressed", tuple(reversed(PHOTO_NAMES))),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="bag directory to create")
    parser.add_argument("--rate", type=float, default=10.0, help="frames per second per camera")
    parser.add_argument("--seconds-per-photo", type=float, default=2.0)
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    args = parser.parse_args(argv)
    write_sample_bag(args.out, DEMO_CAMERAS, args.rate, args.seconds_per_photo, args.storage)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
