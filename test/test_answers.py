"""Typed answers (yes/no, count, choice) with a confidence, on real photographs.

Random weights make the answers themselves meaningless; what is checked is what holds for any
weights: the typed value has its type, the confidence is a probability, batched option scoring
equals scoring each option alone (padding and positions are right), counts are digits then the
end, both torch backends agree, and text questions are unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re

import jsonschema
import pytest
import torch

from smolvlm_ros.engine import Engine, Frame, Limits
from smolvlm_ros.engine.answers import (
    MAX_COUNT_DIGITS,
    AnswerSpec,
    AnswerType,
    parse_standing,
    pick_option,
)
from smolvlm_ros.engine.backends.registry import BackendChoice, choose
from smolvlm_ros.engine.backends.torch_backend import _image_outputs
from smolvlm_ros.engine.backends.torch_static import TorchStaticBackend
from smolvlm_ros.pipeline.runner import check_standing_questions

DOOR_SCHEMA = {
    "type": "object",
    "properties": {
        "door": {"enum": ["open", "closed"]},
        "people": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["door", "people"],
    "additionalProperties": False,
}
YES_NO = AnswerSpec(AnswerType.YES_NO)
COUNT = AnswerSpec(AnswerType.COUNT)
SHELVES = AnswerSpec(AnswerType.CHOICE, ("shelf A", "shelf B", "the one on the far left"))


@pytest.fixture(scope="module")
def static_engine(tiny_engine):
    backend = TorchStaticBackend(
        tiny_engine.loaded.model, "cpu", tiny_engine.loaded.dtype, compile_step=False
    )
    return Engine(tiny_engine.loaded, backend, backend_choice=choose("torch_static", "cpu"))


@pytest.mark.parametrize(
    ("type_name", "options", "message"),
    [
        ("maybe", (), "expected one of text, yes_no, count, choice"),
        ("choice", ("A",), "at least two options"),
        ("choice", ("A", " a "), "repeat"),
        ("choice", ("A", ""), "empty"),
        ("yes_no", ("yes", "no"), "options are for answer_type choice"),
        ("json", (), "needs a json_schema"),
    ],
)
def test_wrong_answer_specs_are_refused_with_the_fix(type_name, options, message):
    with pytest.raises(ValueError, match=message):
        AnswerSpec.parse(type_name, options)


@pytest.mark.parametrize(
    ("type_name", "schema", "message"),
    [
        ("json", "{not json", "json_schema is not JSON"),
        ("json", "[1, 2]", "must be a JSON object"),
        ("json", '{"type": 5}', "not a valid JSON Schema"),
        ("count", '{"type": "object"}', "json_schema is for answer_type json"),
    ],
)
def test_wrong_schemas_are_refused_with_the_fix(type_name, schema, message):
    with pytest.raises(ValueError, match=message):
        AnswerSpec.parse(type_name, schema=schema)


def test_json_answers_follow_the_schema(tiny_engine, static_engine, photos):
    """Always schema-valid (checked here independently), the same on both backends, with the
    mean token probability as confidence; cut short by max_new_tokens: no typed value."""
    spec = AnswerSpec.parse("json", schema=json.dumps(DOOR_SCHEMA))
    for name in ("coffee", "astronaut"):
        frame = Frame(photos[name])
        result = tiny_engine.ask(frame, "Describe the door.", spec, max_new_tokens=40)
        assert result.typed is not None, result.text
        jsonschema.validate(json.loads(result.text), DOOR_SCHEMA)
        assert result.typed.value == json.loads(result.typed.json)
        assert 0.0 < result.typed.confidence <= 1.0
        fast = static_engine.ask(frame, "Describe the door.", spec, max_new_tokens=40)
        assert fast.token_ids == result.token_ids
    cut = tiny_engine.ask(Frame(photos["coffee"]), "Door?", spec, max_new_tokens=3)
    assert cut.typed is None and cut.finish_reason == "length"


def test_an_empty_type_is_text_and_names_are_case_blind():
    assert AnswerSpec.parse("").type == AnswerType.TEXT
    assert AnswerSpec.parse(" Yes_No ").type == AnswerType.YES_NO


def test_option_probabilities_are_normalised_over_the_options():
    typed = pick_option(YES_NO, [-1.0, -2.0])
    assert typed.value is True and typed.text == "Yes"
    assert typed.confidence == pytest.approx(1 / (1 + math.exp(-1.0)))
    typed = pick_option(SHELVES, [-5.0, -1.0, -3.0])
    assert typed.value == "shelf B" == typed.choice


def _full_sequence_logprob(engine, prompt, embeddings, option) -> float:
    """The reference: prompt + option through the model in one uncached pass, the option's
    tokens' log-probabilities summed."""
    ids = torch.cat([prompt, option])[None]
    with torch.inference_mode():
        logits = engine.loaded.model(
            input_ids=ids, mm_encoder_outputs=_image_outputs(embeddings), use_cache=False
        ).logits[0]
    steps = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(option))
    return float(logits[steps].float().log_softmax(-1)[torch.arange(len(option)), option].sum())


