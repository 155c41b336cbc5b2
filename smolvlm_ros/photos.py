"""Real sample photographs for demos, tests and the benchmark, without a download or ROS.

The photographs are the ones scikit-image ships (astronaut, coffee, cat, rocket, motorcycle).
Each is centre-cropped to 4:3 and resized to 640x480, like a typical robot camera.
"""

from __future__ import annotations

import cv2
import numpy as np

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle")
WIDTH, HEIGHT = 640, 480


def photo(name: str, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A scikit-image sample photograph as HxWx3 uint8 RGB, centre-cropped and resized."""
    import skimage.data

    if name not in PHOTO_NAMES:
        raise ValueError(f"unknown photo {name!r}: expected one of {', '.join(PHOTO_NAMES)}")
    rgb = (
        skimage.data.stereo_motorcycle()[0]
        if name == "motorcycle"
        else getattr(skimage.data, name)()
    )
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, axis=-1)
    rgb = rgb[..., :3]
    h, w = rgb.shape[:2]
    target = width / height
    if w / h > target:  # too wide: crop the sides
        new_w = round(h * target)
        rgb = rgb[:, (w - new_w) // 2 : (w - new_w) // 2 + new_w]
    else:  # too tall: crop top and bottom
        new_h = round(w / target)
        rgb = rgb[(h - new_h) // 2 : (h - new_h) // 2 + new_h]
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
