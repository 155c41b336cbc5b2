"""The seam between the engine and the hardware that runs the model.

A SmolVLM request is two stages: the vision stage turns preprocessed tiles into image embeddings
(SigLIP encoder + pixel-shuffle connector) and the language stage turns the prompt ids plus
those embeddings into new tokens (SmolLM2 decoder). Backends implement the two stages; the
engine owns prompts, tiling and timing and never knows which backend runs a stage, so a stage can
live on a different device (e.g. vision on a Rockchip NPU, language on the CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

# Called with each new token id as it is produced.
TokenCallback = Callable[[int], None]
# Polled between tokens; True ends the generation early (cancel, deadline, shutdown).
StopCheck = Callable[[], bool]


@dataclass
class Generation:
    """What the language stage produced, with its own time split."""

    token_ids: list[int]
    prefill_s: float  # prompt processing up to and including the first new token
    decode_s: float  # the remaining tokens


class VisionStage(Protocol):
    """Image tiles -> image embeddings."""

    def encode(self, pixel_values: Any, pixel_attention_mask: Any) -> Any:
        """Embeddings of shape [num_images * tokens_per_tile, text_hidden] for one request."""
        ...


class LanguageStage(Protocol):
    """Prompt ids + image embeddings -> new token ids."""

    def generate(
        self,
        input_ids: Any,
        attention_mask: Any,
        image_embeddings: Any,
        max_new_tokens: int,
        on_token: TokenCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> Generation: ...


class Backend(Protocol):
    """A pair of stages plus what to report as provenance."""

    name: str
    device: str
    dtype: str
    vision: VisionStage
    language: LanguageStage
