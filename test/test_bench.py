"""The benchmark command runs end to end and writes every figure it prints (speed itself is
measured by running it, never asserted here): the camera sweep with both transformers anchors,
the questions, the bandwidth floor and the backend choice, from one run."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.markers import default_environment
from packaging.requirements import Requirement

from smolvlm_ros.bench import agreement, language_model_weights, measure_bandwidth

REPO = Path(__file__).resolve().parents[1]
TOKENS = 3
CAMERAS = [1, 3]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One small run on CPU: random:tiny, fp32 (greedy: anchors must agree token for token)."""
    out_json = tmp_path_factory.mktemp("bench") / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "smolvlm_ros.bench", "--model", "random:tiny", "--device", "cpu",
         "--dtype", "float32", "--backend", "torch", "--max-new-tokens", str(TOKENS),
         "--cameras", ",".join(map(str, CAMERAS)), "--questions", "3", "--repeats", "1",
         "--warmup", "0", "--copy-mib", "32", "--json", str(out_json)],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return run.stdout, json.loads(out_json.read_text())


def _positive(value) -> bool:
    return isinstance(value, float) and value > 0


def test_environment_records_the_backend_and_why(bench_run):
    stdout, report = bench_run
    env = report["environment"]
    assert env["model"] == "random:tiny" and env["random_weights"] is True
    assert env["backend_requested"] == "torch" and env["backend"] == "torch"
    assert env["backend_reason"] and env["backend_reason"] in stdout
    assert f"# backend: torch ({env['backend_reason']})" in stdout


def test_sweep_has_a_row_per_camera_count_and_path(bench_run):
    stdout, report = bench_run
    sweep = report["cameras"]
    assert [entry["cameras"] for entry in sweep] == CAMERAS
    for entry in sweep:
        for path in ("engine", "generate", "static"):
            summary = entry[path]["summary"]
            assert summary["requests"] == entry["cameras"]
            assert summary["generated_tokens"] == TOKENS  # forced: runs are comparable
            for key in ("e2e_s", "ttft_ms", "captions_per_s", "tokens_per_s", "peak_mb"):
                assert _positive(summary[key]), (path, key, summary[key])
            assert isinstance(summary["decode_ms_per_token"], float)
        for key in ("engine_vs_generate", "engine_vs_static", "static_vs_generate"):
            assert _positive(entry[key]), (key, entry[key])
    assert "3 cameras" in stdout and "static" in stdout and "generate" in stdout


def test_static_anchor_equals_plain_generate(bench_run):
    _, report = bench_run
    for entry in report["cameras"]:
        static, plain = entry["static"]["token_ids"], entry["generate"]["token_ids"]
        assert len(plain) == entry["cameras"]
        assert static == plain  # greedy fp32: the cache layout must not change a token
        assert entry["agreement_with_generate"]["static"]["identical"] == 1.0


def test_static_anchor_records_transformers_compile_decision(bench_run):
    stdout, report = bench_run
    static = report["static_anchor"]
    assert static["decisions_seen"] > 0  # the probe saw generate() decide
    assert static["auto_compile"] is False  # transformers compiles on CUDA, not on the CPU
    assert "auto-compile: not compiled" in stdout


def test_bandwidth_floor_line(bench_run):
    stdout, report = bench_run
    floor = report["floor"]
    assert _positive(floor["floor_ms_per_token"])
    assert _positive(floor["bandwidth"]["gb_per_s"])
    assert "CPU memcpy" in floor["bandwidth"]["method"]
    assert floor["weights"]["bytes"] == floor["weights"]["params"] * 4  # float32
    assert "# bandwidth floor:" in stdout and "CPU memcpy" in stdout


def test_questions_rows(bench_run):
    _, report = bench_run
    questions = report["questions"]
    assert questions["questions"] == 3
    assert questions["shared"]["reused_encoding"] == [False, True, True]  # one vision pass
    for key in ("separate_vs_generate", "shared_vs_generate"):
        assert _positive(questions[key])
    assert questions["generate"]["summary"]["requests"] == 3


