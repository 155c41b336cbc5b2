"""Property-based fuzzing of message_to_rgb: any message gives an RGB frame or ImageDecodeError.

A camera driver can send anything, so the node relies on one contract: for every message
``message_to_rgb`` returns a C-contiguous uint8 array of shape (height, width, 3) (Image) or
(h, w, 3) (CompressedImage), or raises ImageDecodeError; never another exception or a numpy
warning. (Decompression bombs have their own tests in test_intake.py.) Examples are
derandomized, so CI runs the same ones every time.
"""

from __future__ import annotations

import array
import functools
import re
import struct
import sys
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rosbags.image import ImageError
from rosbags.image.image import ENCODINGMAP, to_cvtype

from smolvlm_ros.photos import photo
from smolvlm_ros.pipeline.intake import MAX_IMAGE_PIXELS, ImageDecodeError, message_to_rgb

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# The two invariance checks below are narrower, so fewer examples cover them.
FUZZ_NARROW = settings(FUZZ, max_examples=300)

# Numeric trouble (an invalid cast, a division by zero) is a bug even when the output looks fine.
pytestmark = pytest.mark.filterwarnings("error")

ENCODINGS = (*ENCODINGMAP, "16UC1", "32FC1", "8UC3", "16UC3", "32FC3", "64FC3", "8SC3", "32SC3")
# What intake promises to render; the rest (8UC1, 8UC4, ...) it may refuse.
RENDERED = frozenset(ENCODINGS)
YUV422 = frozenset({"uyvy", "yuv422", "yuyv", "yuv422_yuy2"})
YUV420 = frozenset({"nv12", "nv21"})
BYTE_ORDER_FLAGS = (0, 1, 2, 255, True, False, np.uint8(1))


def as_container(data: bytes, kind: str) -> Any:
    """``data`` in one of the containers message libraries use for uint8[]."""
    return {
        "bytes": lambda: data,
        "bytearray": lambda: bytearray(data),
        "list": lambda: list(data),
        "numpy": lambda: np.frombuffer(data, np.uint8),
        "array": lambda: array.array("B", data),
        "memoryview": lambda: memoryview(data),
    }[kind]()


CONTAINERS = st.sampled_from(["bytes", "bytearray", "list", "numpy", "array", "memoryview"])


def random_bytes(seed: int, size: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, np.uint8).tobytes()


def layout(encoding: str, width: int, height: int) -> tuple[int, int]:
    """(row bytes without padding, rows of data) for a known encoding."""
    _, _, typestr, channels = to_cvtype(encoding)
    rows = height * 3 // 2 if encoding in YUV420 else height
    return width * channels * np.dtype(typestr).itemsize, rows


def well_formed(encoding: str, width: int, height: int) -> bool:
    """Sizes an encoding can hold: 4:2:2 pairs pixels in a row, 4:2:0 in 2x2 blocks."""
    if width < 1 or height < 1:
        return False
    if encoding in YUV422:
        return width % 2 == 0
    if encoding in YUV420:
        return width % 2 == 0 and height % 2 == 0
    return True


def assert_rgb(out: Any, shape: tuple[int, int] | None = None) -> None:
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert out.flags.c_contiguous
    if shape is not None:
        assert out.shape[:2] == shape
    assert 0 < out.shape[0] * out.shape[1] <= MAX_IMAGE_PIXELS


def converts_or_refuses(msg: Any, shape: tuple[int, int] | None = None) -> np.ndarray | None:
    """The property: an RGB frame of the right shape, or ImageDecodeError. Nothing else."""
    try:
        out = message_to_rgb(msg)
    except ImageDecodeError as err:
        assert str(err)
        event("refused", re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "_", str(err))[:70])
        return None
    assert_rgb(out, shape)
    event("converted")
    return out


# -- sensor_msgs/Image ------------------------------------------------------------------------


@st.composite
def raw_images(draw: st.DrawFn) -> SimpleNamespace:
    """Image-like messages near the valid ones: sizes, step and data length a little off."""
    known = draw(st.integers(0, 9)) > 0  # mostly real encodings, sometimes any text
    encoding = draw(st.sampled_from(ENCODINGS) if known else st.text(max_size=12))
    width, height = draw(st.integers(0, 64)), draw(st.integers(0, 64))
    try:
        row_bytes, rows = layout(encoding, width, height)
    except ImageError:  # random text: any sizes will do
        row_bytes, rows = width * draw(st.integers(1, 8)), height
    step = max(0, row_bytes + draw(st.sampled_from([0, 0, 0, 1, 3, 7]) | st.integers(-4, 16)))
    size = max(0, step * rows + draw(st.sampled_from([0, 0, 0, 5]) | st.integers(-8, 8)))
    size = min(size, 2**20)  # text parsed as e.g. "8UC9999999" must not make the test huge
    data = as_container(random_bytes(draw(st.integers(0, 2**32 - 1)), size), draw(CONTAINERS))
    return SimpleNamespace(
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=draw(st.sampled_from(BYTE_ORDER_FLAGS)),
        step=step,
        data=data,
    )


