"""What a replay hands the user besides its results: caption-scoring dependencies checked up
front, figures on the bag's clock, and an output bag declared with the input's definitions.

Bags of real photographs (smolvlm_ros.photos); the model is random:tiny on the CPU."""

from __future__ import annotations

import html
import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
from replay_helpers import REPO, run_replay
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from smolvlm_ros.photos import PHOTO_NAMES, photo
from smolvlm_ros.pipeline.intake import stamp_fields
from smolvlm_ros.replay.__main__ import main
from smolvlm_ros.tools.sample_bag import BAG_START_NS, DEMO_CAMERAS, write_sample_bag

CAMERAS = [c.topic for c in DEMO_CAMERAS]
IMAGE = "sensor_msgs/msg/Image"


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    """Two cameras (raw and JPEG), 5 Hz, 3 s: 15 frames each."""
    path = tmp_path_factory.mktemp("outputs") / "bag"
    return write_sample_bag(path, DEMO_CAMERAS, rate_hz=5.0, seconds_per_photo=0.6)


def test_caption_scoring_dependencies_are_named_before_the_model_loads(
    bag, tmp_path, monkeypatch, capsys
):
    """Without pycocoevalcap (as after a plain `pip install`) caption references are refused
    at once, naming the extra and the requirements file; the model (weights that do not exist)
    is never reached. VQA references need nothing more and pass the check."""
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"camera": CAMERAS[0], "frame": 0, "captions": ["a man"]}))
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        json.dumps({"camera": CAMERAS[0], "frame": 0, "question": "Cat?", "answers": ["no"]})
    )
    for name in [m for m in sys.modules if m.startswith("pycocoevalcap")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pycocoevalcap", None)  # Python's "not installed"
    no_model = ("--model", str(tmp_path / "no-such-weights"), "--device", "cpu", "--quiet")
    out = tmp_path / "out"
    assert main([str(bag), "--out", str(out), *no_model, "--references", str(captions)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'smolvlm_ros[scoring]'" in err and "requirements/scoring.txt" in err
    assert "no-such-weights" not in err and not out.exists()
    assert main([str(bag), "--out", str(out), *no_model, "--references", str(questions)]) == 2
    assert "no-such-weights" in capsys.readouterr().err  # past the check: failed on the model
    setup = (REPO / "setup.py").read_text()
    assert '"scoring": ["pycocoevalcap' in setup
    assert "pycocoevalcap" in (REPO / "requirements" / "scoring.txt").read_text()


def test_live_emulation_reports_latency_and_rate_on_the_bag_clock(bag, tmp_path):
    out = tmp_path / "live"
    done = run_replay(bag, out, "--mode", "live", "--compute-s", "0.7", "--caption-rate-hz", "1")
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    clock = summary["bag_clock"]
    assert clock["seconds"] == pytest.approx(2.8)  # 15 frames at 5 Hz: 14 periods
    assert clock["results_per_bag_s"] == pytest.approx(summary["results"] / 2.8, abs=1e-3)
    latency = clock["latency_ms"]
    assert 700 <= latency["p50"] <= latency["p90"] <= latency["max"]  # compute 0.7 s + waiting
    assert latency["max"] < 3000


def _image_with_exposure() -> tuple[str, object]:
    """A robot's own sensor_msgs/Image: Humble's, plus a field the standard one lacks (as a
    vendor patch or a newer definition would have) -- CDR that only this text reads."""
    humble = get_typestore(Stores.ROS2_HUMBLE)
    text, _ = humble.generate_msgdef(IMAGE, ros_version=2)
    main_part, rest = text.split("\n" + "=" * 80, 1)
    patched = main_part + "\nuint32 exposure_us\n" + "=" * 80 + rest
    types = dict(humble.fielddefs)
    types.update(get_types_from_msg(main_part + "\nuint32 exposure_us\n", IMAGE))
    store = get_typestore(Stores.EMPTY)
    store.register(types)
    return patched, store


def test_the_output_bag_declares_the_input_definitions(tmp_path):
    """The images are copied as recorded, so the output bag must declare the definitions they
    were recorded with: read back, they still have the robot's extra field."""
    msgdef, store = _image_with_exposure()
    bag = tmp_path / "robot"
    t = store.types
    with Writer(bag, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection(
            CAMERAS[0], IMAGE, msgdef=msgdef, rihs01=store.hash_rihs01(IMAGE)
        )
        for i, name in enumerate(PHOTO_NAMES[:3]):
            stamp = BAG_START_NS + i * 500_000_000
            bgr = cv2.cvtColor(photo(name), cv2.COLOR_RGB2BGR)
            msg = t[IMAGE](
                header=t["std_msgs/msg/Header"](
                    stamp=t["builtin_interfaces/msg/Time"](**stamp_fields(stamp)), frame_id="cam"
                ),
                height=480, width=640, encoding="bgr8", is_bigendian=0, step=640 * 3,
                data=bgr.reshape(-1), exposure_us=1000 + i,
            )  # fmt: skip
            writer.write(connection, stamp, store.serialize_cdr(msg, IMAGE))
    out = tmp_path / "out"
    done = run_replay(bag, out)
    assert done.returncode == 0, done.stderr
    with AnyReader([bag]) as source, AnyReader([out / "bag"]) as copy:
        (original,) = source.connections
        (copied,) = [c for c in copy.connections if c.topic == CAMERAS[0]]
        assert copied.msgdef.data == original.msgdef.data and copied.digest == original.digest
        exposures = [
            copy.deserialize(raw, IMAGE).exposure_us
            for _, _, raw in copy.messages(connections=[copied])
        ]
    assert exposures == [1000, 1001, 1002]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3  # and every frame was captioned through the bag's own definition


def _references(path: Path) -> Path:
    lines = [
        {"camera": CAMERAS[0], "frame": 3, "question": "Which animal is this?",
         "answers": ["zebra", "zebra", "zebra"]},
        {"camera": CAMERAS[1], "frame": 5, "question": "Is there a rocket?",
         "answer_type": "yes_no", "answers": ["yes"]},
        {"camera": CAMERAS[0], "frame": 0, "captions": ["an astronaut with a flag"]},
        {"camera": "/typo/image_raw", "frame": 0, "captions": ["a cat"]},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "smolvlm_ros.replay.compare", *args],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
    )  # fmt: skip


def test_the_report_puts_failures_first_and_compare_puts_two_runs_side_by_side(bag, tmp_path):
    refs = _references(tmp_path / "refs.jsonl")
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_replay(bag, a, "--references", str(refs)).returncode == 0
    done = run_replay(bag, b, "--references", str(refs), "--caption-prompt", "What is this?")
    assert done.returncode == 0, done.stderr
    page = (a / "report.html").read_text()
    order = ["<h2>Failures", "<h2>Run settings", "<h2>Scores", "Per question", "Per camera",
             "<h2>Frames"]  # fmt: skip
    positions = [page.index(heading) for heading in order]
    assert positions == sorted(positions)
    failures = page[positions[0] : positions[1]]
    assert "references match no frame" in failures and "/typo/image_raw" in failures
    zebra = [json.loads(line) for line in (a / "results.jsonl").read_text().splitlines()]
    (asked,) = [r for r in zebra if r["question"] == "Which animal is this?"]
    assert asked["scores"]["expected"] == ["zebra"] * 3  # expected beside given, in the JSONL
    if asked["scores"]["vqa_accuracy"] < 1.0:  # random weights: never "zebra" in practice
        assert "wrong answers" in failures and "zebra | zebra | zebra" in failures
        assert 'src="data:image/jpeg;base64,' in failures  # with the frame
    settings = page[positions[1] : positions[2]]
    assert "max_new_tokens" in settings and "random:tiny" in settings and "sha256" in settings
    assert "Which animal is this?" in page[positions[3] : positions[4]]
    assert CAMERAS[1] in page[positions[4] :]
    assert "an astronaut with a flag" in page[positions[5] :]  # the reference caption

    out = tmp_path / "compare.html"
    done = compare(str(a), str(b), "--page", str(out))
    assert done.returncode == 0, done.stderr
    side = out.read_text()
    assert side.count('<div class="frame">') == 30  # every frame both runs captioned
    assert "What is this?" in side and "zebra | zebra | zebra" in side
    assert "&Delta;" in side  # score deltas of the results both scored
    caption_a = next(json.loads(x) for x in (a / "results.jsonl").read_text().splitlines())
    caption_b = next(json.loads(x) for x in (b / "results.jsonl").read_text().splitlines())
    assert html.escape(caption_a["text"]) in side and html.escape(caption_b["text"]) in side
    assert "caption_prompt" in side  # among the settings that differ

    other_bag = write_sample_bag(
        tmp_path / "other", DEMO_CAMERAS[:1], rate_hz=2.0, seconds_per_photo=0.5
    )
    c = tmp_path / "c"
    assert run_replay(other_bag, c).returncode == 0
    refused = compare(str(a), str(c), "--page", str(tmp_path / "no.html"))
    assert refused.returncode == 2 and "not the same frames" in refused.stderr
    assert "--allow-different-bags" in refused.stderr and not (tmp_path / "no.html").exists()
    forced = compare(str(a), str(c), "--page", str(out), "--allow-different-bags")
    assert forced.returncode == 0 and "WARNING: DIFFERENT BAGS" in forced.stderr
    assert "DIFFERENT BAGS" in out.read_text()
