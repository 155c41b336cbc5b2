"""The benchmark command runs end to end and writes every figure it prints (speed itself is
measured by running it, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_bench_reports_engine_and_reference(tmp_path):
    out_json = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "smolvlm_ros.bench", "--model", "random:tiny", "--device", "cpu",
         "--max-new-tokens", "5", "--cameras", "2", "--questions", "3", "--repeats", "1",
         "--warmup", "0", "--json", str(out_json)],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    for name in ("single", "cameras_batched", "questions_shared"):
        assert name in run.stdout
    report = json.loads(out_json.read_text())
    assert report["environment"]["model"] == "random:tiny"
    assert report["environment"]["random_weights"] is True
    scenarios = report["scenarios"]
    assert set(scenarios) == {
        "single", "cameras_sequential", "cameras_batched", "questions_separate", "questions_shared"
    }  # fmt: skip
    for entry in scenarios.values():
        summary = entry["engine"]["summary"]
        assert summary["generated_tokens"] == 5  # forced: runs are comparable
        assert summary["wall_s_median"] > 0 and summary["peak_mb"] > 0
        assert entry["speedup_vs_reference"] > 0
        assert entry["reference"]["summary"]["wall_s_median"] > 0
    assert scenarios["cameras_batched"]["engine"]["summary"]["requests"] == 2
    shared = scenarios["questions_shared"]["engine"]["runs"][0]["results"]
    assert [r["reused"] for r in shared] == [False, True, True]  # one vision pass for 3 questions


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--questions", "99"], "--questions must be between 1 and 8"),
        (["--scenarios", "single,warp"], "unknown scenario(s) warp"),
        (["--max-new-tokens", "0"], "--max-new-tokens: max_new_tokens 0: expected 1-4096"),
    ],
)
def test_bench_refuses_bad_arguments(args, message):
    run = subprocess.run(
        [sys.executable, "-m", "smolvlm_ros.bench", *args],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 2
    assert message in run.stderr
