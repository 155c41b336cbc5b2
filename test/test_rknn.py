"""The Rockchip NPU backend on x86, without a board and without rknn-toolkit2.

What runs here for real: the preprocessing the NPU gets (against golden arrays made from the
photographs), the static-tile ONNX graph against the engine's vision stage, the manifest and
board checks (on a made-up board tree in tmp_path), the mapping of RKNNLite's -1/None returns
to errors, and the backend inside the engine. The board itself is the one thing we cannot have:
:class:`FakeBoardRKNNLite` stands in for ``rknnlite.api.RKNNLite`` and says so. The conversion
through rknn-toolkit2's simulator is ``test/test_rknn_npu.py`` (``make test-npu``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from smolvlm_ros.engine import Engine
from smolvlm_ros.engine.backends._rknn_board import check_board, check_manifest
from smolvlm_ros.engine.backends._rknn_runtime import (
    RKNNError,
    RKNNLiteRunner,
    checked,
    core_mask_value,
    to_nhwc_uint8,
)
from smolvlm_ros.engine.backends.base import BackendOptions
from smolvlm_ros.engine.backends.registry import BackendChoice, BackendError, choose, get_backend
from smolvlm_ros.engine.backends.rknn_backend import assemble
from smolvlm_ros.engine.backends.torch_backend import TorchBackend, TorchLanguage
from smolvlm_ros.engine.export.cache import checkpoint_digest, checkpoint_dir
from smolvlm_ros.engine.export.rknn import (
    ONNX_FILE,
    RKNN_FILE,
    export_onnx,
    make_manifest,
    onnx_outputs,
    torch_outputs,
)
from smolvlm_ros.engine.tiling import TilingConfig
from smolvlm_ros.engine.types import Frame
from smolvlm_ros.models.loading import load_model
from smolvlm_ros.photos import PHOTO_NAMES, photo

GOLDEN = Path(__file__).parent / "data" / "rknn_golden_tiles.npz"
RUNTIME_VERSION = "2.5.0"


class FakeBoardRKNNLite:
    """STAND-IN for ``rknnlite.api.RKNNLite`` on an RK3588 board, which x86 cannot have.

    It keeps RKNNLite's contract (``load_rknn`` / ``init_runtime`` return 0 or -1,
    ``inference`` a list of arrays or None, nothing raises) and computes real outputs: it reads
    the manifest beside the .rknn file and runs the fp32 ONNX graph of the same conversion
    with onnxruntime, after undoing the layout and the normalisation the NPU model has baked
    in. ``fail_at`` names a step that returns failure, as the board's runtime would.
    """

    def __init__(self, fail_at: str = "") -> None:
        self.fail_at = fail_at
        self.session = None
        self.core_mask: int | None = None
        self.released = False

    def load_rknn(self, path: str) -> int:
        model = Path(path)
        if self.fail_at == "load_rknn" or not model.is_file():
            return -1
        import onnxruntime as ort

        self.manifest = json.loads((model.parent / "manifest.json").read_text())
        self.session = ort.InferenceSession(str(model.parent / ONNX_FILE))
        return 0

    def init_runtime(self, core_mask: int = 0, **_) -> int:
        if self.fail_at == "init_runtime" or self.session is None:
            return -1
        self.core_mask = core_mask
        return 0

    def inference(self, inputs: list, data_format: str = "nhwc") -> list | None:
        (tile,) = inputs
        shape = self.manifest["input"]["shape"]
        if self.fail_at == "inference" or data_format != "nhwc" or list(tile.shape) != shape:
            return None
        mean = np.array(self.manifest["input"]["mean"], np.float32)
        std = np.array(self.manifest["input"]["std"], np.float32)
        nchw = ((tile.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)
        return self.session.run(None, {"pixel_values": nchw})

    def release(self) -> None:
        self.released = True


@pytest.fixture(scope="module")
def loaded():
    return load_model("random:tiny", "cpu", "float32")


def tiles_of(loaded, name: str, tiling: TilingConfig) -> torch.Tensor:
    """A photograph's tiles exactly as the engine makes them."""
    engine = Engine(loaded, TorchBackend(loaded.model, "cpu", "float32"), tiling)
    frame = Frame(photo(name))
    return engine.preprocess_image(frame, engine.plan(frame))["pixel_values"][0]


