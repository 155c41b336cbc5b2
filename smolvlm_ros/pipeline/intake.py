"""Camera messages -> RGB frames, for sensor_msgs/Image and sensor_msgs/CompressedImage.

Works on anything shaped like those messages (rclpy messages, rosbags messages), so the node and
the replay tool share it without ROS. Colour conversions are rosbags-image's (OpenCV
underneath). This module adds what it leaves out: row padding (``step``), size checks, depth
and 16-bit images rendered viewable, compressedDepth, and clear errors.

Encodings: rgb8 bgr8 rgba8 bgra8 mono8, mono16 (contrast-stretched), 16UC1 / 32FC1 depth
(millimetres / metres, REP 118; rendered near = bright, no reading = black), yuv422 (= uyvy),
yuv422_yuy2 (= yuyv), uyvy, nv12, nv21, bayer_{rggb,bggr,gbrg,grbg}8, 16-bit rgb/bgr/bayer
variants, and OpenCV-style 3-channel types (8UC3, 32FC3, ...).
Compressed: JPEG and PNG (also TIFF, WebP, BMP, PNM), recognised by their content whatever
``format`` says, and compressedDepth (png; rvl is refused with a clear error).

The node calls this on whatever camera drivers send, so the contract is strict: for any message
``message_to_rgb`` returns a C-contiguous H x W x 3 uint8 array or raises
:class:`ImageDecodeError` saying why. A driver's bug or a corrupt bag costs one frame, never the
node; nothing is allocated for sizes a message merely claims (see :data:`MAX_IMAGE_PIXELS`).
"""

from __future__ import annotations

import io
import operator
import reprlib
import struct
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import PIL.Image
from rosbags.image import ImageError
from rosbags.image.image import convert_color, to_cvtype

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
DEPTH_ENCODINGS = ("16UC1", "32FC1")
MM_PER_M = 1000.0

MAX_IMAGE_PIXELS = 100_000_000
"""Images with more pixels are refused before anything is converted or decoded.

Why a limit: sizes come from the message, and a corrupt or hostile one costs its sender nothing.
A 631-byte JPEG whose header says 20000x20000 made OpenCV allocate 2.4 GB and spend 5 s
decoding it (a decompression bomb); a raw Image's width and height are just as easy to fake.
Why this one: 100 Mpx is well above what robot cameras send (8K video is 33 Mpx, the largest
common stills sensors 45-61 Mpx) and already 300 MB as RGB, several times that in the float
buffers of depth rendering. Raise it for survey cameras of 100+ Mpx.
Raw images are checked on their width and height fields, compressed ones on the size their
header declares, read without decoding.
"""

# Two pixels share one U and one V sample, so a row holds an even number of pixels.
_YUV422 = frozenset({"uyvy", "yuv422", "yuyv", "yuv422_yuy2"})
# OpenCV-style 8-bit colour types carry no channel order; cv_bridge (and so every ROS image
# tool) takes them as OpenCV's own, BGR and BGRA. rosbags-image would take 8UC3 as RGB.
_OPENCV_BGR = frozenset({"8UC3", "8UC4"})
# 4:2:0 semi-planar: a full-size Y plane, then a half-height plane of interleaved chroma.
_YUV420 = {"nv12": cv2.COLOR_YUV2RGB_NV12, "nv21": cv2.COLOR_YUV2RGB_NV21}
# What a CompressedImage may hold, by Pillow's name: ROS's image_transport codecs (jpeg, png,
# tiff) and a few common ones. Anything else is refused before OpenCV sees it, which also keeps
# OpenCV's rarer decoders (and their bugs) away from whatever arrives on a topic.
_COMPRESSED_FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "BMP", "PPM")
_DEPTH_HEADER_BYTES = 12  # compressed_depth_image_transport: int32 format, float32 A, float32 B
# How the _COMPRESSED_FORMATS begin (WebP: "RIFF", size, "WEBP"; PNM: "P1".."P6").
_IMAGE_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
    b"BM",
    b"RIFF",
    *(b"P%d" % n for n in range(1, 7)),
)


class ImageDecodeError(ValueError):
    """The message cannot be turned into an RGB image; the text says why."""


