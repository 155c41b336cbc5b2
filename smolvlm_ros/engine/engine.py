"""The one engine every front end (node, replay, benchmark) calls for model work.

It owns what is the same whatever the hardware: the chat prompt, preprocessing and tiling
(through the checkpoint's own Idefics3Processor, so pixel values and image-token layout are the
reference's), the timing split and the provenance of each result. The two model stages run on a
:class:`~smolvlm_ros.engine.backends.base.Backend`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import PIL.Image

from smolvlm_ros.engine.backends.base import Backend, StopCheck, TokenCallback
from smolvlm_ros.engine.types import ANSWER, CAPTION, Frame, Result, Timing
from smolvlm_ros.models.loading import LoadedModel, load_model

DEFAULT_CAPTION_PROMPT = "Describe this image in one sentence."
DEFAULT_MAX_NEW_TOKENS = 32
_ROW_COL = re.compile(r"<row_(\d+)_col_(\d+)>")


@dataclass(frozen=True)
class EngineConfig:
    """How to build an engine: which model, where, and how to tile frames."""

    model: str
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    backend: str = "torch"
    # Off: one global image per frame (64 image tokens for 256M), what a robot usually wants.
    # On: the reference's grid of tiles plus a global image (many more tokens, much slower).
    image_splitting: bool = False


def _ms(seconds: float) -> float:
    return seconds * 1000.0


class Engine:
    """Captions and answers for frames, with timing and provenance."""

    def __init__(
        self, loaded: LoadedModel, backend: Backend, image_splitting: bool = False
    ) -> None:
        self.loaded = loaded
        self.backend = backend
        self.image_splitting = image_splitting
        self.processor = loaded.processor
        self.image_token_id = loaded.model.config.image_token_id

    @classmethod
    def from_config(cls, config: EngineConfig) -> Engine:
        """Load the model and put it on the configured backend."""
        if config.backend != "torch":
            raise ValueError(f"backend {config.backend!r}: expected one of torch")
        from smolvlm_ros.engine.backends.torch_backend import TorchBackend

        loaded = load_model(config.model, device=config.device, dtype=config.dtype)
        backend = TorchBackend(loaded.model, loaded.device, loaded.dtype)
        return cls(loaded, backend, image_splitting=config.image_splitting)

    @property
    def is_random(self) -> bool:
        return self.loaded.is_random

    def caption(
        self,
        frame: Frame,
        prompt: str = DEFAULT_CAPTION_PROMPT,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        on_token: TokenCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> Result:
        """Describe ``frame`` following ``prompt``."""
        return self.run(frame, prompt, CAPTION, max_new_tokens, on_token, should_stop)

    def ask(
        self,
        frame: Frame,
        question: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        on_token: TokenCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> Result:
        """Answer ``question`` about ``frame``."""
        return self.run(frame, question, ANSWER, max_new_tokens, on_token, should_stop)

    def chat_prompt(self, user_text: str) -> str:
        """The full model prompt (one image, then the user text), from the chat template."""
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": user_text}]}
        ]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def preprocess(self, frame: Frame, user_text: str) -> dict:
        """Token ids and pixel tensors for one frame and prompt, made by the reference processor."""
        return self.processor(
            text=self.chat_prompt(user_text),
            images=[[PIL.Image.fromarray(frame.image)]],
            do_image_splitting=self.image_splitting,
            return_tensors="pt",
        )

    def run(
        self,
        frame: Frame,
        user_text: str,
        kind: str,
        max_new_tokens: int,
        on_token: TokenCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> Result:
        """Preprocess, encode, generate; every result carries its source and timing.

        ``on_token`` sees each new token id as it is made; ``should_stop`` returning True ends
        the generation early (the result then holds the tokens made so far).
        """
        if not user_text.strip():
            raise ValueError("the prompt / question is empty")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        started = time.perf_counter()
        queue_wait_s = time.monotonic() - frame.received_at if frame.received_at else 0.0

        inputs = self.preprocess(frame, user_text)
        input_ids = inputs["input_ids"]
        preprocessed = time.perf_counter()

        embeddings = self.backend.vision.encode(
            inputs["pixel_values"], inputs["pixel_attention_mask"]
        )
        encoded = time.perf_counter()

        generation = self.backend.language.generate(
            input_ids, inputs["attention_mask"], embeddings, max_new_tokens, on_token, should_stop
        )
        finished = time.perf_counter()

        text = self.processor.decode(generation.token_ids, skip_special_tokens=True).strip()
        rows, cols = self._tile_grid(input_ids[0].tolist())
        timing = Timing(
            queue_wait_ms=_ms(queue_wait_s),
            preprocess_ms=_ms(preprocessed - started),
            encode_ms=_ms(encoded - preprocessed),
            prefill_ms=_ms(generation.prefill_s),
            decode_ms=_ms(generation.decode_s),
            total_ms=_ms(queue_wait_s + finished - started),
            prompt_tokens=int(input_ids.shape[1]),
            image_tokens=int((input_ids == self.image_token_id).sum()),
            generated_tokens=len(generation.token_ids),
        )
        return Result(
            kind=kind,
            text=text,
            prompt=user_text,
            camera=frame.camera,
            stamp_ns=frame.stamp_ns,
            frame_id=frame.frame_id,
            model=self.loaded.spec,
            backend=self.backend.name,
            device=self.backend.device,
            dtype=self.backend.dtype,
            tile_rows=rows,
            tile_cols=cols,
            num_images=int(inputs["pixel_values"].shape[1]),
            timing=timing,
            token_ids=generation.token_ids,
        )

    def _tile_grid(self, input_ids: list[int]) -> tuple[int, int]:
        """Rows and columns of the tile grid, from the ``<row_r_col_c>`` markers (0, 0: none)."""
        markers = _ROW_COL.findall(self.processor.tokenizer.decode(input_ids))
        if not markers:
            return 0, 0
        return max(int(r) for r, _ in markers), max(int(c) for _, c in markers)
