"""Start-up checks for the Rockchip NPU backend: is this board able to run this .rknn model?

Why before anything loads: RKNNLite's own failures are a ``-1`` and a line in its log, and some
mismatches (a runtime older than the converting toolkit) only show up as wrong output or a
crash later. A node that half-starts on a board that cannot run its model is worse than one
that exits with the reason, so :func:`check_board` collects every problem at once and the
backend refuses to build while there is any error (the node then exits non-zero).

Every path is taken relative to ``root`` (``/`` on the board), so tests run the checks against
a made-up board tree in a temporary directory.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from smolvlm_ros.engine.backends._rknn_runtime import PLATFORMS

MANIFEST_FORMAT = 1  # smolvlm_ros.engine.export.rknn.RKNN_FORMAT (not imported: no torch here)
RUNTIME_LIBRARY = "librknnrt.so"
LIBRARY_DIRS = ("usr/lib", "usr/lib64", "usr/lib/aarch64-linux-gnu", "usr/local/lib")
# The NPU's device node: the DRM render node of the rknpu driver (kernels 5.10 / 6.1 on
# RK3588 and RK3576), or the misc device of older rknpu drivers.
DEVICE_NODES = ("dev/dri/renderD129", "dev/rknpu")
_VERSION = re.compile(rb"librknnrt version: ([0-9]+(?:\.[0-9]+)+)")
_FIX_RUNTIME = (
    "install librknnrt.so of the same release as the converting rknn-toolkit2 into /usr/lib "
    "(airockchip/rknn-toolkit2: rknpu2/runtime/Linux/librknn_api/aarch64/)"
)


@dataclass
class BoardReport:
    """What the checks found: errors stop the backend, warnings are logged."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    runtime_version: str | None = None
    platform: str | None = None
    device_node: str | None = None


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def find_runtime(root: Path) -> Path | None:
    """librknnrt.so in the usual library directories under ``root``."""
    for directory in LIBRARY_DIRS:
        candidate = root / directory / RUNTIME_LIBRARY
        if candidate.is_file():
            return candidate
    return None


def runtime_version(library: Path) -> str | None:
    """The version librknnrt prints at start-up (``librknnrt version: 2.5.0 (...)``), read
    from the library's bytes without loading it (an x86 host can check an aarch64 file)."""
    match = _VERSION.search(library.read_bytes())
    return match.group(1).decode() if match else None


def board_platform(root: Path) -> str | None:
    """``rk3588`` etc. from the device tree's ``compatible`` list; None when absent."""
    compatible = root / "proc" / "device-tree" / "compatible"
    try:
        entries = compatible.read_bytes().split(b"\0")
    except OSError:
        return None
    for entry in entries:
        vendor, _, chip = entry.decode(errors="replace").partition(",")
        if vendor == "rockchip" and chip in PLATFORMS:
            return chip
    return None


def _governor_warnings(root: Path) -> list[str]:
    """Frequency governors other than ``performance`` make NPU and decode times vary by 2x
    and more between runs (the figures Rockchip publishes are taken with them fixed)."""
    found = []
    cpu = sorted((root / "sys/devices/system/cpu/cpufreq").glob("policy*/scaling_governor"))
    npu = sorted((root / "sys/class/devfreq").glob("*npu*/governor"))
    for path in [*cpu, *npu]:
        try:
            governor = path.read_text().strip()
        except OSError:
            continue
        if governor != "performance":
            where = "/" + str(path.relative_to(root))
            found.append(
                f"{where} is '{governor}', not 'performance': timings will vary "
                f"(echo performance | sudo tee {where})"
            )
    return found


def check_board(manifest: dict, model_file: Path, root: Path = Path("/")) -> BoardReport:
    """Everything that would stop ``model_file`` (converted as ``manifest`` says) on this board:
    the runtime library and its version, the NPU device node, the SoC; governor warnings."""
    report = BoardReport()
    library = find_runtime(root)
    wanted = str(manifest.get("toolkit_version", "?"))
    if library is None:
        places = ", ".join("/" + d for d in LIBRARY_DIRS)
        report.errors.append(f"{RUNTIME_LIBRARY} not found in {places}: {_FIX_RUNTIME}")
    else:
        found = runtime_version(library)
        report.runtime_version = found
        if found is None:
            report.errors.append(
                f"/{library.relative_to(root)} has no version string: not librknnrt?"
            )
        elif _version_tuple(found) < _version_tuple(wanted):
            report.errors.append(
                f"librknnrt {found} is older than rknn-toolkit2 {wanted}, which converted "
                f"{model_file}: {_FIX_RUNTIME}"
            )
    nodes = [node for node in DEVICE_NODES if (root / node).exists()]
    if nodes:
        report.device_node = "/" + nodes[0]
    else:
        report.errors.append(
            f"no NPU device node ({', '.join('/' + n for n in DEVICE_NODES)}): the rknpu "
            "driver is not loaded, or the container was started without --device for it"
        )
    report.platform = board_platform(root)
    target = manifest.get("platform")
    if report.platform is None:
        report.warnings.append(
            "cannot tell the SoC (no rockchip,rk35xx in /proc/device-tree/compatible): "
            f"assuming the {target} the model was converted for"
        )
    elif report.platform != target:
        report.errors.append(
            f"{model_file} was converted for {target}, this board is {report.platform}: "
            f"convert again with --platform {report.platform}"
        )
    report.warnings += _governor_warnings(root)
    return report


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def check_manifest(
    manifest: dict,
    model_file: Path,
    checkpoint_sha256: str,
    tile_size: int,
    tokens_per_tile: int,
    hidden: int,
) -> list[str]:
    """Why ``model_file`` (described by ``manifest``) cannot serve this checkpoint: a model
    converted from other weights or at another tile size would run and produce wrong
    embeddings, so every fact the backend relies on is compared; empty when it fits."""
    errors = []
    where = model_file.parent / "manifest.json"
    if manifest.get("format") != MANIFEST_FORMAT:
        errors.append(
            f"{where}: format {manifest.get('format')!r}, this version reads {MANIFEST_FORMAT}: "
            "convert again"
        )
        return errors
    if manifest.get("checkpoint_sha256") != checkpoint_sha256:
        errors.append(
            f"{model_file} was converted from another checkpoint (sha256 "
            f"{str(manifest.get('checkpoint_sha256'))[:16]}..., this model's is "
            f"{checkpoint_sha256[:16]}...): convert this model"
        )
    expected_input = {"layout": "nhwc", "dtype": "uint8", "shape": [1, tile_size, tile_size, 3]}
    actual_input = {k: manifest.get("input", {}).get(k) for k in expected_input}
    if actual_input != expected_input:
        errors.append(
            f"{model_file} takes {actual_input}, the engine's tiles need {expected_input}"
        )
    if manifest.get("output", {}).get("shape") != [1, tokens_per_tile, hidden]:
        errors.append(
            f"{model_file} outputs {manifest.get('output', {}).get('shape')}, the checkpoint "
            f"needs [1, {tokens_per_tile}, {hidden}] per tile"
        )
    recorded = manifest.get("files", {}).get(model_file.name)
    if not model_file.is_file():
        errors.append(f"{model_file} is missing")
    elif recorded != file_sha256(model_file):
        errors.append(f"{model_file} does not match its manifest's sha256 (changed or truncated)")
    return errors
