"""How a frame becomes vision-encoder tiles: validated settings and a plan per frame.

The reference processor first resizes every frame so its longest edge is the checkpoint's
``size.longest_edge`` (2048 px for 256M/500M), UPSAMPLING small frames: a 640x480 camera frame
becomes 12 tiles + 1 global image = 832 image tokens. A robot rarely wants that. Here the
longest edge is never raised above the frame's own (unless ``allow_upsampling``), a tile grid
is chosen from the frame's real resolution, and a tile cap and an image-token budget shrink the
grid with a stated reason instead of running out of memory. The plan is then carried out by the
checkpoint's own processor (``size={"longest_edge": plan.longest_edge}``), so pixels and image
tokens are exactly the reference's for those settings.
"""

from __future__ import annotations

from dataclasses import dataclass


class TilingError(ValueError):
    """The settings or the token budget leave no way to encode the frame; the text says why."""


@dataclass(frozen=True)
class TilingConfig:
    """User-facing tiling settings (node parameters, replay and bench options)."""

    # False: one tile-sized image per frame (64 image tokens for 256M/500M).
    image_splitting: bool = False
    # Cap on the resized longest edge; None: the checkpoint's own (2048 px for 256M/500M).
    longest_edge: int | None = None
    # Cap on grid tiles (the global image not counted); None: no cap.
    max_tiles: int | None = None
    # Reference behaviour: resize small frames UP to longest_edge before splitting.
    allow_upsampling: bool = False
    # Refuse more image tokens than this per frame, shrinking the grid first; None: no budget.
    max_image_tokens: int | None = None

    def validate(self) -> TilingConfig:
        if self.longest_edge is not None and self.longest_edge < 1:
            raise TilingError(
                f"longest_edge must be a positive number of pixels, got {self.longest_edge}"
            )
        if self.max_tiles is not None and self.max_tiles < 1:
            raise TilingError(f"max_tiles must be at least 1, got {self.max_tiles}")
        if self.max_image_tokens is not None and self.max_image_tokens < 1:
            raise TilingError(f"max_image_tokens must be at least 1, got {self.max_image_tokens}")
        return self


@dataclass(frozen=True)
class TilePlan:
    """What one frame will be encoded as."""

    splitting: bool
    longest_edge: int  # the processor's size.longest_edge for this frame
    rows: int  # 0 x 0: no grid, the global image only
    cols: int
    image_tokens: int
    note: str = ""  # why the plan is smaller than the settings asked for, if it is

    @property
    def num_images(self) -> int:
        return self.rows * self.cols + 1 if self.rows else 1


@dataclass(frozen=True)
class ModelGeometry:
    """The checkpoint facts tiling depends on, read off its processor."""

    tile_size: int  # max_image_size.longest_edge: the vision encoder's input size
    processor_longest_edge: int  # size.longest_edge
    tokens_per_tile: int  # image_seq_len

    @classmethod
    def from_processor(cls, processor) -> ModelGeometry:
        image_processor = processor.image_processor
        return cls(
            tile_size=int(image_processor.max_image_size["longest_edge"]),
            processor_longest_edge=int(image_processor.size["longest_edge"]),
            tokens_per_tile=int(processor.image_seq_len),
        )


def _grid(height: int, width: int, longest_edge: int, tile: int) -> tuple[int, int]:
    """Rows and columns the reference processor makes (its arithmetic, integer for integer)."""
    # 1. resize so the longest edge is `longest_edge` (an odd short side is rounded up to even)
    aspect = width / height
    if width >= height:
        width = longest_edge
        height = int(width / aspect)
        height += height % 2
    else:
        height = longest_edge
        width = int(height * aspect)
        width += width % 2
    height, width = max(height, 1), max(width, 1)
    # 2. resize for the vision encoder: the long side up to a multiple of the tile, the short
    #    side from the aspect ratio, then up to a multiple of the tile too
    aspect = width / height
    if width >= height:
        width = -(-width // tile) * tile
        height = -(-int(width / aspect) // tile) * tile
    else:
        height = -(-height // tile) * tile
        width = -(-int(height * aspect) // tile) * tile
    # 3. split only when bigger than one tile
    if height > tile or width > tile:
        return height // tile, width // tile
    return 0, 0


def plan_tiles(height: int, width: int, config: TilingConfig, geometry: ModelGeometry) -> TilePlan:
    """How a ``height`` x ``width`` frame is tiled under ``config``; TilingError if it cannot be."""
    if height < 1 or width < 1:
        raise TilingError(f"frame is empty ({width}x{height})")
    tile = geometry.tile_size
    per_tile = geometry.tokens_per_tile
    budget = config.max_image_tokens
    if budget is not None and budget < per_tile:
        raise TilingError(
            f"max_image_tokens {budget} is below one image ({per_tile} tokens for this model)"
        )
    cap = min(
        config.longest_edge or geometry.processor_longest_edge, geometry.processor_longest_edge
    )
    frame_edge = max(height, width)

    if not config.image_splitting:
        # One tile-sized global image; only the intermediate resize depends on the edge.
        edge = cap if config.allow_upsampling else min(cap, frame_edge)
        return TilePlan(False, edge, 0, 0, per_tile)

    # Without upsampling: the largest multiple of the tile size within the frame, so the grid's
    # tiles are never finer than the camera's pixels (one tile at least).
    edge = cap if config.allow_upsampling else max(tile, min(cap, frame_edge) // tile * tile)

    # Shrink the edge one tile at a time until the grid fits. This ends: at one tile's edge the
    # frame is a single image (no grid) of per_tile tokens, within any valid budget and cap.
    reasons: list[str] = []
    while True:
        rows, cols = _grid(height, width, edge, tile)
        tokens = (rows * cols + 1) * per_tile if rows else per_tile
        too_many_tiles = config.max_tiles is not None and rows * cols > config.max_tiles
        over_budget = budget is not None and tokens > budget
        if not (too_many_tiles or over_budget):
            break
        reason = f"max_tiles={config.max_tiles}" if too_many_tiles else f"max_image_tokens={budget}"
        if reason not in reasons:
            reasons.append(reason)
        edge -= tile
    note = "grid reduced to fit " + " and ".join(reasons) if reasons else ""
    return TilePlan(True, edge, rows, cols, tokens, note)
