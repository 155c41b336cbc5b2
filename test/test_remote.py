"""The remote backend without a model server: the request/response mapping against responses
recorded from a real llama-server (test/data/remote/, tools/record_remote.py), and failure
handling (retries, refusals, the circuit breaker, deadlines) over real HTTP against a server in
this process that answers with those recordings (test/remote_server.py). The engine on top of
it: provenance, timing, streaming, concurrent batches, typed questions refused.

The live server itself (llama-server serving random:tiny, the node over DDS) is test/
test_remote_server.py, ``make test-remote``.
"""

from __future__ import annotations

import base64
import io
import time

import numpy as np
import PIL.Image
import pytest
from remote_server import Reply, ScriptedServer, free_port, recorded

from smolvlm_ros.engine import Engine, EngineConfig, TilingConfig
from smolvlm_ros.engine.answers import AnswerSpec, AnswerType
from smolvlm_ros.engine.backends.base import Sampling, WholeRequest
from smolvlm_ros.engine.backends.registry import BackendError, Capability, choose
from smolvlm_ros.engine.remote.client import (
    RemoteClient,
    RemoteError,
    RequestRefused,
    ServerUnavailable,
)
from smolvlm_ros.engine.remote.mapping import (
    Completion,
    ResponseError,
    apply_chunk,
    build_payload,
    data_url,
    encode_image,
    first_model,
    parse_completion,
    sse_events,
)
from smolvlm_ros.engine.remote.options import RemoteConfigError, RemoteOptions
from smolvlm_ros.engine.types import Frame
from smolvlm_ros.settings.schema import Settings, SettingsError

COMPLETION = "/chat/completions"


def _decode(url: str) -> PIL.Image.Image:
    header, data = url.split(",", 1)
    assert header in ("data:image/jpeg;base64", "data:image/png;base64")
    return PIL.Image.open(io.BytesIO(base64.b64decode(data)))


# -- mapping ---------------------------------------------------------------------------------


def test_images_travel_as_data_urls_scaled_down_never_up(photos):
    image = photos["astronaut"]  # 640 x 480
    small = _decode(data_url(encode_image(image, "jpeg", 90, 320), "jpeg"))
    assert (small.format, small.size) == ("JPEG", (320, 240))
    same = _decode(data_url(encode_image(image, "png", max_edge=2048), "png"))
    assert (same.format, same.size) == ("PNG", (640, 480))
    assert np.array_equal(np.asarray(same), image)  # PNG is lossless
    low, high = (len(encode_image(image, "jpeg", q)) for q in (20, 95))
    assert low < high


def test_payload_puts_the_images_first_then_the_text():
    payload = build_payload("m", ["data:a", "data:b"], "What?", 7, Sampling())
    content = payload["messages"][0]["content"]
    assert [p["type"] for p in content] == ["image_url", "image_url", "text"]
    assert content[-1]["text"] == "What?"
    assert (payload["model"], payload["max_tokens"], payload["temperature"]) == ("m", 7, 0.0)
    assert payload["stream"] is False and "stream_options" not in payload
    sampled = build_payload(
        "m", [], "x", 3, Sampling(True, 0.7, 0.9, 20, seed=5), min_new_tokens=3, stream=True
    )
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"]) == (0.7, 0.9, 20)
    assert (sampled["seed"], sampled["min_tokens"]) == (5, 3)
    assert sampled["stream_options"] == {"include_usage": True}


def test_recorded_request_is_what_the_mapping_builds():
    """The recording was made with this mapping: the request the server answered."""
    request = recorded("chat_request.json")
    assert request["messages"][0]["content"][0]["image_url"]["url"].startswith(
        "data:image/jpeg;base64,<"
    )
    assert request["messages"][0]["content"][-1] == {
        "type": "text",
        "text": "Describe this image in one sentence.",
    }


def test_a_recorded_completion_parses():
    body = recorded("chat_completion.json")
    completion = parse_completion(body)
    assert completion.text == body["choices"][0]["message"]["content"]
    assert completion.finish_reason == body["choices"][0]["finish_reason"]
    assert completion.finish_reason in ("stop", "length")
    assert completion.prompt_tokens == body["usage"]["prompt_tokens"] > 0
    assert completion.completion_tokens == body["usage"]["completion_tokens"] > 0
    assert completion.model == body["model"]
    # llama-server's own timings and build
    assert completion.prompt_ms == body["timings"]["prompt_ms"]
    assert completion.predicted_ms == body["timings"]["predicted_ms"]
    assert completion.fingerprint and completion.provenance.endswith("@" + completion.fingerprint)


