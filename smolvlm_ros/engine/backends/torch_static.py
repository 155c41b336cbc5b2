"""PyTorch with a preallocated (static) KV cache and its own decode loop: the GPU fast path.

``model.generate()`` pays, for every token, Python bookkeeping, a growing dynamic cache, one
kernel launch per op and a host sync (its stop check reads a GPU value). Here:

- The KV cache is a transformers :class:`~transformers.StaticCache` of fixed shape, reused across
  requests, so the decode step has the same shapes every time and can be captured once: on CUDA
  the step is ``torch.compile``'d in ``reduce-overhead`` mode (a CUDA graph replayed per token).
- Shapes are bucketed: the batch is padded to a power of two and the cache length rounded up
  (:data:`CACHE_BUCKET`), so a new question, prompt length or camera count reuses a captured step
  instead of compiling at run time; :meth:`StaticLanguage.warm_up` captures the buckets at start.
- Tokens stay on the device: the end-of-sequence bookkeeping is tensor ops, and the host looks
  at them only every :data:`CHECK_EVERY` tokens (to end early once every row has stopped), or at
  every token when the caller streams tokens.

The prompt is prefilled eagerly at its real length (prefill is one big batched pass: launch
overhead does not matter there). The vision stage is the torch backend's. Greedy decoding is
token-identical to ``model.generate()`` in float32 (the parity tests check it on CPU); sampling
uses transformers' own logits warpers in generate's order.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformers import StaticCache
from transformers.cache_utils import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from smolvlm_ros.engine.backends.base import (
    COMPILE_MODES,
    BackendOptions,
    Generation,
    GenerationRequest,
)
from smolvlm_ros.engine.backends.registry import BackendError, BackendSpec, Capability, register
from smolvlm_ros.engine.backends.torch_backend import (
    TorchVision,
    _sync,
    allowed_bias,
    score_options,
)

if TYPE_CHECKING:
    from smolvlm_ros.models.loading import LoadedModel


CACHE_BUCKET = 256  # cache lengths are multiples of this: prompts of 1-256 + answer share a step
CHECK_EVERY = 8  # tokens between host looks at "has every row stopped?"
COMPILED_SHAPES = 64  # compiled step variants kept before dynamo gives up (buckets x lengths)
MAX_CACHES = 4  # static caches kept (one per batch / length bucket in use), least recent dropped
# generation_config fields that change greedy output and this loop does not apply.
_UNSUPPORTED = {
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_repetition_penalty": 1.0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "sequence_bias": None,
}


def batch_bucket(batch: int) -> int:
    """Rows the step runs with: the next power of two (1, 2, 4, 8, 16, ...)."""
    if batch < 1:
        raise ValueError(f"a batch needs at least one row, got {batch}")
    return 1 << (batch - 1).bit_length()


def length_bucket(tokens: int) -> int:
    """Cache length for ``tokens`` (prompt + new tokens): the next multiple of CACHE_BUCKET."""
    return max(CACHE_BUCKET, -(-tokens // CACHE_BUCKET) * CACHE_BUCKET)


def should_compile(mode: str, device: str) -> bool:
    """``auto``: compile where it pays (CUDA, where the step becomes a CUDA graph); CPU stays
    eager (inductor on CPU compiles for minutes and gains little for a 256M decoder)."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    if mode == "auto":
        return device.startswith("cuda")
    raise ValueError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")


@dataclass
class _Prefix:
    """A shared prompt prefix through the decoder once: its keys and values per layer."""

    keys: list[torch.Tensor]  # [1, kv_heads, length, head_dim]
    values: list[torch.Tensor]
    length: int


