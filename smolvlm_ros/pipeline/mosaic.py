"""Mosaic mode: the latest frames of several cameras in one labelled grid image, so one inference
describes all of them (the result lists the cameras, in grid order)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

CELL = (512, 384)  # width, height of one camera's cell (4:3, one model tile wide)
LABEL_HEIGHT = 28


def _fit(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize keeping the aspect ratio, centred on black."""
    h, w = rgb.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=interpolation)
    cell = np.zeros((height, width, 3), np.uint8)
    y, x = (height - new_h) // 2, (width - new_w) // 2
    cell[y : y + new_h, x : x + new_w] = resized
    return cell


def compose_mosaic(images: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
    """A near-square grid, row by row, each cell captioned with its label on a dark bar."""
    if not images or len(images) != len(labels):
        raise ValueError("a mosaic needs one label per image, and at least one image")
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    width, height = CELL
    canvas = np.zeros((rows * height, cols * width, 3), np.uint8)
    for index, (rgb, label) in enumerate(zip(images, labels, strict=True)):
        r, c = divmod(index, cols)
        cell = _fit(rgb, width, height - LABEL_HEIGHT)
        canvas[r * height + LABEL_HEIGHT : (r + 1) * height, c * width : (c + 1) * width] = cell
        cv2.putText(
            canvas,
            label,
            (c * width + 6, r * height + LABEL_HEIGHT - 8),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.6,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return canvas
