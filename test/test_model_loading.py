"""load_model's failure modes: a hub that cannot be reached, and broken checkpoint files.

No test here leaves loopback: the "hub" is either a closed port on 127.0.0.1 or a tiny HTTP
server run by the test, and each test gets an empty Hugging Face cache of its own.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smolvlm_ros.models import ModelLoadError, get_shape, load_model
from smolvlm_ros.models.random_checkpoint import ensure_random_checkpoint

REPO_ID = "smolvlm-test/no-such-model"


class _NotFoundHandler(http.server.BaseHTTPRequestHandler):
    """Answers 404 to everything and records what was asked."""

    def _not_found(self) -> None:
        self.server.requests.append(f"{self.command} {self.path}")  # type: ignore[attr-defined]
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_POST = _not_found

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def not_found_hub() -> Iterator[http.server.ThreadingHTTPServer]:
    """A hub on loopback that knows no model; ``.requests`` lists what it received."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotFoundHandler)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound (so nobody else takes it), not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _use_hub(monkeypatch: pytest.MonkeyPatch, home: Path, endpoint: str, offline: bool) -> None:
    """Point huggingface_hub at ``endpoint`` with an HF_HOME of ``home``.

    huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE once, at import, so setting
    the environment is not enough in a running process: its constants are patched as well.
    """
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(home))
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


def _url(server: http.server.ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def _timed_failure(spec: str) -> tuple[ModelLoadError, float]:
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_model(spec, device="cpu", dtype="float32")
    elapsed = time.monotonic() - start
    print(f"load_model({spec!r}) failed after {elapsed:.2f} s: {info.value}")
    return info.value, elapsed


def test_an_unreachable_hub_fails_fast_with_one_message(monkeypatch, tmp_path, closed_port):
    _use_hub(monkeypatch, tmp_path, f"http://127.0.0.1:{closed_port}", offline=False)
    err, elapsed = _timed_failure(REPO_ID)
    message = str(err)
    assert REPO_ID in message
    assert f"not in the local Hugging Face cache ({tmp_path / 'hub'})" in message
    assert f"127.0.0.1:{closed_port} is unreachable" in message
    assert "Connect" in message  # the reason
    assert f"hf download {REPO_ID}" in message and "random:<shape>" in message
    assert elapsed < 60  # loose on purpose; retries with backoff used to take ~150 s


def test_a_missing_model_costs_one_request_and_one_message(monkeypatch, tmp_path, not_found_hub):
    _use_hub(monkeypatch, tmp_path, _url(not_found_hub), offline=False)
    err, _ = _timed_failure(REPO_ID)
    assert f"has no model {REPO_ID!r} (HTTP 404)" in str(err)
    assert 1 <= len(not_found_hub.requests) <= 2, not_found_hub.requests  # no retry storm


@pytest.mark.parametrize("weights", [True, False])
def test_a_name_that_is_no_directory_and_no_hub_id_is_one_clear_error(weights):
    """Both load paths (weights=False is the exporting backends') refuse an invalid hub id with
    a ModelLoadError naming it, not huggingface_hub's own validation error."""
    with pytest.raises(ModelLoadError, match=r"model 'no such:model' is not a valid hub id"):
        load_model("no such:model", device="cpu", dtype="float32", weights=weights)


def test_offline_mode_fails_at_once_without_asking_the_hub(monkeypatch, tmp_path, not_found_hub):
    _use_hub(monkeypatch, tmp_path, _url(not_found_hub), offline=True)
    err, _ = _timed_failure(REPO_ID)
    assert REPO_ID in str(err) and "HF_HUB_OFFLINE=1" in str(err)
    assert "needs network access or a copy in the Hugging Face cache" in str(err)
    assert not_found_hub.requests == []


@pytest.fixture(scope="module")
def tiny_checkpoint() -> Path:
    return ensure_random_checkpoint(get_shape("tiny"))


def _cache_as_hub_model(checkpoint: Path, home: Path, repo_id: str, files=None) -> Path:
    """Lay ``checkpoint`` out as huggingface_hub caches a download of ``repo_id`` at main.

    ``<HF_HOME>/hub/models--org--name/refs/main`` holds the commit, and
    ``snapshots/<commit>/`` the files (copies here; real downloads symlink them to blobs/).
    """
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    for name in files or [p.name for p in checkpoint.iterdir()]:
        shutil.copy(checkpoint / name, snapshot / name)
    return snapshot


def test_a_cached_hub_model_loads_without_network(
    monkeypatch, tmp_path, not_found_hub, tiny_checkpoint
):
    _cache_as_hub_model(tiny_checkpoint, tmp_path, REPO_ID)
    _use_hub(monkeypatch, tmp_path, _url(not_found_hub), offline=False)
    loaded = load_model(REPO_ID, device="cpu", dtype="float32")
    assert loaded.path == REPO_ID and loaded.model.config.model_type == "idefics3"
    assert not_found_hub.requests == []


def test_a_corrupt_cached_hub_model_names_the_file(
    monkeypatch, tmp_path, not_found_hub, tiny_checkpoint
):
    snapshot = _cache_as_hub_model(tiny_checkpoint, tmp_path, REPO_ID)
    weights = snapshot / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _use_hub(monkeypatch, tmp_path, _url(not_found_hub), offline=False)
    err, _ = _timed_failure(REPO_ID)
    assert str(weights) in str(err)
    assert not_found_hub.requests == []


def test_a_partly_cached_hub_model_and_no_hub(monkeypatch, tmp_path, closed_port, tiny_checkpoint):
    _cache_as_hub_model(tiny_checkpoint, tmp_path, REPO_ID, files=["config.json"])
    _use_hub(monkeypatch, tmp_path, f"http://127.0.0.1:{closed_port}", offline=False)
    err, _ = _timed_failure(REPO_ID)
    assert "is not complete in the local Hugging Face cache" in str(err)
    assert "is unreachable" in str(err)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _invalid_json(path: Path) -> None:
    path.write_text('{"model_type": "idefics3",\n  "oops"\n}')


def _other_model_type(path: Path) -> None:
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "model_type": "llama"}))


