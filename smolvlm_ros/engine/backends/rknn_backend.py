"""The vision stage on a Rockchip NPU (rknn-toolkit-lite2), the decoder on the board's CPU.

Why this split: the vision encoder is the compute-bound part (~200 GFLOP per 512 px tile for
SmolVLM-256M) and runs in fp16 on the NPU; decoding is bound by reading weights, where the
board's Cortex-A76 cores do well with OpenVINO (or torch when OpenVINO is not installed).
Rockchip's own stack runs the decoder on the NPU too, through RKLLM (librkllmrt); that is not
bound here yet (see README "Rockchip NPU").

The .rknn model comes from ``python -m smolvlm_ros.engine.export.rknn`` on a workstation: a
directory with ``vision.rknn`` and ``manifest.json``, found in the cache under
``<cache root>/rknn/`` by this checkpoint's content and the board's SoC (or named by
``BackendOptions.rknn_model``). Building the backend checks, before loading anything, that the
manifest fits this checkpoint and that the board can run it (:mod:`._rknn_board`); every
problem is raised at once as a :class:`BackendError`, so a node never half-starts.

On the NPU each tile runs on its own (the model's input is static, ``[1, T, T, 3]`` uint8, the
checkpoint's normalisation baked in): the engine's tiles are turned back into 8-bit pixels
(exactly: :func:`._rknn_runtime.to_nhwc_uint8`) and the outputs concatenated.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from smolvlm_ros.engine.backends._rknn_board import check_board, check_manifest, file_sha256
from smolvlm_ros.engine.backends._rknn_runtime import (
    CORE_MASKS,
    RKNNError,
    RKNNLiteRunner,
    core_mask_value,
    to_nhwc_uint8,
)
from smolvlm_ros.engine.backends.base import BackendOptions
from smolvlm_ros.engine.backends.registry import (
    BackendError,
    BackendSpec,
    Capability,
    module_check,
    register,
)

if TYPE_CHECKING:
    from smolvlm_ros.models.loading import LoadedModel

log = logging.getLogger(__name__)

MANIFEST, RKNN_FILE = "manifest.json", "vision.rknn"
LANGUAGES = ("openvino", "torch")  # the CPU decoder, in order of preference
INSTALL_HINT = "on the board: pip install rknn-toolkit-lite2==2.5.0 (aarch64 wheels only)"

Runtime = Callable[[], Any]  # makes an object with RKNNLite's methods


def rknnlite_runtime() -> Any:
    """The board's runtime (imported only here: it exists on aarch64 boards only)."""
    from rknnlite.api import RKNNLite

    return RKNNLite(verbose=False)


class RKNNVision:
    """Engine tiles -> image embeddings on the NPU."""

    def __init__(self, runner: RKNNLiteRunner, manifest: dict) -> None:
        self.runner = runner
        self.mean = [m / 255 for m in manifest["input"]["mean"]]
        self.std = [s / 255 for s in manifest["input"]["std"]]
        self.hidden = manifest["output"]["shape"][-1]

    def encode(
        self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor
    ) -> torch.Tensor:
        if not bool(pixel_attention_mask.all()):
            raise BackendError(
                "rknn: a tile is partly padding; the NPU model takes full tiles only (every "
                "tile the engine makes for one frame is full: were frames of different sizes "
                "batched through the processor together?)"
            )
        tiles = to_nhwc_uint8(pixel_values.float().numpy(), self.mean, self.std)
        out = self.runner.run(tiles)
        return torch.from_numpy(np.ascontiguousarray(out.reshape(-1, self.hidden)))


def find_model(loaded: LoadedModel, options: BackendOptions, platform: str | None) -> Path:
    """The conversion directory to run: the one named in the options, else this checkpoint's
    for ``platform`` in the cache (newest first when several dtypes or versions exist)."""
    from smolvlm_ros.engine.export.cache import checkpoint_digest, checkpoint_dir
    from smolvlm_ros.models.random_checkpoint import cache_root

    if options.rknn_model:
        named = Path(options.rknn_model).expanduser()
        directory = named.parent if named.suffix == ".rknn" else named
        if not (directory / MANIFEST).is_file():
            raise BackendError(f"rknn_model {named}: no {MANIFEST} there (convert, then copy)")
        return directory
    digest = checkpoint_digest(checkpoint_dir(loaded.path))
    root = cache_root() / "rknn"
    pattern = f"{digest[:16]}-{platform or '*'}-*"
    found = sorted(
        (d for d in root.glob(pattern) if (d / MANIFEST).is_file()),
        key=lambda d: (d / MANIFEST).stat().st_mtime,
        reverse=True,
    )
    if not found:
        raise BackendError(
            f"no .rknn model of {loaded.spec} for {platform or 'this board'} in {root}: on a "
            f"workstation run `python -m smolvlm_ros.engine.export.rknn --model {loaded.spec} "
            f"--platform {platform or 'rk3588'}` and copy the directory it prints to {root}/"
        )
    return found[0]


