"""Camera messages -> RGB frames, for sensor_msgs/Image and sensor_msgs/CompressedImage.

Works on anything shaped like those messages (rclpy messages, rosbags messages), so the node and
the replay tool share it without ROS. Colour conversions are rosbags-image's (OpenCV
underneath). This module adds what it leaves out: row padding (``step``), size checks, depth
and 16-bit images rendered viewable, compressedDepth, and clear errors.

Encodings: rgb8 bgr8 rgba8 bgra8 mono8, mono16 (contrast-stretched), 16UC1 / 32FC1 depth
(millimetres / metres, REP 118; rendered near = bright, no reading = black), yuv422 (= uyvy),
yuv422_yuy2 (= yuyv), uyvy, bayer_{rggb,bggr,gbrg,grbg}8, and 16-bit rgb/bgr/bayer variants.
Compressed: jpeg, png, and compressedDepth (png; rvl is refused with a clear error).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from rosbags.image import ImageError, message_to_cvimage
from rosbags.image.image import to_cvtype

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
DEPTH_ENCODINGS = ("16UC1", "32FC1")
MM_PER_M = 1000.0


class ImageDecodeError(ValueError):
    """The message cannot be turned into an RGB image; the text says why."""


def is_compressed_topic(topic: str) -> bool:
    """By ROS image_transport convention a topic ending in /compressed carries CompressedImage.

    (compressedDepth topics also carry CompressedImage.)
    """
    return topic.rstrip("/").endswith(("/compressed", "/compressedDepth"))


@dataclass
class _PackedImage:
    """An Image message's fields with the row padding removed."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes


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
    if msg.step == row_bytes:
        return msg
    rows = np.frombuffer(bytes(msg.data), np.uint8)[:expected].reshape(msg.height, msg.step)
    packed = rows[:, :row_bytes].tobytes()
    return _PackedImage(msg.height, msg.width, msg.encoding, msg.is_bigendian, row_bytes, packed)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))


def _stretch(values: np.ndarray, valid: np.ndarray, invert: bool) -> np.ndarray:
    """Map the valid values' 2nd..98th percentile onto 0..255 (invalid: 0)."""
    out = np.zeros(values.shape, np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(values[valid], (2, 98))
    scaled = (values[valid].astype(np.float64) - lo) / max(hi - lo, 1e-9)
    scaled = np.clip(scaled, 0.0, 1.0)
    if invert:
        scaled = 1.0 - scaled
    out[valid] = np.round(scaled * 255).astype(np.uint8)
    return out


def render_depth(depth_m: np.ndarray) -> np.ndarray:
    """A viewable RGB image of a depth map in metres: near = bright, no reading = black."""
    valid = np.isfinite(depth_m) & (depth_m > 0)
    return _grey_to_rgb(_stretch(depth_m, valid, invert=True))


def depth_in_metres(raw: np.ndarray, encoding: str) -> np.ndarray:
    """16UC1 is millimetres, 32FC1 metres (REP 118)."""
    if encoding == "16UC1":
        return raw.astype(np.float32) / MM_PER_M
    return raw.astype(np.float32)


def decode_compressed_depth(msg: Any) -> np.ndarray:
    """compressed_depth_image_transport's format -> depth in metres.

    Data is a 12-byte header (int32 format, float32 depthQuantA, depthQuantB) then a PNG:
    for 16UC1 the depth itself; for 32FC1 a quantised inverse depth, d = A / (v - B).
    """
    parts = [p.strip() for p in msg.format.split(";")]
    encoding = parts[0] if parts[0] in DEPTH_ENCODINGS else ""
    codec = parts[1].split()[-1].lower() if len(parts) > 1 and parts[1].split() else "png"
    if codec not in ("png", "compresseddepth"):
        raise ImageDecodeError(f"compressedDepth codec {codec!r} is not supported (only png)")
    if not encoding:
        raise ImageDecodeError(
            f"compressedDepth format {msg.format!r} names no 16UC1/32FC1 encoding"
        )
    data = bytes(msg.data)
    if len(data) <= 12:
        raise ImageDecodeError("compressedDepth data is shorter than its 12-byte header")
    _, quant_a, quant_b = struct.unpack("<iff", data[:12])
    raw = cv2.imdecode(np.frombuffer(data[12:], np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16 or raw.ndim != 2:
        raise ImageDecodeError("compressedDepth payload is not a 16-bit single-channel PNG")
    if encoding == "16UC1":
        return depth_in_metres(raw, encoding)
    depth = np.zeros(raw.shape, np.float32)
    valid = raw != 0
    depth[valid] = quant_a / (raw[valid].astype(np.float32) - quant_b)
    return depth


def message_to_rgb(msg: Any) -> np.ndarray:
    """An H x W x 3 uint8 RGB array from an Image or CompressedImage message."""
    if hasattr(msg, "format"):  # CompressedImage
        if len(msg.data) == 0:
            raise ImageDecodeError("compressed image has no data")
        if "compresseddepth" in msg.format.lower():
            return render_depth(decode_compressed_depth(msg))
        return _compressed_to_rgb(msg)
    msg = _check_image(msg)
    if msg.encoding in DEPTH_ENCODINGS:
        raw = _convert(msg, f"encoding {msg.encoding!r}", color_space=None)
        return render_depth(depth_in_metres(raw, msg.encoding))
    if msg.encoding == "mono16":
        raw = _convert(msg, "encoding 'mono16'", color_space=None)
        return _grey_to_rgb(_stretch(raw, np.ones(raw.shape, bool), invert=False))
    return _convert(msg, f"encoding {msg.encoding!r}")


def _compressed_to_rgb(msg: Any) -> np.ndarray:
    """JPEG / PNG (colour or grey, 8 or 16 bit) -> RGB."""
    image = _convert(msg, f"format {msg.format!r}", color_space=None)  # as decoded: BGR or grey
    if image.dtype == np.uint16:
        grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return _grey_to_rgb(_stretch(grey, np.ones(grey.shape, bool), invert=False))
    if image.ndim == 2:
        return _grey_to_rgb(image)
    code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(image, code)


def _convert(msg: Any, what: str, color_space: str | None = "rgb8") -> np.ndarray:
    try:
        out = message_to_cvimage(msg, color_space)
    except (ImageError, ValueError, TypeError, AssertionError, cv2.error) as err:
        reason = str(err) or "the data could not be decoded"
        raise ImageDecodeError(f"cannot convert image with {what}: {reason}") from err
    if out is None:
        raise ImageDecodeError(f"cannot convert image with {what}: the data could not be decoded")
    return out if color_space is None else np.ascontiguousarray(out, dtype=np.uint8)