class StaticLanguage:
    """SmolLM2 decoder with a static KV cache and a (compiled, on CUDA) one-token step."""

    def __init__(self, model: Any, device: str, compile_step: bool) -> None:
        self.model = model
        self.device = device
        self.text_model = model.model.text_model
        self.lm_head = model.lm_head
        self.text_config = model.config.text_config
        self.image_token_id = model.config.image_token_id
        config = model.generation_config
        eos = config.eos_token_id
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if not self.eos_ids:
            raise BackendError("torch_static needs the checkpoint's eos_token_id to stop")
        pad = config.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)
        self._eos = torch.tensor(sorted(self.eos_ids), device=device)
        for name, neutral in _UNSUPPORTED.items():
            if getattr(config, name, neutral) not in (neutral, None):
                raise BackendError(
                    f"the checkpoint's generation_config sets {name}, which torch_static does "
                    "not apply: use backend torch"
                )
        self.compiled = compile_step
        # Compiling and capturing happen on first use of each shape: Engine.warm_up does that
        # before the node reports ready, so no live frame pays for it.
        self.needs_warm_up = compile_step or device.startswith("cuda")
        self._step = self._forward_last
        if compile_step:
            self._step = torch.compile(
                self._forward_last, mode="reduce-overhead", fullgraph=False, dynamic=False
            )
        self._caches: OrderedDict[tuple[int, int], StaticCache] = OrderedDict()

    # -- model passes --------------------------------------------------------------------------

    def _forward_last(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: Any,
    ) -> torch.Tensor:
        """Decoder over ``inputs_embeds`` into ``cache``; float32 logits of the last position."""
        hidden = self.text_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        return self.lm_head(hidden[:, -1, :]).float()

    def _embed(self, input_ids: torch.Tensor, image_embeddings: torch.Tensor | None) -> Any:
        embeds = self.text_model.get_input_embeddings()(input_ids)
        if image_embeddings is not None:
            embeds = self.model.model.inputs_merger(input_ids, embeds, image_embeddings)
        return embeds

    def _cache(self, rows: int, length: int) -> StaticCache:
        """A zeroed static cache for the bucket, reused (same tensors: a captured step stays
        valid)."""
        key = (rows, length)
        cache = self._caches.pop(key, None)
        if cache is None:
            while len(self._caches) >= MAX_CACHES:
                self._caches.popitem(last=False)
            cache = StaticCache(config=self.text_config, max_cache_len=length)
            cache.early_initialization(
                batch_size=rows,
                num_heads=self.text_config.num_key_value_heads,
                head_dim=getattr(self.text_config, "head_dim", None)
                or self.text_config.hidden_size // self.text_config.num_attention_heads,
                dtype=self.lm_head.weight.dtype,
                device=torch.device(self.device),
            )
        else:
            cache.reset()
        self._caches[key] = cache
        return cache

    def score(
        self,
        prompt_ids: torch.Tensor,
        image_embeddings: torch.Tensor | None,
        options: list[torch.Tensor],
    ) -> list[float]:
        """Eager, on a dynamic cache (scoring is a prefill and a short pass: nothing to
        capture)."""
        return score_options(self.model, self.device, prompt_ids, image_embeddings, options)

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, image_embeddings: torch.Tensor) -> _Prefix:
        ids = input_ids.to(self.device)
        cache = DynamicCache(config=self.text_config)
        self.text_model(
            inputs_embeds=self._embed(ids, image_embeddings),
            attention_mask=torch.ones_like(ids),
            past_key_values=cache,
            use_cache=True,
        )
        _sync(self.device)
        return _Prefix(
            [layer.keys for layer in cache.layers],
            [layer.values for layer in cache.layers],
            ids.shape[1],
        )

    # -- generation ----------------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, request: GenerationRequest) -> list[Generation]:
        batch, prompt_len = request.input_ids.shape
        if request.on_token is not None and batch > 1:
            raise ValueError("token streaming is for single prompts, not batches")
        rows = batch_bucket(batch)
        cache_len = length_bucket(prompt_len + request.max_new_tokens)
        ids = _pad_rows(request.input_ids.to(self.device), rows)
        prompt_mask = _pad_rows(request.attention_mask.to(self.device), rows)
        # The mask covers the whole cache: prompt padding masked, every later slot open (the
        # causal mask hides the ones not written yet), so it is the same at every step.
        mask = torch.ones((rows, cache_len), dtype=torch.long, device=self.device)
        mask[:, :prompt_len] = prompt_mask
        cache = self._cache(rows, cache_len)
        start_at = 0
        embeddings = request.image_embeddings
        if embeddings is not None and rows > batch:  # padding rows repeat row 0's image
            first = int((request.input_ids[0] == self.image_token_id).sum())
            embeddings = torch.cat([embeddings, embeddings[:first].repeat(rows - batch, 1)])
        if request.prefix is not None:
            start_at = request.prefix.length
            for layer, keys, values in zip(
                cache.layers, request.prefix.keys, request.prefix.values, strict=True
            ):
                layer.keys[:, :, :start_at] = keys
                layer.values[:, :, :start_at] = values
                layer.cumulative_length.fill_(start_at)
            embeddings = None
        if request.sampling.do_sample and request.sampling.seed is not None:
            torch.manual_seed(request.sampling.seed)

        start = time.perf_counter()
        positions = (mask[:, :prompt_len].cumsum(-1) - 1).clamp(min=0)
        logits = self._forward_last(
            self._embed(ids[:, start_at:], embeddings),
            mask,
            positions[:, start_at:],
            cache,
        )
        tokens = torch.full(
            (rows, request.max_new_tokens), self.pad_id, dtype=torch.long, device=self.device
        )
        choose = _TokenChooser(request, self._eos, ids, tokens)
        finished = torch.zeros(rows, dtype=torch.bool, device=self.device)
        finished[batch:] = True  # bucket padding rows never hold the loop up
        token = choose(logits, 0, finished, self.pad_id)
        tokens[:, 0] = token
        finished |= torch.isin(token, self._eos)
        _sync(self.device)
        first_at = time.perf_counter()
        made = self._decode(request, tokens, token, finished, mask, positions[:, -1], cache, choose)
        _sync(self.device)
        end = time.perf_counter()
        logprobs = choose.logprobs[:batch, :made].tolist() if choose.logprobs is not None else None
        results = []
        for row, made_row in enumerate(tokens[:batch, :made].tolist()):
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
        mask: torch.Tensor,
        last_position: torch.Tensor,
        cache: Any,
        choose: _TokenChooser,
    ) -> int:
        """Tokens 1.. into ``tokens``; returns how many columns were made. The host syncs only
        to stream, and every CHECK_EVERY tokens to see whether every row has stopped."""
        stream, should_stop = request.on_token, request.should_stop
        if stream is not None:
            stream(int(token[0]))
        if should_stop is not None and should_stop():
            return 1
        embed = self.text_model.get_input_embeddings()
        for step in range(1, request.max_new_tokens):
            if (stream is not None or step % CHECK_EVERY == 0) and bool(finished.all()):
                return step
            if self.compiled:
                torch.compiler.cudagraph_mark_step_begin()
            logits = self._step(embed(token[:, None]), mask, (last_position + step)[:, None], cache)
            token = choose(logits, step, finished, self.pad_id)
            tokens[:, step] = token
            finished |= torch.isin(token, self._eos)
            if stream is not None:
                stream(int(token[0]))
            if should_stop is not None and should_stop():
                return step + 1
        return request.max_new_tokens


