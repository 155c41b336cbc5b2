"""The benchmark bridge: VQAv2, TextVQA and COCO-captions layouts on disk -> a bag and
references that replay accepts and scores in full.

The datasets' own files are not downloadable here, so scikit-image's photographs (in their
original, differing sizes) are laid out exactly as each dataset ships its files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from replay_helpers import REPO, run_replay
from rosbags.highlevel import AnyReader

from smolvlm_ros.replay.dataset import TOPIC, convert

PHOTOS = {  # image id -> scikit-image photograph, as RGB
    42: skimage.data.astronaut,
    73: skimage.data.coffee,
    139: skimage.data.chelsea,
    285: skimage.data.rocket,
}


def _save(path: Path, rgb: np.ndarray) -> bytes:
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    path.write_bytes(jpeg.tobytes())
    return jpeg.tobytes()


QUESTIONS = {  # image id -> (question, ten annotators' answers)
    42: [("Is this person an astronaut?", ["yes"] * 9 + ["no"]),
         ("What color is the suit?", ["white"] * 7 + ["white and blue"] * 3)],
    73: [("What is in the cup?", ["coffee"] * 8 + ["tea", "latte"])],
    139: [("What animal is this?", ["cat"] * 10)],
}  # fmt: skip


def vqav2_layout(root: Path) -> tuple[Path, Path, Path, dict[int, bytes]]:
    images = root / "val2014"
    images.mkdir(parents=True)
    files = {i: _save(images / f"COCO_val2014_{i:012d}.jpg", PHOTOS[i]()) for i in QUESTIONS}
    questions, annotations, qid = [], [], 0
    for image_id, asked in QUESTIONS.items():
        for question, answers in asked:
            qid += 1
            questions.append({"image_id": image_id, "question": question, "question_id": qid})
            annotations.append({
                "question_id": qid, "image_id": image_id, "question_type": "what",
                "answer_type": "other", "multiple_choice_answer": answers[0],
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": n + 1}
                            for n, a in enumerate(answers)],
            })  # fmt: skip
    q_file = root / "v2_OpenEnded_mscoco_val2014_questions.json"
    q_file.write_text(json.dumps({"task_type": "Open-Ended", "questions": questions}))
    a_file = root / "v2_mscoco_val2014_annotations.json"
    a_file.write_text(json.dumps({"data_type": "mscoco", "annotations": annotations}))
    return images, q_file, a_file, files


def textvqa_layout(root: Path) -> tuple[Path, Path]:
    images = root / "train_images"
    images.mkdir(parents=True)
    data = []
    for n, (image_id, asked) in enumerate(QUESTIONS.items()):
        name = f"{image_id:016x}"  # TextVQA's ids are hex strings
        _save(images / f"{name}.jpg", PHOTOS[image_id]())
        for question, answers in asked:
            data.append({"question": question, "image_id": name, "question_id": 100 + n,
                         "answers": answers, "image_classes": [], "set_name": "val"})  # fmt: skip
    q_file = root / "TextVQA_0.5.1_val.json"
    q_file.write_text(json.dumps({"dataset_type": "val", "dataset_name": "textvqa", "data": data}))
    return images, q_file


def coco_captions_layout(root: Path) -> tuple[Path, Path]:
    images = root / "val2014"
    images.mkdir(parents=True)
    captions = {
        42: ["An astronaut in a white suit poses with a flag.", "A woman in a space suit."],
        285: ["A rocket stands on the launch pad.", "A space shuttle ready for launch."],
        73: ["A cup of coffee on a saucer."],
    }
    entries, annotations = [], []
    for image_id, texts in captions.items():
        name = f"COCO_val2014_{image_id:012d}.jpg"
        rgb = PHOTOS[image_id]()
        _save(images / name, rgb)
        entries.append({"id": image_id, "file_name": name, "height": rgb.shape[0],
                        "width": rgb.shape[1]})  # fmt: skip
        for text in texts:
            annotations.append({"image_id": image_id, "id": len(annotations), "caption": text})
    entries.append({"id": 999, "file_name": "not_in_the_subset.jpg", "height": 1, "width": 1})
    c_file = root / "captions_val2014.json"
    c_file.write_text(json.dumps({"images": entries, "annotations": annotations}))
    return images, c_file


def replay(bag: Path, refs: Path, out: Path) -> subprocess.CompletedProcess:
    return run_replay(bag, out, "--references", str(refs))


def test_vqav2_becomes_a_bag_of_its_own_jpegs_and_is_scored_in_full(tmp_path):
    images, q_file, a_file, files = vqav2_layout(tmp_path / "vqav2")
    done = subprocess.run(
        [sys.executable, "-m", "smolvlm_ros.replay.dataset", "vqav2", "--images", str(images),
         "--questions", str(q_file), "--annotations", str(a_file), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    bag, refs = tmp_path / "o" / "bag", tmp_path / "o" / "references.jsonl"
    with AnyReader([bag]) as reader:
        (connection,) = reader.connections
        assert (connection.topic, connection.msgcount) == (TOPIC, 3)
        sent = [
            (reader.deserialize(raw, connection.msgtype), log_ns)
            for _, log_ns, raw in reader.messages()
        ]
    # the benchmark's own bytes, one image a second, in the questions' order
    assert [bytes(msg.data) for msg, _ in sent] == [files[i] for i in QUESTIONS]
    assert all(msg.format == "jpeg" for msg, _ in sent)
    assert [b - sent[0][1] for _, b in sent] == [0, 1_000_000_000, 2_000_000_000]
    lines = [json.loads(line) for line in refs.read_text().splitlines()]
    assert len(lines) == 4 and {line["frame"] for line in lines} == {0, 1, 2}
    assert lines[1]["question"] == "What color is the suit?" and len(lines[1]["answers"]) == 10

    out = tmp_path / "run"
    done = replay(bag, refs, out)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["references"] == {"given": 4, "matched": 4, "unmatched": []}
    assert summary["scores"]["vqa_scored"] == 4 and summary["scores"]["vqa_missing"] == 0


def test_textvqa_and_coco_captions_layouts(tmp_path):
    images, q_file = textvqa_layout(tmp_path / "textvqa")
    bag, refs, count = convert("textvqa", images, q_file, None, tmp_path / "t")
    assert count == 3
    lines = [json.loads(line) for line in refs.read_text().splitlines()]
    assert [line["question"] for line in lines] == [q for a in QUESTIONS.values() for q, _ in a]

    images, c_file = coco_captions_layout(tmp_path / "coco")
    bag, refs, count = convert("coco-captions", images, c_file, None, tmp_path / "c", rate_hz=2)
    assert count == 3  # the image without captions is not part of the subset
    lines = [json.loads(line) for line in refs.read_text().splitlines()]
    assert [len(line["captions"]) for line in lines] == [2, 2, 1]
    out = tmp_path / "run"
    done = replay(bag, refs, out)
    assert done.returncode == 0, done.stderr
    scores = json.loads((out / "summary.json").read_text())["scores"]
    assert scores["captions_scored"] == 3 and scores["cider"] is not None


def test_a_wrong_layout_is_explained(tmp_path):
    images, q_file, a_file, _ = vqav2_layout(tmp_path / "vqav2")
    with pytest.raises(ValueError, match="vqav2 needs --annotations"):
        convert("vqav2", images, q_file, None, tmp_path / "o")
    (images / "COCO_val2014_000000000073.jpg").unlink()
    with pytest.raises(ValueError, match="no image for id 73"):
        convert("vqav2", images, q_file, a_file, tmp_path / "o")
