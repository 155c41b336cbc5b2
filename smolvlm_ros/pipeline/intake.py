"""Camera messages -> RGB frames, for sensor_msgs/Image and sensor_msgs/CompressedImage.

Works on anything shaped like those messages (rclpy messages, rosbags messages), so the node and
the replay tool share it without ROS. The pixel work is rosbags-image's (OpenCV underneath); this
module adds what it leaves out: row padding (``step``), size checks and clear errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from rosbags.image import ImageError, message_to_cvimage
from rosbags.image.image import to_cvtype


class ImageDecodeError(ValueError):
    """The message cannot be turned into an RGB image; the text says why."""


def is_compressed_topic(topic: str) -> bool:
    """By ROS image_transport convention a topic ending in /compressed carries CompressedImage."""
    return topic.rstrip("/").endswith("/compressed")


@dataclass
class _PackedImage:
    """An Image message's fields with the row padding removed."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes


def _without_row_padding(msg: Any, row_bytes: int) -> Any:
    if msg.step == row_bytes:
        return msg
    rows = np.frombuffer(bytes(msg.data), np.uint8)[: msg.step * msg.height]
    packed = rows.reshape(msg.height, msg.step)[:, :row_bytes].tobytes()
    return _PackedImage(msg.height, msg.width, msg.encoding, msg.is_bigendian, row_bytes, packed)


def _check_image(msg: Any) -> Any:
    """Validate sizes against the encoding; return a message with tightly packed rows."""
    if msg.width == 0 or msg.height == 0:
        raise ImageDecodeError(f"image is empty ({msg.width}x{msg.height})")
    try:
        _, _, typestr, channels = to_cvtype(msg.encoding)
    except ImageError as err:
        raise ImageDecodeError(
            f"cannot convert image with encoding {msg.encoding!r}: {err}"
        ) from err
    row_bytes = msg.width * channels * np.dtype(typestr).itemsize
    if msg.step < row_bytes:
        raise ImageDecodeError(
            f"step {msg.step} is less than width*channels*bytes = {row_bytes} "
            f"for {msg.width} px of {msg.encoding}"
        )
    expected = msg.step * msg.height
    if len(msg.data) < expected:
        raise ImageDecodeError(
            f"image data has {len(msg.data)} bytes, expected step*height = {expected}"
        )
    return _without_row_padding(msg, row_bytes)


def message_to_rgb(msg: Any) -> np.ndarray:
    """An H x W x 3 uint8 RGB array from an Image or CompressedImage message."""
    compressed = hasattr(msg, "format")
    if compressed:
        if len(msg.data) == 0:
            raise ImageDecodeError("compressed image has no data")
    else:
        msg = _check_image(msg)
    try:
        rgb = message_to_cvimage(msg, "rgb8")
    except (ImageError, ValueError, TypeError, AssertionError, cv2.error) as err:
        what = f"format {msg.format!r}" if compressed else f"encoding {msg.encoding!r}"
        reason = str(err) or "the data could not be decoded"
        raise ImageDecodeError(f"cannot convert image with {what}: {reason}") from err
    return np.ascontiguousarray(rgb, dtype=np.uint8)
