"""The two model stages as torch modules with plain tensor inputs and outputs, and their export.

A runtime made for CPU inference runs graphs, not transformers' Python: the vision stage (SigLIP
encoder + pixel-shuffle connector) and the decoder (SmolLM2 + lm_head) are wrapped here so that
every input and output is a tensor, then captured with ``torch.export`` with dynamic shapes
(tiles; batch, new tokens, past length). The decoder takes its KV cache explicitly (one
``past_key_<i>`` / ``past_value_<i>`` pair per layer) and returns the grown cache
(``present_*``) next to the logits of each row's last position; the OpenVINO conversion then
hides that cache inside the model as state (:mod:`smolvlm_ros.engine.export.openvino_ir`).

Token embeddings are not in the decoder graph: the backend looks them up in a table saved beside
the graphs (a memory-mapped ``.npy``) and merges the image embeddings itself, as
``inputs_merger`` does. That keeps the graph free of the data-dependent image-token scatter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

# Upper bounds for the dynamic dimensions (torch.export wants ranges; nothing here allocates).
MAX_TILES = 1024
MAX_BATCH = 1024

VISION_INPUTS = ("pixel_values", "patch_attention_mask")
VISION_OUTPUT = "image_embeddings"
DECODER_INPUTS = ("inputs_embeds", "attention_mask", "position_ids")
LOGITS = "logits"


def past_names(layers: int) -> list[str]:
    """Cache input names in the order the decoder graph takes them: key then value per layer."""
    return [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def present_names(layers: int) -> list[str]:
    return [f"present_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]


def patch_mask(pixel_attention_mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[n, T, T] pixel mask -> [n, T/p, T/p] patch mask: a patch counts when any pixel does
    (``Idefics3Model.get_image_features``'s rule)."""
    grid = pixel_attention_mask.unfold(1, patch_size, patch_size).unfold(2, patch_size, patch_size)
    return grid.sum(dim=(-1, -2)) > 0


class VisionGraph(torch.nn.Module):
    """Tiles + patch masks -> image embeddings, ``[n * tokens_per_tile, text hidden]``."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.vision = model.model.vision_model
        self.connector = model.model.connector

    def forward(self, pixel_values: torch.Tensor, patch_attention_mask: torch.Tensor):
        hidden = self.vision(
            pixel_values=pixel_values, patch_attention_mask=patch_attention_mask
        ).last_hidden_state
        features = self.connector(hidden)
        return features.reshape(-1, features.shape[-1])


# The additive mask's "blocked" value: finite in float32 and bfloat16 alike (float32's own minimum
# rounds to -inf in bf16, and a padded row with every key blocked would then softmax to NaN).
BLOCKED = torch.finfo(torch.bfloat16).min


def additive_mask(attention_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """[batch, past + new] 0/1 padding mask -> [batch, 1, new, past + new] float32 additive mask:
    0 where a query may attend a key (a real token at or before it), ``BLOCKED`` elsewhere.

    Why build it here rather than let transformers do it: its SDPA path makes a boolean mask,
    which OpenVINO's fused KV-cache attention runs on a slower generic kernel (measured on the
    256M shape as kernel means over prompt and steps: 5.0 ms of attention per decoded token with
    the boolean mask, 2.5 ms with this one; README). A 4-D mask is taken as given by
    transformers' masking utilities."""
    total = attention_mask.shape[1]
    keys = torch.arange(total, device=attention_mask.device)
    queries = keys[total - new_tokens :]
    causal = keys[None, :] <= queries[:, None]  # [new, total]
    allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
    blocked = torch.full(allowed.shape, BLOCKED, dtype=torch.float32, device=allowed.device)
    return blocked.masked_fill(allowed, 0.0)


class DecoderGraph(torch.nn.Module):
    """Embeddings + mask + positions + past KV -> last-position logits + grown KV."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.text_model = model.model.text_model
        self.lm_head = model.lm_head
        self.config = model.config.text_config

    def forward(self, inputs_embeds, attention_mask, position_ids, past):
        cache = DynamicCache(config=self.config)
        # Filled directly: DynamicLayer.update would concatenate onto an empty 1-D tensor,
        # which graph runtimes reject for an empty past (rank mismatch).
        for index, layer in enumerate(cache.layers):
            keys, values = past[2 * index], past[2 * index + 1]
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys, values
        hidden = self.text_model(
            inputs_embeds=inputs_embeds,
            attention_mask=additive_mask(attention_mask, inputs_embeds.shape[1]),
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        outputs = [self.lm_head(hidden[:, -1, :])]
        for layer in cache.layers:
            outputs += [layer.keys, layer.values]
        return tuple(outputs)


@dataclass(frozen=True)
class DecoderShape:
    """What the exported decoder's cache looks like."""

    layers: int
    kv_heads: int
    head_dim: int
    hidden: int

    @classmethod
    def of(cls, model: Any) -> DecoderShape:
        text = model.config.text_config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        return cls(text.num_hidden_layers, text.num_key_value_heads, head_dim, text.hidden_size)


def export_vision(model: Any) -> torch.export.ExportedProgram:
    """The vision stage captured for any number of tiles (example: two, one half masked)."""
    vision = model.config.vision_config
    size, patches = vision.image_size, vision.image_size // vision.patch_size
    pixels = torch.randn(2, 3, size, size)
    mask = torch.ones(2, patches, patches, dtype=torch.bool)
    mask[1, patches // 2 :] = False  # a padded tile, so masking is part of the graph
    tiles = torch.export.Dim("tiles", min=1, max=MAX_TILES)
    with torch.no_grad():
        return torch.export.export(
            VisionGraph(model).eval(),
            (pixels, mask),
            dynamic_shapes=({0: tiles}, {0: tiles}),
            strict=False,
        )


def export_decoder(model: Any) -> torch.export.ExportedProgram:
    """The decoder captured for any batch, prompt / step length and past length."""
    shape = DecoderShape.of(model)
    positions = model.config.text_config.max_position_embeddings
    batch, new, past = 2, 5, 7  # not 0 or 1: torch.export would specialise those
    example = (
        torch.randn(batch, new, shape.hidden),
        torch.ones(batch, past + new, dtype=torch.long),
        torch.arange(past, past + new).repeat(batch, 1),
        tuple(
            torch.randn(batch, shape.kv_heads, past, shape.head_dim)
            for _ in range(2 * shape.layers)
        ),
    )
    Dim = torch.export.Dim
    rows = Dim("batch", min=1, max=MAX_BATCH)
    tokens = Dim("tokens", min=1, max=positions)
    cached = Dim("past", min=0, max=positions)
    dynamic = (
        {0: rows, 1: tokens},
        {0: rows, 1: Dim.DYNAMIC},  # past + tokens: export derives it
        {0: rows, 1: tokens},
        tuple({0: rows, 2: cached} for _ in range(2 * shape.layers)),
    )
    with torch.no_grad():
        return torch.export.export(
            DecoderGraph(model).eval(), example, dynamic_shapes=dynamic, strict=False
        )
