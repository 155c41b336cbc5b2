"""Change gating: skip a frame whose scene barely changed since the camera's last caption.

A parked robot looking at a wall need not describe the wall every second. The measure is cheap
on purpose (about a millisecond): the mean absolute difference, on a 0-255 scale, between 32x24
greyscale thumbnails of the frame and of the last captioned frame of the same camera.
Sensor noise scores ~1, a person walking into view several units, a new scene tens.
"""

from __future__ import annotations

import cv2
import numpy as np

THUMBNAIL = (32, 24)  # width, height


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return cv2.resize(grey, THUMBNAIL, interpolation=cv2.INTER_AREA).astype(np.float32)


def scene_change(a: np.ndarray, b: np.ndarray) -> float:
    """How different two frames look, 0 (same) to 255."""
    return float(np.abs(thumbnail(a) - thumbnail(b)).mean())


class ChangeGate:
    """Remembers each camera's last captioned thumbnail; ``threshold`` 0 lets everything pass."""

    def __init__(self, threshold: float) -> None:
        if threshold < 0:
            raise ValueError(f"change threshold must be >= 0 (0 = off), got {threshold}")
        self.threshold = threshold
        self._last: dict[str, np.ndarray] = {}

    def admit(self, camera: str, rgb: np.ndarray) -> bool:
        """True (and remembered) if the frame differs enough from the last admitted one."""
        if self.threshold <= 0:
            return True
        thumb = thumbnail(rgb)
        last = self._last.get(camera)
        if last is not None and float(np.abs(thumb - last).mean()) < self.threshold:
            return False
        self._last[camera] = thumb
        return True
