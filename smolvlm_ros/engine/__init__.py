"""The model work, free of ROS: frames and prompts in, results with timing and provenance out."""

from smolvlm_ros.engine.backends.base import Sampling
from smolvlm_ros.engine.backends.registry import (
    BackendChoice,
    BackendError,
    Capability,
    backend_names,
    backend_problems,
)
from smolvlm_ros.engine.engine import (
    DEFAULT_CAPTION_PROMPT,
    DEFAULT_MAX_NEW_TOKENS,
    DeadlineExceeded,
    Engine,
    EngineConfig,
    Limits,
    TokenBudgetError,
)
from smolvlm_ros.engine.tiling import TilePlan, TilingConfig, TilingError
from smolvlm_ros.engine.types import (
    ANSWER,
    CAPTION,
    FINISH_CANCELLED,
    FINISH_DEADLINE,
    FINISH_LENGTH,
    FINISH_STOP,
    Frame,
    Result,
    Timing,
)

__all__ = [
    "ANSWER",
    "CAPTION",
    "DEFAULT_CAPTION_PROMPT",
    "DEFAULT_MAX_NEW_TOKENS",
    "FINISH_CANCELLED",
    "FINISH_DEADLINE",
    "FINISH_LENGTH",
    "FINISH_STOP",
    "BackendChoice",
    "BackendError",
    "Capability",
    "DeadlineExceeded",
    "Engine",
    "EngineConfig",
    "Frame",
    "Limits",
    "Result",
    "Sampling",
    "TilePlan",
    "TilingConfig",
    "TilingError",
    "Timing",
    "TokenBudgetError",
    "backend_names",
    "backend_problems",
]
