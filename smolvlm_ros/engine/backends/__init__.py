"""Backends: where each model stage runs. See :mod:`smolvlm_ros.engine.backends.base`."""

from smolvlm_ros.engine.backends.base import Backend, Generation, LanguageStage, VisionStage

BACKENDS = ("torch",)

__all__ = ["BACKENDS", "Backend", "Generation", "LanguageStage", "VisionStage"]
