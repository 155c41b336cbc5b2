"""Every user-facing setting, declared once: name, type, default, range or choices, description,
and whether it may change while the node runs.

The node's ROS parameters (descriptors, validation, live changes), the replay / bench / demo
command-line flags, the YAML profiles' validation and the README's parameter table are all
derived from the fields of :class:`Settings` below, so a setting is added, renamed or
re-documented in exactly one place. Free of ROS: replay and the benchmark use it without rclpy.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from smolvlm_ros.engine import (
    DEFAULT_CAPTION_PROMPT,
    DEFAULT_MAX_NEW_TOKENS,
    EngineConfig,
    TilingConfig,
    TilingError,
)
from smolvlm_ros.engine.answers import parse_standing
from smolvlm_ros.engine.backends._rknn_runtime import CORE_MASKS
from smolvlm_ros.engine.backends.base import COMPILE_MODES, QUANTIZATIONS
from smolvlm_ros.engine.backends.registry import backend_names
from smolvlm_ros.engine.engine import DEFAULT_EMBEDDING_CACHE
from smolvlm_ros.engine.remote.options import (
    IMAGE_FORMATS,
    IMAGE_MODES,
    RemoteConfigError,
    RemoteOptions,
)
from smolvlm_ros.models.loading import DEFAULT_MODEL, DEVICES, DTYPES
from smolvlm_ros.pipeline.runner import CaptionSettings
from smolvlm_ros.pipeline.scheduler import CameraConfig

MAX_NEW_TOKENS_LIMIT = 4096
QOS_RELIABILITY = ("best_effort", "reliable")


class SettingsError(ValueError):
    """A setting has a value nothing can run with; the message names it and the fix."""


class Group(StrEnum):
    """What a setting is about; front ends pick the groups they expose."""

    ENGINE = "engine"  # which model, on which backend, device and dtype
    REMOTE = "remote"  # backend remote: the inference server, its key, images, failures
    TILING = "tiling"  # how frames become image tiles
    GENERATION = "generation"  # what is asked and how long answers may be
    SCHEDULING = "scheduling"  # which frames get captioned, and when
    NODE = "node"  # the ROS node only: topics, QoS, services, supervision


def backend_choices() -> tuple[str, ...]:
    """``auto`` and every registered backend (the registry is the single source)."""
    return ("auto", *backend_names())


@dataclass(frozen=True)
class Spec:
    """How one setting is checked and documented (its name and default come from the field)."""

    description: str
    group: Group
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None
    live: bool = False  # may change while the node runs (`ros2 param set`)
    item: type | None = None  # element type of a list setting
    nonempty: bool = False  # a string (or each list item) must have non-blank text

    def allowed(self) -> tuple[str, ...] | None:
        return self.choices() if callable(self.choices) else self.choices


@dataclass(frozen=True)
class Setting:
    """A setting as front ends see it: the field's name, type and default plus its spec."""

    name: str
    type: type  # bool, int, float, str or tuple
    default: Any
    spec: Spec

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        """``1-4096``, ``>= 0``, ``auto | cpu | cuda`` or empty, for help and the README."""
        choices = self.spec.allowed()
        if choices:
            return " | ".join(choices)
        lo, hi = self.spec.minimum, self.spec.maximum
        if lo is not None and hi is not None:
            return f"{_number(lo)}-{_number(hi)}"
        if lo is not None:
            return f">= {_number(lo)}"
        return ""

    def coerce(self, value: Any) -> Any:
        """``value`` (from YAML, a ROS parameter or a flag) in this setting's type, or a
        :class:`SettingsError`. Integers are accepted for floats (YAML writes ``2``); nothing
        else is converted: ``"true"`` is not a bool and ``1.5`` is not an integer."""
        if self.type is tuple:
            if value is None:
                return self.default
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise SettingsError(f"{self.name} must be a list, got {value!r}")
            return tuple(self._scalar(self.spec.item or str, v, value) for v in value)
        return self._scalar(self.type, value, value)

    def _scalar(self, kind: type, v: Any, whole: Any) -> Any:
        number = isinstance(v, int | float) and not isinstance(v, bool)
        ok = {
            bool: isinstance(v, bool),
            float: number,
            int: number and isinstance(v, int),
        }.get(kind, isinstance(v, str))
        if not ok:
            expected = {bool: "true or false", float: "a number", int: "an integer"}.get(
                kind, "text"
            )
            where = f" (in {list(whole)!r})" if whole is not v else ""
            raise SettingsError(f"{self.name} must be {expected}, got {v!r}{where}")
        return float(v) if kind is float else v

    def check(self, value: Any) -> None:
        """Raise :class:`SettingsError` if ``value`` (already coerced) is out of range."""
        spec = self.spec
        items = value if self.type is tuple else (value,)
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                raise SettingsError(f"{self.name} {_show(value)}: must be a finite number")
            if isinstance(item, int | float) and not isinstance(item, bool):
                below = spec.minimum is not None and item < spec.minimum
                above = spec.maximum is not None and item > spec.maximum
                if below or above:
                    raise SettingsError(f"{self.name} {_show(value)}: expected {self.range_text()}")
            if isinstance(item, str):
                if spec.nonempty and not item.strip():
                    what = "has an empty item" if self.type is tuple else "is empty"
                    raise SettingsError(f"{self.name} {what}")
                allowed = spec.allowed()
                if allowed is not None and item not in allowed:
                    raise SettingsError(
                        f"{self.name} {item!r}: expected one of {', '.join(allowed)}"
                    )


