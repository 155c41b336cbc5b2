"""Camera messages -> RGB frames, for sensor_msgs/Image and sensor_msgs/CompressedImage.

Works on anything shaped like those messages (rclpy messages, rosbags messages), so the node and
the replay tool share it without ROS. The pixel work is rosbags-image's (OpenCV underneath).
"""

from __future__ import annotations

import numpy as np
from rosbags.image import ImageError, message_to_cvimage


class ImageDecodeError(ValueError):
    """The message cannot be turned into an RGB image; the text says why."""


def is_compressed_topic(topic: str) -> bool:
    """By ROS image_transport convention a topic ending in /compressed carries CompressedImage."""
    return topic.rstrip("/").endswith("/compressed")


def message_to_rgb(msg) -> np.ndarray:
    """An H x W x 3 uint8 RGB array from an Image or CompressedImage message."""
    compressed = hasattr(msg, "format")
    if not compressed:
        expected = msg.step * msg.height
        if msg.width == 0 or msg.height == 0:
            raise ImageDecodeError(f"image is empty ({msg.width}x{msg.height})")
        if len(msg.data) < expected:
            raise ImageDecodeError(
                f"image data has {len(msg.data)} bytes, expected step*height = {expected}"
            )
    elif len(msg.data) == 0:
        raise ImageDecodeError("compressed image has no data")
    try:
        rgb = message_to_cvimage(msg, "rgb8")
    except (ImageError, ValueError, TypeError) as err:
        kind = f"format {msg.format!r}" if compressed else f"encoding {msg.encoding!r}"
        raise ImageDecodeError(f"cannot convert image with {kind}: {err}") from err
    if rgb is None:
        raise ImageDecodeError("image could not be decoded")
    return np.ascontiguousarray(rgb, dtype=np.uint8)
