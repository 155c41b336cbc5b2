"""Both stages on OpenVINO: the CPU fast path.

Why OpenVINO (measured on the 256M shape, 2 cores, one run, README "CPU"): it runs the vision
encoder in bf16 on AMX / AVX512-BF16 and int8 on VNNI, where ONNX Runtime stays in fp32 (3x
slower per tile here), and its fused stateful KV-cache attention decodes faster than ONNX
Runtime with the cache as inputs and outputs. Its NNCF quantiser kept the vision encoder's
output close to fp32 where ONNX Runtime's static quantisation did not.

The graphs come from :mod:`smolvlm_ros.engine.export` (exported on first use, cached by checkpoint
content and export settings). The engine still owns prompts, tiling and caching; here:

- vision: tiles -> patch masks -> the vision graph (encoder + connector);
- language: token embeddings looked up in the exported table (memory-mapped), image
  embeddings merged in place of the image tokens, then one stateful decoder request: a prefill
  over the prompt and one call per token. Rows are left-padded (or [prefix | padding | rest]
  after a shared prefix), positions follow the attention mask, as in ``torch_static``, whose
  token chooser (min_new_tokens, constraints, transformers' warpers for sampling) is reused, so
  greedy float32 output equals the torch path token for token (``test/test_openvino_backend.py``).
- prefix reuse: the decoder state after a shared prefix is copied out once and written back
  before each batch; the graph's ``beam_idx`` input fans that one row out to every row.

Precision: ``float32`` runs f32 with an f32 KV cache (exact); ``bfloat16`` runs bf16 with a bf16
KV cache; ``quantization: int8`` uses the int8 export (int8 decoder weights, statically
quantised vision encoder) and OpenVINO's u8 KV cache, ``int4`` the int4 export (4-bit decoder
weights, the same vision encoder). With quantised weights the decoder computes in f32 whatever
the dtype, so that OpenVINO quantises its activations to int8 on the fly and multiplies int8 by
int8 (VNNI / AMX), which measured faster than bf16 activations on the 256M shape (README "On a
CPU"); the vision stage keeps the dtype. The backend's ``dtype`` string says both, e.g.
``bfloat16+int8``, and its ``name`` carries the runtime version.

Memory: both graphs run once at build (a blank tile, a two-token prompt and a step), which
packs every weight into the CPU plugin's kernel layout; the mapped export files' pages are then
given back (:mod:`._mapped_files`), so the weights are resident once, not twice, and the first
real frame pays no first-call set-up.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from smolvlm_ros.engine.backends._mapped_files import release_mapped
from smolvlm_ros.engine.backends.base import BackendOptions, Generation, GenerationRequest
from smolvlm_ros.engine.backends.registry import (
    BackendError,
    BackendSpec,
    Capability,
    module_check,
    register,
)

if TYPE_CHECKING:
    from smolvlm_ros.engine.export import Export
    from smolvlm_ros.models.loading import LoadedModel

log = logging.getLogger(__name__)

PRECISION = {"float32": "f32", "bfloat16": "bf16"}


def cpu_threads(requested: int = 0) -> int:
    """Threads to run with: ``requested``, or (0) the cores this process may use (its CPU
    affinity: a container or ``taskset`` limit, not the machine's count)."""
    if requested < 0:
        raise ValueError(f"cpu_threads must be >= 0, got {requested}")
    if requested:
        return requested
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


STAGES = ("vision", "decoder")


def compile_config(dtype: str, quantization: str, threads: int, stage: str) -> dict[str, Any]:
    """OpenVINO CPU properties for one stage at a dtype and quantisation (see the module
    docstring: a decoder with int8 weights computes in f32 with int8 dynamic activations)."""
    if dtype not in PRECISION:
        raise BackendError(f"openvino runs {', '.join(PRECISION)}, not {dtype}")
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    precision = PRECISION[dtype]
    if stage == "decoder" and quantization != "none":
        precision = PRECISION["float32"]
    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
        "INFERENCE_PRECISION_HINT": precision,
    }
    if quantization == "none":
        config["KV_CACHE_PRECISION"] = PRECISION[dtype]  # OpenVINO's default is u8
        config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = 0  # no int8 activations either
    return config


class OpenVINOVision:
    """The exported vision graph: tiles -> image embeddings."""

    def __init__(self, compiled: Any, patch_size: int) -> None:
        from smolvlm_ros.engine.export.graphs import VISION_OUTPUT

        self.request = compiled.create_infer_request()
        self.output = compiled.output(VISION_OUTPUT)
        self.patch_size = patch_size

    def encode(
        self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor
    ) -> torch.Tensor:
        from smolvlm_ros.engine.export.graphs import patch_mask

        result = self.request.infer(
            {
                "pixel_values": pixel_values.float().numpy(),
                "patch_attention_mask": patch_mask(pixel_attention_mask, self.patch_size).numpy(),
            }
        )
        return torch.from_numpy(result[self.output])

    def warm(self, tile_size: int) -> None:
        """One blank tile: packs the weights for the kernels every later tile uses."""
        pixels = torch.zeros(1, 3, tile_size, tile_size)
        self.encode(pixels, torch.ones(1, tile_size, tile_size, dtype=torch.bool))