def golden_inputs(loaded) -> dict[str, np.ndarray]:
    tiles = {f"{name}_unsplit": tiles_of(loaded, name, TilingConfig()) for name in PHOTO_NAMES}
    tiles["coffee_split"] = tiles_of(loaded, "coffee", TilingConfig(True, max_tiles=4))
    return {name: t.numpy() for name, t in tiles.items()}


# -- preprocessing -------------------------------------------------------------------------------


def test_tiles_become_the_golden_uint8_nhwc_arrays(loaded):
    """The bytes the NPU gets for each photograph, unsplit and split, are the golden ones
    (rewrite with SMOLVLM_WRITE_GOLDEN=1 after a deliberate change of the tiling)."""
    made = {name: to_nhwc_uint8(tiles) for name, tiles in golden_inputs(loaded).items()}
    if os.environ.get("SMOLVLM_WRITE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        np.savez_compressed(GOLDEN, **made)
    golden = np.load(GOLDEN)
    assert sorted(golden.files) == sorted(made)
    for name, arrays in made.items():
        assert arrays.dtype == np.uint8 and arrays.shape[1:] == (128, 128, 3), name
        np.testing.assert_array_equal(arrays, golden[name], err_msg=name)
    assert golden["coffee_split"].shape[0] == 5  # 2x2 grid + the global image


def test_nhwc_layout_and_normalisation_are_inverted_exactly(loaded):
    tiles = golden_inputs(loaded)["astronaut_unsplit"]
    pixels = to_nhwc_uint8(tiles)
    # channel c of pixel (y, x) is the normalised value back on the 0..255 scale
    np.testing.assert_allclose(pixels.transpose(0, 3, 1, 2) / 127.5 - 1, tiles, atol=1e-6)
    assert pixels.std() > 20  # a photograph, not a flat frame


def test_tiles_not_made_by_the_checkpoints_processor_are_refused():
    with pytest.raises(ValueError, match="not 8-bit pixels"):
        to_nhwc_uint8(np.full((1, 3, 4, 4), 0.001, np.float32))  # between two pixel values
    with pytest.raises(ValueError, match=r"\[n, 3, T, T\]"):
        to_nhwc_uint8(np.zeros((3, 4, 4), np.float32))


# -- the exported graph --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(loaded, tmp_path_factory):
    """A conversion directory as the workstation writes it, except that the toolkit's .rknn
    (which x86 cannot produce without rknn-toolkit2) is a placeholder the stand-in ignores."""
    out = tmp_path_factory.mktemp("rknn")
    shapes = export_onnx(loaded.model, out / ONNX_FILE)
    (out / RKNN_FILE).write_bytes(b"placeholder: FakeBoardRKNNLite runs vision.onnx instead")
    digest = checkpoint_digest(checkpoint_dir(loaded.path))
    report = {"toolkit_version": RUNTIME_VERSION}
    manifest = make_manifest(loaded, digest, "rk3588", "float16", shapes, out, report)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_the_static_tile_graph_equals_the_engines_vision_stage(loaded, converted):
    tiles = golden_inputs(loaded)["coffee_split"]
    onnx = onnx_outputs(converted / ONNX_FILE, tiles)
    reference = torch_outputs(loaded.model, tiles)
    assert onnx.shape == (5, 16, 64)
    np.testing.assert_allclose(onnx.reshape(reference.shape), reference, atol=1e-4)
    assert loaded.model.config.vision_config._attn_implementation == "sdpa"  # restored


# -- errors from the runtime ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "step"),
    [(-1, "load_rknn"), (-1, "init_runtime"), (None, "inference"), (1, "init_runtime")],
)
def test_failure_returns_become_errors_naming_file_and_step(result, step):
    with pytest.raises(RKNNError, match=rf"RKNNLite\.{step} failed for /m/vision\.rknn"):
        checked(result, "/m/vision.rknn", step)