def is_compressed_topic(topic: str) -> bool:
    """By ROS image_transport convention a topic ending in /compressed carries CompressedImage.

    (compressedDepth topics also carry CompressedImage.)
    """
    return topic.rstrip("/").endswith(("/compressed", "/compressedDepth"))


# -- reading a message's fields ---------------------------------------------------------------


def _short(value: object) -> str:
    """A repr short enough for a log line: a hostile message may carry megabytes of text."""
    return reprlib.repr(value)


def _field(msg: Any, name: str) -> Any:
    try:
        return getattr(msg, name)
    except AttributeError:
        raise ImageDecodeError(
            f"message has no {name!r} field: not an Image or CompressedImage"
        ) from None


def _size_field(msg: Any, name: str) -> int:
    """height, width or step as a Python int (numpy's uint32 would overflow in arithmetic)."""
    value = _field(msg, name)
    try:
        size = operator.index(value)
    except TypeError:
        raise ImageDecodeError(
            f"{name} must be an integer, got {type(value).__name__} {_short(value)}"
        ) from None
    if size < 0:
        raise ImageDecodeError(f"{name} is negative ({size})")
    return size


def _text_field(msg: Any, name: str) -> str:
    value = _field(msg, name)
    if not isinstance(value, str):
        raise ImageDecodeError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _is_bigendian(msg: Any) -> bool:
    """Whether multi-byte values are stored big-endian.

    The field is a uint8 and, as cv_bridge reads it, anything but 0 means big-endian. Only
    multi-byte encodings read it: bytes have no order (cv_bridge ignores it for them too).
    """
    value = _field(msg, "is_bigendian")
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    try:
        return operator.index(value) != 0
    except TypeError:
        raise ImageDecodeError(
            f"is_bigendian must be 0 or 1, got {type(value).__name__} {_short(value)}"
        ) from None


def _byte_array(data: Any, what: str) -> np.ndarray:
    """A message's data as a flat uint8 array, not copied when it already holds bytes.

    rclpy gives bytes or array.array('B') depending on the version, rosbags a numpy array, and
    plain objects may hold a list of ints. The values must be bytes: text, floats or ints outside
    0..255 are refused rather than reinterpreted (an int64 array's raw memory is not the image).
    """
    if isinstance(data, (bytes, bytearray)):
        return np.frombuffer(data, np.uint8)
    if data is None or isinstance(data, str):
        raise ImageDecodeError(f"{what} must be bytes, got {type(data).__name__}")
    try:
        array = np.asarray(data)
    except (TypeError, ValueError, OverflowError) as err:  # ragged, or ints beyond any dtype
        raise ImageDecodeError(f"{what} is not a sequence of bytes: {err}") from err
    if array.dtype == np.uint8 and array.ndim > 0:
        return array.reshape(-1)
    if array.ndim > 0 and array.size == 0:
        return np.zeros(0, np.uint8)  # numpy makes [] float64
    if array.ndim == 0 or array.dtype.kind not in "iu":
        raise ImageDecodeError(
            f"{what} is not a sequence of bytes: got {type(data).__name__} of {array.dtype}"
        )
    if array.min() < 0 or array.max() > 255:
        raise ImageDecodeError(f"{what} holds values outside 0..255, so they are not bytes")
    return array.astype(np.uint8).reshape(-1)


def _check_pixel_count(width: int, height: int, what: str) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageDecodeError(
            f"{what} is {width}x{height} = {width * height} pixels, over the limit of "
            f"{MAX_IMAGE_PIXELS} (MAX_IMAGE_PIXELS): refused before decoding"
        )


# -- raw images (sensor_msgs/Image) -----------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """How an Image's bytes are arranged, from its encoding and size fields."""

    channel: np.dtype  # one channel's type, native byte order
    channels: int
    row_bytes: int  # the pixels of one row, without the padding ``step`` may add
    rows: int  # rows of data: the height, or 1.5 x the height for 4:2:0 (nv12, nv21)