@dataclass
class _Prefix:
    """The decoder state after a shared prompt prefix (one row), and its length."""

    states: dict[str, np.ndarray]
    length: int


class OpenVINOLanguage:
    """The exported stateful decoder, driven token by token from the host."""

    def __init__(self, compiled: Any, table: np.ndarray, loaded: LoadedModel) -> None:
        from smolvlm_ros.engine.backends.torch_static import _UNSUPPORTED
        from smolvlm_ros.engine.export.graphs import LOGITS

        self.request = compiled.create_infer_request()
        self.logits = compiled.output(LOGITS)
        self.table = table  # [vocab, hidden] float32, memory-mapped
        self.image_token_id = loaded.model.config.image_token_id
        config = loaded.model.generation_config
        eos = config.eos_token_id
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if not self.eos_ids:
            raise BackendError("openvino needs the checkpoint's eos_token_id to stop")
        pad = config.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)
        self._eos = torch.tensor(sorted(self.eos_ids))
        for name, neutral in _UNSUPPORTED.items():
            if getattr(config, name, neutral) not in (neutral, None):
                raise BackendError(
                    f"the checkpoint's generation_config sets {name}, which openvino does not "
                    "apply: use backend torch"
                )
        # The backend warms both graphs itself at build (see the module docstring), so
        # Engine.warm_up has nothing to do for it.
        self.needs_warm_up = False

    # -- model passes --------------------------------------------------------------------------

    def _embed(self, ids: np.ndarray, image_embeddings: torch.Tensor | None) -> np.ndarray:
        embeds = self.table[ids]  # a copy: the table stays read-only
        if image_embeddings is not None:  # row-major, as inputs_merger's masked_scatter
            embeds[ids == self.image_token_id] = image_embeddings.float().numpy()
        return embeds

    def _forward(
        self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray, beam: np.ndarray
    ) -> torch.Tensor:
        result = self.request.infer(
            {
                "inputs_embeds": embeds,
                "attention_mask": mask,
                "position_ids": positions,
                "beam_idx": beam,
            },
            share_inputs=True,  # a synchronous call: the arrays outlive it, no copies needed
        )
        return torch.from_numpy(result[self.logits]).float()

    def _save_state(self) -> dict[str, np.ndarray]:
        return {s.name: np.array(s.state.data, copy=True) for s in self.request.query_state()}

    def _load_state(self, states: dict[str, np.ndarray]) -> None:
        import openvino as ov

        for state in self.request.query_state():
            state.state = ov.Tensor(states[state.name])

    def prefill(self, input_ids: torch.Tensor, image_embeddings: torch.Tensor) -> _Prefix:
        ids = input_ids.numpy()
        self.request.reset_state()
        self._forward(
            self._embed(ids, image_embeddings),
            np.ones(ids.shape, np.int64),
            np.arange(ids.shape[1], dtype=np.int64)[None],
            np.zeros(1, np.int32),
        )
        return _Prefix(self._save_state(), ids.shape[1])

    def warm(self) -> None:
        """A two-token prompt and one step: packs the weights for both the prompt kernels and
        the one-row decode kernels."""
        hidden = self.table.shape[1]
        self.request.reset_state()
        for past, new in ((0, 2), (2, 1)):
            self._forward(
                np.zeros((1, new, hidden), np.float32),
                np.ones((1, past + new), np.int64),
                np.arange(past, past + new, dtype=np.int64)[None],
                np.zeros(1, np.int32),
            )
        self.request.reset_state()

    def tail_logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_embeddings: torch.Tensor | None,
        keep: int,
    ) -> torch.Tensor:
        """[batch, keep, vocab] float32 logits predicting each row's last ``keep`` tokens
        (left-padded rows, image tokens all before them). The graph returns the last
        position's logits only, so the head goes through as one prefill and the tail one
        column per call: cheap for the few tokens of an option or a check."""
        ids = input_ids.numpy()
        mask = attention_mask.numpy().astype(np.int64)
        batch, length = ids.shape
        if not 0 < keep < length:
            raise ValueError(f"keep must be in [1, {length - 1}], got {keep}")
        positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
        rows = np.arange(batch, dtype=np.int32)
        head = length - keep
        self.request.reset_state()
        embeds = self._embed(ids[:, :head], image_embeddings)
        out = [self._forward(embeds, mask[:, :head], positions[:, :head], rows)]
        for column in range(head, length - 1):
            embeds = self._embed(ids[:, column : column + 1], None)
            span = slice(column, column + 1)
            out.append(self._forward(embeds, mask[:, : column + 1], positions[:, span], rows))
        return torch.stack(out, dim=1)

    def score(
        self,
        prompt_ids: torch.Tensor,
        image_embeddings: torch.Tensor | None,
        options: list[torch.Tensor],
    ) -> list[float]:
        """As torch's ``score_options``: the prompt once into the state (batch 1), then, when
        an option is longer than a token, the stored row fanned out to every option
        (``beam_idx`` zeros) and their tokens one column per call."""
        from smolvlm_ros.engine.backends.torch_backend import pad_options, sum_option_logprobs

        ids = prompt_ids.numpy()[None]
        length = ids.shape[1]
        self.request.reset_state()
        logits = self._forward(
            self._embed(ids, image_embeddings),
            np.ones(ids.shape, np.int64),
            np.arange(length, dtype=np.int64)[None],
            np.zeros(1, np.int32),
        )
        first = logits.reshape(-1, logits.shape[-1])[-1].log_softmax(-1)
        if max(len(option) for option in options) == 1:
            return sum_option_logprobs(first, None, options)
        rest_ids, rest_mask = pad_options(options)
        count, width = rest_ids.shape
        mask = np.concatenate([np.ones((count, length), np.int64), rest_mask.numpy()], axis=1)
        beam = np.zeros(count, np.int32)  # every row continues the one stored prompt
        columns = []
        for column in range(width):
            step = self._forward(
                self._embed(rest_ids[:, column : column + 1].numpy(), None),
                mask[:, : length + column + 1],
                np.full((count, 1), length + column, np.int64),
                beam,
            )
            columns.append(step.reshape(count, -1).log_softmax(-1))
            beam = np.arange(count, dtype=np.int32)
        return sum_option_logprobs(first, torch.stack(columns, dim=1), options)

    # -- generation ----------------------------------------------------------------------------

    def generate(self, request: GenerationRequest) -> list[Generation]:
        from smolvlm_ros.engine.backends.torch_static import _TokenChooser, _until_eos

        batch, prompt_len = request.input_ids.shape
        if request.on_token is not None and batch > 1:
            raise ValueError("token streaming is for single prompts, not batches")
        ids = request.input_ids.numpy()
        # Prompt mask, then one open slot per new token: slice [:, :prompt_len + step].
        mask = np.ones((batch, prompt_len + request.max_new_tokens), np.int64)
        mask[:, :prompt_len] = request.attention_mask.numpy()
        positions = np.maximum(np.cumsum(mask[:, :prompt_len], axis=-1) - 1, 0)
        rows = np.arange(batch, dtype=np.int32)
        if request.prefix is not None:
            start_at, beam = request.prefix.length, np.zeros(batch, np.int32)
            self._load_state(request.prefix.states)
            embeds = self._embed(ids[:, start_at:], None)
        else:
            start_at, beam = 0, rows
            self.request.reset_state()
            embeds = self._embed(ids, request.image_embeddings)
        if request.sampling.do_sample and request.sampling.seed is not None:
            torch.manual_seed(request.sampling.seed)

        start = time.perf_counter()
        logits = self._forward(embeds, mask[:, :prompt_len], positions[:, start_at:], beam)
        tokens = torch.full((batch, request.max_new_tokens), self.pad_id, dtype=torch.long)
        choose = _TokenChooser(request, self._eos, request.input_ids, tokens)
        finished = torch.zeros(batch, dtype=torch.bool)
        token = choose(logits, 0, finished, self.pad_id)
        tokens[:, 0] = token
        finished |= torch.isin(token, self._eos)
        first_at = time.perf_counter()
        made = self._decode(request, tokens, token, finished, mask, positions[:, -1], choose)
        end = time.perf_counter()
        logprobs = choose.logprobs[:, :made].tolist() if choose.logprobs is not None else None
        results = []
        for row, made_row in enumerate(tokens[:, :made].tolist()):
            kept = _until_eos(made_row, self.eos_ids)
            row_logprobs = logprobs[row][: len(kept)] if logprobs is not None else None
            results.append(Generation(kept, first_at - start, end - first_at, row_logprobs))
        return results

    def _decode(
        self,
        request: GenerationRequest,
        tokens: torch.Tensor,
        token: torch.Tensor,
        finished: torch.Tensor,
        mask: np.ndarray,
        last_position: np.ndarray,
        choose: Any,
    ) -> int:
        """Tokens 1.. into ``tokens``; returns how many columns were made."""
        stream, should_stop = request.on_token, request.should_stop
        prompt_len = request.input_ids.shape[1]
        rows = np.arange(tokens.shape[0], dtype=np.int32)
        if stream is not None:
            stream(int(token[0]))
        if should_stop is not None and should_stop():
            return 1
        for step in range(1, request.max_new_tokens):
            if bool(finished.all()):
                return step
            logits = self._forward(
                self._embed(token.numpy()[:, None], None),
                mask[:, : prompt_len + step],
                (last_position + step)[:, None],
                rows,
            )
            token = choose(logits, step, finished, self.pad_id)
            tokens[:, step] = token
            finished |= torch.isin(token, self._eos)
            if stream is not None:
                stream(int(token[0]))
            if should_stop is not None and should_stop():
                return step + 1
        return request.max_new_tokens