def _json_but_not_a_tokenizer(path: Path) -> None:
    path.write_text('{"foo": 1}')


Corruption = Callable[[Path], None]


@pytest.mark.parametrize(
    ("name", "corrupt", "message"),
    [
        ("model.safetensors", _truncate, "not a valid safetensors file"),
        ("model.safetensors", _garbage, "not a valid safetensors file"),
        ("model.safetensors", _empty, "not a valid safetensors file"),
        ("config.json", _invalid_json, r"not valid JSON \(line 3, column 1"),
        ("config.json", _empty, "is empty"),
        ("config.json", _other_model_type, "'llama' model; SmolVLM"),
        ("tokenizer.json", _truncate, "not valid JSON"),
        ("processor_config.json", _garbage, "checkpoint file"),
        ("tokenizer_config.json", _empty, "is empty"),
    ],
)
def test_a_corrupt_checkpoint_file_is_named(
    tmp_path, tiny_checkpoint, name: str, corrupt: Corruption, message: str
):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    corrupt(checkpoint / name)
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(str(checkpoint), device="cpu", dtype="float32")
    assert str(checkpoint / name) in str(info.value)


def test_any_from_pretrained_failure_is_a_model_load_error(tmp_path, tiny_checkpoint):
    """A file that passes the cheap check but not transformers: still one ModelLoadError."""
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    _json_but_not_a_tokenizer(checkpoint / "tokenizer.json")  # transformers raises KeyError
    with pytest.raises(ModelLoadError, match=r"could not load model .*: KeyError"):
        load_model(str(checkpoint), device="cpu", dtype="float32")


def test_an_intact_checkpoint_copy_still_loads(tmp_path, tiny_checkpoint):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    loaded = load_model(str(checkpoint), device="cpu", dtype="float32")
    assert loaded.model.config.model_type == "idefics3" and not loaded.is_random
