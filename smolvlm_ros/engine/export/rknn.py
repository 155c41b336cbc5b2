"""Convert a checkpoint's vision stage for a Rockchip NPU: torch -> ONNX -> .rknn (+ manifest).

Run on a workstation (x86), not on the board:
``python -m smolvlm_ros.engine.export.rknn --model M --platform rk3588 [--dtype int8]``.
It follows Rockchip's own SmolVLM recipe (airockchip/rknn-llm's multimodal demo): the SigLIP
encoder and the pixel-shuffle connector as one ONNX graph (opset 15, eager attention) with a
static input of one tile, ``[1, 3, T, T]``, converted by rknn-toolkit2 with the checkpoint's
mean/std baked in, so the board feeds ``[1, T, T, 3]`` uint8 (:func:`to_nhwc_uint8`).

Why static and unmasked: the NPU compiles one shape. Tiles are always full (the engine's tiles
are T x T images, their pixel masks all ones; the backend refuses anything else), so the patch
mask and the position ids it would select are constants: position ids ``0..P-1`` and no
attention mask, computed here without the data-dependent bucketing of
``Idefics3VisionEmbeddings`` (which does not export to ONNX). ``test/test_rknn.py`` checks the
graph equals the engine's vision stage on real photographs.

rknn-toolkit2 lives in ``.venv-rknn`` (``make npu-env``); the ONNX export runs here and the
conversion runs there (:mod:`.rknn_convert`, as a subprocess). The output directory, under
``<cache root>/rknn/`` and keyed by the checkpoint's content and the conversion settings like
the OpenVINO export, holds ``vision.onnx``, ``vision.rknn`` and ``manifest.json`` (checkpoint
hash, platform, toolkit version, input layout, tile size, dtype, the .rknn's sha256), which the
backend checks before it loads anything. Copy that directory to the board.

``int8``: weights and activations quantised (w8a8), calibrated on the photographs' tiles
(:mod:`.calibration`); its accuracy cost is measured by ``--verify`` (cosine against the fp32
ONNX graph on onnxruntime, through the simulator) and written into the manifest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smolvlm_ros.engine.backends._rknn_board import file_sha256
from smolvlm_ros.engine.backends._rknn_runtime import PLATFORMS, to_nhwc_uint8
from smolvlm_ros.engine.export.cache import (
    MANIFEST,
    checkpoint_digest,
    checkpoint_dir,
    is_complete,
    locked,
    read_manifest,
)

log = logging.getLogger(__name__)

RKNN_FORMAT = 1  # bump when the graph, its input or the manifest change
DTYPES = ("float16", "int8")
TOOLKIT_VERSION = "2.5.0"  # what `make npu-env` installs; the manifest records the real one
OPSET = 15  # Rockchip's SmolVLM recipe
ONNX_FILE, RKNN_FILE = "vision.onnx", "vision.rknn"
# With --verify: the simulator's outputs for the unsplit photographs (PHOTO_NAMES order).
SIMULATED_FILE = "simulated_photos.npy"
INPUT_NAME, OUTPUT_NAME = "pixel_values", "image_embeddings"
REPO = Path(__file__).resolve().parents[3]
CONVERTER = Path(__file__).with_name("rknn_convert.py")
RUNTIME_MODULE = REPO / "smolvlm_ros" / "engine" / "backends" / "_rknn_runtime.py"


class ConversionError(RuntimeError):
    """The conversion could not run or failed; the message says why and what to do."""


def toolkit_python() -> Path:
    """The interpreter that has rknn-toolkit2: ``$SMOLVLM_RKNN_PYTHON``, else .venv-rknn's."""
    override = os.environ.get("SMOLVLM_RKNN_PYTHON")
    return Path(override) if override else REPO / ".venv-rknn" / "bin" / "python"


def missing_toolkit() -> str | None:
    """Why the converter cannot run here, or None. Looks for the interpreter only."""
    python = toolkit_python()
    if not python.exists():
        return f"rknn-toolkit2 is not installed: no {python} (run `make npu-env`)"
    return None


