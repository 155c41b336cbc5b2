"""Typed answers a planner can act on: yes/no, counts and choices, each with a confidence.

Free text ("Yes, the door appears to be...") has to be parsed by every caller and says nothing
about how sure the model was. Here the answer's type is part of the question:

- ``yes_no`` and ``choice`` score every complete option under the model (the log-probability of
  the option's tokens as the answer's start, all options in one batched pass over the shared
  image encoding) and return the most probable one; the confidence is its probability
  normalised over the options.
- ``count`` decodes under a digits-only constraint (at least one digit, then digits or the end);
  the confidence is the probability of the digits made, within that constraint.
- ``json`` decodes under a JSON schema (xgrammar compiles the schema into a token mask per
  step), and the object is validated against the schema (jsonschema) before it is returned;
  the confidence is the mean probability of its tokens.
- ``text`` is the free answer, as before; it has no confidence (0).

Plain Python: the engine does the model work, this module says what each type asks and means.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smolvlm_ros.compat import StrEnum

MAX_OPTIONS = 32  # choices scored in one pass; more would make one request a large batch
MAX_COUNT_DIGITS = 6  # counts up to 999999: a robot's scene holds fewer things
YES, NO = "yes", "no"


class AnswerType(StrEnum):
    TEXT = "text"
    YES_NO = "yes_no"
    COUNT = "count"
    CHOICE = "choice"
    JSON = "json"


ANSWER_TYPES = tuple(AnswerType)


@dataclass(frozen=True)
class AnswerSpec:
    """How a question is to be answered: its type and, for ``choice``, the options."""

    type: AnswerType = AnswerType.TEXT
    options: tuple[str, ...] = ()
    schema: str = ""  # json: a JSON schema, as JSON text

    @classmethod
    def parse(cls, type_name: str, options: Sequence[str] = (), schema: str = "") -> AnswerSpec:
        """From what a client sends (an empty type means text); raises ValueError with the fix."""
        name = (type_name or AnswerType.TEXT).strip().lower()
        if name not in ANSWER_TYPES:
            raise ValueError(
                f"answer_type {type_name!r}: expected one of {', '.join(ANSWER_TYPES)}"
            )
        return cls(AnswerType(name), tuple(options), schema.strip()).validate()

    def validate(self) -> AnswerSpec:
        if self.type == AnswerType.JSON:
            check_schema(self.schema)
        elif self.schema:
            raise ValueError(f"json_schema is for answer_type json, not {self.type}")
        if self.type == AnswerType.CHOICE:
            options = [o.strip() for o in self.options]
            if len(options) < 2:
                raise ValueError("a choice needs at least two options")
            if len(options) > MAX_OPTIONS:
                raise ValueError(
                    f"a choice takes at most {MAX_OPTIONS} options, got {len(options)}"
                )
            if any(not o for o in options):
                raise ValueError("a choice option is empty")
            if len({o.lower() for o in options}) != len(options):
                raise ValueError(f"choice options repeat: {options}")
        elif self.options:
            raise ValueError(f"options are for answer_type choice, not {self.type}")
        return self

    @property
    def choices(self) -> tuple[str, ...]:
        """The complete answers scored: the options of a choice, yes and no, else none."""
        if self.type == AnswerType.YES_NO:
            return ("Yes", "No")
        if self.type == AnswerType.CHOICE:
            return tuple(o.strip() for o in self.options)
        return ()

    def instruction(self) -> str:
        """Appended to the question so that the model's own answer takes the asked form (the
        scoring itself does not depend on it, but the probabilities are sharper)."""
        if self.type == AnswerType.YES_NO:
            return " Answer yes or no."
        if self.type == AnswerType.COUNT:
            return " Answer with a number."
        if self.type == AnswerType.CHOICE:
            return f" Answer with one of: {', '.join(self.choices)}."
        if self.type == AnswerType.JSON:
            return " Answer with a JSON object."
        return ""


_PLAIN_PREFIX = re.compile(r"^(text|yes_no|count)\s*:\s*(.*)$", re.DOTALL)
_CHOICE_PREFIX = re.compile(r"^choice\s*\[([^\]]*)\]\s*:\s*(.*)$", re.DOTALL)


@functools.lru_cache(maxsize=256)
def parse_standing(entry: str) -> tuple[str, AnswerSpec]:
    """A standing question as configured (``questions`` setting: one string per question, as
    ROS parameters are flat), prefixed with its answer type when it is not free text::

        Is the door open?                              (text)
        yes_no: Is the door open?
        count: How many people are in the aisle?
        choice[A|B|C]: Which shelf is empty?
        json{"type": "object", ...}: Describe the aisle.

    Only these exact lower-case prefixes are read as types. Raises ValueError naming the entry
    and the fix when a typed prefix is malformed."""
    text = entry.strip()
    try:
        if text.startswith("json{"):
            schema, end = json.JSONDecoder().raw_decode(text, 4)
            rest = text[end:].lstrip()
            if not rest.startswith(":"):
                raise ValueError('expected ": question" after the schema')
            spec = AnswerSpec.parse("json", schema=json.dumps(schema))
            question = rest[1:].strip()
        elif match := _CHOICE_PREFIX.match(text):
            options = [o.strip() for o in match.group(1).split("|")]
            spec, question = AnswerSpec.parse("choice", options), match.group(2).strip()
        elif match := _PLAIN_PREFIX.match(text):
            spec, question = AnswerSpec.parse(match.group(1)), match.group(2).strip()
        else:
            spec, question = AnswerSpec(), text
    except ValueError as err:  # json.JSONDecodeError is one too
        raise ValueError(
            f"standing question {entry!r}: {err} (forms: 'yes_no: Q', 'count: Q', "
            "'choice[A|B]: Q', 'json{SCHEMA}: Q', or a plain question)"
        ) from None
    if not question:
        raise ValueError(f"standing question {entry!r}: the question after the type is empty")
    return question, spec


@dataclass(frozen=True)
class TypedAnswer:
    """The typed value (bool, int or the chosen option) and how sure the model was, in [0, 1]."""

    type: AnswerType
    value: Any
    confidence: float
    text: str  # the value as the answer's text: "Yes", "3", the option

    @property
    def yes(self) -> bool:
        return self.type == AnswerType.YES_NO and bool(self.value)

    @property
    def count(self) -> int:
        return int(self.value) if self.type == AnswerType.COUNT else 0

    @property
    def choice(self) -> str:
        return str(self.value) if self.type == AnswerType.CHOICE else ""

    @property
    def json(self) -> str:
        return self.text if self.type == AnswerType.JSON else ""


def pick_option(spec: AnswerSpec, log_probs: Sequence[float]) -> TypedAnswer:
    """The most probable option and its probability normalised over all options."""
    peak = max(log_probs)
    weights = [math.exp(lp - peak) for lp in log_probs]
    best = max(range(len(weights)), key=weights.__getitem__)
    confidence = weights[best] / sum(weights)
    option = spec.choices[best]
    value: Any = best == 0 if spec.type == AnswerType.YES_NO else option
    return TypedAnswer(spec.type, value, confidence, option)


DIGITS = re.compile(r"\d+")


def count_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Vocabulary ids a count may start with (digits, optionally after one space) and continue
    with (digits only)."""
    first, rest = [], []
    texts = tokenizer.batch_decode([[token_id] for token_id in range(len(tokenizer))])
    for token_id, text in enumerate(texts):
        if DIGITS.fullmatch(text):
            first.append(token_id)
            rest.append(token_id)
        elif text.startswith(" ") and DIGITS.fullmatch(text[1:]):
            first.append(token_id)
    return first, rest