def _layout(encoding: str, width: int, height: int) -> _Layout:
    """The data layout ``encoding`` implies, refusing encodings this module cannot render."""
    try:
        _, _, typestr, channels = to_cvtype(encoding)
    except ImageError:
        raise ImageDecodeError(
            f"cannot convert image with encoding {_short(encoding)}: "
            "not a sensor_msgs or OpenCV image encoding"
        ) from None
    if channels < 1:
        raise ImageDecodeError(f"encoding {_short(encoding)} has no channels")
    if encoding in _YUV422 and width % 2:
        raise ImageDecodeError(
            f"{encoding} needs an even width (two pixels share one U and one V sample), "
            f"got width {width}"
        )
    if encoding in _YUV420 and (width % 2 or height % 2):
        raise ImageDecodeError(
            f"{encoding} needs an even width and height (2x2 pixels share one U and one V "
            f"sample), got {width}x{height}"
        )
    channel = np.dtype(typestr)
    rows = height * 3 // 2 if encoding in _YUV420 else height
    return _Layout(channel, channels, width * channels * channel.itemsize, rows)


def _pixels(msg: Any, encoding: str, width: int, height: int) -> np.ndarray:
    """The image's values: rows unpadded, native byte order, shape rows x width [x channels].

    Sizes are all checked against each other before the data is touched, and the data is only
    viewed (copied when rows are padded or bytes swapped), never allocated from what the size
    fields claim.
    """
    step = _size_field(msg, "step")
    layout = _layout(encoding, width, height)
    if step < layout.row_bytes:
        raise ImageDecodeError(
            f"step {step} is less than width*channels*bytes = {layout.row_bytes} "
            f"for {width} px of {encoding}"
        )
    expected = step * layout.rows
    data = _byte_array(_field(msg, "data"), "image data")
    if data.size != expected:  # too long is as wrong as too short: sizes or encoding lie
        formula = "step*height*3/2" if layout.rows != height else "step*height"
        raise ImageDecodeError(f"image data has {data.size} bytes, expected {formula} = {expected}")
    packed = data[:expected].reshape(layout.rows, step)[:, : layout.row_bytes]
    values = np.ascontiguousarray(packed)
    channel = layout.channel
    if channel.itemsize > 1:  # 8-bit data has no byte order: is_bigendian is not read for it
        stored = channel.newbyteorder(">" if _is_bigendian(msg) else "<")
        values = values.view(stored).astype(channel)
    shape = (layout.rows, width) if layout.channels == 1 else (layout.rows, width, layout.channels)
    return values.reshape(shape)


