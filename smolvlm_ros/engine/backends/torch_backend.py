"""Both stages on PyTorch (CPU or CUDA), through transformers' own Idefics3 code.

The vision stage is the model's ``get_image_features`` and the language stage is
``model.generate`` fed those features as ``mm_encoder_outputs``: the very split transformers makes
inside ``generate()``, so greedy output equals a plain ``generate()`` call token for token.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer
from transformers.modeling_outputs import BaseModelOutputWithPooling

from smolvlm_ros.engine.backends.base import Generation, StopCheck, TokenCallback


class _TokenClock(BaseStreamer):
    """Timestamps the first new token (end of prefill) and forwards tokens to a callback.

    ``generate`` calls ``put`` once with the prompt, then once per new token.
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
            for token in value.reshape(-1).tolist():
                self.on_token(int(token))

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
            pixel_values.to(self.device),
            pixel_attention_mask.to(self.device),
            return_dict=True,
        )
        embeddings = torch.cat(list(out.pooler_output), dim=0)
        _sync(self.device)
        return embeddings


class TorchLanguage:
    """SmolLM2 decoder of a loaded Idefics3 model, driven by ``generate``."""

    def __init__(self, model: Any, device: str) -> None:
        self.model = model
        self.device = device

    @torch.inference_mode()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_embeddings: torch.Tensor,
        max_new_tokens: int,
        on_token: TokenCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> Generation:
        clock = _TokenClock(on_token)
        stopping = StoppingCriteriaList([_StopWhen(should_stop)] if should_stop else [])
        start = time.perf_counter()
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            mm_encoder_outputs={
                "image": BaseModelOutputWithPooling(pooler_output=[image_embeddings])
            },
            max_new_tokens=max_new_tokens,
            do_sample=False,
            streamer=clock,
            stopping_criteria=stopping,
        )
        _sync(self.device)
        end = time.perf_counter()
        new_tokens = out[0, input_ids.shape[1] :].tolist()
        first = clock.first_token_at if clock.first_token_at is not None else end
        return Generation(token_ids=new_tokens, prefill_s=first - start, decode_s=end - first)


class TorchBackend:
    """Vision and language stages on the device the model was loaded to."""

    name = "torch"

    def __init__(self, model: Any, device: str, dtype: str) -> None:
        self.device = device
        self.dtype = dtype
        self.vision = TorchVision(model, device)
        self.language = TorchLanguage(model, device)