class CountConstraint:
    """``prefix_allowed_tokens_fn`` for a count: digits first, then digits or an end token;
    after MAX_COUNT_DIGITS digits only the end. ``prompt_len`` is where the answer starts."""

    def __init__(self, first: list[int], rest: list[int], eos_ids: Sequence[int], prompt_len: int):
        self.first, self.rest = first, rest
        self.eos = sorted(eos_ids)
        self.prompt_len = prompt_len

    def __call__(self, batch_id: int, input_ids: Any) -> list[int]:
        made = len(input_ids) - self.prompt_len
        if made <= 0:
            return self.first
        if made >= MAX_COUNT_DIGITS:
            return self.eos
        return self.rest + self.eos


def parse_count(text: str) -> int:
    match = DIGITS.search(text)
    if match is None:
        raise ValueError(f"no digits in the count answer {text!r}")
    return int(match.group())


JSON_NEEDS = "json answers need xgrammar and jsonschema: pip install -r requirements/answers.txt"


def _json_libraries() -> tuple[Any, Any]:
    try:
        import jsonschema
        import xgrammar
    except ImportError as err:
        raise ValueError(f"{JSON_NEEDS} ({err})") from None
    return xgrammar, jsonschema


def check_schema(schema: str) -> dict:
    """The schema as a dict, or ValueError saying what is wrong with it."""
    if not schema:
        raise ValueError("answer_type json needs a json_schema")
    try:
        parsed = json.loads(schema)
    except json.JSONDecodeError as err:
        raise ValueError(f"json_schema is not JSON: {err}") from None
    if not isinstance(parsed, dict):
        raise ValueError("json_schema must be a JSON object (a JSON Schema)")
    _, jsonschema = _json_libraries()
    try:
        jsonschema.validators.validator_for(parsed).check_schema(parsed)
    except jsonschema.SchemaError as err:
        raise ValueError(f"json_schema is not a valid JSON Schema: {err.message}") from None
    return parsed


