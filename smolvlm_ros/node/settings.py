"""The node's parameters: names, types, ranges, defaults and validation, in one table.

Kept apart from the node so every parameter is declared, documented and checked in one place,
and a bad value stops start-up with one clear message instead of a half-running node.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from smolvlm_ros.engine.engine import BACKENDS, DEFAULT_CAPTION_PROMPT, DEFAULT_MAX_NEW_TOKENS
from smolvlm_ros.engine.tiling import TilingConfig, TilingError
from smolvlm_ros.models.loading import DEFAULT_MODEL, DEVICES, DTYPES
from smolvlm_ros.pipeline.scheduler import CameraConfig

MAX_NEW_TOKENS_LIMIT = 4096
QOS_RELIABILITY = ("best_effort", "reliable")
# Parameters that are lists of numbers (YAML may write them as integers).
NUMBER_LISTS = ("camera_rates_hz", "camera_priorities")
STRING_LISTS = ("questions",)
# What may change while the node runs (`ros2 param set`); the rest needs a restart (a new model,
# device, topics or tiling is a new node).
LIVE = (
    "caption_rate_hz",
    "camera_rates_hz",
    "caption_prompt",
    "questions",
    "max_new_tokens",
    "max_frame_age_s",
    "change_threshold",
    "ask_timeout_s",
    "max_questions_per_caption",
    "watchdog_timeout_s",
)


class SettingsError(ValueError):
    """A parameter has a value the node cannot run with."""


@dataclass(frozen=True)
class NodeSettings:
    """Every parameter of ``vlm_node`` with its default; the field docs are the descriptions."""

    image_topics: tuple[str, ...] = ("/camera/image_raw",)
    model: str = DEFAULT_MODEL
    backend: str = "torch"
    device: str = "auto"
    dtype: str = "auto"
    image_splitting: bool = False
    image_longest_edge: int = 0
    max_tiles: int = 0
    max_image_tokens: int = 0
    allow_upsampling: bool = False
    caption_rate_hz: float = 1.0
    camera_rates_hz: tuple[float, ...] = ()
    camera_priorities: tuple[float, ...] = ()
    max_frame_age_s: float = 0.0
    change_threshold: float = 0.0
    mosaic: bool = False
    qos_reliability: str = "best_effort"
    qos_depth: int = 5
    caption_prompt: str = DEFAULT_CAPTION_PROMPT
    questions: tuple[str, ...] = ()
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    ask_timeout_s: float = 30.0
    max_pending_questions: int = 8
    max_questions_per_caption: int = 2
    watchdog_timeout_s: float = 120.0

    def validate(self) -> NodeSettings:
        """Return self, or raise :class:`SettingsError` naming the parameter and the fix."""
        topics = [t.strip() for t in self.image_topics]
        if not topics or any(not t for t in topics):
            raise SettingsError("image_topics must list at least one non-empty topic name")
        if len(set(topics)) != len(topics):
            raise SettingsError(f"image_topics lists a topic twice: {topics}")
        if not self.model.strip():
            raise SettingsError(
                "model is empty: give a hub id, a checkpoint directory or random:<shape>"
            )
        if self.backend not in BACKENDS:
            raise SettingsError(f"backend {self.backend!r}: expected one of {', '.join(BACKENDS)}")
        if self.device not in DEVICES:
            raise SettingsError(f"device {self.device!r}: expected one of {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise SettingsError(f"dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        for name in ("image_longest_edge", "max_tiles", "max_image_tokens"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} {getattr(self, name)}: expected 0 (no limit) or more")
        if not 0.0 <= self.caption_rate_hz <= 1000.0:
            raise SettingsError(
                f"caption_rate_hz {self.caption_rate_hz}: expected 0 (no captions) to 1000"
            )
        for name in ("camera_rates_hz", "camera_priorities"):
            values = getattr(self, name)
            if values and len(values) != len(topics):
                raise SettingsError(
                    f"{name} has {len(values)} values for {len(topics)} image_topics: "
                    "give one per topic, in the same order (or none)"
                )
        if any(rate < 0 for rate in self.camera_rates_hz):
            raise SettingsError(f"camera_rates_hz {list(self.camera_rates_hz)}: rates must be >= 0")
        if any(priority <= 0 for priority in self.camera_priorities):
            raise SettingsError(
                f"camera_priorities {list(self.camera_priorities)}: priorities must be > 0"
            )
        if self.max_frame_age_s < 0:
            raise SettingsError(f"max_frame_age_s {self.max_frame_age_s}: expected 0 (off) or more")
        if self.change_threshold < 0:
            raise SettingsError(
                f"change_threshold {self.change_threshold}: expected 0 (off) to 255"
            )
        if self.qos_reliability not in QOS_RELIABILITY:
            raise SettingsError(
                f"qos_reliability {self.qos_reliability!r}: expected one of "
                f"{', '.join(QOS_RELIABILITY)}"
            )
        if self.qos_depth < 1:
            raise SettingsError(f"qos_depth {self.qos_depth}: expected at least 1")
        if any(not q.strip() for q in self.questions):
            raise SettingsError("questions: a standing question is empty")
        if not self.caption_prompt.strip():
            raise SettingsError("caption_prompt is empty")
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise SettingsError(
                f"max_new_tokens {self.max_new_tokens}: expected 1 to {MAX_NEW_TOKENS_LIMIT}"
            )
        if self.ask_timeout_s <= 0:
            raise SettingsError(f"ask_timeout_s {self.ask_timeout_s}: expected > 0 seconds")
        if self.max_pending_questions < 1:
            raise SettingsError(
                f"max_pending_questions {self.max_pending_questions}: expected at least 1"
            )
        if self.max_questions_per_caption < 1:
            raise SettingsError(
                f"max_questions_per_caption {self.max_questions_per_caption}: expected at least 1"
            )
        if self.watchdog_timeout_s < 0:
            raise SettingsError(
                f"watchdog_timeout_s {self.watchdog_timeout_s}: expected 0 (off) or more seconds"
            )
        try:
            self.tiling().validate()
        except TilingError as err:
            raise SettingsError(str(err)) from err
        return self

    def camera_configs(self, names: list[str]) -> list[CameraConfig]:
        """Scheduling of each camera, ``names`` being the topics as the node resolved them."""
        rates = self.camera_rates_hz or (self.caption_rate_hz,) * len(names)
        priorities = self.camera_priorities or (1.0,) * len(names)
        return [
            CameraConfig(name, rate, priority)
            for name, rate, priority in zip(names, rates, priorities, strict=True)
        ]

    def tiling(self) -> TilingConfig:
        """The engine's tiling settings (0 here means: no limit)."""
        return TilingConfig(
            image_splitting=self.image_splitting,
            longest_edge=self.image_longest_edge or None,
            max_tiles=self.max_tiles or None,
            max_image_tokens=self.max_image_tokens or None,
            allow_upsampling=self.allow_upsampling,
        )


