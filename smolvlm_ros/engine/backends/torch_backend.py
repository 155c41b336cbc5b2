"""Both stages on PyTorch (CPU or CUDA), through transformers' own Idefics3 code.

The vision stage is the model's ``get_image_features`` and the language stage is
``model.generate`` fed those features as ``mm_encoder_outputs``: the very split transformers makes
inside ``generate()``, so greedy output equals a plain ``generate()`` call token for token.
"""

from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING, Any

import torch
from transformers.generation.logits_process import LogitsProcessor, LogitsProcessorList
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.modeling_outputs import BaseModelOutputWithPooling

from smolvlm_ros.engine.backends.base import (
    BackendOptions,
    Generation,
    GenerationRequest,
    StopCheck,
    TokenCallback,
)
from smolvlm_ros.engine.backends.registry import BackendSpec, Capability, register

if TYPE_CHECKING:
    from smolvlm_ros.models.loading import LoadedModel


class _TokenClock(BaseStreamer):
    """Timestamps the first new token (end of prefill) and forwards tokens to a callback.

    ``generate`` calls ``put`` once with the prompt, then once per step with the new token(s).
    """

    def __init__(self, on_token: TokenCallback | None) -> None:
        self.on_token = on_token
        self.first_token_at: float | None = None
        self._seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self._seen_prompt:
            self._seen_prompt = True
            return
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if self.on_token is not None:
            self.on_token(int(value.reshape(-1)[0]))

    def end(self) -> None:
        pass


class _StopWhen(StoppingCriteria):
    """Ends generation when the caller's check says so (polled after every token)."""

    def __init__(self, should_stop: StopCheck) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        stop = bool(self.should_stop())
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _image_outputs(embeddings: torch.Tensor) -> dict:
    return {"image": BaseModelOutputWithPooling(pooler_output=[embeddings])}


class TorchVision:
    """SigLIP encoder + connector of a loaded Idefics3 model."""

    def __init__(self, model: Any, device: str) -> None:
        self.model = model
        self.device = device

    @torch.inference_mode()
    def encode(
        self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor
    ) -> torch.Tensor:
        out = self.model.model.get_image_features(
            pixel_values.to(self.device)[None],
            pixel_attention_mask.to(self.device)[None],
            return_dict=True,
        )
        embeddings = torch.cat(list(out.pooler_output), dim=0)
        _sync(self.device)
        return embeddings