def _raw_to_rgb(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> RGB; the pixel count is checked before anything else is read."""
    height, width = _size_field(msg, "height"), _size_field(msg, "width")
    if width == 0 or height == 0:
        raise ImageDecodeError(f"image is empty ({width}x{height})")
    _check_pixel_count(width, height, "image")
    encoding = _text_field(msg, "encoding")
    pixels = _pixels(msg, encoding, width, height)
    if encoding in DEPTH_ENCODINGS:
        return render_depth(depth_in_metres(pixels, encoding))
    if encoding == "mono16":
        return _grey_to_rgb(_stretch(pixels, np.ones(pixels.shape, bool), invert=False))
    if encoding in _YUV420:
        return _checked_rgb(cv2.cvtColor(pixels, _YUV420[encoding]), height, width)
    return _checked_rgb(_colour_to_rgb(pixels, encoding), height, width)


def _colour_to_rgb(pixels: np.ndarray, encoding: str) -> np.ndarray:
    """rosbags-image's conversion, given values it can cast to uint8 without undefined results.

    It casts float images (32FC3, ...) straight to uint8: NaN, infinities and values outside
    0..255 would come out as whatever the CPU makes of them, with a RuntimeWarning.
    """
    if pixels.dtype.kind == "f":
        pixels = np.clip(np.nan_to_num(pixels, nan=0.0, posinf=255.0, neginf=0.0), 0.0, 255.0)
    if encoding in _OPENCV_BGR:  # cv_bridge reads these as BGR / BGRA (OpenCV's own order)
        return np.ascontiguousarray(pixels[..., 2::-1])
    try:
        return convert_color(pixels, encoding, "rgb8")
    except (ImageError, cv2.error, ValueError, TypeError) as err:
        raise ImageDecodeError(f"cannot convert image with encoding {encoding!r}: {err}") from err


def _checked_rgb(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """The promised result, C-contiguous uint8 height x width x 3, or a clear refusal."""
    if rgb.dtype != np.uint8 or rgb.shape != (height, width, 3):
        raise ImageDecodeError(
            f"conversion gave a {rgb.dtype} array of shape {rgb.shape}, "
            f"not uint8 {height}x{width}x3"
        )
    return np.ascontiguousarray(rgb)


# -- depth and 16-bit rendering ---------------------------------------------------------------


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
    """A viewable RGB image of a depth map in metres: near = bright, no reading = black.

    NaN, infinities, zero and negative values are all "no reading" (REP 118 uses NaN and inf).
    """
    valid = np.isfinite(depth_m) & (depth_m > 0)
    return _grey_to_rgb(_stretch(depth_m, valid, invert=True))


def depth_in_metres(raw: np.ndarray, encoding: str) -> np.ndarray:
    """16UC1 is millimetres, 32FC1 metres (REP 118)."""
    if encoding == "16UC1":
        return raw.astype(np.float32) / MM_PER_M
    return raw.astype(np.float32)


# -- compressed images (sensor_msgs/CompressedImage) ------------------------------------------


def _declared_size(data: np.ndarray, what: str, formats: tuple[str, ...]) -> tuple[int, int]:
    """The width and height the image's header declares, read by Pillow without decoding.

    Pillow itself refuses sizes over twice its own limit (DecompressionBombError) and warns
    (DecompressionBombWarning) between its limit, 89 Mpx, and that.
    """
    try:
        with PIL.Image.open(io.BytesIO(data), formats=formats) as image:
            return image.size
    except PIL.Image.DecompressionBombError as err:
        raise ImageDecodeError(
            f"cannot convert {what}: its header declares more than MAX_IMAGE_PIXELS = "
            f"{MAX_IMAGE_PIXELS} pixels ({err}): refused before decoding"
        ) from err
    except PIL.UnidentifiedImageError:
        raise ImageDecodeError(
            f"cannot convert {what}: the data could not be decoded "
            f"(not a readable {', '.join(formats)} image)"
        ) from None
    except Exception as err:  # a malformed header: Pillow's parsers raise many types
        raise ImageDecodeError(
            f"cannot convert {what}: the data could not be decoded "
            f"(malformed header: {type(err).__name__}: {err})"
        ) from err


def _decode(
    data: np.ndarray,
    what: str,
    formats: tuple[str, ...] = _COMPRESSED_FORMATS,
    flags: int = cv2.IMREAD_ANYCOLOR,
) -> np.ndarray:
    """OpenCV's decoding of ``data``, once its header's size is known to be within limits."""
    width, height = _declared_size(data, what, formats)
    _check_pixel_count(width, height, what)
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error as err:
        raise ImageDecodeError(f"cannot convert {what}: {err}") from err
    if image is None or image.size == 0:
        raise ImageDecodeError(f"cannot convert {what}: the data could not be decoded")
    return image


def _decoded_to_rgb(image: np.ndarray, what: str) -> np.ndarray:
    """OpenCV's decoded image (grey, BGR or BGRA; 8 or 16 bit) -> RGB; 16 bit is stretched."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ImageDecodeError(f"cannot convert {what}: it decoded to shape {image.shape}")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImageDecodeError(f"cannot convert {what}: it decoded to {image.dtype} values")
    if image.dtype == np.uint16:
        grey = image
        if image.ndim == 3:
            code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
            grey = cv2.cvtColor(image, code)
        return _grey_to_rgb(_stretch(grey, np.ones(grey.shape, bool), invert=False))
    if image.ndim == 2:
        return _grey_to_rgb(image)
    code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return np.ascontiguousarray(cv2.cvtColor(image, code))


def _is_headerless_image(data: np.ndarray) -> bool:
    """Whether a compressedDepth message holds a plain image, without the depth header.

    The header starts with the int32 codec (0, or -1 for undefined), never an image signature.
    """
    return data[:8].tobytes().startswith(_IMAGE_SIGNATURES)


def decode_compressed_depth(msg: Any) -> np.ndarray:
    """compressed_depth_image_transport's format -> depth in metres.

    Data is a 12-byte header (int32 format, float32 depthQuantA, depthQuantB) then a PNG:
    for 16UC1 the depth itself; for 32FC1 a quantised inverse depth, d = A / (v - B).
    """
    fmt = _text_field(msg, "format")
    return _decode_compressed_depth(fmt, _byte_array(_field(msg, "data"), "compressedDepth data"))


def _decode_compressed_depth(fmt: str, data: np.ndarray) -> np.ndarray:
    parts = [p.strip() for p in fmt.split(";")]
    encoding = parts[0] if parts[0] in DEPTH_ENCODINGS else ""
    codec = parts[1].split()[-1].lower() if len(parts) > 1 and parts[1].split() else "png"
    if codec not in ("png", "compresseddepth"):
        raise ImageDecodeError(f"compressedDepth codec {_short(codec)} is not supported (only png)")
    if not encoding:
        raise ImageDecodeError(
            f"compressedDepth format {_short(fmt)} names no 16UC1/32FC1 encoding"
        )
    if data.size <= _DEPTH_HEADER_BYTES:
        raise ImageDecodeError("compressedDepth data is shorter than its 12-byte header")
    _, quant_a, quant_b = struct.unpack("<iff", data[:_DEPTH_HEADER_BYTES].tobytes())
    raw = _decode(
        data[_DEPTH_HEADER_BYTES:],
        "compressedDepth payload",
        formats=("PNG",),
        flags=cv2.IMREAD_UNCHANGED,
    )
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise ImageDecodeError("compressedDepth payload is not a 16-bit single-channel PNG")
    if encoding == "16UC1":
        return depth_in_metres(raw, encoding)
    depth = np.zeros(raw.shape, np.float32)
    valid = raw != 0
    # Corrupt quantisation (v == B, NaN) gives inf / NaN: "no reading" to render_depth.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        depth[valid] = quant_a / (raw[valid].astype(np.float32) - quant_b)
    return depth


def _compressed_to_rgb(msg: Any) -> np.ndarray:
    """JPEG / PNG / ... (colour or grey, 8 or 16 bit) or compressedDepth -> RGB.

    ``format`` is a hint drivers often get wrong ("png" carrying JPEG, "", "bogus"): the data
    is decoded by its content. Only compressedDepth is taken from ``format``, since its 12-byte
    header has no signature to recognise; and even then data that starts like a plain image is
    decoded as one.
    """
    fmt = _text_field(msg, "format")
    data = _byte_array(_field(msg, "data"), "compressed image data")
    if data.size == 0:
        raise ImageDecodeError("compressed image has no data")
    if "compresseddepth" in fmt.lower() and not _is_headerless_image(data):
        return render_depth(_decode_compressed_depth(fmt, data))
    what = f"image with format {_short(fmt)}"
    return _decoded_to_rgb(_decode(data, what), what)


def message_to_rgb(msg: Any) -> np.ndarray:
    """An H x W x 3 uint8 RGB array from an Image or CompressedImage message.

    For an Image, H x W is exactly its height x width. Anything that cannot be rendered raises
    ImageDecodeError, whatever the message holds.
    """
    if hasattr(msg, "format"):  # CompressedImage
        return _compressed_to_rgb(msg)
    return _raw_to_rgb(msg)


# -- stamps ------------------------------------------------------------------------------------

NS_PER_S = 1_000_000_000


def stamp_to_ns(stamp: Any) -> int:
    """A builtin_interfaces/Time (rclpy's, or a rosbags-deserialized one) in nanoseconds."""
    return stamp.sec * NS_PER_S + stamp.nanosec


def stamp_fields(ns: int) -> dict[str, int]:
    """Nanoseconds as builtin_interfaces/Time's fields, for any message library:
    ``Time(**stamp_fields(ns))``."""
    return {"sec": ns // NS_PER_S, "nanosec": ns % NS_PER_S}