@FUZZ
@given(raw_images())
def test_any_image_gives_rgb_of_its_size_or_image_decode_error(msg):
    out = converts_or_refuses(msg, (msg.height, msg.width))
    row_bytes, rows = (-1, -1)
    if msg.encoding in RENDERED:
        row_bytes, rows = layout(msg.encoding, msg.width, msg.height)
    valid = (
        msg.encoding in RENDERED
        and well_formed(msg.encoding, msg.width, msg.height)
        and msg.step >= row_bytes
        and len(msg.data) == msg.step * rows
    )
    if valid:  # and it does not refuse what it claims to support
        assert out is not None, msg


@FUZZ_NARROW
@given(
    encoding=st.sampled_from(sorted(e for e in ENCODINGS if to_cvtype(e)[2] in ("uint8", "int8"))),
    width=st.integers(1, 32).map(lambda w: w * 2),
    height=st.integers(1, 16).map(lambda h: h * 2),
    pad=st.integers(0, 9),
    seed=st.integers(0, 2**32 - 1),
    flag=st.sampled_from(BYTE_ORDER_FLAGS[1:]),
)
def test_8_bit_images_ignore_is_bigendian_and_row_padding(encoding, width, height, pad, seed, flag):
    row_bytes, rows = layout(encoding, width, height)
    packed = random_bytes(seed, row_bytes * rows)
    tight = SimpleNamespace(
        height=height, width=width, encoding=encoding, is_bigendian=0, step=row_bytes, data=packed
    )
    padded_rows = np.pad(
        np.frombuffer(packed, np.uint8).reshape(rows, row_bytes), ((0, 0), (0, pad))
    )
    padded = SimpleNamespace(
        **{
            **vars(tight),
            "is_bigendian": flag,
            "step": row_bytes + pad,
            "data": padded_rows.ravel(),
        }
    )
    expected = converts_or_refuses(tight, (height, width))
    if expected is not None:
        assert np.array_equal(message_to_rgb(padded), expected)


@pytest.mark.skipif(sys.byteorder != "little", reason="builds little-endian data natively")
@FUZZ_NARROW
@given(
    encoding=st.sampled_from(
        sorted(e for e in ENCODINGS if to_cvtype(e)[2] not in ("uint8", "int8"))
    ),
    width=st.integers(1, 16).map(lambda w: w * 2),
    height=st.integers(1, 16),
    seed=st.integers(0, 2**32 - 1),
)
def test_multi_byte_images_honour_is_bigendian(encoding, width, height, seed):
    """Big-endian data flagged big-endian renders as its little-endian twin flagged little."""
    row_bytes, rows = layout(encoding, width, height)
    values = np.frombuffer(random_bytes(seed, row_bytes * rows), to_cvtype(encoding)[2])
    fields = {"height": height, "width": width, "encoding": encoding, "step": row_bytes}
    little = SimpleNamespace(**fields, is_bigendian=0, data=values.tobytes())
    big = SimpleNamespace(**fields, is_bigendian=1, data=values.byteswap().tobytes())
    expected = converts_or_refuses(little, (height, width))
    if expected is not None:
        assert np.array_equal(message_to_rgb(big), expected)


# Anything at all in a field, as a fuzzer or a foreign message library might hand over.
ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=8),
    st.binary(max_size=64),
    st.lists(st.integers(-300, 300), max_size=64),
    st.lists(st.floats(), max_size=4),
    st.builds(object),
)


def mostly(plausible: st.SearchStrategy) -> st.SearchStrategy:
    """A plausible value four times in five, so that later fields get looked at too."""
    return st.integers(0, 4).flatmap(lambda n: ANYTHING if n == 0 else plausible)


@FUZZ
@given(
    height=mostly(st.integers(0, 8)),
    width=mostly(st.integers(0, 8)),
    encoding=mostly(st.sampled_from(ENCODINGS)),
    is_bigendian=mostly(st.sampled_from(BYTE_ORDER_FLAGS)),
    step=mostly(st.integers(0, 64)),
    data=mostly(st.binary(max_size=600)),
)
def test_wild_field_values_give_rgb_or_image_decode_error(
    height, width, encoding, is_bigendian, step, data
):
    fields = {"height": height, "width": width, "encoding": encoding, "step": step}
    converts_or_refuses(SimpleNamespace(**fields, is_bigendian=is_bigendian, data=data))


# -- sensor_msgs/CompressedImage --------------------------------------------------------------