def test_answer_types_rows(bench_run):
    stdout, report = bench_run
    answers = report["answers"]
    assert _positive(answers["encode_ms"])
    for name in ("text", "yes_no", "choice", "count", "json"):
        summary = answers[name]["summary"]
        assert _positive(summary["e2e_s"]) and _positive(summary["x_prefill"]), name
        assert answers[name]["token_ids"][0], name
        # the frame was encoded once before: every typed answer reused it
        assert answers[name]["reused_encoding"] == [True], name
    assert answers["text"]["summary"]["generated_tokens"] == TOKENS
    assert answers["text"]["value"] is None  # free text has no typed value
    assert answers["yes_no"]["value"] in ("True", "False")
    assert answers["choice"]["value"] in ("'left'", "'right'", "'neither'")
    for name in ("yes_no", "choice"):  # scored in one pass: nothing decoded
        assert answers[name]["summary"]["decode_ms_per_token"] == 0.0
        assert 0.0 <= answers[name]["confidence"] <= 1.0
    assert "# answer types, one frame" in stdout and "x prefill" in stdout


def test_agreement_counts_identical_captions_and_common_prefixes():
    assert agreement([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 9, 6]]) == {
        "identical": 0.5,
        "mean_common_prefix": 2,
    }


def test_language_model_weights_leave_out_an_untied_input_embedding():
    class Text(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.layer = torch.nn.Linear(4, 4)

        def get_input_embeddings(self) -> torch.nn.Module:
            return self.embed

    class Model(torch.nn.Module):
        def __init__(self, tied: bool) -> None:
            super().__init__()
            self.model = torch.nn.Module()
            self.model.text_model = Text()
            self.lm_head = torch.nn.Linear(4, 10, bias=False)
            if tied:
                self.lm_head.weight = self.model.text_model.embed.weight

    untied = language_model_weights(Model(tied=False))
    assert untied["params"] == 4 * 4 + 4 + 10 * 4 and untied["embedding_bytes_left_out"] == 160
    tied = language_model_weights(Model(tied=True))
    assert tied["params"] == 4 * 4 + 4 + 10 * 4 and tied["tied_embeddings"] is True


def test_cpu_bandwidth_is_measured():
    measured = measure_bandwidth("cpu", mib=8, repeats=2)
    assert measured["bytes_per_copy"] == 2 * 8 * 2**20 and len(measured["seconds"]) == 2
    assert measured["gb_per_s"] > 0


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(file_name: str) -> dict[str, str]:
    """name -> version of a tools/ wheel list (name==version lines, comments allowed)."""
    lines = (REPO / "tools" / file_name).read_text().splitlines()
    pairs = (line.split("#")[0].strip().split("==") for line in lines)
    return {_normal(pair[0]): pair[1] for pair in pairs if pair != [""]}


def _closure(names: list[str]) -> set[str]:
    """The installed distributions ``names`` need on the GPU machine (CPython 3.12, Linux)."""
    target = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3"}
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = _normal(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        for line in importlib.metadata.requires(name) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({**target, "extra": ""}):
                todo.append(req.name)
    return seen


def test_gpu_wheel_lists_are_the_venvs_versions_and_complete():
    """tools/gpu_bench.sh carries exactly what the bench needs beyond torch, at the versions the
    CPU figures were measured with: a bump of requirements/ that is not carried here fails."""
    core = _pins("gpu-wheels.txt")
    photos = _pins("gpu-wheels-photos.txt")
    for name, version in {**core, **photos}.items():
        assert importlib.metadata.version(name) == version, name
    assert set(core) == _closure(["transformers", "tokenizers", "safetensors", "huggingface-hub"])
    needed = _closure(["pillow", "opencv-python-headless", "scikit-image"]) - set(core)
    assert set(photos) == needed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--questions", "99"], "--questions must be between 1 and 8"),
        (["--scenarios", "cameras,warp"], "unknown scenario(s) warp"),
        (["--anchors", "static,jit"], "unknown anchor(s) jit"),
        (["--cameras", "1,0"], "camera counts must be 1-64, got 0"),
        (["--cameras", "1,x"], "camera counts are integers, got 'x'"),
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
