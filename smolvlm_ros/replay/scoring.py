"""Scores of a replay against references: VQA accuracy and caption metrics.

References are JSONL, one line per frame and task:

    {"camera": "/front/image_raw", "stamp": 1767225600000000000,
     "question": "Is there a cat?", "answers": ["yes"]}
    {"camera": "/front/image_raw", "frame": 12, "captions": ["a cat on a sofa", "a sleeping cat"]}
    {"camera": "/front/image_raw", "frame": 3, "question": "Is the door open?",
     "answer_type": "yes_no", "answers": ["yes"]}

A reference question with an ``answer_type`` (yes_no, count, choice + ``options``, json +
``json_schema``: as ``~/ask`` takes them) is asked as a typed question; its answer is right when
its value equals one of ``answers`` (yes/no: "yes"/"no"; count: the number; choice: the option;
json: the object, as JSON text), and the results' confidences are checked for calibration:
accuracy per confidence bin, which should rise with the confidence.

`frame` counts that camera's messages in the bag from 0; `stamp` is the header stamp in ns.

VQA accuracy is the VQA benchmark's: answers normalised (case, punctuation, articles, number
words) and a prediction scores min(#references equal to it / 3, 1). Captions are scored with
pycocoevalcap's BLEU-4, ROUGE-L and CIDEr-D (the COCO caption evaluation code) on lower-cased,
punctuation-stripped words: its PTB tokenizer and METEOR need Java, so they are not used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from smolvlm_ros.engine.answers import AnswerSpec, AnswerType

_ARTICLES = {"a", "an", "the"}
_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_PUNCTUATION = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$|~:']")
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")


class ReferenceError(ValueError):
    """The references file is malformed; the text names the line."""


@dataclass(frozen=True)
class Reference:
    camera: str
    stamp: int | None
    frame: int | None
    question: str | None = None
    answers: tuple[str, ...] = ()
    captions: tuple[str, ...] = ()
    line: int = 0  # in the references file, to name it when it matches nothing
    answer: AnswerSpec | None = None  # a typed question (answer_type given); None: free text

    def where(self) -> str:
        return f"frame {self.frame}" if self.frame is not None else f"stamp {self.stamp}"


def normalize_answer(text: str) -> str:
    """The VQA evaluation's answer normalisation."""
    text = text.lower().replace("\n", " ").replace("\t", " ").strip()
    text = _PERIOD.sub("", _PUNCTUATION.sub(" ", text))
    words = [_NUMBERS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: list[str] | tuple[str, ...]) -> float:
    """min(#matching reference answers / 3, 1), on normalised answers."""
    predicted = normalize_answer(prediction)
    matches = sum(normalize_answer(a) == predicted for a in answers)
    return min(matches / 3.0, 1.0)