def test_a_recorded_stream_parses_piece_by_piece():
    completion, pieces = Completion(), []
    for chunk in sse_events(recorded("chat_stream.sse").splitlines()):
        piece = apply_chunk(completion, chunk)
        if piece:
            pieces.append(piece)
    assert len(pieces) > 1 and completion.text == "".join(pieces)
    assert completion.finish_reason in ("stop", "length")
    assert completion.completion_tokens > 0 and completion.prompt_tokens > 0
    assert completion.model


def test_recorded_model_list_and_malformed_bodies():
    assert first_model(recorded("models.json")) == recorded("models.json")["data"][0]["id"]
    with pytest.raises(ResponseError):
        first_model({"data": []})
    with pytest.raises(ResponseError):
        parse_completion({"object": "error"})
    with pytest.raises(ResponseError):
        list(sse_events(["data: {not json"]))
    with pytest.raises(ResponseError, match="mid-stream"):
        apply_chunk(Completion(), {"error": {"message": "boom"}})


# -- options ---------------------------------------------------------------------------------


def test_api_key_comes_from_a_file_or_the_environment(tmp_path, monkeypatch):
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    assert RemoteOptions("http://h/v1", api_key_file=str(key_file)).api_key() == "sk-from-file"
    monkeypatch.setenv("FLEET_KEY", "sk-from-env")
    assert RemoteOptions("http://h/v1", api_key_env="FLEET_KEY").api_key() == "sk-from-env"
    assert RemoteOptions("http://h/v1").api_key() is None
    with pytest.raises(RemoteConfigError, match="cannot be read"):
        RemoteOptions("http://h/v1", api_key_file=str(tmp_path / "missing")).api_key()
    with pytest.raises(RemoteConfigError, match="not set"):
        RemoteOptions("http://h/v1", api_key_env="NO_SUCH_VARIABLE_HERE").api_key()


def test_settings_need_a_url_for_remote_and_hold_no_key():
    with pytest.raises(SettingsError, match="remote_url"):
        Settings(backend="remote").validate()
    with pytest.raises(SettingsError, match="http"):
        Settings(backend="remote", remote_url="gpu-server:8000").validate()
    settings = Settings(backend="remote", remote_url="http://gpu:8000/v1", remote_retries=5)
    config = settings.validate().engine_config()
    assert config.remote.url == "http://gpu:8000/v1" and config.remote.retries == 5
    assert not any("key" in name and "file" not in name and "env" not in name
                   for name in vars(settings))  # fmt: skip


def test_auto_never_picks_remote():
    assert choose("auto", "cpu").name != "remote"
    remote = choose("remote", "cpu")
    assert remote.supports(Capability.STREAMING) and not remote.supports(Capability.SCORING)
    with pytest.raises(BackendError):
        choose("remote", "npu")


# -- the client over real HTTP ---------------------------------------------------------------


def _client(url: str, **options) -> RemoteClient:
    return RemoteClient(RemoteOptions(url, **{"breaker_reset_s": 60.0, **options}))


def _request(**fields) -> WholeRequest:
    image = np.full((48, 64, 3), 90, np.uint8)
    return WholeRequest(images=(image,), text="Describe.", max_new_tokens=8, **fields)


@pytest.fixture
def server():
    with ScriptedServer() as srv:
        srv.script("/models", Reply(body=recorded("models.json")))
        srv.script(COMPLETION, Reply(body=recorded("chat_completion.json")))
        yield srv


def test_answer_carries_the_servers_text_model_counts_and_timings(server, tmp_path):
    body = recorded("chat_completion.json")
    key_file = tmp_path / "key"
    key_file.write_text("sk-test")
    client = _client(server.url, api_key_file=str(key_file))
    (answer,) = client.run([_request()])
    assert answer.text == body["choices"][0]["message"]["content"].strip()
    assert answer.model.startswith(body["model"])
    assert answer.prompt_tokens == body["usage"]["prompt_tokens"]
    assert answer.generated_tokens == body["usage"]["completion_tokens"]
    assert answer.prefill_s == pytest.approx(body["timings"]["prompt_ms"] / 1000)
    assert answer.decode_s == pytest.approx(body["timings"]["predicted_ms"] / 1000)
    (sent,) = server.requests_to(COMPLETION)
    assert sent.headers["Authorization"] == "Bearer sk-test"
    assert sent.body["model"] == recorded("models.json")["data"][0]["id"]  # asked the server
    assert len(server.requests_to("/models")) == 1
    client.run([_request()])
    assert len(server.requests_to("/models")) == 1  # asked once