def pad_options(options: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each option but its last token (what follows the prompt before the token it predicts),
    right-padded: ids [n, longest - 1] (0 as padding) and the mask of real tokens."""
    width = max(len(option) for option in options) - 1
    ids = torch.zeros((len(options), width), dtype=torch.long)
    mask = torch.zeros((len(options), width), dtype=torch.long)
    for row, option in enumerate(options):
        ids[row, : len(option) - 1] = option[:-1]
        mask[row, : len(option) - 1] = 1
    return ids, mask


def sum_option_logprobs(
    first: torch.Tensor, rest: torch.Tensor | None, options: list[torch.Tensor]
) -> list[float]:
    """``first``: [vocab] log-probabilities after the prompt; ``rest``: [n, longest - 1, vocab]
    after each option's tokens so far (None when every option is one token)."""
    totals = []
    for row, option in enumerate(options):
        total = float(first[option[0]])
        if len(option) > 1:
            steps = torch.arange(len(option) - 1)
            total += float(rest[row, steps, option[1:]].sum())
        totals.append(total)
    return totals


@torch.inference_mode()
def score_options(
    model: Any,
    device: str,
    prompt_ids: torch.Tensor,
    image_embeddings: torch.Tensor | None,
    options: list[torch.Tensor],
) -> list[float]:
    """The LanguageStage.score contract on a transformers model: the prompt once (batch 1,
    its cache kept), then, if any option is longer than a token, the options' tokens as one
    right-padded batch over that cache repeated per option."""
    prompt = prompt_ids.to(device)[None]
    out = model(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        mm_encoder_outputs=_image_outputs(image_embeddings)
        if image_embeddings is not None
        else None,
        use_cache=True,
        logits_to_keep=1,
    )
    first = out.logits[0, -1].float().log_softmax(-1).cpu()
    if max(len(option) for option in options) == 1:
        return sum_option_logprobs(first, None, options)
    ids, mask = pad_options(options)
    cache = out.past_key_values
    cache.batch_repeat_interleave(len(options))
    length = prompt.shape[1]
    attention = torch.cat([torch.ones((len(options), length), dtype=torch.long), mask], dim=1)
    positions = (length + torch.arange(ids.shape[1]))[None].expand(len(options), -1)
    rest = model(
        input_ids=ids.to(device),
        attention_mask=attention.to(device),
        position_ids=positions.to(device),
        past_key_values=cache,
        use_cache=True,
    )
    return sum_option_logprobs(first, rest.logits.float().log_softmax(-1).cpu(), options)


def chosen_logprobs(scores: tuple[torch.Tensor, ...], tokens: torch.Tensor) -> list[list[float]]:
    """Per row, the log-probability of each generated token under the processed scores
    (constraints applied), from ``generate(output_scores=True)``."""
    per_step = [
        step.float().log_softmax(-1).gather(-1, tokens[:, i, None])[:, 0]
        for i, step in enumerate(scores)
    ]
    return torch.stack(per_step, dim=1).tolist() if per_step else [[] for _ in tokens]


def allowed_bias(allowed: Any, vocab: int, device: Any) -> torch.Tensor:
    """0 for allowed tokens, -inf for the rest; ``allowed`` is a list of ids or a boolean mask
    over (at least) the vocabulary, as a constraint returns it."""
    bias = torch.full((vocab,), float("-inf"), device=device)
    if isinstance(allowed, torch.Tensor) and allowed.dtype == torch.bool:
        bias[allowed[:vocab].to(device)] = 0.0
    else:
        bias[torch.as_tensor(list(allowed), dtype=torch.long, device=device)] = 0.0
    return bias


class _AllowedTokens(LogitsProcessor):
    """A request's ``allowed_tokens`` constraint as generate() takes it (ids or a mask)."""

    def __init__(self, allowed: Any) -> None:
        self.allowed = allowed

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        bias = torch.stack(
            [
                allowed_bias(self.allowed(row, ids), scores.shape[-1], scores.device)
                for row, ids in enumerate(input_ids)
            ]
        )
        return scores + bias


class TorchLanguage:
    """SmolLM2 decoder of a loaded Idefics3 model, driven by ``generate``."""

    def __init__(self, model: Any, device: str) -> None:
        self.model = model
        self.device = device
        # First CUDA calls initialise kernels and the allocator: worth one request at start-up.
        self.needs_warm_up = device.startswith("cuda")
        config = model.generation_config
        eos = config.eos_token_id
        self.eos_ids = frozenset(eos if isinstance(eos, list) else [eos] if eos is not None else [])

    @torch.inference_mode()
    def prefill(self, input_ids: torch.Tensor, image_embeddings: torch.Tensor) -> Any:
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=torch.ones_like(input_ids, device=self.device),
            mm_encoder_outputs=_image_outputs(image_embeddings),
            use_cache=True,
            logits_to_keep=1,
        )
        _sync(self.device)
        return out.past_key_values

    def score(
        self,
        prompt_ids: torch.Tensor,
        image_embeddings: torch.Tensor | None,
        options: list[torch.Tensor],
    ) -> list[float]:
        return score_options(self.model, self.device, prompt_ids, image_embeddings, options)

    @torch.inference_mode()
    def generate(self, request: GenerationRequest) -> list[Generation]:
        batch = request.input_ids.shape[0]
        if request.on_token is not None and batch > 1:
            raise ValueError("token streaming is for single prompts, not batches")
        clock = _TokenClock(request.on_token)
        stopping = StoppingCriteriaList(
            [_StopWhen(request.should_stop)] if request.should_stop else []
        )
        sampling = request.sampling
        kwargs: dict[str, Any] = {"do_sample": sampling.do_sample}
        if sampling.do_sample:
            kwargs.update(
                temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k
            )
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        if request.prefix is not None:
            # Each generation extends its own copy, one row per prompt: the prefix stays reusable.
            cache = copy.deepcopy(request.prefix)
            if batch > 1:
                cache.batch_repeat_interleave(batch)
            kwargs["past_key_values"] = cache
        else:
            kwargs["mm_encoder_outputs"] = _image_outputs(request.image_embeddings)

        start = time.perf_counter()
        out = self.model.generate(
            input_ids=request.input_ids.to(self.device),
            attention_mask=request.attention_mask.to(self.device),
            max_new_tokens=request.max_new_tokens,
            min_new_tokens=request.min_new_tokens or None,
            streamer=clock,
            stopping_criteria=stopping,
            logits_processor=LogitsProcessorList(
                [_AllowedTokens(request.allowed_tokens)] if request.allowed_tokens else []
            ),
            output_scores=request.want_logprobs,
            return_dict_in_generate=True,
            **kwargs,
        )
        _sync(self.device)
        end = time.perf_counter()
        first = clock.first_token_at if clock.first_token_at is not None else end
        made = out.sequences[:, request.input_ids.shape[1] :]
        logprobs = chosen_logprobs(out.scores, made) if request.want_logprobs else None
        results = []
        for row, tokens in enumerate(made.tolist()):
            kept = self._until_eos(tokens)
            row_logprobs = logprobs[row][: len(kept)] if logprobs is not None else None
            results.append(Generation(kept, first - start, end - first, row_logprobs))
        return results

    def _until_eos(self, tokens: list[int]) -> list[int]:
        """A batch row runs on (padded) after its end token: cut after the first one."""
        for index, token in enumerate(tokens):
            if token in self.eos_ids:
                return tokens[: index + 1]
        return tokens


class TorchBackend:
    """Vision and language stages on the device the model was loaded to."""

    name = "torch"

    def __init__(self, model: Any, device: str, dtype: str) -> None:
        self.device = device
        self.dtype = dtype
        self.vision = TorchVision(model, device)
        self.language = TorchLanguage(model, device)


def build(loaded: LoadedModel, options: BackendOptions) -> TorchBackend:
    """The model as loaded (already on its device, in its dtype) -> both stages on torch
    (eager: ``options.compile`` does not apply)."""
    return TorchBackend(loaded.model, loaded.device, loaded.dtype)


register(
    BackendSpec(
        name="torch",
        devices=("cpu", "cuda"),
        dtypes=("float32", "bfloat16", "float16"),
        build=build,
        capabilities=frozenset(Capability),  # batching, streaming, prefix reuse
        priority={"cpu": 10, "cuda": 10},  # the reference: specialised backends rank above it
        description="PyTorch + transformers' Idefics3 code, CPU or CUDA",
    )
)
