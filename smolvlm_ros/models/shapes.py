"""The SmolVLM architectures, described once.

Each public checkpoint size has a :class:`ModelShape` holding the exact configuration of its
vision encoder, connector and decoder and the layout of its special tokens. ``random:<shape>``
models are built from these, so that tests, the demo and benchmarks exercise exactly the
architectures users run (values: ../shared/notes/smolvlm-model.md, read off the public
checkpoints' config.json / tokenizer.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelShape:
    """Architecture and token layout of one SmolVLM size."""

    name: str
    # vision encoder (SigLIP)
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    # pixel-shuffle connector
    scale_factor: int
    # decoder (SmolLM2, llama architecture)
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    head_dim: int
    rope_theta: float
    max_position_embeddings: int
    vocab_size: int
    # processor: the reference resizes the longest edge to this before splitting into tiles
    processor_longest_edge: int
    # added tokens from id ``len(base vocabulary)`` on, in id order
    added_tokens: tuple[str, ...] = field(repr=False, default=())
    image_token: str = "<image>"

    @property
    def tokens_per_tile(self) -> int:
        """Image tokens one tile becomes after the pixel shuffle."""
        patches = (self.image_size // self.patch_size) ** 2
        return patches // (self.scale_factor**2)

    @property
    def base_vocab_size(self) -> int:
        """Ids below this are the BPE vocabulary; the added tokens follow."""
        return self.vocab_size - len(self.added_tokens)

    def token_id(self, token: str) -> int:
        """The id of an added token, e.g. ``<image>``."""
        return self.base_vocab_size + self.added_tokens.index(token)


# SmolLM2's first ids: these three are the only ones the chat format uses.
BASE_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# 256M / 500M: <global-img> 49152, <row_1_col_1>..<row_6_col_6> 49153-49188,
# <fake_token_around_image> 49189, <image> 49190, 88 reserved, <end_of_utterance> 49279.
_SMALL_ADDED = (
    "<global-img>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
    "<fake_token_around_image>",
    "<image>",
    *(f"<reserved_{i}>" for i in range(88)),
    "<end_of_utterance>",
)
# 2.2B: only three added tokens; <row_r_col_c> and <global-img> are plain text there.
_LARGE_ADDED = ("<fake_token_around_image>", "<image>", "<end_of_utterance>")

_SMALL_VISION = dict(
    vision_hidden=768,
    vision_intermediate=3072,
    vision_layers=12,
    vision_heads=12,
    image_size=512,
    patch_size=16,
    scale_factor=4,
)
_SMALL_TEXT = dict(
    head_dim=64,
    rope_theta=100000.0,
    max_position_embeddings=8192,
    vocab_size=49280,
    processor_longest_edge=2048,
    added_tokens=_SMALL_ADDED,
)

SHAPES: dict[str, ModelShape] = {
    # Not a public size: the 256M token layout with minute layers, for fast tests.
    "tiny": ModelShape(
        name="tiny",
        vision_hidden=32,
        vision_intermediate=64,
        vision_layers=2,
        vision_heads=2,
        image_size=128,
        patch_size=16,
        scale_factor=2,
        text_hidden=64,
        text_intermediate=128,
        text_layers=2,
        text_heads=4,
        text_kv_heads=2,
        head_dim=16,
        rope_theta=100000.0,
        max_position_embeddings=8192,
        vocab_size=49280,
        processor_longest_edge=512,
        added_tokens=_SMALL_ADDED,
    ),
    "256m": ModelShape(
        name="256m",
        **_SMALL_VISION,
        text_hidden=576,
        text_intermediate=1536,
        text_layers=30,
        text_heads=9,
        text_kv_heads=3,
        **_SMALL_TEXT,
    ),
    "500m": ModelShape(
        name="500m",
        **_SMALL_VISION,
        text_hidden=960,
        text_intermediate=2560,
        text_layers=32,
        text_heads=15,
        text_kv_heads=5,
        **_SMALL_TEXT,
    ),
    "2b": ModelShape(
        name="2b",
        vision_hidden=1152,
        vision_intermediate=4304,
        vision_layers=27,
        vision_heads=16,
        image_size=384,
        patch_size=14,
        scale_factor=3,
        text_hidden=2048,
        text_intermediate=8192,
        text_layers=24,
        text_heads=32,
        text_kv_heads=32,
        head_dim=64,
        rope_theta=273768.0,
        max_position_embeddings=16384,
        vocab_size=49155,
        processor_longest_edge=1536,
        added_tokens=_LARGE_ADDED,
    ),
}


def get_shape(name: str) -> ModelShape:
    """The shape called ``name``, or a ValueError listing the valid ones."""
    try:
        return SHAPES[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown model shape {name!r}: expected one of {', '.join(SHAPES)}"
        ) from None
