"""Turn the user's ``model`` string into a loaded model and processor.

``model`` is a Hugging Face hub id, a local checkpoint directory, or ``random:<shape>``. All three
end in the same ``from_pretrained`` calls, so the path real checkpoints take is the path tests
take. Device and dtype are chosen here too, once, for every front end.
"""

from __future__ import annotations

import contextlib
import json
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
HUB_PROBE_TIMEOUT_S = 5.0  # one reachability check of the hub, no retries


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
    # False: the model is a skeleton on the meta device (config, generation config, structure)
    # because the backend runs its own copy of the weights (an export); see ensure_weights().
    weights_loaded: bool = True

    def ensure_weights(self) -> Any:
        """The torch model with its weights, loaded now if the backend did not need them (the
        transformers reference and the benchmark's anchors run the torch model itself)."""
        if not self.weights_loaded:
            _, model = _from_pretrained(self.spec, self.path, self.dtype, local_files_only=True)
            self.model = model.to(self.device).eval()
            self.weights_loaded = True
        return self.model


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


def check_checkpoint_files(directory: Path) -> None:
    """Name the broken file of a checkpoint directory, before ``from_pretrained`` reads it.

    ``from_pretrained`` reports a truncated download or a hand-edited config with an error that
    does not say which file is at fault. This check is cheap: it parses the (small) json files and
    opens only the header of each safetensors file; ``safe_open`` refuses a file whose size is not
    what its header declares, so truncated and padded files are caught without reading weights.
    """
    from safetensors import SafetensorError, safe_open

    for file in sorted(directory.glob("*.json")):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ModelLoadError(f"checkpoint file {file} cannot be read: {err}") from None
        if not text.strip():
            raise ModelLoadError(f"checkpoint file {file} is empty")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ModelLoadError(
                f"checkpoint file {file} is not valid JSON "
                f"(line {err.lineno}, column {err.colno}: {err.msg})"
            ) from None
        if file.name == "config.json":
            model_type = data.get("model_type") if isinstance(data, dict) else None
            if model_type != "idefics3":
                raise ModelLoadError(
                    f"checkpoint file {file} describes a {model_type!r} model; "
                    "SmolVLM (model_type 'idefics3') expected"
                )
    for file in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise ModelLoadError(
                f"checkpoint file {file} is not a valid safetensors file "
                f"(truncated or corrupt download?): {err}"
            ) from None


def _from_pretrained(
    spec: str, path: str, dtype: str, local_files_only: bool, weights: bool = True
) -> tuple[Any, Any]:
    """The processor and model; whatever goes wrong in transformers becomes a ModelLoadError.
    Without ``weights`` the model is built on the meta device: no memory, no reading."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=local_files_only)
        if weights:
            model = AutoModelForImageTextToText.from_pretrained(
                path, dtype=getattr(torch, dtype), local_files_only=local_files_only
            )
        else:
            model = _skeleton(path, dtype, local_files_only)
    except Exception as err:  # OSError, ValueError, SafetensorError...: all mean "bad checkpoint"
        raise ModelLoadError(f"could not load model {spec!r}: {type(err).__name__}: {err}") from err
    return processor, model


def _skeleton(path: str, dtype: str, local_files_only: bool) -> Any:
    """The model's structure on the meta device, with the checkpoint's generation config (its
    stop tokens), as from_pretrained would set it."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, GenerationConfig

    config = AutoConfig.from_pretrained(path, local_files_only=local_files_only)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, dtype=getattr(torch, dtype))
    with contextlib.suppress(OSError):  # none on disk: the one derived from config.json stays
        model.generation_config = GenerationConfig.from_pretrained(
            path, local_files_only=local_files_only
        )
    return model.eval()