@functools.cache
def encodings_of_a_photo() -> dict[str, bytes]:
    """A small real photograph in the forms cameras send: JPEG, PNG, grey, 16 bit, depth."""
    bgr = cv2.cvtColor(photo("astronaut", 48, 32), cv2.COLOR_RGB2BGR)
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    forms = {
        "jpeg": cv2.imencode(".jpg", bgr)[1],
        "jpeg-grey": cv2.imencode(".jpg", grey)[1],
        "png": cv2.imencode(".png", bgr)[1],
        "png-grey": cv2.imencode(".png", grey)[1],
        "png-bgra": cv2.imencode(".png", cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))[1],
        "png-16": cv2.imencode(".png", grey.astype(np.uint16) * 257)[1],
        "tiff": cv2.imencode(".tiff", bgr)[1],
        "bmp": cv2.imencode(".bmp", bgr)[1],
        "webp": cv2.imencode(".webp", bgr)[1],
        "ppm": cv2.imencode(".ppm", bgr)[1],
    }
    out = {name: buf.tobytes() for name, buf in forms.items()}
    depth_header = struct.pack("<iff", 0, 100.0, 10.0)
    out["compressedDepth"] = depth_header + out["png-16"]
    return out


FORMATS = ("jpeg", "png", "", "bogus", "rgb8; jpeg compressed bgr8", "mono8; png compressed")
DEPTH_FORMATS = (
    "16UC1; compressedDepth",
    "32FC1; compressedDepth png",
    "16UC1; compressedDepth rvl",
    "compressedDepth",
)


def a_format(draw: st.DrawFn, depth: bool) -> str:
    """Mostly the format that goes with the data, sometimes the other kind, or any text."""
    choice = draw(st.integers(0, 4))
    if choice == 0:
        return draw(st.text(max_size=24))
    return draw(st.sampled_from(DEPTH_FORMATS if depth == (choice > 1) else FORMATS))


SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"BM", b"P6\n", b"")


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """A real encoding with bytes flipped, set, spliced in or cut (a quarter of them in the
    header), sometimes truncated.

    Hypothesis picks the operations; where they land comes from a drawn seed, since its own
    integers favour 0 and would mostly hit the file's first byte.
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    data = bytearray(original)
    for op in draw(st.lists(st.sampled_from(["flip", "set", "insert", "delete"]), max_size=3)):
        if not data:
            break
        end = min(len(data), 64) if rng.random() < 0.25 else len(data)
        at = int(rng.integers(0, end))
        if op == "flip":
            data[at] ^= 1 << int(rng.integers(0, 8))
        elif op == "set":
            data[at] = int(rng.integers(0, 256))
        elif op == "insert":
            data[at:at] = rng.bytes(int(rng.integers(1, 9)))
        else:
            del data[at : at + int(rng.integers(1, 17))]
    if draw(st.integers(0, 3)) == 0:
        data = data[: int(rng.integers(0, len(data) + 1))]
    return bytes(data)


@st.composite
def compressed_images(draw: st.DrawFn) -> SimpleNamespace:
    # compressedDepth twice: its path has the most branches
    source = draw(st.sampled_from([*encodings_of_a_photo(), "compressedDepth", "random"]))
    if source == "random":
        data = draw(st.sampled_from(SIGNATURES)) + draw(st.binary(max_size=128))
    else:
        data = draw(mutated(encodings_of_a_photo()[source]))
    fmt = a_format(draw, depth=source == "compressedDepth")
    return SimpleNamespace(format=fmt, data=as_container(data, draw(CONTAINERS)))


@FUZZ
@given(compressed_images())
def test_any_compressed_image_gives_rgb_or_image_decode_error(msg):
    converts_or_refuses(msg)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        *(
            (name, fmt)
            for name in sorted(encodings_of_a_photo())
            if name != "compressedDepth"
            for fmt in ("jpeg", "png", "", "16UC1; compressedDepth")
        ),
        *(("compressedDepth", fmt) for fmt in DEPTH_FORMATS if "rvl" not in fmt and ";" in fmt),
    ],
)
def test_every_unmutated_encoding_decodes(name, fmt):
    """The fuzzed originals are good images, so refusals above are the mutations' doing."""
    assert_rgb(message_to_rgb(SimpleNamespace(format=fmt, data=encodings_of_a_photo()[name])))


@FUZZ
@given(
    fmt=mostly(st.sampled_from(FORMATS + DEPTH_FORMATS)),
    source=st.sampled_from(sorted(encodings_of_a_photo())),
    data=st.none() | ANYTHING,
)
def test_wild_compressed_fields_give_rgb_or_image_decode_error(fmt, source, data):
    """``data`` None stands for the photo's real encoding, so that ``format`` is tried on it."""
    real = encodings_of_a_photo()[source]
    converts_or_refuses(SimpleNamespace(format=fmt, data=real if data is None else data))