def _number(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def _s(default: Any, description: str, group: Group, **spec: Any) -> Any:
    """A dataclass field carrying its :class:`Spec`."""
    return field(default=default, metadata={"spec": Spec(description, group, **spec)})


E, T, G, S, N = Group.ENGINE, Group.TILING, Group.GENERATION, Group.SCHEDULING, Group.NODE
R = Group.REMOTE


@dataclass(frozen=True)
class Settings:
    """Every setting with its default. Field order is the order of the README table."""

    image_topics: tuple[str, ...] = _s(
        ("/camera/image_raw",),
        "camera topics; a name ending in `/compressed` is `sensor_msgs/CompressedImage`, any "
        "other `sensor_msgs/Image`; the first is `~/ask`'s default camera",
        N, item=str, nonempty=True,
    )  # fmt: skip
    model: str = _s(
        DEFAULT_MODEL,
        "Hugging Face hub id, local checkpoint directory, or `random:<tiny|256m|500m|2b>` "
        "(random weights of the real architecture, for tests and benchmarks)",
        E, nonempty=True,
    )  # fmt: skip
    backend: str = _s(
        "auto",
        "inference backend; `auto`: the best registered backend available for the device "
        "(the choice and its reason are logged and shown in /diagnostics)",
        E, choices=backend_choices,
    )  # fmt: skip
    device: str = _s("auto", "`auto`: CUDA if torch sees a GPU, else the CPU", E, choices=DEVICES)
    dtype: str = _s(
        "auto",
        "compute dtype; `auto`: bf16 on GPUs that have it (else fp16), bf16 on CPUs with "
        "AVX512-BF16/AMX, else fp32",
        E, choices=DTYPES,
    )  # fmt: skip
    compile: str = _s(
        "auto",
        "compile the decode step (backend `torch_static`): `auto`: on CUDA, where the step "
        "becomes a CUDA graph (compiled and captured at start-up, cached on disk); `off`: "
        "eager, the fallback if compilation fails on a platform",
        E, choices=COMPILE_MODES,
    )  # fmt: skip
    cpu_threads: int = _s(
        0,
        "threads of the CPU runtime (backend `openvino`); `0`: the cores this process may use "
        "(its CPU affinity)",
        E, minimum=0, maximum=1024,
    )  # fmt: skip
    quantization: str = _s(
        "none",
        "`int8` (backend `openvino`): int8 decoder weights and an int8 vision encoder "
        "calibrated on real photographs (faster; accuracy cost in the README); `int4`: the "
        "same with 4-bit decoder weights (fastest and smallest, larger accuracy cost); "
        "`none`: the compute dtype throughout",
        E, choices=QUANTIZATIONS,
    )  # fmt: skip
    rknn_model: str = _s(
        "",
        "backend `rknn`: folder of the converted vision model (`.rknn` + manifest, README "
        "\"Rockchip NPU\"); empty: the one converted for this checkpoint and chip in the cache",
        E,
    )  # fmt: skip
    npu_core_mask: str = _s(
        "auto",
        "backend `rknn`: NPU cores the vision model runs on (`0_1_2`: all three of an RK3588; "
        "the chip's own count is checked at start-up)",
        E, choices=tuple(CORE_MASKS),
    )  # fmt: skip
    remote_url: str = _s(
        "",
        "backend `remote`: base URL of the OpenAI-compatible server (vLLM, SGLang, TGI, "
        "llama-server), e.g. `http://gpu-server:8000/v1`",
        R,
    )  # fmt: skip
    remote_model: str = _s(
        "", "backend `remote`: the server's model name; empty: the first `/v1/models` lists", R
    )
    remote_api_key_file: str = _s(
        "",
        "backend `remote`: a file holding the API key (never the key itself: parameters "
        "are readable by anyone on the ROS graph)",
        R,
    )  # fmt: skip
    remote_api_key_env: str = _s(
        "", "backend `remote`: or the name of an environment variable holding the API key", R
    )
    remote_ca_bundle: str = _s(
        "",
        "backend `remote`: PEM file of the CAs to trust for https (verification is always "
        "on); empty: the system's trust store",
        R,
    )  # fmt: skip
    remote_images: str = _s(
        "frame",
        "backend `remote`: `frame`: each frame as one image (the server tiles it); `tiles`: "
        "the engine's tile grid and the global image as separate images",
        R, choices=IMAGE_MODES,
    )  # fmt: skip
    remote_image_format: str = _s(
        "jpeg", "backend `remote`: how images travel (base64 data URLs)", R, choices=IMAGE_FORMATS
    )
    remote_jpeg_quality: int = _s(90, "backend `remote`: JPEG quality", R, minimum=1, maximum=100)
    remote_image_max_edge: int = _s(
        1024,
        "backend `remote`: images are scaled down to this longest edge before sending; `0`: "
        "as they are",
        R, minimum=0, maximum=16384,
    )  # fmt: skip
    remote_max_concurrency: int = _s(
        4,
        "backend `remote`: requests this node has in flight at once (a batch of cameras goes "
        "out together; the server batches them)",
        R, minimum=1, maximum=256,
    )  # fmt: skip
    remote_timeout_s: float = _s(
        30.0,
        "backend `remote`: a request's time limit when it has no deadline of its own "
        "(questions carry theirs)",
        R, minimum=0.1, maximum=3600.0,
    )  # fmt: skip
    remote_retries: int = _s(
        2,
        "backend `remote`: retries after a 5xx or a connection error, with backoff (a 4xx "
        "is never retried)",
        R, minimum=0, maximum=10,
    )  # fmt: skip
    remote_breaker_failures: int = _s(
        3,
        "backend `remote`: failed requests in a row that open the circuit: requests then "
        "fail at once and /diagnostics says ERROR until the server answers again",
        R, minimum=1, maximum=1000,
    )  # fmt: skip
    remote_breaker_reset_s: float = _s(
        5.0,
        "backend `remote`: how long the circuit stays open before one request probes the "
        "server",
        R, minimum=0.1, maximum=3600.0,
    )  # fmt: skip
    image_splitting: bool = _s(
        False,
        "`false`: one 512 px image per frame (64 image tokens for 256M/500M); `true`: a grid "
        "of 512 px tiles chosen from the frame's own resolution plus one global image (far "
        "slower)",
        T,
    )  # fmt: skip
    image_longest_edge: int = _s(
        0,
        "cap on the resized longest edge in px; `0`: the checkpoint's (2048 for 256M/500M)",
        T, minimum=0, maximum=8192,
    )  # fmt: skip
    max_tiles: int = _s(
        0,
        "cap on grid tiles per frame; the grid shrinks to fit and `provenance.tiling_note` "
        "says so; `0`: no cap",
        T, minimum=0, maximum=1024,
    )  # fmt: skip
    max_image_tokens: int = _s(
        0,
        "image-token budget per frame, enforced the same way; `0`: none",
        T, minimum=0, maximum=1_000_000,
    )  # fmt: skip
    allow_upsampling: bool = _s(
        False,
        "resize small frames UP to the longest edge first, as the reference processor does "
        "(a 640x480 frame becomes 12 tiles + 1 = 832 image tokens)",
        T,
    )  # fmt: skip
    caption_rate_hz: float = _s(
        1.0,
        "captions per second per camera, at most (in mosaic mode: mosaics per second); `0`: "
        "no periodic captions",
        S, minimum=0.0, maximum=1000.0, live=True,
    )  # fmt: skip
    camera_rates_hz: tuple[float, ...] = _s(
        (),
        "one rate per image topic, in order, overriding `caption_rate_hz`; empty: unset",
        S, item=float, minimum=0.0, maximum=1000.0, live=True,
    )  # fmt: skip
    camera_priorities: tuple[float, ...] = _s(
        (),
        "one share per image topic when cameras compete for the model (2 gets twice the turns "
        "of 1); empty: equal",
        S, item=float, minimum=0.001, maximum=1000.0,
    )  # fmt: skip
    max_frame_age_s: float = _s(
        0.0,
        "drop frames older than this, by header stamp against ROS time; `0`: no limit",
        S, minimum=0.0, maximum=86400.0, live=True,
    )  # fmt: skip
    change_threshold: float = _s(
        0.0,
        "skip frames that changed less than this since the camera's last caption (mean "
        "absolute difference of 32x24 grey thumbnails, 0-255; sensor noise ~1, a new scene "
        "tens); `0`: off",
        S, minimum=0.0, maximum=255.0, live=True,
    )  # fmt: skip
    mosaic: bool = _s(
        False,
        "caption all cameras' latest frames together as one labelled grid; `Caption.camera` "
        "lists them, comma-separated",
        S,
    )  # fmt: skip
    qos_reliability: str = _s(
        "best_effort",
        "image subscriptions: `best_effort` (sensor data, as camera drivers publish) or "
        "`reliable`",
        N, choices=QOS_RELIABILITY,
    )  # fmt: skip
    qos_depth: int = _s(
        5, "image subscriptions' queue depth (only the newest frame is used)", N, minimum=1,
        maximum=1000,
    )  # fmt: skip
    caption_prompt: str = _s(
        DEFAULT_CAPTION_PROMPT,
        "instruction sent with each captioned frame",
        G, nonempty=True, live=True,
    )  # fmt: skip
    questions: tuple[str, ...] = _s(
        (),
        "standing questions answered about every captioned frame, on `~/answer` (the "
        "caption's image embeddings are reused); typed with a prefix: `yes_no: Q`, "
        "`count: Q`, `choice[A|B|C]: Q`, `json{SCHEMA}: Q` (see Typed answers)",
        G, item=str, nonempty=True, live=True,
    )  # fmt: skip
    max_new_tokens: int = _s(
        DEFAULT_MAX_NEW_TOKENS,
        "longest caption or answer, in tokens",
        G, minimum=1, maximum=MAX_NEW_TOKENS_LIMIT, live=True,
    )  # fmt: skip
    ask_timeout_s: float = _s(
        30.0,
        "`~/ask` fails after waiting this long (a request's own `timeout_s` comes first)",
        N, minimum=0.001, maximum=86400.0, live=True,
    )  # fmt: skip
    max_pending_questions: int = _s(
        8, "`~/ask` requests waiting at once; more are refused", N, minimum=1, maximum=1000
    )
    max_questions_per_caption: int = _s(
        2,
        "questions that may go ahead of a due caption, in a row (so a planner asking without "
        "pause cannot starve the cameras)",
        S, minimum=1, maximum=1000, live=True,
    )  # fmt: skip
    max_batch: int = _s(
        1,
        "cameras captioned together in one model pass when several are due at once (each still "
        "takes its fair turn, paced and counted as alone; not in mosaic mode): on a GPU a batch "
        "of 16 costs about as much as one caption, on a CPU each frame costs its own time, so "
        "leave 1 there",
        S, minimum=1, maximum=64, live=True,
    )  # fmt: skip
    autostart: bool = _s(
        True,
        "configure and activate at start-up; `false`: start unconfigured and wait for a lifecycle "
        "manager or `ros2 lifecycle set` (see Lifecycle)",
        N,
    )  # fmt: skip
    watchdog_timeout_s: float = _s(
        120.0,
        "the model making no progress (no token, no finished request) this long means it is "
        "stuck: the node exits with code 2 for its supervisor to restart it; `0`: never. Set "
        "it above your slowest vision encoding",
        N, minimum=0.0, maximum=86400.0, live=True,
    )  # fmt: skip

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: Settings | None = None) -> Settings:
        """Settings from loose values (a YAML file, ROS parameters, flags) on top of ``base``
        (default: the defaults); unknown names are refused, as a typo must not go unnoticed."""
        table = schema()
        unknown = sorted(set(values) - set(table))
        if unknown:
            raise SettingsError(
                f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(table)}"
            )
        coerced = {name: table[name].coerce(value) for name, value in values.items()}
        return replace(base or cls(), **coerced).validate()

    def validate(self) -> Settings:
        """Return self, or raise :class:`SettingsError` naming the setting and the fix."""
        for setting in schema().values():
            setting.check(getattr(self, setting.name))
        topics = [t.strip() for t in self.image_topics]
        if not topics:
            raise SettingsError("image_topics must list at least one topic")
        if len(set(topics)) != len(topics):
            raise SettingsError(f"image_topics lists a topic twice: {topics}")
        for name in ("camera_rates_hz", "camera_priorities"):
            values = getattr(self, name)
            if values and len(values) != len(topics):
                raise SettingsError(
                    f"{name} has {len(values)} values for {len(topics)} image_topics: "
                    "give one per topic, in the same order (or none)"
                )
        try:
            self.tiling().validate()
        except TilingError as err:
            raise SettingsError(str(err)) from err
        for entry in self.questions:
            try:
                parse_standing(entry)
            except ValueError as err:
                raise SettingsError(f"questions: {err}") from None
        if self.backend == "remote":
            try:
                self.remote().validate()
            except RemoteConfigError as err:
                raise SettingsError(str(err)) from err
        return self

    # -- what the core takes -------------------------------------------------------------------

    def tiling(self) -> TilingConfig:
        """The engine's tiling settings (0 here means: no limit)."""
        return TilingConfig(
            image_splitting=self.image_splitting,
            longest_edge=self.image_longest_edge or None,
            max_tiles=self.max_tiles or None,
            max_image_tokens=self.max_image_tokens or None,
            allow_upsampling=self.allow_upsampling,
        )

    def remote(self) -> RemoteOptions:
        """The remote backend's options (used when ``backend`` is ``remote``)."""
        return RemoteOptions(
            url=self.remote_url,
            model=self.remote_model,
            api_key_file=self.remote_api_key_file,
            api_key_env=self.remote_api_key_env,
            ca_bundle=self.remote_ca_bundle,
            image_format=self.remote_image_format,
            jpeg_quality=self.remote_jpeg_quality,
            image_max_edge=self.remote_image_max_edge,
            image_mode=self.remote_images,
            max_concurrency=self.remote_max_concurrency,
            timeout_s=self.remote_timeout_s,
            retries=self.remote_retries,
            breaker_failures=self.remote_breaker_failures,
            breaker_reset_s=self.remote_breaker_reset_s,
        )

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            model=self.model,
            backend=self.backend,
            device=self.device,
            dtype=self.dtype,
            compile=self.compile,
            cpu_threads=self.cpu_threads,
            quantization=self.quantization,
            remote=self.remote() if self.backend == "remote" else None,
            rknn_model=self.rknn_model,
            npu_core_mask=self.npu_core_mask,
            tiling=self.tiling(),
            # A batch of cameras with standing questions reuses every frame's encoding.
            embedding_cache_size=max(DEFAULT_EMBEDDING_CACHE, self.max_batch),
        )

    def captions(self) -> CaptionSettings:
        return CaptionSettings(self.caption_prompt, self.max_new_tokens, self.questions)

    def camera_configs(self, names: list[str]) -> list[CameraConfig]:
        """Scheduling of each camera, ``names`` being the topics as the node resolved them."""
        rates = self.camera_rates_hz or (self.caption_rate_hz,) * len(names)
        priorities = self.camera_priorities or (1.0,) * len(names)
        return [
            CameraConfig(name, rate, priority)
            for name, rate, priority in zip(names, rates, priorities, strict=True)
        ]


@functools.cache
def schema() -> dict[str, Setting]:
    """Every setting by name, in declaration order."""
    return {
        f.name: Setting(f.name, type(f.default), f.default, f.metadata["spec"])
        for f in fields(Settings)
    }


def names_in(*groups: Group) -> list[str]:
    """The settings of ``groups``, in declaration order."""
    return [s.name for s in schema().values() if s.spec.group in groups]


LIVE = tuple(name for name, s in schema().items() if s.spec.live)
