"""The code that talks to Rockchip's NPU runtime (``rknnlite.api.RKNNLite``), and the input it
is given.

Why a module of its own, importing numpy only: the same code has to run in two places, in the
node on the board (through rknn-toolkit-lite2) and on a workstation through rknn-toolkit2's
simulator (``make test-npu``, in ``.venv-rknn``, which has neither transformers nor this
package's dependencies), so the simulator test loads this file by path and drives exactly this
code. Nothing else here may be imported.

RKNNLite reports failure by returning ``-1`` (``load_rknn``, ``init_runtime``) or ``None``
(``inference``), never by raising; a node that ignored one would publish captions made from
garbage. :func:`checked` turns every such return into an :class:`RKNNError` naming the model
file and the step, with what usually causes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# RKNNLite.NPU_CORE_* values (rknn-toolkit-lite2 2.5.0), by the names the settings use.
CORE_MASKS = {"auto": 0, "0": 1, "1": 2, "2": 4, "0_1": 3, "0_1_2": 7}
# NPU cores per platform: a mask naming a core the chip lacks fails in init_runtime.
PLATFORM_CORES = {"rk3588": 3, "rk3576": 2, "rk3568": 1, "rk3562": 1}
PLATFORMS = tuple(PLATFORM_CORES)

# What usually causes each step to fail, so the error says where to look.
_HINTS = {
    "load_rknn": "the file is missing, truncated or not an .rknn model",
    "init_runtime": (
        "the model was converted for another platform, librknnrt is older than the toolkit "
        "that converted it, the NPU driver is not loaded, or the core mask names a core this "
        "chip lacks"
    ),
    "inference": "the input does not match the model's static shape, or the NPU driver failed",
}


class RKNNError(RuntimeError):
    """The NPU runtime refused a step; the message names the model file and the step."""


def checked(result: Any, path: str | Path, step: str) -> Any:
    """``result`` of RKNNLite's ``step`` on ``path``, or an RKNNError if it reports failure
    (``-1`` or any other non-zero int from load/init, ``None`` from inference)."""
    failed = result is None or (isinstance(result, int) and result != 0)
    if failed:
        hint = _HINTS.get(step, "see the runtime's log above")
        raise RKNNError(f"RKNNLite.{step} failed for {path} (returned {result!r}): {hint}")
    return result


def core_mask_value(name: str, platform: str) -> int:
    """The RKNNLite core-mask value for a setting (``auto``, ``0``, ``0_1``, ``0_1_2``, ...)
    on ``platform``; ValueError naming the choices when the chip cannot honour it."""
    if name not in CORE_MASKS:
        raise ValueError(f"npu core mask {name!r}: expected one of {', '.join(CORE_MASKS)}")
    cores = PLATFORM_CORES.get(platform)
    if cores is None:
        raise ValueError(f"platform {platform!r}: expected one of {', '.join(PLATFORMS)}")
    if cores == 1 and name != "auto":
        raise ValueError(f"{platform} has one NPU core: its core mask can only be 'auto'")
    highest = max((int(c) for c in name.split("_")), default=0) if name != "auto" else 0
    if highest >= cores:
        usable = [n for n in CORE_MASKS if n == "auto" or max(map(int, n.split("_"))) < cores]
        raise ValueError(
            f"npu core mask {name!r} names core {highest}, but {platform} has {cores} NPU "
            f"cores: use one of {', '.join(usable)}"
        )
    return CORE_MASKS[name]


def to_nhwc_uint8(
    pixel_values: np.ndarray,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> np.ndarray:
    """The engine's tiles (``[n, 3, T, T]`` float, already rescaled by 1/255 and normalised by
    the checkpoint's processor) -> ``[n, T, T, 3]`` uint8, what the converted model takes: its
    normalisation is baked in (mean/std x 255), so the NPU gets a quarter of the bytes and does
    the arithmetic itself. The processor resizes 8-bit images, so the inverse is exact; a value
    more than 0.01 off an integer means the tiles were not made the way the model expects."""
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        raise ValueError(f"tiles must be [n, 3, T, T], got {list(pixel_values.shape)}")
    scale = np.asarray(std, np.float64)[None, :, None, None] * 255.0
    shift = np.asarray(mean, np.float64)[None, :, None, None] * 255.0
    pixels = pixel_values.astype(np.float64) * scale + shift
    rounded = np.rint(pixels)
    error = float(np.abs(pixels - rounded).max()) if pixels.size else 0.0
    if error > 0.01 or rounded.min(initial=0) < 0 or rounded.max(initial=0) > 255:
        raise ValueError(
            "tiles are not 8-bit pixels normalised with the checkpoint's mean/std (off by "
            f"{error:.3f}, range {rounded.min():.0f}..{rounded.max():.0f}): the .rknn model "
            "has that normalisation baked in"
        )
    return np.ascontiguousarray(rounded.astype(np.uint8).transpose(0, 2, 3, 1))


class RKNNLiteRunner:
    """One loaded .rknn model on the NPU: tiles in, embeddings out.

    ``runtime`` makes the RKNNLite object (on the board: ``rknnlite.api.RKNNLite``; in the
    simulator test, an adapter over rknn-toolkit2 with the same methods). The model takes one
    tile (static ``[1, T, T, 3]`` uint8); a frame's tiles run one after another.
    """

    def __init__(
        self,
        path: str | Path,
        core_mask: int,
        runtime: Callable[[], Any],
        input_shape: Sequence[int],
    ) -> None:
        self.path = str(path)
        self.input_shape = tuple(input_shape)  # [1, T, T, 3]
        self.lite = runtime()
        try:
            checked(self.lite.load_rknn(self.path), self.path, "load_rknn")
            checked(self.lite.init_runtime(core_mask=core_mask), self.path, "init_runtime")
        except BaseException:
            self.release()
            raise

    def run(self, tiles: np.ndarray) -> np.ndarray:
        """``[n, T, T, 3]`` uint8 -> the model's output for each tile, stacked on axis 0."""
        if tiles.dtype != np.uint8 or tuple(tiles.shape[1:]) != self.input_shape[1:]:
            raise ValueError(
                f"{self.path} takes uint8 tiles of {list(self.input_shape[1:])}, got "
                f"{tiles.dtype} {list(tiles.shape[1:])}"
            )
        outputs = []
        for tile in tiles:
            result = checked(
                self.lite.inference(inputs=[tile[None]], data_format="nhwc"),
                self.path,
                "inference",
            )
            if len(result) != 1:
                raise RKNNError(
                    f"RKNNLite.inference on {self.path} returned {len(result)} outputs, "
                    "expected 1 (image embeddings): a model from another export?"
                )
            outputs.append(np.asarray(result[0], dtype=np.float32))
        return np.concatenate(outputs)

    def release(self) -> None:
        """Free the NPU context (the runtime keeps it until released or the process ends)."""
        lite, self.lite = getattr(self, "lite", None), None
        if lite is not None:
            lite.release()
