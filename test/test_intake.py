"""Image messages -> RGB, checked pixel for pixel against OpenCV on real photographs."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from smolvlm_ros.pipeline.intake import (
    ImageDecodeError,
    decode_compressed_depth,
    is_compressed_topic,
    message_to_rgb,
    render_depth,
)

TYPES = get_typestore(Stores.LATEST).types
Header = TYPES["std_msgs/msg/Header"]
Time = TYPES["builtin_interfaces/msg/Time"]


def image(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False):
    """A sensor_msgs/Image of ``pixels``, rows padded by ``pad`` bytes as some drivers do."""
    h, w = pixels.shape[:2]
    if pixels.dtype.itemsize > 1:
        pixels = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    row = np.frombuffer(pixels.tobytes(), np.uint8).reshape(h, -1)
    data = np.concatenate([row, np.zeros((h, pad), np.uint8)], axis=1) if pad else row
    return TYPES["sensor_msgs/msg/Image"](
        header=Header(stamp=Time(sec=1, nanosec=2), frame_id="cam"),
        height=h,
        width=w,
        encoding=encoding,
        is_bigendian=int(bigendian),
        step=data.shape[1],
        data=data.reshape(-1),
    )


def compressed(data: bytes, fmt: str):
    return TYPES["sensor_msgs/msg/CompressedImage"](
        header=Header(stamp=Time(sec=1, nanosec=2), frame_id="cam"),
        format=fmt,
        data=np.frombuffer(data, np.uint8),
    )


# -- colour -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "to_message"),
    [
        ("rgb8", lambda rgb: rgb),
        ("bgr8", lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)),
        ("rgba8", lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)),
        ("bgra8", lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)),
    ],
)
@pytest.mark.parametrize("pad", [0, 64])
def test_colour_encodings_round_trip_exactly(photos, encoding, to_message, pad):
    rgb = photos["astronaut"]
    assert np.array_equal(message_to_rgb(image(to_message(rgb), encoding, pad=pad)), rgb)


def test_mono8_becomes_grey_rgb(photos):
    grey = cv2.cvtColor(photos["coffee"], cv2.COLOR_RGB2GRAY)
    assert np.array_equal(
        message_to_rgb(image(grey, "mono8")), cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)
    )


def _yuv422(rgb: np.ndarray, order: str) -> np.ndarray:
    """Pack a photo as 4:2:2 (two bytes per pixel) in the byte order of ``order``."""
    yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV).astype(np.int32)
    y = yuv[..., 0]
    u = (yuv[:, 0::2, 1] + yuv[:, 1::2, 1]) // 2
    v = (yuv[:, 0::2, 2] + yuv[:, 1::2, 2]) // 2
    out = np.empty((rgb.shape[0], rgb.shape[1] // 2, 4), np.uint8)
    if order == "uyvy":
        out[..., 0], out[..., 1], out[..., 2], out[..., 3] = u, y[:, 0::2], v, y[:, 1::2]
    else:  # yuyv
        out[..., 0], out[..., 1], out[..., 2], out[..., 3] = y[:, 0::2], u, y[:, 1::2], v
    return out.reshape(rgb.shape[0], rgb.shape[1], 2)


@pytest.mark.parametrize(
    ("encoding", "order", "cv_code"),
    [
        ("uyvy", "uyvy", cv2.COLOR_YUV2RGB_UYVY),
        ("yuv422", "uyvy", cv2.COLOR_YUV2RGB_UYVY),  # ROS's yuv422 is UYVY
        ("yuv422_yuy2", "yuyv", cv2.COLOR_YUV2RGB_YUYV),
    ],
)
def test_yuv422_matches_opencv(photos, encoding, order, cv_code):
    rgb = photos["chelsea"]
    packed = _yuv422(rgb, order)
    out = message_to_rgb(image(packed, encoding))
    assert np.array_equal(out, cv2.cvtColor(packed, cv_code))
    # And it is the photograph again, up to OpenCV's full-range packing vs video-range
    # unpacking (a small level shift); the other byte order would be far off.
    assert np.abs(out.astype(int) - rgb).mean() < 15
    other = "yuv422_yuy2" if order == "uyvy" else "uyvy"
    assert np.abs(message_to_rgb(image(packed, other)).astype(int) - rgb).mean() > 40


def _bayer(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """A raw sensor mosaic of a photo: each pixel keeps the channel its filter passes."""
    channel = {"r": 0, "g": 1, "b": 2}
    mosaic = np.empty(rgb.shape[:2], np.uint8)
    for dy in (0, 1):
        for dx in (0, 1):
            mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, channel[pattern[2 * dy + dx]]]
    return mosaic


@pytest.mark.parametrize(
    ("pattern", "cv_code"),
    # OpenCV names a Bayer pattern by the second row's pair: RGGB is its "BayerBG".
    [
        ("rggb", cv2.COLOR_BayerBG2RGB),
        ("bggr", cv2.COLOR_BayerRG2RGB),
        ("gbrg", cv2.COLOR_BayerGR2RGB),
        ("grbg", cv2.COLOR_BayerGB2RGB),
    ],
)
def test_bayer_matches_opencv_and_the_photograph(photos, pattern, cv_code):
    rgb = photos["coffee"]
    mosaic = _bayer(rgb, pattern)
    out = message_to_rgb(image(mosaic, f"bayer_{pattern}8"))
    assert np.array_equal(out, cv2.cvtColor(mosaic, cv_code))
    # the right pattern gives the photograph back; a wrong one swaps red and blue
    assert np.abs(out.astype(int) - rgb).mean() < 12


# -- 16 bit and depth -------------------------------------------------------------------------


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_is_contrast_stretched(photos, bigendian):
    grey = cv2.cvtColor(photos["astronaut"], cv2.COLOR_RGB2GRAY).astype(np.uint16) * 16  # 12-bit
    out = message_to_rgb(image(grey, "mono16", bigendian=bigendian))
    assert out.shape == (*grey.shape, 3) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], out[..., 2])
    # a 12-bit image fills the 8-bit range instead of staying dark
    assert out.max() == 255 and np.percentile(out, 50) > 60
    # order preserved: brighter in, brighter out
    corr = np.corrcoef(out[..., 0].ravel(), grey.ravel())[0, 1]
    assert corr > 0.95


def _depth_m(photos) -> np.ndarray:
    """A depth map with the structure of a photograph: 0.5-5 m, a hole with no readings."""
    grey = cv2.cvtColor(photos["rocket"], cv2.COLOR_RGB2GRAY).astype(np.float32)
    depth = 0.5 + grey / 255.0 * 4.5
    depth[100:150, 200:300] = 0.0
    return depth


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1"])
@pytest.mark.parametrize("bigendian", [False, True])
def test_depth_is_rendered_near_bright_holes_black(photos, encoding, bigendian):
    depth = _depth_m(photos)
    raw = np.round(depth * 1000).astype(np.uint16) if encoding == "16UC1" else depth
    out = message_to_rgb(image(raw, encoding, bigendian=bigendian))
    assert np.array_equal(
        out, render_depth(raw.astype(np.float32) / (1000 if encoding == "16UC1" else 1))
    )
    assert (out[100:150, 200:300] == 0).all()
    near, far = (
        np.unravel_index(np.argmin(np.where(depth > 0, depth, 99)), depth.shape),
        np.unravel_index(np.argmax(depth), depth.shape),
    )
    assert out[near][0] == 255 and out[far][0] == 0


def test_nan_and_inf_depth_are_holes():
    depth = np.full((4, 4), 2.0, np.float32)
    depth[0, 0], depth[0, 1], depth[1, 1] = np.nan, np.inf, 1.0
    out = message_to_rgb(image(depth, "32FC1"))
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 0 and out[1, 1, 0] == 255


def _compressed_depth(raw: np.ndarray, fmt: str, quant=(0.0, 0.0)) -> bytes:
    ok, png = cv2.imencode(".png", raw)
    assert ok
    return struct.pack("<iff", 0, *quant) + png.tobytes()


def test_compressed_depth_16uc1_decodes_exactly(photos):
    mm = np.round(_depth_m(photos) * 1000).astype(np.uint16)
    msg = compressed(_compressed_depth(mm, "png"), "16UC1; compressedDepth png")
    assert np.array_equal(decode_compressed_depth(msg), mm.astype(np.float32) / 1000)
    assert np.array_equal(message_to_rgb(msg), render_depth(mm.astype(np.float32) / 1000))


def test_compressed_depth_32fc1_inverse_depth(photos):
    depth = _depth_m(photos)
    a, b = 100.0, 10.0  # the transport's default quantisation: v = A / d + B
    quantised = np.where(depth > 0, a / np.where(depth > 0, depth, 1) + b, 0)
    raw = np.round(quantised).astype(np.uint16)
    msg = compressed(_compressed_depth(raw, "png", (a, b)), "32FC1; compressedDepth")
    decoded = decode_compressed_depth(msg)
    valid = raw != 0
    assert np.allclose(decoded[valid], a / (raw[valid].astype(np.float32) - b))
    assert (decoded[~valid] == 0).all()
    assert np.abs(decoded[valid] - depth[valid]).max() < 0.15  # quantisation error only


def test_compressed_depth_rvl_is_refused_clearly():
    with pytest.raises(ImageDecodeError, match="codec 'rvl' is not supported"):
        message_to_rgb(compressed(b"\0" * 40, "16UC1; compressedDepth rvl"))


# -- compressed colour ------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_compressed_images_decode_like_opencv(photos, ext):
    rgb = photos["rocket"]
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    expected = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(message_to_rgb(compressed(buf.tobytes(), ext[1:])), expected)


def test_compressed_grey_png(photos):
    grey = cv2.cvtColor(photos["coffee"], cv2.COLOR_RGB2GRAY)
    _, buf = cv2.imencode(".png", grey)
    out = message_to_rgb(compressed(buf.tobytes(), "mono8; png compressed"))
    assert np.array_equal(out, cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB))


# -- errors -----------------------------------------------------------------------------------


def test_short_data_is_refused():
    msg = image(np.zeros((4, 4, 3), np.uint8), "rgb8")
    msg.data = msg.data[:10]
    with pytest.raises(ImageDecodeError, match="10 bytes, expected step\\*height = 48"):
        message_to_rgb(msg)


def test_step_too_small_is_refused():
    msg = image(np.zeros((4, 4, 3), np.uint8), "rgb8")
    msg.step = 8
    with pytest.raises(ImageDecodeError, match="step 8 is less than width\\*channels\\*bytes = 12"):
        message_to_rgb(msg)


def test_unknown_encoding_is_refused():
    with pytest.raises(ImageDecodeError, match="encoding 'weird9'"):
        message_to_rgb(image(np.zeros((4, 4, 3), np.uint8), "weird9"))


def test_garbage_compressed_data_is_refused():
    with pytest.raises(ImageDecodeError, match="could not be decoded"):
        message_to_rgb(compressed(b"not a jpeg", "jpeg"))


@pytest.mark.parametrize(
    ("topic", "compressed_"),
    [
        ("/cam/image_raw/compressed", True),
        ("/cam/image_raw/compressed/", True),
        ("/cam/depth/image_raw/compressedDepth", True),
        ("/cam/image_raw", False),
        ("/cam/compressed_image", False),
    ],
)
def test_transport_follows_the_topic_name(topic, compressed_):
    assert is_compressed_topic(topic) is compressed_
