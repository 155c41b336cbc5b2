"""Calibration inputs for static int8 quantisation of the vision encoder: real photographs.

Static quantisation fixes each activation's int8 range from sample inputs, so the samples must
look like what the robot sends: the five scikit-image photographs (:mod:`smolvlm_ros.photos`),
each preprocessed by the checkpoint's own image processor exactly as the engine does it, once as
one global image (image splitting off, the default) and once split into a 2x2 grid plus the
global image (splitting on, where tiles are crops at full resolution).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from smolvlm_ros.photos import PHOTO_NAMES

PHOTOS = PHOTO_NAMES
SPLIT_TILES = 4  # the split sample's grid, capped (a 3x4 grid would triple calibration time)


def vision_samples(processor: Any, patch_size: int) -> list[dict[str, np.ndarray]]:
    """Vision-graph inputs (``pixel_values``, ``patch_attention_mask``) for every photograph,
    unsplit and split. Needs scikit-image (the photographs ship with it)."""
    import PIL.Image

    from smolvlm_ros.engine.export.graphs import patch_mask
    from smolvlm_ros.engine.tiling import ModelGeometry, TilingConfig, plan_tiles
    from smolvlm_ros.photos import photo

    geometry = ModelGeometry.from_processor(processor)
    samples = []
    for name in PHOTOS:
        image = photo(name)
        for config in (TilingConfig(), TilingConfig(image_splitting=True, max_tiles=SPLIT_TILES)):
            plan = plan_tiles(*image.shape[:2], config, geometry)
            pixels = processor.image_processor(
                images=[[PIL.Image.fromarray(image)]],
                size={"longest_edge": plan.longest_edge},
                do_image_splitting=plan.splitting,
                return_tensors="pt",
            )
            samples.append(
                {
                    "pixel_values": pixels["pixel_values"][0].float().numpy(),
                    "patch_attention_mask": patch_mask(
                        pixels["pixel_attention_mask"][0], patch_size
                    ).numpy(),
                }
            )
    return samples
