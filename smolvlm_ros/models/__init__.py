"""What a SmolVLM is (shapes, token ids) and where one comes from (hub, disk, random build)."""

from smolvlm_ros.models.loading import (
    DEFAULT_MODEL,
    LoadedModel,
    ModelLoadError,
    load_model,
    resolve_model_path,
)
from smolvlm_ros.models.shapes import SHAPES, ModelShape, get_shape

__all__ = [
    "DEFAULT_MODEL",
    "SHAPES",
    "LoadedModel",
    "ModelLoadError",
    "ModelShape",
    "get_shape",
    "load_model",
    "resolve_model_path",
]