def static_tile_graph(model: Any) -> Any:
    """The vision stage for one full tile, ``[1, 3, T, T]`` (normalised) -> ``[1, tokens,
    text hidden]``, as a torch module (position ids ``0..P-1``, no attention mask)."""
    import torch

    class StaticTileVision(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            vision = model.model.vision_model
            self.embeddings = vision.embeddings
            self.encoder = vision.encoder
            self.post_layernorm = vision.post_layernorm
            self.connector = model.model.connector
            patches = self.embeddings.num_patches
            self.register_buffer("positions", torch.arange(patches)[None], persistent=False)

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            hidden = self.embeddings.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
            hidden = hidden + self.embeddings.position_embedding(self.positions)
            hidden = self.encoder(inputs_embeds=hidden, attention_mask=None)
            return self.connector(self.post_layernorm(hidden.last_hidden_state))

    return StaticTileVision().eval()


def export_onnx(model: Any, path: Path) -> dict:
    """The static-tile vision graph of a float32 CPU model as ONNX (opset 15 through the
    TorchScript exporter: the dynamo one starts at opset 18), with eager attention as in
    Rockchip's recipe (the model's own setting is restored after). Returns its shapes."""
    import torch

    param = next(model.parameters())
    if param.dtype != torch.float32 or param.device.type != "cpu":  # bf16 would bake rounding in
        raise ConversionError("convert from a float32 CPU model: load_model(m, 'cpu', 'float32')")
    size = model.config.vision_config.image_size
    before = model.config.vision_config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        graph = static_tile_graph(model)
        example = torch.zeros(1, 3, size, size)
        with torch.no_grad(), warnings.catch_warnings():
            # The tracer's notes on shapes it fixes (the static tile is the point) and the
            # legacy exporter's deprecation (the dynamo exporter cannot write opset 15).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            out = graph(example)
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                opset_version=OPSET,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
            )
    finally:
        model.set_attn_implementation(before)
    return {"tile_size": size, "output_shape": list(out.shape)}