def test_success_returns_pass_through():
    out = [np.zeros(3)]
    assert checked(0, "f", "load_rknn") == 0
    assert checked(out, "f", "inference") is out


@pytest.mark.parametrize("step", ["load_rknn", "init_runtime", "inference"])
def test_the_runner_raises_at_the_step_the_board_refuses(converted, step):
    made = []

    def runtime():
        made.append(FakeBoardRKNNLite(fail_at=step))
        return made[-1]

    model = converted / RKNN_FILE
    with pytest.raises(RKNNError, match=rf"RKNNLite\.{step} failed for {model}"):
        runner = RKNNLiteRunner(model, 0, runtime, [1, 128, 128, 3])
        runner.run(np.zeros((2, 128, 128, 3), np.uint8))
    assert made[0].released or step == "inference"  # a failed start frees the NPU context


def test_the_runner_refuses_a_wrong_input_shape(converted):
    runner = RKNNLiteRunner(converted / RKNN_FILE, 0, FakeBoardRKNNLite, [1, 128, 128, 3])
    with pytest.raises(ValueError, match="takes uint8 tiles of"):
        runner.run(np.zeros((1, 64, 64, 3), np.uint8))


def test_core_masks_follow_each_chips_cores():
    assert core_mask_value("0_1_2", "rk3588") == 7
    assert core_mask_value("auto", "rk3568") == 0
    assert core_mask_value("1", "rk3576") == 2
    with pytest.raises(ValueError, match="rk3576 has 2 NPU cores"):
        core_mask_value("0_1_2", "rk3576")
    with pytest.raises(ValueError, match="one NPU core"):
        core_mask_value("0", "rk3562")
    with pytest.raises(ValueError, match="expected one of auto"):
        core_mask_value("3", "rk3588")


# -- start-up checks on a made-up board ----------------------------------------------------------


def make_board(
    root: Path,
    runtime: str | None = RUNTIME_VERSION,
    platform: str = "rk3588",
    node: str | None = "dev/dri/renderD129",
    governor: str = "performance",
) -> Path:
    """A board's filesystem as far as the checks look: librknnrt (with its version string),
    the NPU device node, the device tree, the CPU and NPU governors."""
    if runtime is not None:
        lib = root / "usr/lib/librknnrt.so"
        lib.parent.mkdir(parents=True)
        lib.write_bytes(b"\x7fELF...librknnrt version: " + runtime.encode() + b" (abc@2025)\0")
    if node is not None:
        (root / node).parent.mkdir(parents=True, exist_ok=True)
        (root / node).touch()
    tree = root / "proc/device-tree/compatible"
    tree.parent.mkdir(parents=True)
    tree.write_bytes(f"radxa,rock-5b\0rockchip,{platform}\0".encode())
    for policy in ("policy0", "policy4"):
        path = root / "sys/devices/system/cpu/cpufreq" / policy / "scaling_governor"
        path.parent.mkdir(parents=True)
        path.write_text(governor + "\n")
    npu = root / "sys/class/devfreq/fdab0000.npu/governor"
    npu.parent.mkdir(parents=True)
    npu.write_text(governor + "\n")
    return root


def manifest_of(converted: Path) -> dict:
    return json.loads((converted / "manifest.json").read_text())


def test_a_ready_board_passes(tmp_path, converted):
    report = check_board(manifest_of(converted), converted / RKNN_FILE, make_board(tmp_path))
    assert report.errors == [] and report.warnings == []
    assert report.runtime_version == "2.5.0"
    assert report.platform == "rk3588" and report.device_node == "/dev/dri/renderD129"


