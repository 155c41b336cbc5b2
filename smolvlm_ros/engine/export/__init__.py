"""Export a SmolVLM checkpoint for the CPU runtime (OpenVINO), once, and find it again.

``ensure_export(loaded, quantization)`` returns the export for a loaded checkpoint, building it
the first time: the vision stage and the stateful decoder as OpenVINO IR plus the token
embedding table, in a directory keyed by the checkpoint's content and the export settings
(:mod:`.cache`). ``int8`` is built from the float32 export (no second trace); ``int4`` takes
``int8``'s vision graph and compresses the float32 decoder to 4-bit weights.
``python -m smolvlm_ros.engine.export --model ...`` does the same ahead of time, e.g. when a
robot image is built, so the node's first start does not spend minutes exporting.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smolvlm_ros.engine.backends.base import QUANTIZATIONS
from smolvlm_ros.engine.export.cache import (
    EXPORT_FORMAT,
    MANIFEST,
    checkpoint_digest,
    checkpoint_dir,
    export_name,
    exports_root,
    is_complete,
    locked,
    read_manifest,
    runtime_versions,
)

if TYPE_CHECKING:
    from smolvlm_ros.models.loading import LoadedModel

log = logging.getLogger(__name__)

VISION_XML = "vision.xml"
DECODER_XML = "decoder.xml"
# the weights ov.save_model writes beside each graph
VISION_BIN = "vision.bin"
DECODER_BIN = "decoder.bin"
EMBEDDINGS = "embeddings.npy"


class ExportError(RuntimeError):
    """The checkpoint could not be exported; the message says why."""


INSTALL_HINT = "pip install -r requirements/cpu.txt (or `make cpu-runtime`)"


def missing_runtime(quantization: str = "none") -> str | None:
    """What an export with ``quantization`` needs and is not installed, or None. Looks only."""
    import importlib.util

    needed = {"openvino": "OpenVINO (openvino)"}
    if quantization != "none":
        needed.update(
            nncf=f"NNCF (nncf, for {quantization})", skimage="scikit-image (calibration photos)"
        )
    missing = [
        label for module, label in needed.items() if importlib.util.find_spec(module) is None
    ]
    return f"{', '.join(missing)} not installed: {INSTALL_HINT}" if missing else None


@dataclass(frozen=True)
class Export:
    """A complete export directory."""

    directory: Path
    manifest: dict
    created: bool  # built by this call (False: found in the cache)

    @property
    def quantization(self) -> str:
        return self.manifest["quantization"]

    @property
    def vision_xml(self) -> Path:
        return self.directory / VISION_XML

    @property
    def decoder_xml(self) -> Path:
        return self.directory / DECODER_XML

    @property
    def vision_bin(self) -> Path:
        return self.directory / VISION_BIN

    @property
    def decoder_bin(self) -> Path:
        return self.directory / DECODER_BIN

    @property
    def embeddings(self) -> Path:
        return self.directory / EMBEDDINGS


def export_path(loaded: LoadedModel, quantization: str = "none", root: Path | None = None) -> Path:
    """Where the export of ``loaded`` with ``quantization`` lives (whether or not it exists)."""
    if quantization not in QUANTIZATIONS:
        raise ExportError(f"quantization {quantization!r}: expected one of {QUANTIZATIONS}")
    digest = checkpoint_digest(checkpoint_dir(loaded.path), root)
    return exports_root(root) / export_name(digest, quantization, runtime_versions(quantization))


def ensure_export(
    loaded: LoadedModel, quantization: str = "none", root: Path | None = None
) -> Export:
    """The export of ``loaded`` (built now if missing; concurrent callers wait for one build)."""
    missing = missing_runtime(quantization)
    if missing is not None:
        raise ExportError(missing)
    target = export_path(loaded, quantization, root)
    if is_complete(target):
        return Export(target, read_manifest(target), created=False)
    base = ensure_export(loaded, "none", root) if quantization != "none" else None
    # int4 differs from int8 in the decoder only: its vision graph is int8's, calibrated once
    vision_from = ensure_export(loaded, "int8", root) if quantization == "int4" else None
    with locked(target):
        if is_complete(target):  # another process finished it while we waited
            return Export(target, read_manifest(target), created=False)
        started = time.perf_counter()
        log.info("exporting %s (quantization %s) to %s", loaded.spec, quantization, target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        try:
            with warnings.catch_warnings():  # torch.export's own deprecation noise
                warnings.filterwarnings("ignore", ".*LeafSpec", FutureWarning)
                if base is None:
                    details = _build(loaded, tmp)
                else:
                    details = _quantize(loaded, base, tmp, quantization, vision_from)
            manifest = {
                "format": EXPORT_FORMAT,
                "model": loaded.spec,
                "checkpoint": str(checkpoint_dir(loaded.path)),
                "checkpoint_sha256": checkpoint_digest(checkpoint_dir(loaded.path), root),
                "quantization": quantization,
                "versions": runtime_versions(quantization),
                "export_s": round(time.perf_counter() - started, 1),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **details,
            }
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            if target.exists():  # an incomplete leftover (no manifest): replace it
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("exported in %.0f s", manifest["export_s"])
        return Export(target, manifest, created=True)


def _float32_model(loaded: LoadedModel) -> Any:
    """The checkpoint in float32 on the CPU: the loaded model when it already is, else a copy
    loaded for the export only (a bf16 model would bake bf16 rounding into the graphs)."""
    import torch

    model = loaded.model
    param = next(model.parameters(), None)
    if param is not None and param.dtype == torch.float32 and param.device.type == "cpu":
        return model
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(
        loaded.path, dtype=torch.float32, local_files_only=True
    ).eval()


def _build(loaded: LoadedModel, out: Path) -> dict:
    """Trace both stages, convert them, save the IR and the embedding table (float32)."""
    import numpy as np
    import openvino as ov

    from smolvlm_ros.engine.export import graphs, openvino_ir

    model = _float32_model(loaded)
    shape = graphs.DecoderShape.of(model)
    t0 = time.perf_counter()
    vision = openvino_ir.vision_model(graphs.export_vision(model))
    ov.save_model(vision, out / VISION_XML, compress_to_fp16=False)
    del vision
    t1 = time.perf_counter()
    decoder = openvino_ir.decoder_model(graphs.export_decoder(model), shape)
    ov.save_model(decoder, out / DECODER_XML, compress_to_fp16=False)
    del decoder
    t2 = time.perf_counter()
    table = model.model.text_model.get_input_embeddings().weight.detach().float().numpy()
    np.save(out / EMBEDDINGS, table)
    return {
        "decoder": {
            "layers": shape.layers,
            "kv_heads": shape.kv_heads,
            "head_dim": shape.head_dim,
            "hidden": shape.hidden,
        },
        "vision_export_s": round(t1 - t0, 1),
        "decoder_export_s": round(t2 - t1, 1),
    }


def _link(source: Path, target: Path) -> None:
    """A hard link to a file of another export (a copy across file systems)."""
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copyfile(source, target)


def _quantize(
    loaded: LoadedModel,
    base: Export,
    out: Path,
    quantization: str,
    vision_from: Export | None = None,
) -> dict:
    """int8 from the float32 export: decoder weights, vision statically (real photographs);
    int4: the float32 decoder's weights to 4 bits, the vision graph linked from ``vision_from``
    (the int8 export)."""
    import openvino as ov

    from smolvlm_ros.engine.export import openvino_ir
    from smolvlm_ros.engine.export.calibration import PHOTOS, vision_samples

    core = ov.Core()
    t0 = time.perf_counter()
    if vision_from is None:
        samples = vision_samples(loaded.processor, loaded.model.config.vision_config.patch_size)
        vision = openvino_ir.quantize_vision(core.read_model(base.vision_xml), samples)
        ov.save_model(vision, out / VISION_XML, compress_to_fp16=False)
        del vision
        calibration = {"photos": list(PHOTOS), "samples": len(samples)}
    else:
        for name in (VISION_XML, VISION_BIN):
            _link(vision_from.directory / name, out / name)
        calibration = vision_from.manifest["calibration"]
    t1 = time.perf_counter()
    decoder = openvino_ir.compress_decoder(core.read_model(base.decoder_xml), quantization)
    ov.save_model(decoder, out / DECODER_XML, compress_to_fp16=False)
    del decoder
    t2 = time.perf_counter()
    _link(base.embeddings, out / EMBEDDINGS)
    details = {
        "decoder": base.manifest["decoder"],
        "from": base.directory.name,
        "calibration": calibration,
        "vision_quantize_s": round(t1 - t0, 1),
        "decoder_compress_s": round(t2 - t1, 1),
    }
    if vision_from is not None:
        details["vision_from"] = vision_from.directory.name
    return details
