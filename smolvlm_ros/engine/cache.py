"""Image embeddings kept per frame, so one frame costs one vision pass however often it is asked
about (a caption, then questions from a planner, then standing questions)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np


def frame_key(image: np.ndarray, plan: Any) -> tuple:
    """Identifies pixels + tiling: the same image tiled differently is a different encoding."""
    digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest()
    return (digest, image.shape, plan)


class EmbeddingCache:
    """A small least-recently-used map from :func:`frame_key` to image embeddings."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"embedding cache capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[tuple, Any] = OrderedDict()

    def get(self, key: tuple) -> Any | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: tuple, value: Any) -> None:
        if self.capacity == 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