def _hub_problem(repo_id: str) -> str | None:
    """Why the hub cannot serve ``repo_id`` now, or None when it can: at most one quick request.

    Without this, transformers tries every file of a missing model with five retries each and
    backoff: minutes and dozens of log lines before failing. One HEAD of ``config.json`` (the
    first file a download fetches) with a short timeout and no retry settles it. Endpoint and
    offline mode are huggingface_hub's own settings (HF_ENDPOINT, HF_HUB_OFFLINE), so the probe
    goes exactly where the download would.
    """
    from huggingface_hub import constants, hf_hub_url
    from huggingface_hub.utils import build_hf_headers, get_session

    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE=1 forbids downloading it"
    endpoint = constants.ENDPOINT
    try:
        response = get_session().head(
            hf_hub_url(repo_id, "config.json"),
            headers=build_hf_headers(),
            follow_redirects=True,
            timeout=HUB_PROBE_TIMEOUT_S,
        )
    except Exception as err:  # httpx2 connection errors, timeouts, TLS and proxy errors
        return f"the hub at {endpoint} is unreachable ({type(err).__name__}: {err})"
    if response.status_code in (401, 404):
        return (
            f"the hub at {endpoint} has no model {repo_id!r} (HTTP {response.status_code}): "
            "check the id; a private or gated model also needs `hf auth login`"
        )
    if response.status_code >= 400:
        return f"the hub at {endpoint} refused it (HTTP {response.status_code})"
    return None


def _check_hub_id(repo_id: str) -> None:
    """A ModelLoadError for a name that is no directory and no valid hub id, before any cache
    lookup (huggingface_hub's own lookups raise its validation error instead)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ModelLoadError(f"model {repo_id!r} is not a valid hub id: {err}") from None


def _load_from_hub(repo_id: str, dtype: str) -> tuple[Any, Any]:
    """Load a hub model from the local cache if it is there, else download it if the hub answers.

    A fully cached model loads with no network at all. Otherwise one quick probe decides between
    downloading and a single clear error, instead of a retry storm against an unreachable hub.
    """
    from huggingface_hub import constants, try_to_load_from_cache

    cache = constants.HF_HUB_CACHE
    cached_config = try_to_load_from_cache(repo_id, "config.json")
    not_cached = f"is not in the local Hugging Face cache ({cache})"
    if isinstance(cached_config, str):
        check_checkpoint_files(Path(cached_config).parent)
        try:
            return _from_pretrained(repo_id, repo_id, dtype, local_files_only=True)
        except ModelLoadError as err:  # often a partial download: the hub may complete it
            not_cached = f"is not complete in the local Hugging Face cache ({cache}: {err})"
    problem = _hub_problem(repo_id)
    if problem is not None:
        raise ModelLoadError(
            f"model {repo_id!r} {not_cached}, and {problem}.\n"
            "A hub id needs network access or a copy in the Hugging Face cache (HF_HOME, "
            f"HF_HUB_CACHE): pre-download it with `hf download {repo_id}` where the hub is "
            "reachable, give a local checkpoint directory instead, or use random:<shape> "
            "(random weights, for tests)."
        )
    return _from_pretrained(repo_id, repo_id, dtype, local_files_only=False)


def load_model(
    spec: str, device: str = "auto", dtype: str = "auto", weights: bool = True
) -> LoadedModel:
    """Resolve, load and place a SmolVLM checkpoint; every error is a :class:`ModelLoadError`.

    ``weights=False`` (a backend that runs its own export) skips the torch weights where the
    checkpoint is on disk already: the model is a meta-device skeleton, ``weights_loaded`` is
    False and :meth:`LoadedModel.ensure_weights` loads them if ever needed."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress bars garble node logs
    path = resolve_model_path(spec)
    device = select_device(device)
    dtype = select_dtype(dtype, device)
    local = Path(path).is_dir()
    if not local:
        _check_hub_id(path)
    if not local and not weights:  # a hub id: skip the weights only if they are cached
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(path, "config.json")
        weights = not isinstance(cached, str)
        if not weights:
            check_checkpoint_files(Path(cached).parent)
    if local:  # a directory never needs the network
        check_checkpoint_files(Path(path))
    if local or not weights:
        processor, model = _from_pretrained(spec, path, dtype, True, weights)
    else:
        processor, model = _load_from_hub(path, dtype)
    if getattr(model.config, "model_type", None) != "idefics3":
        raise ModelLoadError(
            f"model {spec!r} is a {model.config.model_type!r} model; SmolVLM (idefics3) expected"
        )
    if weights:
        model.to(device).eval()
    return LoadedModel(
        spec=spec,
        path=path,
        model=model,
        processor=processor,
        device=device,
        dtype=dtype,
        is_random=is_random_spec(spec),
        weights_loaded=weights,
    )
