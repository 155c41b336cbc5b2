"""Backends: where each model stage runs. See :mod:`smolvlm_ros.engine.backends.base` (the
seam) and :mod:`smolvlm_ros.engine.backends.registry` (names, capabilities, ``auto``); every
other module here is a backend that registers itself when discovered."""

from smolvlm_ros.engine.backends.base import (
    Backend,
    BackendOptions,
    Generation,
    GenerationRequest,
    LanguageStage,
    Sampling,
    VisionStage,
)
from smolvlm_ros.engine.backends.registry import (
    BackendChoice,
    BackendError,
    BackendSpec,
    Capability,
    choose,
    module_check,
    register,
)

__all__ = [
    "Backend",
    "BackendChoice",
    "BackendError",
    "BackendOptions",
    "BackendSpec",
    "Capability",
    "Generation",
    "GenerationRequest",
    "LanguageStage",
    "Sampling",
    "VisionStage",
    "choose",
    "module_check",
    "register",
]
