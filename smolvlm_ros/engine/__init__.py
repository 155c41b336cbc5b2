"""The model work, free of ROS: frames and prompts in, results with timing and provenance out."""

from smolvlm_ros.engine.engine import (
    DEFAULT_CAPTION_PROMPT,
    DEFAULT_MAX_NEW_TOKENS,
    Engine,
    EngineConfig,
)
from smolvlm_ros.engine.types import ANSWER, CAPTION, Frame, Result, Timing

__all__ = [
    "ANSWER",
    "CAPTION",
    "DEFAULT_CAPTION_PROMPT",
    "DEFAULT_MAX_NEW_TOKENS",
    "Engine",
    "EngineConfig",
    "Frame",
    "Result",
    "Timing",
]