@pytest.mark.parametrize("name", ["coffee", "astronaut"])
def test_yes_no_and_choice_score_each_option_as_alone(tiny_engine, static_engine, photos, name):
    """The prompt run once and the options continuing its cache in one right-padded batch
    equal each option scored as a whole sequence in a pass of its own (one-token and
    several-token options), on both torch backends."""
    frame = Frame(photos[name])
    for spec in (YES_NO, SHELVES):
        result = tiny_engine.ask(frame, "Is the door open?", spec)
        assert result.typed is not None and 0.0 < result.typed.confidence <= 1.0
        assert result.text in spec.choices and result.typed.text == result.text
        question = "Is the door open?" + spec.instruction()
        prompt = tiny_engine.prompt_ids(question, [tiny_engine.plan(frame)])
        embeddings = tiny_engine._encode([frame], Limits())[0].embeddings
        options = [tiny_engine._answer_ids(option) for option in spec.choices]
        alone = [_full_sequence_logprob(tiny_engine, prompt, embeddings, o) for o in options]
        for engine in (tiny_engine, static_engine):
            scored = engine.backend.language.score(prompt, embeddings, options)
            assert scored == pytest.approx(alone, rel=1e-4, abs=1e-4)
        expected = pick_option(spec, alone)
        assert result.typed.text == expected.text
        assert result.typed.confidence == pytest.approx(expected.confidence, rel=1e-4)
    assert max(len(tiny_engine._answer_ids(o)) for o in SHELVES.choices) > 1  # both paths ran
    assert isinstance(tiny_engine.ask(frame, "Open?", YES_NO).typed.value, bool)


def test_counts_are_digits_then_the_end(tiny_engine, static_engine, photos):
    eos = tiny_engine.backend.language.eos_ids
    for name in ("coffee", "chelsea"):
        frame = Frame(photos[name])
        result = tiny_engine.ask(frame, "How many cups are there?", COUNT)
        digits = [t for t in result.token_ids if t not in eos]
        assert 1 <= len(digits) <= MAX_COUNT_DIGITS
        assert result.text.isdigit() and result.typed.value == int(result.text) >= 0
        assert 0.0 < result.typed.confidence <= 1.0
        fast = static_engine.ask(frame, "How many cups are there?", COUNT)
        assert fast.token_ids == result.token_ids
        assert fast.typed.confidence == pytest.approx(result.typed.confidence, rel=1e-4)


def test_both_torch_backends_give_the_same_typed_answers(tiny_engine, static_engine, photos):
    frame = Frame(photos["astronaut"])
    for spec in (YES_NO, SHELVES):
        a, b = tiny_engine.ask(frame, "Which?", spec), static_engine.ask(frame, "Which?", spec)
        assert a.typed.value == b.typed.value
        assert a.typed.confidence == pytest.approx(b.typed.confidence, rel=1e-4)


def test_text_questions_are_unchanged(tiny_engine, photos):
    frame = Frame(photos["coffee"])
    plain = tiny_engine.ask(frame, "What is this?", max_new_tokens=6)
    typed_text = tiny_engine.ask(frame, "What is this?", AnswerSpec(), max_new_tokens=6)
    assert plain.token_ids == typed_text.token_ids and plain.typed is typed_text.typed is None


def test_a_backend_that_cannot_score_says_so(tiny_engine, photos):
    spec = dataclasses.replace(choose("torch", "cpu").spec, capabilities=frozenset())
    engine = Engine(
        tiny_engine.loaded, tiny_engine.backend, backend_choice=BackendChoice(spec, "cpu", "test")
    )
    with pytest.raises(ValueError, match=r"cannot answer yes_no questions.*scoring"):
        engine.ask(Frame(photos["coffee"]), "Open?", YES_NO)
    with pytest.raises(ValueError, match=r"cannot answer count questions.*constrained"):
        engine.ask(Frame(photos["coffee"]), "How many?", COUNT)
    # front ends ask before queueing: the node refuses such a request or standing question
    assert engine.unsupported_answer(AnswerSpec()) is None
    assert "lacks scoring" in engine.unsupported_answer(SHELVES)
    assert tiny_engine.unsupported_answer(SHELVES) is None
    check_standing_questions(tiny_engine, ("yes_no: Open?", "count: How many?"))
    check_standing_questions(engine, ("Is it open?", "text: What is it?"))
    with pytest.raises(ValueError, match=r"standing question 'count: How many\?'.*constrained"):
        check_standing_questions(engine, ("Is it open?", "count: How many?"))


@pytest.mark.parametrize(
    ("entry", "question", "spec"),
    [
        ("Is the door open?", "Is the door open?", AnswerSpec()),
        ("Count: what is this?", "Count: what is this?", AnswerSpec()),  # prefixes are exact
        ("yes_no: Is the door open?", "Is the door open?", YES_NO),
        ("  count :How many people?  ", "How many people?", COUNT),
        ("text: Describe it: briefly.", "Describe it: briefly.", AnswerSpec()),
        (
            "choice[shelf A| shelf B |the one on the far left]: Which shelf is empty?",
            "Which shelf is empty?",
            SHELVES,
        ),
        (
            "json" + json.dumps(DOOR_SCHEMA) + " : Is the door open: and who is there?",
            "Is the door open: and who is there?",
            AnswerSpec(AnswerType.JSON, schema=json.dumps(DOOR_SCHEMA)),
        ),
    ],
)
def test_standing_questions_carry_their_type_in_a_prefix(entry, question, spec):
    parsed_question, parsed = parse_standing(entry)
    assert parsed_question == question
    assert (parsed.type, parsed.options) == (spec.type, spec.options)
    if spec.type == AnswerType.JSON:
        assert json.loads(parsed.schema) == DOOR_SCHEMA


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("choice[A]: Which?", "at least two options"),
        ("choice[A|B]:", "the question after the type is empty"),
        ('json{"type": "object": Q', "json{SCHEMA}: Q"),
        ('json{"type": "object"} Q', 'expected ": question"'),
        ('json{"type": "objekt"}: Q', "json_schema"),
    ],
)
def test_malformed_standing_questions_are_refused_with_the_forms(entry, message):
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        parse_standing(entry)
    assert repr(entry) in str(err.value)
