"""Turn the user's ``model`` string into a loaded model and processor.

``model`` is a Hugging Face hub id, a local checkpoint directory, or ``random:<shape>``. All three
end in the same ``from_pretrained`` calls, so the path real checkpoints take is the path tests
take. Device and dtype are chosen here too, once, for every front end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smolvlm_ros.models.random_checkpoint import ensure_random_checkpoint
from smolvlm_ros.models.shapes import get_shape

RANDOM_PREFIX = "random:"
DEFAULT_MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class ModelLoadError(RuntimeError):
    """The model could not be resolved or loaded; the message says why and what to do."""


@dataclass
class LoadedModel:
    """A model ready for inference, with what it is and where it runs."""

    spec: str  # the ``model`` string as the user gave it
    path: str  # what from_pretrained loaded: a directory or a hub id
    model: Any  # Idefics3ForConditionalGeneration
    processor: Any  # Idefics3Processor
    device: str
    dtype: str
    is_random: bool  # weights are random: outputs are meaningless text


def is_random_spec(spec: str) -> bool:
    return spec.startswith(RANDOM_PREFIX)


def resolve_model_path(spec: str) -> str:
    """Where ``from_pretrained`` should look for ``spec`` (building random checkpoints)."""
    spec = spec.strip()
    if not spec:
        raise ModelLoadError(
            "model is empty: give a hub id, a checkpoint directory or random:<shape>"
        )
    if is_random_spec(spec):
        try:
            shape = get_shape(spec[len(RANDOM_PREFIX) :])
        except ValueError as err:
            raise ModelLoadError(f"model {spec!r}: {err}") from None
        return str(ensure_random_checkpoint(shape))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model directory {spec!r} has no config.json: not a checkpoint")
        return str(path)
    if spec.startswith(("/", ".", "~")) or os.sep in spec.strip("/").replace("/", "", 1):
        raise ModelLoadError(f"model directory {spec!r} does not exist")
    return spec  # a hub id


def select_device(device: str) -> str:
    """``auto`` is CUDA when torch sees a GPU, else CPU; asking for CUDA without one is an error."""
    import torch

    if device not in DEVICES:
        raise ModelLoadError(f"device {device!r}: expected one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device 'cuda' requested but torch sees no CUDA GPU (use cpu or auto)")
    return device


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def select_dtype(dtype: str, device: str) -> str:
    """``auto``: bf16 on GPUs that have it, else fp16; on CPU bf16 only with native bf16 units.

    On a CPU without AVX512-BF16/AMX, bf16 is emulated and slower than fp32.
    """
    import torch

    if dtype not in DTYPES:
        raise ModelLoadError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if _cpu_has_native_bf16() else "float32"


def load_model(spec: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Resolve, load and place a SmolVLM checkpoint; errors are :class:`ModelLoadError`."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress bars garble node logs
    path = resolve_model_path(spec)
    device = select_device(device)
    dtype = select_dtype(dtype, device)
    try:
        processor = AutoProcessor.from_pretrained(path)
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype))
    except OSError as err:
        raise ModelLoadError(
            f"could not load model {spec!r}: {err}\n"
            "A hub id needs network access or a copy in the Hugging Face cache "
            "(HF_HOME); otherwise give a local checkpoint directory or random:<shape>."
        ) from err
    if getattr(model.config, "model_type", None) != "idefics3":
        raise ModelLoadError(
            f"model {spec!r} is a {model.config.model_type!r} model; SmolVLM (idefics3) expected"
        )
    model.to(device).eval()
    return LoadedModel(
        spec=spec,
        path=path,
        model=model,
        processor=processor,
        device=device,
        dtype=dtype,
        is_random=is_random_spec(spec),
    )