@pytest.mark.parametrize(
    ("board", "error"),
    [
        ({"runtime": None}, "librknnrt.so not found in /usr/lib"),
        ({"runtime": "2.3.0"}, "librknnrt 2.3.0 is older than rknn-toolkit2 2.5.0"),
        ({"node": None}, "no NPU device node"),
        ({"platform": "rk3568"}, "converted for rk3588, this board is rk3568"),
    ],
)
def test_a_board_that_cannot_run_the_model_is_refused(tmp_path, converted, board, error):
    report = check_board(
        manifest_of(converted), converted / RKNN_FILE, make_board(tmp_path, **board)
    )
    assert len(report.errors) == 1 and error in report.errors[0]


def test_the_older_npu_driver_node_and_a_newer_runtime_are_accepted(tmp_path, converted):
    board = make_board(tmp_path, runtime="2.6.1", node="dev/rknpu")
    report = check_board(manifest_of(converted), converted / RKNN_FILE, board)
    assert report.errors == [] and report.device_node == "/dev/rknpu"


def test_governors_that_are_not_performance_are_warned_about(tmp_path, converted):
    report = check_board(
        manifest_of(converted), converted / RKNN_FILE, make_board(tmp_path, governor="ondemand")
    )
    assert report.errors == []
    assert len(report.warnings) == 3  # two CPU clusters and the NPU
    assert "/sys/class/devfreq/fdab0000.npu/governor is 'ondemand'" in report.warnings[2]


def test_a_manifest_of_another_model_or_a_changed_file_is_refused(loaded, converted, tmp_path):
    manifest = manifest_of(converted)
    digest = manifest["checkpoint_sha256"]
    assert check_manifest(manifest, converted / RKNN_FILE, digest, 128, 16, 64) == []
    other = check_manifest(manifest, converted / RKNN_FILE, "f" * 64, 128, 16, 64)
    assert len(other) == 1 and "converted from another checkpoint" in other[0]
    tiles = check_manifest(manifest, converted / RKNN_FILE, digest, 512, 64, 64)
    assert len(tiles) == 2  # input shape and output shape
    copy = tmp_path / RKNN_FILE
    copy.write_bytes((converted / RKNN_FILE).read_bytes() + b"x")
    changed = check_manifest(manifest, copy, digest, 128, 16, 64)
    assert changed == [f"{copy} does not match its manifest's sha256 (changed or truncated)"]


# -- the backend ---------------------------------------------------------------------------------


def torch_language(loaded, options):
    return TorchLanguage(loaded.model, "cpu"), "torch", loaded.dtype


def rknn_backend(loaded, converted, board: Path, mask: str = "0_1_2", runtime=FakeBoardRKNNLite):
    options = BackendOptions(rknn_model=str(converted), npu_core_mask=mask)
    return assemble(loaded, options, runtime, board, language=torch_language)


@pytest.mark.parametrize("splitting", [False, True])
def test_the_engine_on_the_npu_backend_captions_like_torch(loaded, converted, tmp_path, splitting):
    """Same tokens as the torch backend on real photographs: the stand-in runs the fp32 graph,
    so this checks everything around the NPU (tiles to uint8 NHWC, tile by tile, outputs back
    into the engine's embedding layout), not the NPU's fp16 (that is test_rknn_npu.py)."""
    backend = rknn_backend(loaded, converted, make_board(tmp_path))
    tiling = TilingConfig(image_splitting=splitting, max_tiles=4)
    rknn = get_backend("rknn")
    npu = Engine(loaded, backend, tiling, backend_choice=BackendChoice(rknn, "cpu", "test"))
    # The reference with the same capabilities, so both engines take the same paths.
    same = dataclasses.replace(get_backend("torch"), capabilities=rknn.capabilities)
    torch_choice = BackendChoice(same, "cpu", "test")
    reference = Engine(
        loaded, TorchBackend(loaded.model, "cpu", "float32"), tiling, backend_choice=torch_choice
    )
    for name in ("astronaut", "coffee"):
        frame = Frame(photo(name))
        got, want = npu.caption(frame, max_new_tokens=8), reference.caption(frame, max_new_tokens=8)
        assert got.token_ids == want.token_ids
        assert got.num_images == (5 if splitting else 1)
        assert got.backend == "rknn-2.5.0+torch"
        assert got.device == "npu:rk3588:0_1_2+cpu" and got.dtype == "float16+float32"
        assert got.timing.encode_ms > 0
    assert backend.vision.runner.lite.core_mask == 7
    assert backend.provenance["files"] == {
        str(converted / RKNN_FILE): manifest_of(converted)["files"][RKNN_FILE]
    }
    assert backend.provenance["librknnrt"] == "2.5.0"