class OpenVINOBackend:
    """Vision and language stages on OpenVINO's CPU plugin."""

    device = "cpu"

    def __init__(
        self,
        export: Export,
        loaded: LoadedModel,
        dtype: str,
        threads: int,
        with_vision: bool = True,
    ) -> None:
        import openvino as ov

        quantization = export.quantization
        core = ov.Core()
        started = time.perf_counter()
        # One stage at a time, each warmed then its file's pages given back, so that the peak
        # holds one stage's mapped file at most (module docstring, "Memory").
        decoder = core.compile_model(
            core.read_model(export.decoder_xml),
            "CPU",
            compile_config(dtype, quantization, threads, "decoder"),
        )
        # memory-mapped (only the rows looked up become resident); as a plain array view, since
        # np.memmap's own indexing costs more than the lookup of one row per decoded token
        table = np.asarray(np.load(export.embeddings, mmap_mode="r"))
        self.language = OpenVINOLanguage(decoder, table, loaded)
        self.language.warm()
        released = release_mapped([export.decoder_bin])
        # with_vision=False: the decoder alone (backend rknn runs the vision stage on the NPU;
        # a compiled vision graph would only take the board's memory)
        self.vision = None
        if with_vision:
            vision = core.compile_model(
                core.read_model(export.vision_xml),
                "CPU",
                compile_config(dtype, quantization, threads, "vision"),
            )
            vision_config = loaded.model.config.vision_config
            self.vision = OpenVINOVision(vision, vision_config.patch_size)
            self.vision.warm(vision_config.image_size)
            released += release_mapped([export.vision_bin])
        self.compile_s = time.perf_counter() - started  # compiled and warmed
        self.released_bytes = released
        self.export = export
        self.threads = threads
        self.quantization = quantization
        self.runtime_version = ov.get_version().split("-", 1)[0]
        self.name = f"openvino-{self.runtime_version}"
        self.dtype = dtype if quantization == "none" else f"{dtype}+{quantization}"


