"""Image messages -> RGB, pixel for pixel against OpenCV on real photographs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from smolvlm_ros.pipeline.intake import ImageDecodeError, is_compressed_topic, message_to_rgb

TYPES = get_typestore(Stores.LATEST).types
Header = TYPES["std_msgs/msg/Header"]
Time = TYPES["builtin_interfaces/msg/Time"]


def image(pixels: np.ndarray, encoding: str, pad: int = 0):
    """A sensor_msgs/Image, rows padded by ``pad`` bytes as some drivers do."""
    h, w = pixels.shape[:2]
    row = pixels.reshape(h, -1)
    data = np.concatenate([row, np.zeros((h, pad), np.uint8)], axis=1) if pad else row
    return TYPES["sensor_msgs/msg/Image"](
        header=Header(stamp=Time(sec=1, nanosec=2), frame_id="cam"),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=0,
        step=data.shape[1],
        data=data.reshape(-1),
    )


@pytest.mark.parametrize(
    ("encoding", "to_message"),
    [
        ("rgb8", lambda rgb: rgb),
        ("bgr8", lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)),
        ("rgba8", lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)),
        ("bgra8", lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)),
    ],
)
def test_color_encodings_round_trip_exactly(photos, encoding, to_message):
    rgb = photos["astronaut"]
    assert np.array_equal(message_to_rgb(image(to_message(rgb), encoding)), rgb)


def test_mono8_becomes_grey_rgb(photos):
    grey = cv2.cvtColor(photos["coffee"], cv2.COLOR_RGB2GRAY)
    out = message_to_rgb(image(grey, "mono8"))
    assert np.array_equal(out, np.stack([grey] * 3, axis=-1))


def test_row_padding_is_honoured(photos):
    rgb = photos["chelsea"]
    assert np.array_equal(message_to_rgb(image(rgb, "rgb8", pad=64)), rgb)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_compressed_images_decode_like_opencv(photos, ext):
    rgb = photos["rocket"]
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    msg = TYPES["sensor_msgs/msg/CompressedImage"](
        header=Header(stamp=Time(sec=1, nanosec=2), frame_id="cam"),
        format=ext[1:],
        data=buf.reshape(-1),
    )
    expected = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(message_to_rgb(msg), expected)


def test_short_data_is_refused():
    msg = image(np.zeros((4, 4, 3), np.uint8), "rgb8")
    msg.data = msg.data[:10]
    with pytest.raises(ImageDecodeError, match="10 bytes, expected step\\*height = 48"):
        message_to_rgb(msg)


def test_unknown_encoding_is_refused():
    with pytest.raises(ImageDecodeError, match="encoding 'weird9'"):
        message_to_rgb(image(np.zeros((4, 4, 3), np.uint8), "weird9"))


def test_garbage_compressed_data_is_refused():
    msg = TYPES["sensor_msgs/msg/CompressedImage"](
        header=Header(stamp=Time(sec=0, nanosec=0), frame_id=""),
        format="jpeg",
        data=np.frombuffer(b"not a jpeg", np.uint8),
    )
    with pytest.raises(ImageDecodeError):
        message_to_rgb(msg)


@pytest.mark.parametrize(
    ("topic", "compressed"),
    [
        ("/cam/image_raw/compressed", True),
        ("/cam/image_raw/compressed/", True),
        ("/cam/image_raw", False),
        ("/cam/compressed_image", False),
    ],
)
def test_transport_follows_the_topic_name(topic, compressed):
    assert is_compressed_topic(topic) is compressed
