"""Tiling plans: no silent upsampling, grids from the frame's resolution, caps with reasons."""

from __future__ import annotations

import pytest

from smolvlm_ros.engine.tiling import ModelGeometry, TilingConfig, TilingError, plan_tiles

SMALL = ModelGeometry(tile_size=512, processor_longest_edge=2048, tokens_per_tile=64)  # 256M


def plan(h, w, **config):
    return plan_tiles(h, w, TilingConfig(**config).validate(), SMALL)


def test_splitting_off_is_one_image_and_never_upsamples():
    p = plan(480, 640)
    assert (p.splitting, p.rows, p.cols, p.num_images, p.image_tokens) == (False, 0, 0, 1, 64)
    assert p.longest_edge == 640  # not the reference's 2048


def test_reference_upsamples_a_vga_frame_to_832_tokens():
    p = plan(480, 640, image_splitting=True, allow_upsampling=True)
    assert (p.rows, p.cols, p.num_images, p.image_tokens) == (3, 4, 13, 832)


def test_without_upsampling_a_vga_frame_is_one_tile():
    p = plan(480, 640, image_splitting=True)
    assert (p.splitting, p.longest_edge, p.num_images, p.image_tokens) == (True, 512, 1, 64)


@pytest.mark.parametrize(
    ("size", "grid"),
    [((1080, 1920), (2, 3)), ((720, 1280), (2, 2)), ((2048, 2048), (4, 4)), ((3000, 4000), (3, 4))],
)
def test_grid_follows_the_frames_real_resolution(size, grid):
    p = plan(*size, image_splitting=True)
    assert (p.rows, p.cols) == grid
    assert p.longest_edge <= max(size)


def test_max_tiles_shrinks_the_grid_and_says_so():
    p = plan(2048, 2048, image_splitting=True, max_tiles=4)
    assert (p.rows, p.cols) == (2, 2)
    assert p.note == "grid reduced to fit max_tiles=4"


def test_token_budget_shrinks_the_grid_down_to_one_image():
    p = plan(2048, 2048, image_splitting=True, max_image_tokens=64 * 5)
    assert (p.rows, p.cols, p.image_tokens) == (2, 2, 320)
    assert p.note == "grid reduced to fit max_image_tokens=320"
    single = plan(2048, 2048, image_splitting=True, max_image_tokens=100)
    assert (single.num_images, single.image_tokens) == (1, 64)
    assert single.note == "grid reduced to fit max_image_tokens=100"


def test_both_limits_are_named():
    p = plan(2048, 2048, image_splitting=True, max_tiles=9, max_image_tokens=64 * 5)
    assert p.note == "grid reduced to fit max_tiles=9 and max_image_tokens=320"


def test_a_budget_below_one_image_is_refused():
    with pytest.raises(TilingError, match="max_image_tokens 10 is below one image"):
        plan(480, 640, max_image_tokens=10)


def test_longest_edge_caps_the_grid():
    p = plan(2048, 2048, image_splitting=True, longest_edge=1024)
    assert (p.rows, p.cols) == (2, 2)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"longest_edge": 0}, "longest_edge must be a positive"),
        ({"max_tiles": 0}, "max_tiles must be at least 1"),
        ({"max_image_tokens": -5}, "max_image_tokens must be at least 1"),
    ],
)
def test_bad_settings_are_refused(config, message):
    with pytest.raises(TilingError, match=message):
        TilingConfig(**config).validate()
