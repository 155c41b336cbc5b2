"""Nothing lost: a replay stopped by Ctrl-C (a real SIGINT) or by a failure keeps what it did,
marked partial, and ``--resume`` finishes it to the results of an uninterrupted run.

Bags of real photographs (smolvlm_ros.photos); the model is random:tiny on the CPU."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from rosbags.highlevel import AnyReader

from smolvlm_ros.interfaces import typestore_with_our_messages
from smolvlm_ros.tools.sample_bag import DEMO_CAMERAS, write_sample_bag

REPO = Path(__file__).resolve().parents[1]
CAMERAS = [c.topic for c in DEMO_CAMERAS]
TIMING = ("timing",)  # what may differ between two runs of the same replay


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    """Two cameras (raw and JPEG), 5 Hz, 3 s: 15 frames each."""
    path = tmp_path_factory.mktemp("resume") / "bag"
    return write_sample_bag(path, DEMO_CAMERAS, rate_hz=5.0, seconds_per_photo=0.6)


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("refs") / "refs.jsonl"
    lines = [
        {"camera": CAMERAS[0], "frame": 9, "question": "Is there a cat?",
         "answer_type": "yes_no", "answers": ["yes"]},
        {"camera": CAMERAS[1], "frame": 12, "question": "What is shown?", "answers": ["a cat"]},
        {"camera": CAMERAS[0], "frame": 2, "captions": ["an astronaut in a suit"]},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def command(bag: Path, out: Path, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "smolvlm_ros.replay", str(bag), "--out", str(out),
        "--model", "random:tiny", "--device", "cpu", "--backend", "torch",
        "--max-new-tokens", "4", "--quiet", "--questions", "Is it outdoors?", *args,
    ]  # fmt: skip


def run(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, timeout=600, check=False, env=env
    )


def records(out: Path) -> list[dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def bag_results(out: Path) -> Counter:
    """The output bag's topics with their message counts, and every result message's text."""
    found: Counter = Counter()
    with AnyReader([out / "bag"], default_typestore=typestore_with_our_messages()) as reader:
        for connection, log_ns, raw in reader.messages():
            if not connection.topic.startswith("/smolvlm/"):
                found[connection.topic] += 1
                continue
            msg = reader.deserialize(raw, connection.msgtype)
            text = msg.text if connection.topic.endswith("caption") else msg.answer
            found[(connection.topic, msg.camera, log_ns, text)] += 1
    return found


def interrupt_after(cmd: list[str], out: Path, lines: int) -> subprocess.CompletedProcess:
    """Start the replay and send it a real SIGINT (Ctrl-C) once ``lines`` results are on disk."""
    # SIGINT back to its default in the child: a shell's background job (as CI may run us)
    # ignores it, and Python started ignoring SIGINT never raises KeyboardInterrupt
    proc = subprocess.Popen(
        cmd, cwd=REPO, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    results = out / "results.jsonl"
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if results.is_file() and len(results.read_text().splitlines()) >= lines:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.02)
    _, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, "", stderr)


def test_ctrl_c_keeps_the_results_and_resume_finishes_them(bag, references, tmp_path):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    args = ("--references", str(references))
    done = run(command(bag, whole, *args))
    assert done.returncode == 0, done.stderr
    assert summary(whole)["status"] == "complete" and not (whole / "bag.partial").exists()
    expected = records(whole)
    assert len(expected) == 62  # 30 captions, 30 standing answers, 2 reference questions

    halted = interrupt_after(command(bag, stopped, *args), stopped, lines=14)
    assert halted.returncode == 130, halted.stderr
    assert "interrupted (Ctrl-C)" in halted.stderr and "--resume" in halted.stderr
    partial = summary(stopped)
    assert partial["status"] == "partial"
    assert partial["progress"]["stopped"] == "interrupted (Ctrl-C)"
    kept = records(stopped)
    assert 14 <= len(kept) < len(expected)
    unscored = [{k: v for k, v in r.items() if k != "scores"} for r in expected]
    assert kept == unscored[: len(kept)]  # written as they came: nothing lost, nothing made up
    assert partial["progress"]["results"] == len(kept)
    assert 0 < partial["progress"]["frames_read"] < partial["progress"]["frames_total"] == 30
    # the half-written bag does not pass for a complete one
    assert (stopped / "bag.partial" / "metadata.yaml").is_file() and not (stopped / "bag").exists()
    assert not (stopped / "report.html").exists()

    cmp = [sys.executable, "-m", "smolvlm_ros.replay.compare", str(whole), str(stopped)]
    partial_compare = run([*cmp, "--page", str(tmp_path / "ab.html")])
    assert partial_compare.returncode == 2 and "is a partial run" in partial_compare.stderr

    refused = run(command(bag, stopped, *args))
    assert refused.returncode == 2 and "--resume" in refused.stderr

    resumed = run(command(bag, stopped, *args, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "--resume: kept" in resumed.stderr
    assert records(stopped) == expected  # scores included
    final = summary(stopped)
    assert final["status"] == "complete" and final["results"] == 62
    assert final["resumed_jobs"] >= 7  # 14 results: at least 7 frames' caption + answer
    assert final["scores"] == summary(whole)["scores"]
    assert bag_results(stopped) == bag_results(whole)
    assert sorted(p.name for p in stopped.iterdir()) == sorted(p.name for p in whole.iterdir())
    again = run(command(bag, stopped, *args, "--resume"))
    assert again.returncode == 2 and "already complete" in again.stderr


def test_a_failure_in_live_emulation_resumes_to_the_same_schedule(bag, tmp_path):
    """Live emulation decides what to drop from the jobs before; a resumed run skips the
    finished jobs but keeps their time, so it drops and publishes exactly the same."""
    live = ("--mode", "live", "--compute-s", "0.7", "--caption-rate-hz", "2", "--max-batch", "2")
    whole, failed = tmp_path / "whole", tmp_path / "failed"
    done = run(command(bag, whole, *live))
    assert done.returncode == 0, done.stderr
    env = {**__import__("os").environ, "SMOLVLM_REPLAY_FAIL_AFTER": "5"}
    broken = run(command(bag, failed, *live), env=env)
    assert broken.returncode == 1
    assert "failed: RuntimeError: SMOLVLM_REPLAY_FAIL_AFTER=5" in broken.stderr
    stopped = summary(failed)
    assert stopped["status"] == "partial" and stopped["progress"]["stopped"].startswith("failed")
    assert len(records(failed)) == 5  # the fifth was written before the failure

    resumed = run(command(bag, failed, *live, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert records(failed) == records(whole)
    assert [r["published"] for r in records(failed)] == [r["published"] for r in records(whole)]
    assert summary(failed)["cameras"] == summary(whole)["cameras"]  # same drops
    assert bag_results(failed) == bag_results(whole)


def test_resume_refuses_another_bag_or_other_settings(bag, tmp_path):
    out = tmp_path / "run"
    env = {**__import__("os").environ, "SMOLVLM_REPLAY_FAIL_AFTER": "2"}
    assert run(command(bag, out, "--topics", CAMERAS[0]), env=env).returncode == 1
    other = run(command(bag, out, "--topics", CAMERAS[0], "--max-new-tokens", "5", "--resume"))
    assert other.returncode == 2
    assert "another bag or other settings" in other.stderr and "max_new_tokens" in other.stderr
    assert summary(out)["status"] == "partial"  # the refusal changed nothing
    fresh = run(command(bag, tmp_path / "new", "--topics", CAMERAS[0], "--resume"))
    assert fresh.returncode == 0, fresh.stderr  # nothing to resume: a normal run
    assert summary(tmp_path / "new")["status"] == "complete"


def test_a_hard_kill_is_resumed_by_computing_the_unclosed_bag_again(bag, tmp_path):
    """SIGKILL leaves no chance to close the bag (no metadata.yaml): its results cannot be
    copied, so --resume says so and computes them again; the run still ends as an uninterrupted
    one, with results.jsonl and the bag agreeing."""
    args = ("--topics", CAMERAS[1])
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run(command(bag, whole, *args)).returncode == 0
    proc = subprocess.Popen(command(bag, killed, *args), cwd=REPO, stderr=subprocess.DEVNULL)
    results = killed / "results.jsonl"
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        if results.is_file() and len(results.read_text().splitlines()) >= 4:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert summary(killed)["status"] == "partial" and len(records(killed)) >= 4
    assert not (killed / "bag.partial" / "metadata.yaml").exists()  # never closed
    resumed = run(command(bag, killed, *args, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "was not closed (killed?)" in resumed.stderr
    assert records(killed) == records(whole)
    assert bag_results(killed) == bag_results(whole)