def photo_tiles(processor: Any, patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Real-photograph tiles as the engine makes them, ``[n, 3, T, T]`` float: (calibration:
    every tile of every photograph, unsplit and split; verification: the unsplit images)."""
    from smolvlm_ros.engine.export.calibration import vision_samples

    samples = vision_samples(processor, patch_size)
    every = np.concatenate([s["pixel_values"] for s in samples])
    unsplit = np.concatenate([s["pixel_values"] for s in samples[::2]])  # (unsplit, split) pairs
    return every, unsplit


def conversion_path(digest: str, platform: str, dtype: str, root: Path | None = None) -> Path:
    """``<cache>/rknn/<checkpoint digest>-<platform>-<dtype>-<settings digest>``."""
    from smolvlm_ros.models.random_checkpoint import cache_root

    settings = json.dumps(
        {"format": RKNN_FORMAT, "opset": OPSET, "toolkit": TOOLKIT_VERSION}, sort_keys=True
    )
    tag = hashlib.sha256(settings.encode()).hexdigest()[:8]
    return (root or cache_root()) / "rknn" / f"{digest[:16]}-{platform}-{dtype}-{tag}"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def onnx_outputs(onnx_path: Path, tiles: np.ndarray) -> np.ndarray:
    """The fp32 ONNX graph on onnxruntime, tile by tile: the reference for the NPU's output."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    runs = [session.run(None, {INPUT_NAME: t[None].astype(np.float32)})[0] for t in tiles]
    return np.concatenate(runs)


def torch_outputs(model: Any, tiles: np.ndarray) -> np.ndarray:
    """The engine's own vision stage (``graphs.VisionGraph``, full patch masks) in torch."""
    import torch

    from smolvlm_ros.engine.export.graphs import VisionGraph

    patches = model.config.vision_config.image_size // model.config.vision_config.patch_size
    mask = torch.ones(len(tiles), patches, patches, dtype=torch.bool)
    with torch.no_grad():
        return VisionGraph(model).eval()(torch.from_numpy(tiles).float(), mask).numpy()


def _cosines(name: str, outputs: np.ndarray, reference: np.ndarray) -> dict:
    per_tile = [cosine(o, r) for o, r in zip(outputs, reference, strict=True)]
    return {
        f"cosine_vs_{name}_min": round(min(per_tile), 6),
        f"cosine_vs_{name}_mean": round(float(np.mean(per_tile)), 6),
    }


@dataclass(frozen=True)
class Conversion:
    """A complete conversion directory."""

    directory: Path
    manifest: dict
    created: bool

    @property
    def rknn(self) -> Path:
        return self.directory / RKNN_FILE

    @property
    def onnx(self) -> Path:
        return self.directory / ONNX_FILE


def run_converter(job: dict, workdir: Path) -> dict:
    """Run :mod:`.rknn_convert` in the toolkit's interpreter; its report, or ConversionError
    with the tail of its output."""
    missing = missing_toolkit()
    if missing is not None:
        raise ConversionError(missing)
    job = {**job, "report": str(workdir / "report.json"), "runtime_module": str(RUNTIME_MODULE)}
    job_file = workdir / "job.json"
    job_file.write_text(json.dumps(job, indent=2))
    done = subprocess.run(
        # -P: the script's folder stays off sys.path (its rknn.py would shadow rknn-toolkit2)
        [str(toolkit_python()), "-P", str(CONVERTER), str(job_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise ConversionError(f"rknn-toolkit2 conversion failed (exit {done.returncode}):\n{tail}")
    return json.loads((workdir / "report.json").read_text())


def convert(
    loaded: Any,
    platform: str = "rk3588",
    dtype: str = "float16",
    root: Path | None = None,
    verify: bool = False,
) -> Conversion:
    """The .rknn of ``loaded``'s vision stage for ``platform`` (built now if missing)."""
    if platform not in PLATFORMS:
        raise ConversionError(f"platform {platform!r}: expected one of {', '.join(PLATFORMS)}")
    if dtype not in DTYPES:
        raise ConversionError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    digest = checkpoint_digest(checkpoint_dir(loaded.path), root)
    target = conversion_path(digest, platform, dtype, root)
    if is_complete(target) and not verify:
        return Conversion(target, read_manifest(target), created=False)
    with locked(target):
        if is_complete(target) and not verify:
            return Conversion(target, read_manifest(target), created=False)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        tmp.chmod(0o755)
        try:
            manifest = _convert_into(loaded, platform, dtype, digest, tmp, verify)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return Conversion(target, manifest, created=True)


def _convert_into(
    loaded: Any, platform: str, dtype: str, digest: str, out: Path, verify: bool
) -> dict:
    processor = loaded.processor.image_processor
    mean = [round(m * 255, 4) for m in processor.image_mean]
    std = [round(s * 255, 4) for s in processor.image_std]
    started = time.perf_counter()
    shapes = export_onnx(loaded.model, out / ONNX_FILE)
    onnx_s = time.perf_counter() - started
    size = shapes["tile_size"]
    every, unsplit = photo_tiles(loaded.processor, loaded.model.config.vision_config.patch_size)
    job: dict[str, Any] = {
        "onnx": str(out / ONNX_FILE),
        "rknn": str(out / RKNN_FILE),
        "platform": platform,
        "dtype": dtype,
        "mean": mean,
        "std": std,
        "input_shape_nchw": [1, 3, size, size],
    }
    work = Path(tempfile.mkdtemp(prefix="rknn-job-"))
    try:
        calibration = None
        if dtype == "int8":
            # One .npy per tile listed in dataset.txt: 8-bit pixel values (the toolkit applies
            # the baked-in mean/std), in the ONNX graph's layout [1, 3, T, T], as it demands.
            lines = []
            pixels = to_nhwc_uint8(every, processor.image_mean, processor.image_std)
            for index, tile in enumerate(pixels.transpose(0, 3, 1, 2)):
                np.save(work / f"tile{index}.npy", tile[None].astype(np.float32))
                lines.append(str(work / f"tile{index}.npy"))
            (work / "dataset.txt").write_text("\n".join(lines) + "\n")
            job["dataset"] = str(work / "dataset.txt")
            calibration = {"photos": "smolvlm_ros.photos.PHOTO_NAMES", "tiles": len(lines)}
        if verify:
            nhwc = to_nhwc_uint8(unsplit, processor.image_mean, processor.image_std)
            np.save(work / "verify.npy", nhwc)
            job.update(simulate=str(work / "verify.npy"), simulated=str(work / "simulated.npy"))
        report = run_converter(job, work)
        accuracy = None
        if verify:
            simulated = np.load(work / "simulated.npy")
            np.save(out / SIMULATED_FILE, simulated)  # kept: replayed by test_rknn_npu.py
            onnx_ref = onnx_outputs(out / ONNX_FILE, unsplit).reshape(simulated.shape)
            torch_ref = torch_outputs(loaded.model, unsplit).reshape(simulated.shape)
            accuracy = {
                "simulator": f"rknn-toolkit2 {report['toolkit_version']}, {platform} {dtype}",
                "tiles": "the photographs, unsplit (calibration saw them too, split and unsplit)",
                **_cosines("onnxruntime_fp32", simulated, onnx_ref),
                **_cosines("torch_fp32", simulated, torch_ref),
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    manifest = make_manifest(loaded, digest, platform, dtype, shapes, out, report)
    manifest.update(calibration=calibration, accuracy=accuracy, onnx_export_s=round(onnx_s, 1))
    return manifest


def make_manifest(
    loaded: Any, digest: str, platform: str, dtype: str, shapes: dict, out: Path, report: dict
) -> dict:
    """What the backend checks before loading ``out``'s model (see _rknn_board.check_manifest)."""
    processor = loaded.processor.image_processor
    size = shapes["tile_size"]
    tokens, hidden = shapes["output_shape"][1:]
    return {
        "format": RKNN_FORMAT,
        "model": loaded.spec,
        "checkpoint_sha256": digest,
        "platform": platform,
        "dtype": dtype,
        "toolkit": "rknn-toolkit2",
        "toolkit_version": report["toolkit_version"],
        "opset": OPSET,
        "input": {
            "name": INPUT_NAME,
            "layout": "nhwc",
            "dtype": "uint8",
            "shape": [1, size, size, 3],
            "mean": [round(m * 255, 4) for m in processor.image_mean],
            "std": [round(s * 255, 4) for s in processor.image_std],
        },
        "output": {"name": OUTPUT_NAME, "shape": [1, tokens, hidden]},
        "tile_size": size,
        "tokens_per_tile": tokens,
        "files": {name: file_sha256(out / name) for name in (RKNN_FILE, ONNX_FILE)},
        "build_s": report.get("build_s"),
        "converter_peak_rss_mb": report.get("peak_rss_mb"),
        "simulate_s": report.get("simulate_s"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def main(argv: list[str] | None = None) -> int:
    from smolvlm_ros.models.loading import DEFAULT_MODEL, ModelLoadError, load_model

    parser = argparse.ArgumentParser(
        prog="python -m smolvlm_ros.engine.export.rknn",
        description="Convert the vision stage for a Rockchip NPU (needs `make npu-env`).",
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id, directory, random:<shape>")
    parser.add_argument("--platform", choices=PLATFORMS, default="rk3588")
    parser.add_argument("--dtype", choices=DTYPES, default="float16")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also run the photographs through the simulator and record the cosine against "
        "fp32 onnxruntime in the manifest (reconverts: the simulator needs the live model)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        loaded = load_model(args.model, device="cpu", dtype="float32")
        started = time.perf_counter()
        done = convert(loaded, args.platform, args.dtype, verify=args.verify)
    except (ModelLoadError, ConversionError) as err:
        print(f"conversion failed: {err}", file=sys.stderr)
        return 1
    state = "converted" if done.created else "cached"
    print(
        f"{args.platform} {args.dtype}: {done.directory} ({state}, "
        f"{time.perf_counter() - started:.1f} s)"
    )
    if done.manifest.get("accuracy"):
        print(f"cosine vs fp32: {json.dumps(done.manifest['accuracy'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
