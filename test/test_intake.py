"""Image messages -> RGB, checked pixel for pixel against OpenCV on real photographs."""

from __future__ import annotations

import array
import struct
import warnings
import zlib
from types import SimpleNamespace

import cv2
import numpy as np
import PIL.Image
import pytest
from rosbags.typesys import Stores, get_typestore

from smolvlm_ros.pipeline import intake
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


@pytest.mark.parametrize(
    ("encoding", "to_message"),
    [
        ("8UC3", lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)),
        ("8UC4", lambda rgb: cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)),
    ],
)
@pytest.mark.parametrize("pad", [0, 64])
def test_opencv_8bit_colour_types_are_bgr_like_cv_bridge(photos, encoding, to_message, pad):
    """cv_bridge (so cv2-based drivers publishing "8UC3") means OpenCV's BGR / BGRA order."""
    rgb = photos["coffee"]
    assert np.array_equal(message_to_rgb(image(to_message(rgb), encoding, pad=pad)), rgb)


# Every layout family: packed colour and grey, 16-bit, depth, float, 4:2:2, 4:2:0, Bayer.
SIZED_ENCODINGS = [
    ("rgb8", 3), ("bgr8", 3), ("rgba8", 4), ("bgra8", 4), ("mono8", 1), ("mono16", 2),
    ("16UC1", 2), ("32FC1", 4), ("8UC3", 3), ("8UC4", 4), ("32FC3", 12), ("rgb16", 6),
    ("yuv422", 2), ("uyvy", 2), ("yuyv", 2), ("bayer_rggb8", 1), ("bayer_bggr16", 2),
    ("nv12", None), ("nv21", None),
]  # fmt: skip