def caption_words(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def load_references(path: Path) -> list[Reference]:
    references = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise ReferenceError(f"{where}: not JSON ({err.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("camera"), str):
            raise ReferenceError(f'{where}: needs "camera" (the image topic)')
        if ("stamp" in item) == ("frame" in item):
            raise ReferenceError(f'{where}: give exactly one of "stamp" (ns) or "frame" (index)')
        key = "stamp" if "stamp" in item else "frame"
        if not isinstance(item[key], int) or item[key] < 0:
            raise ReferenceError(f'{where}: "{key}" must be a non-negative integer')
        has_question = "question" in item or "answers" in item
        if has_question == ("captions" in item):
            raise ReferenceError(f'{where}: give "question" + "answers", or "captions"')
        texts = item.get("answers") if has_question else item.get("captions")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            name = "answers" if has_question else "captions"
            raise ReferenceError(f"{where}: {name} must be a non-empty list of strings")
        if has_question and not (
            isinstance(item.get("question"), str) and item["question"].strip()
        ):
            raise ReferenceError(f'{where}: "question" must be a non-empty string')
        answer = None
        if "answer_type" in item:
            if not has_question:
                raise ReferenceError(f'{where}: "answer_type" is for questions')
            try:
                answer = AnswerSpec.parse(
                    str(item["answer_type"]),
                    tuple(item.get("options", ())),
                    str(item.get("json_schema", "")),
                )
            except ValueError as err:
                raise ReferenceError(f"{where}: {err}") from None
        references.append(
            Reference(
                camera=item["camera"],
                stamp=item.get("stamp"),
                frame=item.get("frame"),
                question=item["question"].strip() if has_question else None,
                answers=tuple(texts) if has_question else (),
                captions=() if has_question else tuple(texts),
                line=number,
                answer=answer,
            )
        )
    return references


def match_references(
    references: list[Reference],
    frame_counts: dict[str, int],
    stamps: dict[str, set[int]] | None,
) -> tuple[list[Reference], list[dict]]:
    """Split ``references`` into those that name a replayed frame and those that do not (each
    with the reason), before anything runs: a typo in a camera name or an off-by-one stamp would
    otherwise only show up as a score computed over fewer frames than meant.

    ``frame_counts``: replayed camera -> its messages in the bag; ``stamps``: camera -> its
    header stamps, needed only when a reference gives a ``stamp``.
    """
    matched: list[Reference] = []
    unmatched: list[dict] = []
    for ref in references:
        if ref.camera not in frame_counts:
            reason = f"camera not replayed (image topics: {', '.join(sorted(frame_counts))})"
        elif ref.frame is not None and ref.frame >= frame_counts[ref.camera]:
            reason = f"the camera has {frame_counts[ref.camera]} frames (0 to n-1)"
        elif ref.stamp is not None and ref.stamp not in (stamps or {}).get(ref.camera, ()):
            reason = "no frame of the camera has this header stamp"
        else:
            matched.append(ref)
            continue
        unmatched.append(
            {"line": ref.line, "camera": ref.camera, "at": ref.where(), "reason": reason}
        )
    return matched, unmatched


@dataclass
class Scores:
    vqa_accuracy: float | None = None
    vqa_scored: int = 0
    vqa_missing: int = 0  # references whose question was not answered about that frame
    bleu_4: float | None = None
    rouge_l: float | None = None
    cider: float | None = None
    captions_scored: int = 0
    captions_missing: int = 0  # referenced frames that got no caption (dropped, say)
    typed_accuracy: float | None = None  # typed references: value equal to an expected one
    typed_scored: int = 0
    # typed answers by confidence bin: {"bin": "0.8-1.0", "answers": n, "accuracy": a}
    calibration: list[dict] = field(default_factory=list)
    # references whose frame got no such result: {"line", "camera", "at", "question"}
    missing: list[dict] = field(default_factory=list)
    per_record: dict[int, dict] = field(default_factory=dict)  # record index -> its scores


def score(
    records: list[dict], references: list[Reference], frame_stamps: dict[str, list[int]]
) -> Scores:
    """Score ``records`` (results.jsonl lines) against ``references``."""
    scores = Scores()
    by_key: dict[tuple, int] = {}
    for index, record in enumerate(records):
        question = record["question"].strip() if record["kind"] == "answer" else None
        by_key[(record["camera"], record["stamp"], record["kind"], question)] = index
    vqa: list[float] = []
    typed: list[tuple[float, bool]] = []  # (confidence, right)
    gts: dict[str, list[str]] = {}
    res: dict[str, list[str]] = {}
    for number, ref in enumerate(references):
        stamp = ref.stamp
        if ref.frame is not None:
            stamps = frame_stamps.get(ref.camera, [])
            stamp = stamps[ref.frame] if ref.frame < len(stamps) else None
        if ref.question is not None:
            index = by_key.get((ref.camera, stamp, "answer", ref.question))
            if index is None:
                scores.vqa_missing += 1
                scores.missing.append(_missing(ref))
                continue
            # the expected answers beside the given one, in results.jsonl and the report
            scores.per_record.setdefault(index, {})["expected"] = list(ref.answers)
            if ref.answer is not None and ref.answer.type != AnswerType.TEXT:
                right = typed_right(records[index], ref)
                typed.append((float(records[index].get("confidence", 0.0)), right))
                scores.per_record.setdefault(index, {})["typed_right"] = right
                continue
            accuracy = vqa_accuracy(records[index]["text"], ref.answers)
            vqa.append(accuracy)
            scores.per_record.setdefault(index, {})["vqa_accuracy"] = accuracy
        else:
            index = by_key.get((ref.camera, stamp, "caption", None))
            if index is None:
                scores.captions_missing += 1
                scores.missing.append(_missing(ref))
                continue
            scores.per_record.setdefault(index, {})["expected"] = list(ref.captions)
            gts[str(number)] = [caption_words(c) for c in ref.captions]
            res[str(number)] = [caption_words(records[index]["text"]) or "empty"]
            scores.per_record.setdefault(index, {})["caption_ref"] = str(number)
    if vqa:
        scores.vqa_accuracy, scores.vqa_scored = sum(vqa) / len(vqa), len(vqa)
    if typed:
        scores.typed_accuracy = sum(right for _, right in typed) / len(typed)
        scores.typed_scored = len(typed)
        scores.calibration = calibration(typed)
    if res:
        _caption_metrics(scores, gts, res)
    return scores


def _missing(ref: Reference) -> dict:
    return {"line": ref.line, "camera": ref.camera, "at": ref.where(), "question": ref.question}


# Caption metrics are an extra of the package (setup.py) and a requirements file, so that a
# robot's install does not carry them; the CLI names both when they are missing.
SCORING_EXTRA = "scoring"
SCORING_NEEDS = (
    "caption references are scored with pycocoevalcap (BLEU-4, ROUGE-L, CIDEr-D), which is not "
    f"installed: pip install 'smolvlm_ros[{SCORING_EXTRA}]' (or pip install -r "
    "requirements/scoring.txt)"
)


def check_scoring_dependencies(references: list[Reference]) -> None:
    """Raise ReferenceError (naming the extra) if these references need a scorer that does not
    import: checked before the model loads, so it never fails after an hour of replay."""
    if not any(ref.captions for ref in references):
        return  # VQA accuracy and typed answers need nothing outside the core
    try:
        import pycocoevalcap.bleu.bleu
        import pycocoevalcap.cider.cider
        import pycocoevalcap.rouge.rouge  # noqa: F401
    except ImportError as err:
        raise ReferenceError(f"{SCORING_NEEDS} ({err})") from None


def _caption_metrics(scores: Scores, gts: dict, res: dict) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, per_caption = Cider().compute_score(gts, res)
    scores.bleu_4, scores.rouge_l, scores.cider = float(bleu[3]), float(rouge), float(cider)
    scores.captions_scored = len(res)
    cider_of = dict(zip(res, per_caption, strict=True))
    for record_scores in scores.per_record.values():
        ref = record_scores.pop("caption_ref", None)
        if ref is not None:
            record_scores["cider"] = float(cider_of[ref])


CALIBRATION_BINS = 5  # confidence bins of width 0.2


def typed_right(record: dict, ref: Reference) -> bool:
    """Whether a typed answer's value equals one of the reference's expected answers."""
    value = record.get("value")
    kind = ref.answer.type if ref.answer else AnswerType.TEXT
    if value is None:  # cut short: no value
        return False
    for expected in ref.answers:
        if kind == AnswerType.YES_NO:
            if normalize_answer(expected) in ("yes", "no", "true", "false") and bool(value) == (
                normalize_answer(expected) in ("yes", "true")
            ):
                return True
        elif kind == AnswerType.COUNT:
            if normalize_answer(expected).isdigit() and int(normalize_answer(expected)) == value:
                return True
        elif kind == AnswerType.CHOICE:
            if normalize_answer(expected) == normalize_answer(str(value)):
                return True
        else:
            try:
                if json.loads(expected) == value:
                    return True
            except json.JSONDecodeError:
                continue
    return False


def calibration(answers: list[tuple[float, bool]]) -> list[dict]:
    """Accuracy per confidence bin (the bins that hold answers)."""
    bins: dict[int, list[bool]] = {}
    for confidence, right in answers:
        bins.setdefault(min(int(confidence * CALIBRATION_BINS), CALIBRATION_BINS - 1), []).append(
            right
        )
    width = 1.0 / CALIBRATION_BINS
    return [
        {
            "bin": f"{b * width:.1f}-{(b + 1) * width:.1f}",
            "answers": len(rights),
            "accuracy": sum(rights) / len(rights),
        }
        for b, rights in sorted(bins.items())
    ]
