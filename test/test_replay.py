"""Offline replay of rosbags of real photographs: outputs, determinism, live emulation, errors."""

from __future__ import annotations

import html
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from replay_helpers import REPO, run_replay
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from smolvlm_ros.engine.types import ANSWER, CAPTION, FINISH_LENGTH, Result
from smolvlm_ros.interfaces import typestore_with_our_messages
from smolvlm_ros.pipeline.intake import stamp_to_ns
from smolvlm_ros.replay.outputs import ResultBag
from smolvlm_ros.tools.sample_bag import DEMO_CAMERAS, write_sample_bag

CAMERAS = [c.topic for c in DEMO_CAMERAS]


@pytest.fixture(scope="module", params=["mcap", "sqlite3"])
def bag(request, tmp_path_factory) -> Path:
    """Two cameras (raw and JPEG), 5 Hz, 3 s: 15 frames each."""
    path = tmp_path_factory.mktemp(request.param) / "bag"
    return write_sample_bag(
        path, DEMO_CAMERAS, rate_hz=5.0, seconds_per_photo=0.6, storage=request.param
    )


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def bag_stamps(bag: Path) -> dict[str, set[int]]:
    stamps: dict[str, set[int]] = {}
    with AnyReader([bag]) as reader:
        for connection, _, raw in reader.messages():
            msg = reader.deserialize(raw, connection.msgtype)
            s = msg.header.stamp
            stamps.setdefault(connection.topic, set()).add(s.sec * 10**9 + s.nanosec)
    return stamps


def test_every_frame_mode_writes_jsonl_and_a_bag(bag, tmp_path):
    out = tmp_path / "run"
    references = tmp_path / "refs.jsonl"
    references.write_text(
        json.dumps({"camera": CAMERAS[0], "frame": 0, "captions": ["an astronaut", "a woman"]})
        + "\n"
        + json.dumps({"camera": CAMERAS[1], "frame": 14, "question": "Is there a cat?",
                      "answers": ["no", "no", "no"]})
        + "\n"
        + json.dumps({"camera": CAMERAS[1], "frame": 3, "question": "Only in the references?",
                      "answers": ["no"]})
        + "\n"
        + json.dumps({"camera": "/typo/image_raw", "frame": 0, "captions": ["a cat"]})
        + "\n"
        + json.dumps({"camera": CAMERAS[0], "frame": 99, "question": "Too late?",
                      "answers": ["no"]})
        + "\n"
    )  # fmt: skip
    done = run_replay(
        bag,
        out,
        "--questions",
        "Is there a cat?",
        "Is it outdoors?",
        "--references",
        str(references),
    )
    assert done.returncode == 0, done.stderr
    lines = records(out)
    sources = bag_stamps(bag)
    captions = [r for r in lines if r["kind"] == "caption"]
    answers = [r for r in lines if r["kind"] == "answer"]
    # every frame, two questions each, and the reference's own question about its one frame
    assert len(captions) == 30 and len(answers) == 61
    for record in lines:
        assert record["stamp"] in sources[record["camera"]]  # stamped with its source frame
        assert record["text"] and record["model"] == "random:tiny"
        assert record["timing"]["generated_tokens"] >= 1
    assert {r["question"] for r in answers} == {
        "Is there a cat?", "Is it outdoors?", "Only in the references?",
    }  # fmt: skip
    (asked,) = [r for r in answers if r["question"] == "Only in the references?"]
    assert (asked["camera"], asked["stamp"]) == (CAMERAS[1], sorted(sources[CAMERAS[1]])[3])

    typestore = typestore_with_our_messages()
    with AnyReader([out / "bag"], default_typestore=typestore) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        assert counts == {
            CAMERAS[0]: 15, CAMERAS[1]: 15, "/smolvlm/caption": 30, "/smolvlm/answer": 61,
        }  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 30 and summary["results"] == 91
    assert summary["drop_rate"] == 0.0 and summary["latency_ms"]["p50"] > 0
    scores = summary["scores"]
    assert (scores["captions_scored"], scores["vqa_scored"], scores["vqa_missing"]) == (1, 2, 0)
    unmatched = summary["references"]["unmatched"]
    assert (summary["references"]["given"], summary["references"]["matched"]) == (5, 3)
    assert [(u["line"], u["camera"]) for u in unmatched] == [
        (4, "/typo/image_raw"), (5, CAMERAS[0]),
    ]  # fmt: skip
    assert "camera not replayed" in unmatched[0]["reason"] and "15 frames" in unmatched[1]["reason"]
    assert "reference line 4 (/typo/image_raw frame 0) matches nothing" in done.stderr
    scored = [r for r in lines if "scores" in r]
    assert len(scored) == 3
    assert {r["camera"] for r in scored} == set(CAMERAS)
    page = (out / "report.html").read_text()
    # every captioned frame shown (and again beside each wrong answer, in the failures)
    wrong = sum(1 for r in lines if r.get("scores", {}).get("vqa_accuracy", 1.0) < 1.0)
    assert page.count('src="data:image/jpeg;base64,') == 30 + wrong
    assert page.count("<svg") == 2 and "Random weights" in page
    assert "2 references match no frame" in page and "/typo/image_raw" in page
    assert html.escape(captions[0]["text"]) in page