def test_5xx_is_retried_4xx_is_not(server):
    refused = recorded("refused.json")
    assert 400 <= refused["status"] < 500  # what llama-server said to a broken image
    server.script(
        COMPLETION, Reply(503, {"error": "loading"}), Reply(body=recorded("chat_completion.json"))
    )
    client = _client(server.url, model="m")
    (answer,) = client.run([_request()])
    assert answer.text and len(server.requests_to(COMPLETION)) == 2
    server.script(COMPLETION, Reply(refused["status"], refused["body"]))
    with pytest.raises(RequestRefused, match=str(refused["status"])):
        client.run([_request()])
    assert len(server.requests_to(COMPLETION)) == 3  # one try, no retry
    assert client.problem() is None  # a refused request is no sign of a server down


def test_the_circuit_opens_while_the_server_is_down_and_closes_when_it_is_back(server):
    clock = [1000.0]
    dead = f"http://127.0.0.1:{free_port()}/v1"
    client = RemoteClient(
        RemoteOptions(dead, model="m", retries=1, breaker_failures=2, breaker_reset_s=5.0),
        clock=lambda: clock[0],
    )
    for _ in range(2):
        with pytest.raises(RemoteError, match="ConnectError"):
            client.run([_request()])
    assert "server unavailable" in client.problem()
    with pytest.raises(ServerUnavailable):  # fails at once: no backlog of doomed requests
        client.run([_request()])
    # The server comes back (same client, pointed at the live one), the reset time passes:
    client._http.base_url = server.url
    with pytest.raises(ServerUnavailable):
        client.run([_request()])  # still open: no probe before breaker_reset_s
    assert not server.requests_to(COMPLETION)
    clock[0] += 5.0
    (answer,) = client.run([_request()])  # the probe
    assert answer.text and client.problem() is None
    client.run([_request()])
    assert len(server.requests_to(COMPLETION)) == 2


def test_a_failed_probe_opens_the_circuit_again(server):
    clock = [0.0]
    client = RemoteClient(
        RemoteOptions(server.url, model="m", retries=0, breaker_failures=1, breaker_reset_s=1.0),
        clock=lambda: clock[0],
    )
    server.script(COMPLETION, Reply(500, {"error": "down"}))
    with pytest.raises(RemoteError, match="500"):
        client.run([_request()])
    clock[0] += 1.0
    with pytest.raises(RemoteError, match="500"):  # the probe went out and failed
        client.run([_request()])
    with pytest.raises(ServerUnavailable):
        client.run([_request()])
    assert len(server.requests_to(COMPLETION)) == 2


def test_a_slow_server_ends_at_the_deadline(server):
    server.script(COMPLETION, Reply(body=recorded("chat_completion.json"), delay_s=5.0))
    client = _client(server.url, model="m", retries=3)
    started = time.monotonic()
    with pytest.raises(RemoteError, match="Timeout"):
        client.run([_request(deadline=time.monotonic() + 0.5)])
    assert time.monotonic() - started < 5.0  # did not wait for the server's answer
    assert len(server.requests_to(COMPLETION)) == 1  # no retry past the deadline


def test_streaming_passes_each_piece_on_and_can_be_cancelled(server):
    stream = recorded("chat_stream.sse")
    server.script(COMPLETION, Reply(body=stream))
    client = _client(server.url, model="m")
    pieces: list[str] = []
    (answer,) = client.run([_request(on_text=pieces.append)])
    assert server.requests_to(COMPLETION)[0].body["stream"] is True
    expected = Completion()
    for chunk in sse_events(stream.splitlines()):
        apply_chunk(expected, chunk)
    assert "".join(pieces) == expected.text and answer.text == expected.text.strip()
    assert answer.finish_reason == expected.finish_reason
    pieces.clear()
    server.script(COMPLETION, Reply(body=stream, chunk_delay_s=0.05))
    (cut,) = client.run([_request(on_text=pieces.append, should_stop=lambda: bool(pieces))])
    assert cut.finish_reason == "cancelled" and len(pieces) == 1


