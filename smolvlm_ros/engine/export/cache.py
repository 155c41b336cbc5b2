"""Where exported models live, and when an export can be reused.

An export is a directory under ``<cache root>/openvino/`` (the cache root is
``$SMOLVLM_ROS_CACHE`` or ``~/.cache/smolvlm_ros``). Its name is derived from everything the
graphs depend on: the checkpoint's *content* (config and weights, hashed: a renamed or copied
checkpoint reuses its export, a re-downloaded or edited one does not), the quantisation, the
export format version and the versions of torch, transformers and OpenVINO (transformers'
modelling code is what is traced; versions have differed in the vision position ids). A
directory counts only once its manifest is written, which is the last step of an export, and
exports are built in a temporary directory and renamed into place under a file lock, so a crash
or a second process never leaves or reads a half-written export.

Hashing a 1 GB checkpoint takes seconds, so digests are remembered per file (path, size,
modification time) in ``hashes.json``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from smolvlm_ros.models.random_checkpoint import cache_root

EXPORT_FORMAT = 3  # bump when the graphs or their names change: old exports are then ignored
MANIFEST = "manifest.json"
HASHES = "hashes.json"
# What the graphs are made of; tokenizer and generation config do not change them.
_CHECKPOINT_GLOBS = ("config.json", "*.safetensors", "*.safetensors.index.json", "*.bin")


def exports_root(root: Path | None = None) -> Path:
    return (root or cache_root()) / "openvino"


def checkpoint_dir(path: str) -> Path:
    """The local directory of a loaded checkpoint (``LoadedModel.path``: a directory, or a hub
    id already in the Hugging Face cache)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(path, "config.json")
    if not isinstance(config, str):
        raise FileNotFoundError(f"model {path!r} is neither a directory nor in the hub cache")
    return Path(config).parent


def checkpoint_files(directory: Path) -> list[Path]:
    files = sorted({f for pattern in _CHECKPOINT_GLOBS for f in directory.glob(pattern)})
    if not any(f.name == "config.json" for f in files):
        raise FileNotFoundError(f"{directory} has no config.json: not a checkpoint")
    return files


def _file_digest(file: Path, memo: dict[str, str]) -> str:
    real = file.resolve()  # hub snapshots are symlinks into blobs/
    stat = real.stat()
    key = f"{real}:{stat.st_size}:{stat.st_mtime_ns}"
    if key not in memo:
        digest = hashlib.sha256()
        with real.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        memo[key] = digest.hexdigest()
    return memo[key]


def checkpoint_digest(directory: Path, root: Path | None = None) -> str:
    """sha256 over the names and contents of the checkpoint's model files."""
    base = exports_root(root)
    memo_file = base / HASHES
    try:
        memo = json.loads(memo_file.read_text())
    except (OSError, ValueError):
        memo = {}
    before = dict(memo)
    digest = hashlib.sha256()
    for file in checkpoint_files(directory):
        digest.update(f"{file.name}\0{_file_digest(file, memo)}\n".encode())
    if memo != before:
        base.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo, indent=0, sort_keys=True))
        tmp.replace(memo_file)
    return digest.hexdigest()


def runtime_versions(quantization: str) -> dict[str, str]:
    """Versions an export depends on (NNCF only for quantised ones)."""
    from importlib.metadata import version

    packages = ["torch", "transformers", "openvino"] + (["nncf"] if quantization != "none" else [])
    return {name: version(name) for name in packages}


def export_name(digest: str, quantization: str, versions: dict[str, str]) -> str:
    """``<checkpoint digest>-<quantisation>-<settings digest>``: readable and exact."""
    settings = json.dumps(
        {"format": EXPORT_FORMAT, "quantization": quantization, "versions": versions},
        sort_keys=True,
    )
    return f"{digest[:16]}-{quantization}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"


def is_complete(directory: Path) -> bool:
    return (directory / MANIFEST).is_file()


def read_manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One exporter per export directory at a time, across processes."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