def test_a_board_with_problems_fails_with_all_of_them_before_the_npu_is_touched(
    loaded, converted, tmp_path
):
    made = []

    def runtime():
        made.append(FakeBoardRKNNLite())
        return made[-1]

    board = make_board(tmp_path, runtime="2.0.0", node=None)
    with pytest.raises(BackendError, match="rknn cannot start") as caught:
        rknn_backend(loaded, converted, board, mask="0_1_2", runtime=runtime)
    message = str(caught.value)
    assert "librknnrt 2.0.0 is older" in message and "no NPU device node" in message
    assert made == []  # nothing was loaded


def test_a_core_mask_the_chip_lacks_is_refused(loaded, converted, tmp_path):
    manifest = manifest_of(converted) | {"platform": "rk3576"}
    (converted / "manifest.json").write_text(json.dumps(manifest))
    try:
        with pytest.raises(BackendError, match="rk3576 has 2 NPU cores"):
            rknn_backend(loaded, converted, make_board(tmp_path, platform="rk3576"))
    finally:
        (converted / "manifest.json").write_text(json.dumps(manifest | {"platform": "rk3588"}))


def test_without_a_converted_model_the_error_says_how_to_make_one(loaded, tmp_path):
    options = BackendOptions(rknn_model=str(tmp_path / "nothing"))
    with pytest.raises(BackendError, match=r"no manifest\.json there"):
        assemble(loaded, options, FakeBoardRKNNLite, make_board(tmp_path), torch_language)


def test_on_x86_the_backend_is_unavailable_with_the_install_hint():
    with pytest.raises(BackendError, match=r"rknn-toolkit-lite2 \(rknnlite\) is not installed"):
        choose("rknn", "cpu")


def test_the_default_decoder_is_openvinos_and_captions_like_the_openvino_backend(
    loaded, converted, tmp_path
):
    """The production path: no language override, so the CPU decoder is OpenVINO's (installed
    in the dev venv), fed the NPU stand-in's embeddings; same tokens as backend openvino."""
    import openvino as ov

    from smolvlm_ros.engine.backends.openvino_backend import build as build_openvino

    options = BackendOptions(rknn_model=str(converted))
    backend = assemble(loaded, options, FakeBoardRKNNLite, make_board(tmp_path))
    version = ov.get_version().split("-", 1)[0]
    assert backend.name == f"rknn-2.5.0+openvino-{version}"
    assert backend.device == "npu:rk3588:auto+cpu"
    rknn, openvino = get_backend("rknn"), get_backend("openvino")
    npu = Engine(loaded, backend, backend_choice=BackendChoice(rknn, "cpu", "test"))
    reference = Engine(
        loaded, build_openvino(loaded, options), backend_choice=BackendChoice(openvino, "cpu", "t")
    )
    frame = Frame(photo("chelsea"))
    got, want = npu.caption(frame, max_new_tokens=8), reference.caption(frame, max_new_tokens=8)
    assert got.token_ids == want.token_ids and len(got.token_ids) > 0
