"""Plain values that flow through the engine: frames in, results out (no ROS, no torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from smolvlm_ros.compat import StrEnum
from smolvlm_ros.engine.answers import TypedAnswer


class Kind(StrEnum):
    """What a result is; the value is what outputs write (JSONL ``kind``, topic names)."""

    CAPTION = "caption"
    ANSWER = "answer"


class FinishReason(StrEnum):
    """Why a generation ended (Timing.msg ``finish_reason``)."""

    STOP = "stop"  # the model ended its answer
    LENGTH = "length"  # max_new_tokens reached
    DEADLINE = "deadline"  # the request's deadline passed
    CANCELLED = "cancelled"  # the caller cancelled (or the node is shutting down)


# The names the rest of the code imports.
CAPTION, ANSWER = Kind.CAPTION, Kind.ANSWER
FINISH_STOP, FINISH_LENGTH = FinishReason.STOP, FinishReason.LENGTH
FINISH_DEADLINE, FINISH_CANCELLED = FinishReason.DEADLINE, FinishReason.CANCELLED


@dataclass(frozen=True)
class Frame:
    """One decoded camera image and where it came from."""

    image: np.ndarray  # H x W x 3, uint8, RGB
    camera: str = ""  # the image topic; empty for an image supplied with a request
    stamp_ns: int = 0  # source header stamp
    frame_id: str = ""  # source header frame_id
    received_at: float | None = None  # time.monotonic() on arrival, for the queue-wait figure

    def __post_init__(self) -> None:
        img = self.image
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(
                f"frame image must be HxWx3 uint8 RGB, got shape {img.shape} dtype {img.dtype}"
            )
        if img.shape[0] < 1 or img.shape[1] < 1:
            raise ValueError(f"frame image is empty: {img.shape}")

    def crop(self, x: int, y: int, width: int, height: int) -> Frame:
        """The region of interest [x, x+width) x [y, y+height), same source; must lie inside."""
        h, w = self.image.shape[:2]
        if width < 1 or height < 1 or x < 0 or y < 0 or x + width > w or y + height > h:
            raise ValueError(
                f"region of interest x={x} y={y} width={width} height={height} "
                f"is not inside the {w}x{h} frame"
            )
        return replace(self, image=np.ascontiguousarray(self.image[y : y + height, x : x + width]))


@dataclass
class Timing:
    """Where the time went (milliseconds) and how much work it was."""

    queue_wait_ms: float = 0.0
    preprocess_ms: float = 0.0
    encode_ms: float = 0.0
    prefill_ms: float = 0.0
    decode_ms: float = 0.0
    total_ms: float = 0.0
    prompt_tokens: int = 0
    image_tokens: int = 0
    generated_tokens: int = 0


@dataclass
class Result:
    """One caption or answer with full provenance; every front end formats this one type.

    For a request over several frames, ``camera`` lists their cameras joined by "," and the
    stamp and frame_id are the newest frame's.
    """

    kind: str  # a Kind: CAPTION or ANSWER
    text: str
    prompt: str  # the user text: caption prompt or question
    camera: str
    stamp_ns: int
    frame_id: str
    model: str
    backend: str
    device: str
    dtype: str
    tile_rows: int
    tile_cols: int
    num_images: int
    timing: Timing = field(default_factory=Timing)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = FinishReason.STOP
    tiling_note: str = ""  # why the tiling is smaller than configured, if it is
    reused_encoding: bool = False  # the frame's image embeddings came from the cache
    typed: TypedAnswer | None = None  # the typed value and confidence of a typed question

    def provenance_fields(self) -> dict:
        """The fields of msg/Provenance.msg, for any message library (rclpy, rosbags)."""
        return {
            "model": self.model,
            "backend": self.backend,
            "device": self.device,
            "dtype": self.dtype,
            "prompt": self.prompt,
            "tile_rows": self.tile_rows,
            "tile_cols": self.tile_cols,
            "num_images": self.num_images,
            "tiling_note": self.tiling_note,
            "reused_encoding": self.reused_encoding,
        }

    def timing_fields(self) -> dict:
        """The fields of msg/Timing.msg: the Timing dataclass plus how generation ended."""
        return {**asdict(self.timing), "finish_reason": self.finish_reason}