class _TokenChooser:
    """The next token from float32 logits, on the device: min_new_tokens, an allowed-tokens
    constraint (host-side: it reads the row so far), then greedy or transformers' warpers
    (temperature, top-k, top-p, in generate's order) and a draw; records each chosen token's
    log-probability under the constrained scores when asked."""

    def __init__(
        self, request: GenerationRequest, eos: torch.Tensor, prompt: torch.Tensor, tokens: Any
    ) -> None:
        sampling = request.sampling
        self.sampling = sampling
        self.eos = eos
        self.min_new_tokens = request.min_new_tokens
        self.allowed = request.allowed_tokens
        self.rows = request.input_ids.shape[0]  # real rows: bucket padding is not constrained
        self.prompt, self.tokens = prompt, tokens
        self.logprobs = (
            torch.zeros(tokens.shape, device=tokens.device) if request.want_logprobs else None
        )
        self.warpers = LogitsProcessorList()
        if sampling.do_sample:
            if sampling.temperature != 1.0:
                self.warpers.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k:
                self.warpers.append(TopKLogitsWarper(sampling.top_k))
            if sampling.top_p < 1.0:
                self.warpers.append(TopPLogitsWarper(sampling.top_p))

    def __call__(
        self, logits: torch.Tensor, step: int, finished: torch.Tensor, pad_id: int
    ) -> torch.Tensor:
        if step < self.min_new_tokens:  # out of place: a compiled step owns its output buffer
            logits = logits.index_fill(1, self.eos, float("-inf"))
        if self.allowed is not None:
            logits = logits + self._allowed_mask(logits, step)
        scores = logits
        if self.sampling.do_sample:
            logits = self.warpers(None, logits)
            token = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1).squeeze(1)
        else:
            token = logits.argmax(dim=-1)
        if self.logprobs is not None:
            self.logprobs[:, step] = scores.log_softmax(-1).gather(-1, token[:, None])[:, 0]
        return torch.where(finished, torch.full_like(token, pad_id), token)

    def _allowed_mask(self, logits: torch.Tensor, step: int) -> torch.Tensor:
        """0 where a token is allowed, -inf elsewhere (rows past the real batch: no limit)."""
        mask = torch.zeros_like(logits)
        for row in range(self.rows):
            so_far = torch.cat([self.prompt[row], self.tokens[row, :step]])
            mask[row] = allowed_bias(self.allowed(row, so_far), logits.shape[-1], logits.device)
        return mask


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Repeat the first row up to ``rows`` (bucket padding: computed, then thrown away)."""
    extra = rows - tensor.shape[0]
    return tensor if extra == 0 else torch.cat([tensor, tensor[:1].expand(extra, -1)])


def _until_eos(tokens: list[int], eos_ids: frozenset[int]) -> list[int]:
    for index, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: index + 1]
    return tokens


class TorchStaticBackend:
    """The torch vision stage and the static-cache language stage."""

    name = "torch_static"

    def __init__(self, model: Any, device: str, dtype: str, compile_step: bool) -> None:
        self.device = device
        self.dtype = dtype
        self.vision = TorchVision(model, device)
        self.language = StaticLanguage(model, device, compile_step)


def build(loaded: LoadedModel, options: BackendOptions) -> TorchStaticBackend:
    compile_step = should_compile(options.compile, loaded.device)
    if compile_step:
        # Compiled graphs are cached on disk, so a restart skips most of the compilation.
        os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
        os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
        # One compiled step per (batch, cache length) bucket in use: past dynamo's default of 8
        # it would silently fall back to eager.
        limit = torch._dynamo.config.cache_size_limit
        torch._dynamo.config.cache_size_limit = max(limit, COMPILED_SHAPES)
    return TorchStaticBackend(loaded.model, loaded.device, loaded.dtype, compile_step)


register(
    BackendSpec(
        name="torch_static",
        devices=("cuda", "cpu"),
        dtypes=("bfloat16", "float16", "float32"),
        build=build,
        capabilities=frozenset(Capability),
        priority={"cuda": 20},  # ahead of torch on GPUs; on CPUs only when asked for
        description="PyTorch, static KV cache, own decode loop; on CUDA the step is a CUDA graph",
    )
)
