"""The NPU conversion through rknn-toolkit2's x86 simulator (``make test-npu``; marker ``npu``).

Needs ``.venv-rknn`` (``make npu-env``): the converter runs there as a subprocess. What runs:
the random:tiny vision stage exported to ONNX, converted to an rk3588 .rknn (fp16, and int8
calibrated on the photographs), then the photographs run through the simulator by the
backend's own ``RKNNLiteRunner`` behind ``SimulatorRKNNLite`` (an adapter with RKNNLite's
methods; the simulator only runs a model converted in the same process), compared with the fp32
graph on onnxruntime and with the engine's torch vision stage. Figures are printed (``-s``).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from smolvlm_ros.engine.backends._rknn_board import check_manifest
from smolvlm_ros.engine.export.cache import checkpoint_digest, checkpoint_dir
from smolvlm_ros.engine.export.rknn import (
    ONNX_FILE,
    RKNN_FILE,
    convert,
    export_onnx,
    missing_toolkit,
    run_converter,
)
from smolvlm_ros.models.loading import load_model

pytestmark = pytest.mark.npu


@pytest.fixture(scope="module")
def loaded():
    missing = missing_toolkit()
    if missing is not None:  # `make test-npu` creates it; failing says what is wrong
        pytest.fail(missing)
    return load_model("random:tiny", "cpu", "float32")


def report(manifest: dict) -> str:
    keys = ("platform", "dtype", "toolkit_version", "build_s", "simulate_s", "onnx_export_s")
    return json.dumps({k: manifest.get(k) for k in keys} | {"accuracy": manifest["accuracy"]})


def test_fp16_conversion_matches_onnxruntime_and_torch_in_the_simulator(loaded, tmp_path):
    done = convert(loaded, "rk3588", "float16", root=tmp_path, verify=True)
    manifest = done.manifest
    print("\nfp16:", report(manifest))
    accuracy = manifest["accuracy"]
    assert accuracy["cosine_vs_onnxruntime_fp32_min"] >= 0.999
    assert accuracy["cosine_vs_torch_fp32_min"] >= 0.999
    assert manifest["toolkit_version"] == "2.5.0"
    assert manifest["input"] | {"mean": None, "std": None} == {
        "name": "pixel_values",
        "layout": "nhwc",
        "dtype": "uint8",
        "shape": [1, 128, 128, 3],
        "mean": None,
        "std": None,
    }
    assert done.rknn.stat().st_size > 10_000  # a real model file, not a placeholder
    digest = checkpoint_digest(checkpoint_dir(loaded.path), tmp_path)
    # What the backend checks on the board accepts what the converter wrote.
    assert check_manifest(manifest, done.rknn, digest, 128, 16, 64) == []
    again = convert(loaded, "rk3588", "float16", root=tmp_path)
    assert not again.created and again.directory == done.directory  # the cache finds it


def test_int8_conversion_calibrated_on_photographs_states_its_cost(loaded, tmp_path):
    done = convert(loaded, "rk3588", "int8", root=tmp_path, verify=True)
    print("\nint8:", report(done.manifest))
    accuracy = done.manifest["accuracy"]
    assert done.manifest["calibration"]["tiles"] == 30  # 5 photographs, unsplit and split
    # Measured 2026-12-02 (random:tiny): see README "Rockchip NPU"; a collapse would be < 0.9.
    assert accuracy["cosine_vs_onnxruntime_fp32_min"] >= 0.95


def test_the_runner_behind_the_simulator_refuses_a_model_it_was_not_given(loaded, tmp_path):
    """RKNNLite's -1 from load_rknn, as the simulator adapter gives it for another file,
    comes out of the backend's runner as the error naming the file and the step."""
    shapes = export_onnx(loaded.model, tmp_path / ONNX_FILE)
    size = shapes["tile_size"]
    tiles = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    np.save(tmp_path / "tiles.npy", tiles)
    job = {
        "onnx": str(tmp_path / ONNX_FILE),
        "rknn": str(tmp_path / RKNN_FILE),
        "platform": "rk3588",
        "dtype": "float16",
        "mean": [127.5] * 3,
        "std": [127.5] * 3,
        "input_shape_nchw": [1, 3, size, size],
        "simulate": str(tmp_path / "tiles.npy"),
        "simulated": str(tmp_path / "out.npy"),
        "core_mask": 7,
        "expect_refusal": str(tmp_path / "other.rknn"),
    }
    with tempfile.TemporaryDirectory() as work:
        result = run_converter(job, Path(work))
    assert result["refusal"] == (
        f"RKNNLite.load_rknn failed for {tmp_path / 'other.rknn'} (returned -1): the file is "
        "missing, truncated or not an .rknn model"
    )
    assert np.load(tmp_path / "out.npy").shape == (2, 16, 64)


class SimulatedNpuVision:
    """The simulator's fp16 outputs for the photographs' tiles, replayed as a vision stage (so
    the engine's decoder runs on what the NPU model computes); a tile it has no output for is
    an error, so nothing else can slip through."""

    def __init__(self, tiles: np.ndarray, outputs: np.ndarray) -> None:
        self.outputs = {tile.tobytes(): out for tile, out in zip(tiles, outputs, strict=True)}

    def encode(self, pixel_values, pixel_attention_mask):
        import torch

        from smolvlm_ros.engine.backends._rknn_runtime import to_nhwc_uint8

        tiles = to_nhwc_uint8(pixel_values.float().numpy())
        found = [self.outputs[tile.tobytes()] for tile in tiles]
        return torch.from_numpy(np.concatenate(found).reshape(-1, found[0].shape[-1]))


def test_captions_from_the_simulated_fp16_npu_equal_torchs(loaded, tmp_path):
    """Caption level: the decoder fed the simulator's fp16 embeddings of each photograph makes
    the same greedy tokens as the all-torch fp32 path."""
    from types import SimpleNamespace

    from smolvlm_ros.engine import Engine
    from smolvlm_ros.engine.backends._rknn_runtime import to_nhwc_uint8
    from smolvlm_ros.engine.backends.registry import BackendChoice, get_backend
    from smolvlm_ros.engine.backends.torch_backend import TorchBackend, TorchLanguage
    from smolvlm_ros.engine.export.rknn import SIMULATED_FILE, photo_tiles
    from smolvlm_ros.engine.types import Frame
    from smolvlm_ros.photos import PHOTO_NAMES, photo

    done = convert(loaded, "rk3588", "float16", root=tmp_path, verify=True)
    _, unsplit = photo_tiles(loaded.processor, loaded.model.config.vision_config.patch_size)
    simulated = np.load(done.directory / SIMULATED_FILE)
    vision = SimulatedNpuVision(to_nhwc_uint8(unsplit), simulated)
    npu = SimpleNamespace(
        name="rknn-simulated", device="npu:sim", dtype="float16+float32", vision=vision,
        language=TorchLanguage(loaded.model, "cpu"),
    )  # fmt: skip
    rknn, torch_spec = get_backend("rknn"), get_backend("torch")
    # the same capabilities for both engines, so both take the same paths
    same = BackendChoice(replace(torch_spec, capabilities=rknn.capabilities), "cpu", "test")
    npu_engine = Engine(loaded, npu, backend_choice=BackendChoice(rknn, "cpu", "test"))
    reference = Engine(loaded, TorchBackend(loaded.model, "cpu", "float32"), backend_choice=same)
    for name in PHOTO_NAMES:
        frame = Frame(photo(name))
        got = npu_engine.caption(frame, max_new_tokens=12).token_ids
        assert got == reference.caption(frame, max_new_tokens=12).token_ids, name
