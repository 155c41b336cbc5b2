"""Backends: where each model stage runs. See :mod:`smolvlm_ros.engine.backends.base`."""

from smolvlm_ros.engine.backends.base import (
    Backend,
    Generation,
    GenerationRequest,
    LanguageStage,
    Sampling,
    VisionStage,
)

__all__ = ["Backend", "Generation", "GenerationRequest", "LanguageStage", "Sampling", "VisionStage"]
