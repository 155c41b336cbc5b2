"""The RKLLM ctypes binding's struct layouts equal the real header's.

test/data/rkllm_layout.json holds every size and field offset g++ computed from
airockchip/rknn-llm v1.3.0's rkllm.h (``python tools/rkllm_layout.py rkllm.h --write
test/data/rkllm_layout.json``; the header is not in this repository). LP64 layouts: the same on
the aarch64 boards as on x86-64. A field added, dropped, retyped or reordered in the binding
shifts a size or an offset and fails here, before librkllmrt would read garbage on a board.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

from rkllm_layout import binding_layout  # noqa: E402

HEADER_LAYOUT = json.loads((REPO / "test" / "data" / "rkllm_layout.json").read_text())


def test_every_header_struct_is_bound():
    assert sorted(binding_layout()) == sorted(HEADER_LAYOUT)


@pytest.mark.parametrize("struct", sorted(HEADER_LAYOUT))
def test_sizes_and_offsets_match_the_header(struct):
    assert binding_layout()[struct] == HEADER_LAYOUT[struct]


def test_the_multimodal_input_sits_where_librkllmrt_reads_it():
    """The one rkllm_run path the NPU decoder needs: RKLLMInput's union at offset 16 (after
    role and the bool + enum pair), the image embeddings pointer right after the prompt."""
    layout = HEADER_LAYOUT
    assert layout["RKLLMInput"]["offsets"]["multimodal_input"] == 16
    assert layout["RKLLMMultiModalInput"]["offsets"]["image"] == 8
    assert layout["RKLLMImageInput"]["offsets"]["image_embed"] == 0
