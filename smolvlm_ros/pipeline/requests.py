"""Checks of what a client sends with a question (~/ask, ~/describe), before any work is done.

Any client on the network can call the node, so every field is checked up front and refused
with a message that names the field, the value and what is accepted: a 100 kB question is
refused here rather than tokenised to 38k tokens, a NaN timeout rather than becoming a deadline
that never passes. Plain Python, no ROS (camera names are checked by the node, which knows the
ROS naming rules and its namespace).
"""

from __future__ import annotations

import math
import unicodedata

# A question or prompt longer than this is refused. Real questions are a sentence or two; a few
# thousand characters (about a thousand tokens) leaves room for long instructions while keeping
# one request from filling the model's context and the worker's time.
MAX_QUESTION_CHARS = 4000
# Longest wait a request may ask for (max_age_s, timeout_s): a day.
MAX_SECONDS = 86400.0
# Whitespace that is allowed in a question although Unicode calls it a control character.
_ALLOWED_CONTROLS = frozenset("\n\t\r")


class RequestError(ValueError):
    """A request field has a value the node will not work with; the text goes to the caller."""


def check_question(text: str, what: str = "question") -> str:
    """The question without surrounding whitespace; empty, huge or control characters refused."""
    if len(text) > MAX_QUESTION_CHARS:
        raise RequestError(f"{what} is {len(text)} characters; at most {MAX_QUESTION_CHARS}")
    stripped = text.strip()
    if not stripped:
        raise RequestError(f"{what} is empty")
    for char in stripped:
        if char not in _ALLOWED_CONTROLS and unicodedata.category(char) in ("Cc", "Cs"):
            raise RequestError(f"{what} contains control character U+{ord(char):04X}")
    return stripped


def check_seconds(name: str, value: float, zero_means: str) -> float:
    """A finite, non-negative number of seconds up to a day; 0 means ``zero_means``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"{name} {value!r}: expected a number of seconds")
    if not math.isfinite(value):
        raise RequestError(f"{name} {value}: expected a finite number of seconds")
    if value < 0:
        raise RequestError(f"{name} {value}: expected 0 ({zero_means}) or more")
    if value > MAX_SECONDS:
        raise RequestError(f"{name} {value}: expected at most {MAX_SECONDS:.0f} seconds")
    return float(value)


def check_max_new_tokens(value: int, default: int, limit: int) -> int:
    """The request's token limit (0: ``default``), at most ``limit``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestError(f"max_new_tokens {value!r}: expected 0 (the node's default) or more")
    if value > limit:
        raise RequestError(f"max_new_tokens {value} is above the limit {limit}")
    return value or default