class JsonGrammars:
    """Schemas compiled for one tokenizer, kept (compiling takes ~0.3 s; planners reuse a few)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Sequence[int]) -> None:
        xgrammar, _ = _json_libraries()
        self._xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=sorted(eos_ids)
        )
        self._compiler = xgrammar.GrammarCompiler(info)
        self.vocab_size = vocab_size
        self._compiled: dict[str, Any] = {}

    def constraint(self, schema: str, rows: int, prompt_len: int) -> JsonConstraint:
        if schema not in self._compiled:
            if len(self._compiled) >= 32:
                self._compiled.clear()
            # Compact JSON: free whitespace would let a weak model pad until max_new_tokens.
            self._compiled[schema] = self._compiler.compile_json_schema(
                schema, any_whitespace=False
            )
        return JsonConstraint(self._xgr, self._compiled[schema], rows, prompt_len, self.vocab_size)


class JsonConstraint:
    """Allowed tokens under a compiled schema, per row: a grammar matcher fed each new token."""

    def __init__(self, xgr: Any, grammar: Any, rows: int, prompt_len: int, vocab: int) -> None:
        import torch

        self._torch = torch
        self.matchers = [xgr.GrammarMatcher(grammar) for _ in range(rows)]
        self.fed = [0] * rows
        self.prompt_len = prompt_len
        self.vocab = vocab
        self._bitmask = xgr.allocate_token_bitmask(1, vocab)
        self._bits = torch.arange(32, dtype=torch.int32)

    def __call__(self, row: int, input_ids: Any) -> Any:
        matcher = self.matchers[row]
        for token in input_ids[self.prompt_len + self.fed[row] :].tolist():
            if not matcher.is_terminated():
                matcher.accept_token(token)
            self.fed[row] += 1
        if matcher.is_terminated():  # the row has ended: whatever follows is padding
            return self._torch.ones(self.vocab, dtype=self._torch.bool)
        matcher.fill_next_token_bitmask(self._bitmask)
        words = self._bitmask[0].to(self._torch.int32)
        mask = ((words[:, None] >> self._bits) & 1).bool().flatten()
        return mask[: self.vocab]


def parse_json(text: str, schema: str) -> Any:
    """The answer's object, validated against the schema (ValueError when it is not)."""
    _, jsonschema = _json_libraries()
    try:
        value = json.loads(text)
        jsonschema.validate(value, json.loads(schema))
    except (json.JSONDecodeError, jsonschema.ValidationError) as err:
        raise ValueError(f"the answer is not valid against the schema: {err}") from None
    return value
