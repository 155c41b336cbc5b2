"""Scoring against references: the VQA benchmark's normalisation and accuracy, COCO caption
metrics, and clear errors for malformed reference files."""

from __future__ import annotations

import re

import pytest

from smolvlm_ros.replay.scoring import (
    Reference,
    ReferenceError,
    load_references,
    normalize_answer,
    score,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("Yes.", "yes"),
        ("Two dogs!", "2 dogs"),
        ("The red car", "red car"),
        ("  A  CAT ", "cat"),
        ("3.5", "3.5"),
    ],
)
def test_answers_are_normalised_like_the_vqa_benchmark(text, normal):
    assert normalize_answer(text) == normal


def test_vqa_accuracy_counts_agreeing_annotators():
    answers = ["yes", "yes", "no", "yes", "yes"]
    assert vqa_accuracy("Yes.", answers) == 1.0  # 4 agree: capped at 1
    assert vqa_accuracy("no", answers) == pytest.approx(1 / 3)
    assert vqa_accuracy("maybe", answers) == 0.0


def record(kind, text, stamp, question=None, camera="/cam"):
    return {"kind": kind, "camera": camera, "stamp": stamp, "question": question, "text": text}


def test_score_matches_references_by_stamp_or_frame_index():
    records = [
        record("caption", "a cat sleeping on a red sofa", 100),
        record("answer", "Yes", 100, "Is there a cat?"),
        record("caption", "a rocket on the launch pad", 200),
    ]
    references = [
        Reference("/cam", None, 0, captions=("a cat sleeping on a red sofa", "a cat on a sofa")),
        Reference("/cam", 200, None, captions=("a space rocket ready for launch",)),
        Reference("/cam", 100, None, question="Is there a cat?", answers=("yes",) * 3),
        Reference("/cam", 300, None, question="Is there a cat?", answers=("no",)),  # no frame
        Reference("/cam", None, 2, captions=("never captioned",)),  # frame 2 was dropped
    ]
    scores = score(records, references, {"/cam": [100, 200, 300]})
    assert (scores.vqa_accuracy, scores.vqa_scored, scores.vqa_missing) == (1.0, 1, 1)
    assert (scores.captions_scored, scores.captions_missing) == (2, 1)
    assert scores.per_record[0]["cider"] > scores.per_record[2]["cider"]  # exact beats loose
    assert scores.per_record[1] == {"vqa_accuracy": 1.0, "expected": ["yes", "yes", "yes"]}
    assert scores.per_record[2]["expected"] == ["a space rocket ready for launch"]
    assert [(m["at"], m["question"]) for m in scores.missing] == [
        ("stamp 300", "Is there a cat?"), ("frame 2", None),
    ]  # fmt: skip
    assert 0 < scores.bleu_4 <= 1 and 0 < scores.rouge_l <= 1 and scores.cider > 0


def test_references_load_and_bad_lines_are_named(tmp_path):
    good = tmp_path / "refs.jsonl"
    good.write_text(
        '{"camera": "/c", "frame": 3, "captions": ["a cat"]}\n\n'
        '{"camera": "/c", "stamp": 5, "question": " Is it red? ", "answers": ["no"]}\n'
    )
    refs = load_references(good)
    assert refs[0].frame == 3 and refs[0].captions == ("a cat",)
    assert refs[1].stamp == 5 and refs[1].question == "Is it red?"
    cases = {
        "not json": "not JSON",
        '{"frame": 1, "captions": ["x"]}': 'needs "camera"',
        '{"camera": "/c", "frame": 1, "stamp": 2, "captions": ["x"]}': "exactly one of",
        '{"camera": "/c", "frame": -1, "captions": ["x"]}': "non-negative integer",
        '{"camera": "/c", "frame": 1}': '"question" + "answers", or "captions"',
        '{"camera": "/c", "frame": 1, "captions": []}': "captions must be a non-empty list",
        '{"camera": "/c", "frame": 1, "question": "", "answers": ["x"]}': '"question" must be',
    }
    for line, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"camera": "/c", "frame": 0, "captions": ["ok"]}\n' + line + "\n")
        with pytest.raises(ReferenceError, match=f"bad.jsonl:2: .*{re.escape(message)}"):
            load_references(bad)