def test_a_batch_goes_out_concurrently_within_the_bound(server):
    server.script(COMPLETION, Reply(body=recorded("chat_completion.json"), delay_s=0.3))
    client = _client(server.url, model="m", max_concurrency=2)
    answers = client.run([_request() for _ in range(4)])
    assert len(answers) == 4 and all(a.text for a in answers)
    assert len(server.requests_to(COMPLETION)) == 4
    assert server.max_in_flight == 2  # together, but never more than the bound


# -- the engine on the remote backend --------------------------------------------------------


@pytest.fixture
def remote_engine(server):
    return Engine.from_config(
        EngineConfig(
            "random:tiny", device="cpu", backend="remote", remote=RemoteOptions(server.url)
        )
    )


def test_engine_results_carry_the_servers_provenance_and_timing(remote_engine, photos):
    body = recorded("chat_completion.json")
    frame = Frame(photos["coffee"], camera="/cam", stamp_ns=42, frame_id="optical")
    result = remote_engine.caption(frame)
    assert result.text == body["choices"][0]["message"]["content"].strip()
    assert result.backend == "remote" and result.device.startswith("remote:http://127.0.0.1:")
    assert result.model.startswith(body["model"]) and result.dtype == "server"
    assert (result.camera, result.stamp_ns, result.frame_id) == ("/cam", 42, "optical")
    assert result.finish_reason == body["choices"][0]["finish_reason"]
    t = result.timing
    assert t.prefill_ms == pytest.approx(body["timings"]["prompt_ms"])
    assert t.decode_ms == pytest.approx(body["timings"]["predicted_ms"])
    assert t.generated_tokens == body["usage"]["completion_tokens"]
    assert t.total_ms >= t.preprocess_ms > 0  # the JPEG encoding, here


def test_engine_streams_token_ids_that_decode_to_the_text(remote_engine, server, photos):
    server.script(COMPLETION, Reply(body=recorded("chat_stream.sse")))
    tokens: list[int] = []
    result = remote_engine.ask(Frame(photos["rocket"]), "What is it?", on_token=tokens.append)
    assert tokens
    assert remote_engine.tokenizer.decode(tokens).strip() == result.text


def test_engine_batches_go_out_together_and_typed_questions_are_refused(remote_engine, server):
    frames = [Frame(np.full((60, 80, 3), v, np.uint8), camera=f"/c{v}") for v in (10, 20, 30)]
    results = remote_engine.caption_batch(frames)
    assert [r.camera for r in results] == ["/c10", "/c20", "/c30"]
    assert len(server.requests_to(COMPLETION)) == 3
    with pytest.raises(ValueError, match="remote cannot answer"):
        remote_engine.ask(frames[0], "Is it dark?", AnswerSpec(AnswerType.YES_NO))


def test_engine_sends_its_own_tiles_when_asked(server, photos):
    engine = Engine.from_config(
        EngineConfig(
            "random:tiny",
            device="cpu",
            backend="remote",
            tiling=TilingConfig(image_splitting=True),
            remote=RemoteOptions(server.url, image_mode="tiles", image_format="png"),
        )
    )
    frame = Frame(photos["astronaut"])
    result = engine.caption(frame)
    plan = engine.plan(frame)
    assert plan.rows and result.num_images == plan.num_images == plan.rows * plan.cols + 1
    (sent,) = server.requests_to(COMPLETION)
    images = [_decode(p["image_url"]["url"]) for p in sent.body["messages"][0]["content"][:-1]]
    assert len(images) == plan.num_images
    assert images[-1].size == (640, 480)  # the global image: the whole frame
    assert images[0].size == (640 // plan.cols, 480 // plan.rows)


def test_the_remote_profile_is_valid_on_top_of_the_defaults():
    import yaml
    from remote_server import DATA

    config = DATA.parents[2] / "config"
    base = yaml.safe_load((config / "vlm.yaml").read_text())["/**"]["ros__parameters"]
    profile = yaml.safe_load((config / "remote.yaml").read_text())["/**"]["ros__parameters"]
    settings = Settings.from_mapping({**base, **profile})
    assert settings.backend == "remote" and settings.remote().url.startswith("http")