@pytest.mark.ros
def test_the_result_bag_holds_what_ros_itself_reads(tmp_path):
    """The CDR rosbags writes is what ROS itself reads (ros2 bag play would publish it)."""
    from rclpy.serialization import deserialize_message

    from smolvlm_ros.msg import Caption, VqaAnswer

    caption = Result(
        kind=CAPTION, text="a cat", prompt="Describe.", camera="/cam",
        stamp_ns=1_767_225_600_000_000_005, frame_id="cam", model="random:tiny",
        backend="torch", device="cpu", dtype="float32", tile_rows=1, tile_cols=2, num_images=3,
        finish_reason=FINISH_LENGTH,
    )  # fmt: skip
    answer = replace(caption, kind=ANSWER, prompt="Is there a cat?", text="yes")
    bag = ResultBag(tmp_path / "bag")
    bag.result(caption, 7)
    bag.result(answer, 8)
    bag.close()
    with AnyReader([tmp_path / "bag"], default_typestore=typestore_with_our_messages()) as reader:
        raws = {c.topic: raw for c, _, raw in reader.messages()}
    got = deserialize_message(bytes(raws["/smolvlm/caption"]), Caption)
    assert (got.text, got.camera, got.header.frame_id) == ("a cat", "/cam", "cam")
    assert stamp_to_ns(got.header.stamp) == caption.stamp_ns
    assert (got.timing.finish_reason, got.provenance.tile_cols) == ("length", 2)
    got = deserialize_message(bytes(raws["/smolvlm/answer"]), VqaAnswer)
    assert (got.question, got.answer) == ("Is there a cat?", "yes")


def test_running_twice_gives_identical_results(bag, tmp_path):
    runs = []
    for name in ("a", "b"):
        done = run_replay(bag, tmp_path / name, "--topics", CAMERAS[1])
        assert done.returncode == 0, done.stderr
        runs.append([(r["camera"], r["stamp"], r["text"]) for r in records(tmp_path / name)])
    assert runs[0] == runs[1] and len(runs[0]) == 15
    assert {camera for camera, _, _ in runs[0]} == {CAMERAS[1]}


def test_live_emulation_drops_what_the_node_would(bag, tmp_path):
    out = tmp_path / "live"
    done = run_replay(bag, out, "--mode", "live", "--compute-s", "0.7", "--caption-rate-hz", "1")
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    for stats in summary["cameras"].values():
        assert stats["received"] == 15
        assert stats["captioned"] + stats["dropped"]["superseded"] == 15
        assert 2 <= stats["captioned"] <= 4  # 3 s at 1 Hz, never more than the rate allows
    lines = records(out)
    published = [r["published"] for r in lines]
    assert published == sorted(published)
    for record in lines:  # each result is published compute-s after its frame was taken
        assert record["published"] - record["stamp"] >= 0.7e9 - 1
    again = tmp_path / "live2"
    assert run_replay(bag, again, "--mode", "live", "--compute-s", "0.7").returncode == 0
    assert [r["stamp"] for r in records(again)] == [r["stamp"] for r in lines]


def test_live_emulation_batches_the_cameras_due_together(bag, tmp_path):
    """The model the bottleneck (5 Hz wanted, 0.7 s a job): with max_batch 2 every pass after
    the first captions both cameras, as the node would; one at a time, each pass one camera."""
    runs = {}
    for max_batch in ("1", "2"):
        out = tmp_path / f"batch{max_batch}"
        done = run_replay(
            bag, out, "--mode", "live", "--compute-s", "0.7", "--caption-rate-hz", "5",
            "--max-batch", max_batch,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        passes: dict[int, list[str]] = {}  # publish time -> cameras captioned in that pass
        for record in records(out):
            passes.setdefault(record["published"], []).append(record["camera"])
        runs[max_batch] = list(passes.values())
        summary = json.loads((out / "summary.json").read_text())
        for stats in summary["cameras"].values():
            assert stats["captioned"] + stats["dropped"]["superseded"] == 15
    assert all(len(cameras) == 1 for cameras in runs["1"])
    assert len(runs["2"][0]) == 1  # the first frame is taken before the other camera's arrives
    assert all(sorted(cameras) == sorted(CAMERAS) for cameras in runs["2"][1:])
    captions = {max_batch: sum(map(len, passes)) for max_batch, passes in runs.items()}
    assert captions["2"] >= 1.4 * captions["1"]  # 9 against 6 in the same bag time


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--topics", "/nope/image"], "topic(s) /nope/image not in the bag"),
        (["--mode", "live", "--compute-s", "0"], "compute_s must be > 0"),
    ],
)
def test_bad_arguments_are_explained(bag, tmp_path, args, message):
    done = run_replay(bag, tmp_path / "x", *args)
    assert done.returncode == 2 and message in done.stderr