def build(
    loaded: LoadedModel, options: BackendOptions, with_vision: bool = True
) -> OpenVINOBackend:
    """Export on first use (cached), then compile both graphs for the CPU (the decoder alone
    with ``with_vision=False``)."""
    from smolvlm_ros.engine.export import QUANTIZATIONS, ensure_export, missing_runtime

    if loaded.device != "cpu":
        raise BackendError(f"openvino runs on the CPU, not {loaded.device}")
    quantization = options.quantization
    if quantization not in QUANTIZATIONS:
        raise BackendError(f"quantization {quantization!r}: expected one of {QUANTIZATIONS}")
    missing = missing_runtime(quantization)
    if missing is not None:
        raise BackendError(f"backend openvino with quantization {quantization}: {missing}")
    threads = cpu_threads(options.cpu_threads)
    export = ensure_export(loaded, quantization)
    backend = OpenVINOBackend(export, loaded, loaded.dtype, threads, with_vision)
    log.info(
        "openvino %s: %s export %s, %d threads, compiled and warmed in %.1f s "
        "(%d MB of mapped weight files given back)",
        backend.runtime_version,
        "new" if export.created else "cached",
        export.directory,
        threads,
        backend.compile_s,
        backend.released_bytes >> 20,
    )
    return backend


register(
    BackendSpec(
        name="openvino",
        devices=("cpu",),
        dtypes=("float32", "bfloat16"),
        build=build,
        capabilities=frozenset(
            {
                Capability.BATCHING,
                Capability.STREAMING,
                Capability.PREFIX_REUSE,
                Capability.CONSTRAINED,
                Capability.SCORING,
            }
        ),
        needs_weights=False,  # it runs the export; the torch weights would only take memory
        priority={"cpu": 20},  # ahead of torch (10) on CPUs, where it is installed
        available=module_check(
            "openvino",
            "pip install -r requirements/cpu.txt (or `make cpu-runtime`)",
            label="OpenVINO (openvino)",
        ),
        description="OpenVINO on the CPU: exported graphs, stateful KV cache, optional int8",
    )
)