@pytest.mark.parametrize(("encoding", "bytes_per_pixel"), SIZED_ENCODINGS)
@pytest.mark.parametrize("change", [-1, 1, "one row short", "one row long"])
def test_data_of_the_wrong_size_is_refused_for_every_encoding(encoding, bytes_per_pixel, change):
    """Data must be exactly step*height (x1.5 for 4:2:0): a frame whose size fields or encoding
    do not match its bytes is refused, never rendered from a guess (a right-sized one is not)."""
    height, width = 4, 8
    step = width * bytes_per_pixel if bytes_per_pixel else width
    rows = height * 3 // 2 if bytes_per_pixel is None else height
    right = bytes(range(256)) * (step * rows // 256 + 1)
    msg = plain(
        height=height, width=width, encoding=encoding, is_bigendian=0, step=step,
        data=np.frombuffer(right[: step * rows], np.uint8),
    )  # fmt: skip
    assert message_to_rgb(msg).shape == (height, width, 3)
    size = step * rows + (
        change if isinstance(change, int) else step * (1 if "long" in change else -1)
    )
    msg.data = np.frombuffer((right * 2)[:size], np.uint8)
    with pytest.raises(ImageDecodeError, match=f"image data has {size} bytes, expected"):
        message_to_rgb(msg)


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


# -- malformed and hostile messages -----------------------------------------------------------
# A camera driver's bug or a corrupt bag must cost one frame with a clear reason, never another
# exception type, a crash, or gigabytes allocated for a size the message merely claims.


def plain(**fields):
    """A message as a plain object: the fields a fuzzer or a foreign library might hand over."""
    return SimpleNamespace(**fields)


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _png(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    return buf.tobytes()


def _decoded_jpeg(data: bytes) -> np.ndarray:
    return cv2.cvtColor(
        cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )


@pytest.mark.parametrize("flag", [1, 2, 255, True, None, "yes"])
def test_is_bigendian_is_ignored_for_8_bit_encodings(photos, flag):
    msg = image(photos["astronaut"], "rgb8")
    msg.is_bigendian = flag  # bytes have no byte order, so whatever it says cannot matter
    assert np.array_equal(message_to_rgb(msg), photos["astronaut"])


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
@pytest.mark.parametrize("flag", [2, 255, np.uint8(1)])
def test_any_nonzero_is_bigendian_byteswaps_16_bit_data(photos, encoding, flag):
    values = cv2.cvtColor(photos["coffee"], cv2.COLOR_RGB2GRAY).astype(np.uint16) * 16 + 500
    expected = message_to_rgb(image(values, encoding))
    msg = image(values, encoding, bigendian=True)
    msg.is_bigendian = flag  # a uint8 where, as cv_bridge reads it, nonzero means big-endian
    assert np.array_equal(message_to_rgb(msg), expected)
    # and the flag is honoured, not guessed: little-endian data flagged big-endian is swapped
    msg = image(values, encoding)
    msg.is_bigendian = flag
    assert not np.array_equal(message_to_rgb(msg), expected)


def test_non_integer_is_bigendian_on_16_bit_data_is_refused():
    msg = image(np.zeros((2, 2), np.uint16), "mono16")
    msg.is_bigendian = "big"
    with pytest.raises(ImageDecodeError, match="is_bigendian must be 0 or 1"):
        message_to_rgb(msg)


def test_invalid_32fc1_depth_renders_black_without_warnings():
    depth = np.array([[np.nan, np.inf, -np.inf], [-1.0, 0.0, 2.0], [1.0, 3e38, -3e38]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = message_to_rgb(image(depth, "32FC1"))
        assert (out[0] == 0).all() and (out[1, :2] == 0).all() and out[2, 2, 0] == 0
        assert out[2, 0, 0] == 255  # nearest valid reading
        all_invalid = np.array([[np.nan, -1.0], [np.inf, 0.0]], np.float32)
        assert (message_to_rgb(image(all_invalid, "32FC1")) == 0).all()


def test_float_colour_with_nan_and_out_of_range_values_is_saturated_without_warnings():
    pixels = np.array([[[np.nan, np.inf, -np.inf], [300.0, -5.0, 128.4]]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = message_to_rgb(image(pixels, "32FC3"))
    assert out.tolist() == [[[0, 255, 0], [255, 0, 128]]]


@pytest.mark.parametrize("encoding", ["yuv422", "yuv422_yuy2", "uyvy", "yuyv"])
def test_odd_width_yuv422_is_refused_clearly(encoding):
    msg = plain(height=2, width=3, encoding=encoding, is_bigendian=0, step=6, data=bytes(12))
    with pytest.raises(ImageDecodeError, match=f"{encoding} needs an even width"):
        message_to_rgb(msg)


def _nv(rgb: np.ndarray, order: str) -> np.ndarray:
    """A photo as 4:2:0 semi-planar: the Y plane, then rows of interleaved U V (nv12) or V U."""
    h, w = rgb.shape[:2]
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)  # Y, then all U, then all V
    u = i420[h : h + h // 4].reshape(-1)
    v = i420[h + h // 4 :].reshape(-1)
    chroma = np.stack([u, v] if order == "nv12" else [v, u], axis=1).reshape(h // 2, w)
    return np.concatenate([i420[:h], chroma])


@pytest.mark.parametrize("encoding", ["nv12", "nv21"])
@pytest.mark.parametrize("pad", [0, 32])
def test_nv12_nv21_match_opencv_and_the_photograph(photos, encoding, pad):
    rgb = photos["chelsea"]
    planes = _nv(rgb, encoding)
    msg = image(planes, encoding, pad=pad)
    msg.height = rgb.shape[0]  # the image's height; the data holds 1.5 x as many rows
    out = message_to_rgb(msg)
    code = cv2.COLOR_YUV2RGB_NV12 if encoding == "nv12" else cv2.COLOR_YUV2RGB_NV21
    assert np.array_equal(out, cv2.cvtColor(planes, code))
    assert np.abs(out.astype(int) - rgb).mean() < 15
    msg.data = msg.data[: msg.step * rgb.shape[0]]  # only the Y plane
    with pytest.raises(ImageDecodeError, match=r"expected step\*height\*3/2"):
        message_to_rgb(msg)


def test_odd_sized_nv12_is_refused_clearly():
    msg = plain(height=3, width=4, encoding="nv12", is_bigendian=0, step=4, data=bytes(24))
    with pytest.raises(ImageDecodeError, match="nv12 needs an even width and height"):
        message_to_rgb(msg)


@pytest.mark.parametrize(
    "fmt",
    ["png", "bogus", "", "rgb8; jpeg compressed bgr8", "16UC1; compressedDepth", "32FC1; rvl"],
)
def test_compressed_images_are_decoded_by_content_not_format(photos, fmt):
    data = _jpeg(photos["rocket"])
    assert np.array_equal(message_to_rgb(compressed(data, fmt)), _decoded_jpeg(data))


def test_compressed_depth_holding_garbage_is_refused():
    with pytest.raises(ImageDecodeError, match="not a readable PNG image"):
        message_to_rgb(compressed(bytes(12) + b"\xff\xd8\xff garbage", "16UC1; compressedDepth"))


@pytest.mark.parametrize("keep", [0.05, 0.5, 0.99])
def test_truncated_jpeg_is_refused_or_decoded_whole(photos, keep):
    """OpenCV 5 refuses a JPEG cut short; 4.x decodes what arrived and greys the rest."""
    data = _jpeg(photos["rocket"])
    try:
        out = message_to_rgb(compressed(data[: int(len(data) * keep)], "jpeg"))
    except ImageDecodeError as err:
        assert "could not be decoded" in str(err)
    else:
        assert out.shape == photos["rocket"].shape and out.dtype == np.uint8


@pytest.mark.parametrize(
    ("cut", "match"),
    [
        (lambda d: d[:1], "could not be decoded"),  # JPEG: header cut short
        (lambda d: d[:300], "could not be decoded"),
        (lambda d: d[:2] + b"\x00" * 40 + d[42:], "could not be decoded"),  # markers destroyed
        (lambda d: b"", "no data"),
    ],
)
def test_corrupt_truncated_or_empty_jpeg_is_refused(photos, cut, match):
    with pytest.raises(ImageDecodeError, match=match):
        message_to_rgb(compressed(cut(_jpeg(photos["rocket"])), "jpeg"))


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_png_is_refused(photos, keep):
    data = _png(photos["coffee"])
    with pytest.raises(ImageDecodeError, match="could not be decoded"):
        message_to_rgb(compressed(data[: int(len(data) * keep)], "png"))


@pytest.mark.parametrize(
    "as_data",
    [
        bytes,
        bytearray,
        list,
        memoryview,
        lambda b: np.frombuffer(b, np.uint8),
        lambda b: array.array("B", b),
        lambda b: np.frombuffer(b, np.uint8).astype(int),
    ],
    ids=["bytes", "bytearray", "list", "memoryview", "numpy", "array.array", "numpy-int64"],
)
def test_data_may_be_any_sequence_of_bytes(photos, as_data):
    rgb = photos["astronaut"][:48, :64]
    raw = image(rgb, "rgb8", pad=5)
    raw.data = as_data(raw.data.tobytes())
    assert np.array_equal(message_to_rgb(raw), rgb)
    data = _jpeg(rgb)
    assert np.array_equal(message_to_rgb(compressed(data, "jpeg")), _decoded_jpeg(data))
    msg = plain(format="jpeg", data=as_data(data))
    assert np.array_equal(message_to_rgb(msg), _decoded_jpeg(data))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([1, 2, 300], "outside 0..255"),
        (np.array([-1, 2, 3]), "outside 0..255"),
        ([1.0, 2.0, 3.0], "not a sequence of bytes"),
        ("abc", "must be bytes"),
        (None, "must be bytes"),
        ([[1, 2], [3]], "not a sequence of bytes"),
        (7, "not a sequence of bytes"),
    ],
)
def test_data_that_is_not_bytes_is_refused(data, match):
    msg = plain(height=1, width=1, encoding="rgb8", is_bigendian=0, step=3, data=data)
    with pytest.raises(ImageDecodeError, match=match):
        message_to_rgb(msg)
    with pytest.raises(ImageDecodeError, match=match):
        message_to_rgb(plain(format="jpeg", data=data))


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"width": -4}, "width is negative"),
        ({"height": -4}, "height is negative"),
        ({"step": -12}, "step is negative"),
        ({"width": 2**64}, "over the limit"),
        ({"height": 2**40, "step": 2**40}, "over the limit"),
        ({"step": 2**62}, r"expected step\*height"),
        ({"width": 4.0}, "width must be an integer"),
        ({"height": None}, "height must be an integer"),
        ({"step": "12"}, "step must be an integer"),
        ({"encoding": None}, "encoding must be a string"),
        ({"encoding": ["rgb8"]}, "encoding must be a string"),
        ({"encoding": "8UC0"}, "has no channels"),
        ({"encoding": "weird9" * 10_000}, "not a sensor_msgs or OpenCV image encoding"),
    ],
)
def test_absurd_fields_are_refused(fields, match):
    msg = {"height": 4, "width": 4, "encoding": "rgb8", "is_bigendian": 0, "step": 12}
    msg = plain(**{**msg, "data": bytes(48), **fields})
    with pytest.raises(ImageDecodeError, match=match) as err:
        message_to_rgb(msg)
    assert len(str(err.value)) < 300  # a log line, even for a megabyte of encoding


@pytest.mark.parametrize("msg", [None, object(), plain(height=4, width=4), plain(format="jpeg")])
def test_objects_that_are_not_image_messages_are_refused(msg):
    with pytest.raises(ImageDecodeError, match=r"message has no '\w+' field"):
        message_to_rgb(msg)


def test_huge_declared_raw_image_is_refused_before_reading_data():
    msg = plain(height=20000, width=20000, encoding="rgb8", is_bigendian=0, step=60000)
    msg.data = bytes(100)
    with pytest.raises(ImageDecodeError, match="20000x20000 = 400000000 pixels, over the limit"):
        message_to_rgb(msg)


def test_raw_images_over_max_image_pixels_are_refused_before_converting(photos, monkeypatch):
    msg = image(photos["astronaut"][:40, :30], "bgr8")
    monkeypatch.setattr(intake, "MAX_IMAGE_PIXELS", 40 * 30 - 1)
    monkeypatch.setattr(intake, "convert_color", _must_not_run)
    with pytest.raises(ImageDecodeError, match="30x40 = 1200 pixels, over the limit of 1199"):
        message_to_rgb(msg)


def _must_not_run(*args, **kwargs):
    raise AssertionError("the image was decoded or converted although it is over the limit")


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A tiny valid JPEG whose frame header claims width x height (a decompression bomb)."""
    data = bytearray(_jpeg(np.zeros((8, 8, 3), np.uint8)))
    i = 2
    while data[i + 1] not in (0xC0, 0xC1, 0xC2):  # walk the segments to the start of frame
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    data[i + 5 : i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit black PNG of width x height: kilobytes that decode to height*width*3 bytes.

    Built row by row, so making it costs no more memory than one row.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    row = bytes(1 + (width + 7) // 8)  # filter byte, then 1 bit per pixel
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_png_decompression_bomb_is_refused_without_decoding(monkeypatch):
    bomb = _png_bomb(12000, 12000)  # 144 Mpx: 432 MB once decoded to RGB
    assert len(bomb) < 100_000
    monkeypatch.setattr(intake.cv2, "imdecode", _must_not_run)
    with (
        pytest.warns(PIL.Image.DecompressionBombWarning),  # Pillow's own, lower, threshold
        pytest.raises(ImageDecodeError, match="12000x12000 = 144000000 pixels, over the limit"),
    ):
        message_to_rgb(compressed(bomb, "png"))


def test_jpeg_decompression_bomb_is_refused_without_decoding(monkeypatch):
    bomb = _jpeg_declaring(20000, 20000)  # decoding it took 5 s and 2.4 GB
    assert len(bomb) < 1000
    monkeypatch.setattr(intake.cv2, "imdecode", _must_not_run)
    with pytest.raises(ImageDecodeError, match="declares more than MAX_IMAGE_PIXELS"):
        message_to_rgb(compressed(bomb, "jpeg"))


def test_compressed_depth_bomb_is_refused_without_decoding(monkeypatch):
    monkeypatch.setattr(intake.cv2, "imdecode", _must_not_run)
    monkeypatch.setattr(intake, "MAX_IMAGE_PIXELS", 1000)
    data = struct.pack("<iff", 0, 0.0, 0.0) + _png(np.zeros((40, 30), np.uint16))
    with pytest.raises(ImageDecodeError, match="30x40 = 1200 pixels, over the limit of 1000"):
        message_to_rgb(compressed(data, "16UC1; compressedDepth"))


def test_compressed_images_at_the_limit_still_decode(photos, monkeypatch):
    monkeypatch.setattr(intake, "MAX_IMAGE_PIXELS", 640 * 480)
    data = _jpeg(photos["rocket"])
    assert np.array_equal(message_to_rgb(compressed(data, "jpeg")), _decoded_jpeg(data))
    monkeypatch.setattr(intake, "MAX_IMAGE_PIXELS", 640 * 480 - 1)
    with pytest.raises(ImageDecodeError, match="over the limit"):
        message_to_rgb(compressed(data, "jpeg"))


def test_compressed_depth_with_degenerate_quantisation_renders_without_warnings():
    raw = np.array([[0, 10, 20], [30, 40, 50]], np.uint16)  # v == B at 10: d = A / 0
    msg = compressed(_compressed_depth(raw, "png", (100.0, 10.0)), "32FC1; compressedDepth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = message_to_rgb(msg)
        nan_quant = compressed(
            _compressed_depth(raw, "png", (np.nan, 0.0)), "32FC1; compressedDepth"
        )
        assert (message_to_rgb(nan_quant) == 0).all()
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 0  # no reading, and the division by zero
    assert out[0, 2, 0] == 0 and out[1, 2, 0] == 255  # v=20: farthest; v=50: nearest