def test_not_a_bag_and_existing_output_are_refused(bag, tmp_path):
    done = run_replay(tmp_path, tmp_path / "x")
    assert done.returncode == 2 and "is not a rosbag2 directory" in done.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "results.jsonl").write_text("{}\n")
    done = run_replay(bag, tmp_path / "full")
    assert done.returncode == 2 and "exists and is not empty" in done.stderr


def test_two_runs_compare_side_by_side(bag, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_replay(bag, a, "--topics", CAMERAS[0]).returncode == 0
    assert (
        run_replay(bag, b, "--topics", CAMERAS[0], "--caption-prompt", "What is this?").returncode
        == 0
    )
    done = subprocess.run(
        [sys.executable, "-m", "smolvlm_ros.replay.compare", str(a), str(b),
         "--page", str(tmp_path / "compare.html")],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "latency p50 ms" in done.stdout and "random:tiny" in done.stdout
    assert f"{b}: 0 results about the same frames" not in done.stdout  # captions: same frames
    assert "15 results about the same frames" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "smolvlm_ros.replay.compare", str(a), str(tmp_path),
         "--page", str(tmp_path / "compare.html")],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "is not a replay output" in bad.stderr


@pytest.mark.ros
def test_live_mode_records_what_the_running_node_publishes(bag, tmp_path):
    """The bag played over DDS, with /clock, into vlm_node running on sim time."""
    from ros_helpers import NodeProcess, wait_for

    node = NodeProcess(
        tmp_path,
        {"model": "random:tiny", "device": "cpu", "image_topics": CAMERAS, "use_sim_time": True,
         "caption_rate_hz": 2.0, "max_new_tokens": 4, "questions": ["Is there a cat?"]},
    )  # fmt: skip
    try:
        wait_for(lambda: node.proc.poll() is not None or "listening on" in node.log, 120)
        assert "listening on" in node.log, node.log
        out = tmp_path / "live"
        done = run_replay(
            bag, out, "--live", "--node", f"{node.namespace}/smolvlm", "--settle-s", "3"
        )
        assert done.returncode == 0, done.stderr + node.log
    finally:
        assert node.stop() == 0, node.log
    lines = records(out)
    sources = bag_stamps(bag)
    captions = [r for r in lines if r["kind"] == "caption"]
    assert len(captions) >= 4  # 3 s of bag at 2 Hz per camera, whatever the node kept up with
    assert {r["camera"] for r in captions} == set(CAMERAS)
    for record in lines:
        assert record["stamp"] in sources[record["camera"]]
        assert record["model"] == "random:tiny"
    answers = [r for r in lines if r["kind"] == "answer"]
    assert answers and all(r["question"] == "Is there a cat?" for r in answers)
    assert all(r["timing"]["generated_tokens"] >= 1 for r in lines)
    typestore = typestore_with_our_messages()
    with AnyReader([out / "bag"], default_typestore=typestore) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts["/smolvlm/caption"] == len(captions) and counts[CAMERAS[0]] == 15
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "live-node"
    clock = summary["bag_clock"]  # on the bag's clock: what the node did in bag time
    assert clock["seconds"] == pytest.approx(2.8)
    assert clock["results_per_bag_s"] == pytest.approx(len(lines) / 2.8, abs=1e-3)
    latency = clock["latency_ms"]
    assert 0 <= latency["p50"] <= latency["p90"] <= latency["max"]
    assert (out / "report.html").is_file()


def test_bag_and_references_are_checked_before_the_model_loads(bag, tmp_path):
    """Every mistake here is found in seconds, with no model: --model names weights that do not
    exist, so a check that came after loading would fail on the model instead."""
    no_model = ("--model", str(tmp_path / "no-such-weights"))
    nothing = tmp_path / "nothing.jsonl"
    nothing.write_text(
        json.dumps({"camera": "/nope/image", "frame": 0, "captions": ["a cat"]}) + "\n"
        + json.dumps({"camera": CAMERAS[0], "stamp": 5, "question": "Cat?", "answers": ["no"]})
        + "\n"
    )  # fmt: skip
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"camera": "/a", "frame": 0, "captions": ["x"]}\nnot json\n')
    no_images = tmp_path / "no_images"
    typestore = get_typestore(Stores.LATEST)
    with Writer(no_images, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        text = writer.add_connection("/chatter", "std_msgs/msg/String", typestore=typestore)
        msg = typestore.types["std_msgs/msg/String"](data="hello")
        writer.write(text, 1, typestore.serialize_cdr(msg, "std_msgs/msg/String"))
    cases = [
        (tmp_path / "missing", [], "no such bag"),
        (tmp_path, [], "is not a rosbag2 directory"),
        (no_images, [], "has no sensor_msgs Image or CompressedImage topics"),
        (bag, ["--references", str(broken)], "broken.jsonl:2: not JSON"),
        (bag, ["--references", str(nothing)], "none of its 2 references names a frame"),
    ]
    for number, (path, args, message) in enumerate(cases):
        done = run_replay(path, tmp_path / f"out{number}", *no_model, *args)
        assert done.returncode == 2 and message in done.stderr, (message, done.stderr)
        assert "no-such-weights" not in done.stderr
        assert not (tmp_path / f"out{number}").exists()
    assert "line 2: " + CAMERAS[0] + " stamp 5: no frame of the camera has this header stamp" in (
        done.stderr
    )


def test_references_by_stamp_are_asked_about_their_frame(bag, tmp_path):
    stamp = sorted(bag_stamps(bag)[CAMERAS[0]])[7]
    refs = tmp_path / "refs.jsonl"
    refs.write_text(
        json.dumps({"camera": CAMERAS[0], "stamp": stamp, "question": "Is it red?",
                    "answers": ["no", "no", "no"]}) + "\n"
    )  # fmt: skip
    out = tmp_path / "run"
    done = run_replay(bag, out, "--topics", CAMERAS[0], "--references", str(refs))
    assert done.returncode == 0, done.stderr
    answers = [r for r in records(out) if r["kind"] == "answer"]
    assert [(r["stamp"], r["question"]) for r in answers] == [(stamp, "Is it red?")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scores"]["vqa_scored"] == 1 and summary["references"]["unmatched"] == []


def test_typed_reference_questions_are_scored_with_calibration(bag, tmp_path):
    """A reference with an answer_type is asked as that type; its value is scored against the
    expected answers and the summary has accuracy per confidence bin (and so does the report)."""
    stamps = sorted(bag_stamps(bag)[CAMERAS[0]])
    refs = tmp_path / "refs.jsonl"
    lines = [
        {"camera": CAMERAS[0], "stamp": stamps[2], "question": "Is there a cat?",
         "answer_type": "yes_no", "answers": ["yes"]},
        {"camera": CAMERAS[0], "stamp": stamps[2], "question": "How many cats?",
         "answer_type": "count", "answers": ["1", "one"]},
        {"camera": CAMERAS[0], "stamp": stamps[4], "question": "Which animal?",
         "answer_type": "choice", "options": ["cat", "dog"], "answers": ["cat"]},
    ]  # fmt: skip
    refs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "run"
    done = run_replay(bag, out, "--topics", CAMERAS[0], "--references", str(refs))
    assert done.returncode == 0, done.stderr
    answers = {r["question"]: r for r in records(out) if r["kind"] == "answer"}
    assert set(answers) == {"Is there a cat?", "How many cats?", "Which animal?"}
    assert isinstance(answers["Is there a cat?"]["value"], bool)
    assert answers["Which animal?"]["value"] in ("cat", "dog")
    for record in answers.values():
        assert 0.0 <= record["confidence"] <= 1.0
        assert record["scores"]["typed_right"] in (True, False)
    right = [
        answers["Is there a cat?"]["value"] is True,
        answers["How many cats?"]["value"] == 1,
        answers["Which animal?"]["value"] == "cat",
    ]
    scores = json.loads((out / "summary.json").read_text())["scores"]
    assert scores["typed_scored"] == 3
    assert scores["typed_accuracy"] == pytest.approx(sum(right) / 3)
    assert sum(row["answers"] for row in scores["calibration"]) == 3
    assert "Calibration of typed answers" in (out / "report.html").read_text()


def test_a_wrong_answer_type_in_references_names_the_line(bag, tmp_path):
    refs = tmp_path / "refs.jsonl"
    refs.write_text(
        json.dumps({"camera": CAMERAS[0], "frame": 0, "question": "Which?",
                    "answer_type": "choice", "options": ["A"], "answers": ["A"]}) + "\n"
    )  # fmt: skip
    done = run_replay(bag, tmp_path / "run", "--references", str(refs))
    assert done.returncode == 2
    assert "refs.jsonl:1: a choice needs at least two options" in done.stderr