def language_stage(loaded: LoadedModel, options: BackendOptions) -> tuple[Any, str, str]:
    """The CPU decoder: OpenVINO's where it is installed, else torch's (weights loaded now).
    Returns (stage, its name, its dtype)."""
    from smolvlm_ros.engine.backends.registry import get_backend

    if get_backend("openvino").unavailable_reason() is None:
        from smolvlm_ros.engine.backends.openvino_backend import build as build_openvino

        backend = build_openvino(loaded, options, with_vision=False)  # the NPU has the vision stage
        return backend.language, backend.name, backend.dtype
    from smolvlm_ros.engine.backends.torch_backend import TorchLanguage

    loaded.ensure_weights()
    return TorchLanguage(loaded.model, "cpu"), "torch", loaded.dtype


class RKNNBackend:
    """Vision on the NPU, language on the CPU, and what to report about both."""

    def __init__(
        self,
        directory: Path,
        manifest: dict,
        runner: RKNNLiteRunner,
        core_mask: str,
        language: tuple[Any, str, str],
        runtime_version: str | None,
    ) -> None:
        stage, language_name, language_dtype = language
        self.vision = RKNNVision(runner, manifest)
        self.language = stage
        platform = manifest["platform"]
        self.name = f"rknn-{manifest['toolkit_version']}+{language_name}"
        self.device = f"npu:{platform}:{core_mask}+cpu"
        self.dtype = f"{manifest['dtype']}+{language_dtype}"
        model_file = directory / RKNN_FILE
        # What the result's provenance (backend, device, dtype) cannot hold: logged at start-up
        # and shown by front ends that report the backend in detail.
        self.provenance = {
            "backend": "rknn",
            "platform": platform,
            "core_mask": core_mask,
            "librknnrt": runtime_version,
            "language": language_name,
            "files": {str(model_file): file_sha256(model_file)},
            "converted_from": manifest["checkpoint_sha256"],
            "toolkit_version": manifest["toolkit_version"],
        }

    def close(self) -> None:
        self.vision.runner.release()


def assemble(
    loaded: LoadedModel,
    options: BackendOptions,
    runtime: Runtime,
    board_root: Path = Path("/"),
    language: Callable[[LoadedModel, BackendOptions], tuple[Any, str, str]] = language_stage,
) -> RKNNBackend:
    """Find, check and load the model with ``runtime`` (``build`` passes the board's
    RKNNLite; tests pass a stand-in and a made-up board tree as ``board_root``)."""
    from smolvlm_ros.engine.backends._rknn_board import board_platform
    from smolvlm_ros.engine.export.cache import checkpoint_digest, checkpoint_dir

    if loaded.device != "cpu":
        raise BackendError(f"rknn runs its decoder on the CPU: set device cpu, not {loaded.device}")
    if options.npu_core_mask not in CORE_MASKS:
        raise BackendError(
            f"npu_core_mask {options.npu_core_mask!r}: expected one of {', '.join(CORE_MASKS)}"
        )
    directory = find_model(loaded, options, board_platform(board_root))
    manifest = json.loads((directory / MANIFEST).read_text())
    model_file = directory / RKNN_FILE
    config = loaded.model.config
    errors = check_manifest(
        manifest,
        model_file,
        checkpoint_digest(checkpoint_dir(loaded.path)),
        int(loaded.processor.image_processor.max_image_size["longest_edge"]),
        int(loaded.processor.image_seq_len),
        int(config.text_config.hidden_size),
    )
    board = check_board(manifest, model_file, board_root)
    errors += board.errors
    try:
        mask = core_mask_value(options.npu_core_mask, manifest.get("platform", "?"))
    except ValueError as err:
        errors.append(str(err))
    if errors:
        raise BackendError("rknn cannot start:\n- " + "\n- ".join(errors))
    for warning in board.warnings:
        log.warning("rknn: %s", warning)
    started = time.perf_counter()
    try:
        runner = RKNNLiteRunner(model_file, mask, runtime, manifest["input"]["shape"])
    except RKNNError as err:
        raise BackendError(f"rknn cannot start: {err}") from err
    load_s = time.perf_counter() - started
    try:
        backend = RKNNBackend(
            directory, manifest, runner, options.npu_core_mask, language(loaded, options),
            board.runtime_version,
        )  # fmt: skip
    except BaseException:
        runner.release()
        raise
    log.info(
        "rknn: %s on %s (cores %s, librknnrt %s) loaded in %.2f s; decoder %s",
        model_file, manifest["platform"], options.npu_core_mask, board.runtime_version, load_s,
        backend.name,
    )  # fmt: skip
    return backend


def build(loaded: LoadedModel, options: BackendOptions) -> RKNNBackend:
    """The backend on this board: its RKNNLite, its filesystem."""
    return assemble(loaded, options, rknnlite_runtime)


register(
    BackendSpec(
        name="rknn",
        devices=("cpu",),  # the host: the NPU sits beside the CPU that decodes
        dtypes=("float32", "bfloat16"),  # the decoder's; the NPU model's is in its manifest
        build=build,
        # What both CPU decoders (openvino, torch) do.
        capabilities=frozenset(
            {
                Capability.BATCHING,
                Capability.STREAMING,
                Capability.PREFIX_REUSE,
                Capability.CONSTRAINED,
                Capability.SCORING,
            }
        ),
        needs_weights=False,  # the openvino decoder runs its export; torch loads on demand
        explicit_only=True,  # `auto` never picks it: it needs a converted model
        available=module_check("rknnlite", INSTALL_HINT, label="rknn-toolkit-lite2 (rknnlite)"),
        description="Rockchip NPU (rknn-toolkit-lite2) for vision, CPU decoder beside it",
    )
)