# Ranges shown by `ros2 param describe` and enforced by ROS on every set.
RANGES: dict[str, tuple[float, float]] = {
    "image_longest_edge": (0, 8192),
    "max_tiles": (0, 1024),
    "max_image_tokens": (0, 1_000_000),
    "caption_rate_hz": (0.0, 1000.0),
    "max_frame_age_s": (0.0, 86400.0),
    "change_threshold": (0.0, 255.0),
    "qos_depth": (1, 1000),
    "max_new_tokens": (1, MAX_NEW_TOKENS_LIMIT),
    "ask_timeout_s": (0.001, 86400.0),
    "max_pending_questions": (1, 1000),
    "max_questions_per_caption": (1, 1000),
    "watchdog_timeout_s": (0.0, 86400.0),
}

DESCRIPTIONS = {
    "image_topics": "Camera topics; names ending in /compressed are CompressedImage, others Image.",
    "model": "Hugging Face hub id, local checkpoint directory, or random:<tiny|256m|500m|2b>.",
    "backend": "Inference runtime: torch (CPU or CUDA).",
    "device": "auto (CUDA if available, else CPU) | cpu | cuda.",
    "dtype": "auto | float32 | bfloat16 | float16 (auto: bf16 where the hardware has it).",
    "image_splitting": "Split frames into a tile grid (many more tokens, slower).",
    "image_longest_edge": "Cap on the resized longest edge in pixels; 0: the checkpoint's.",
    "max_tiles": "Cap on grid tiles per frame (the grid shrinks to fit); 0: no cap.",
    "max_image_tokens": "Image-token budget per frame (the grid shrinks to fit); 0: none.",
    "allow_upsampling": "Resize small frames up to the longest edge first, as the reference does.",
    "caption_rate_hz": "Captions per second per camera, at most; 0 disables periodic captions.",
    "camera_rates_hz": "Per-camera caption rates, one per image topic; empty: caption_rate_hz.",
    "camera_priorities": "Per-camera shares of the model when cameras compete; empty: equal.",
    "max_frame_age_s": "Drop frames older than this (by header stamp, ROS time); 0: no limit.",
    "change_threshold": "Skip frames that changed less than this (0-255) since the last caption.",
    "mosaic": "Caption all cameras' latest frames together, as one labelled grid image.",
    "qos_reliability": "Image subscriptions: best_effort (sensor data, default) or reliable.",
    "qos_depth": "Image subscriptions' queue depth (only the newest frame is used).",
    "caption_prompt": "The instruction sent with each frame to caption.",
    "questions": "Standing questions answered about every captioned frame, on ~/answer.",
    "max_new_tokens": f"Longest caption or answer, in tokens (1-{MAX_NEW_TOKENS_LIMIT}).",
    "ask_timeout_s": "How long ~/ask waits for its answer before failing.",
    "max_pending_questions": "~/ask requests that may wait at once; more are refused.",
    "max_questions_per_caption": "Questions that may go ahead of a due caption, in a row.",
    "watchdog_timeout_s": "Exit (code 2) if the model makes no progress this long; 0: never.",
}
assert set(DESCRIPTIONS) == {f.name for f in fields(NodeSettings)}
