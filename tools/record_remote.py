"""Record real llama-server responses for the remote backend's core tests (test/data/remote/).

    .venv/bin/python tools/record_remote.py [--out test/data/remote]

Builds / reuses llama-server and the random:tiny GGUF (smolvlm_ros.tools.llama_server), serves
it on a free port, sends the requests the remote backend sends (built by its own mapping, a
real photograph as the image) and writes the server's answers as they came: bodies as JSON,
the stream as its raw SSE text, a refused request with its status. The requests are written
too, with each image's base64 replaced by its size, so a reader sees what was asked.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
from pathlib import Path

import httpx2

from smolvlm_ros.engine.backends.base import Sampling
from smolvlm_ros.engine.remote.mapping import build_payload, data_url, encode_image
from smolvlm_ros.photos import photo
from smolvlm_ros.tools import llama_server

MODEL = "random:tiny"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _shown(payload: dict) -> dict:
    """The payload with image data replaced by its length."""
    shown = json.loads(json.dumps(payload))
    for message in shown["messages"]:
        for part in message["content"]:
            if part["type"] == "image_url":
                url = part["image_url"]["url"]
                part["image_url"]["url"] = f"{url.split(',')[0]},<{len(url)} chars>"
    return shown


def record(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    port = _port()
    base = f"http://127.0.0.1:{port}/v1"
    process = subprocess.Popen(
        llama_server.serve_command(MODEL, port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        llama_server.wait_ready(f"http://127.0.0.1:{port}", process=process)
        image = photo("astronaut")
        url = data_url(encode_image(image, "jpeg", 90, 1024), "jpeg")
        with httpx2.Client(base_url=base, timeout=120) as http:
            models = http.get("/models")
            (out / "models.json").write_text(json.dumps(models.json(), indent=2) + "\n")
            payload = build_payload(
                MODEL, [url], "Describe this image in one sentence.", 16, Sampling()
            )
            answer = http.post("/chat/completions", json=payload)
            answer.raise_for_status()
            (out / "chat_request.json").write_text(json.dumps(_shown(payload), indent=2) + "\n")
            (out / "chat_completion.json").write_text(json.dumps(answer.json(), indent=2) + "\n")
            payload = build_payload(
                MODEL, [url], "What is in this image?", 12, Sampling(), stream=True
            )
            with http.stream("POST", "/chat/completions", json=payload) as stream:
                stream.raise_for_status()
                text = "".join(stream.iter_text())
            (out / "chat_stream.sse").write_text(text)
            # A request the server must refuse: an image that is not an image.
            bad = build_payload(
                MODEL, ["data:image/jpeg;base64,bm90IGFuIGltYWdl"], "x", 4, Sampling()
            )
            refused = http.post("/chat/completions", json=bad)
            body = {"status": refused.status_code, "body": refused.json()}
            (out / "refused.json").write_text(json.dumps(body, indent=2) + "\n")
        print(f"recorded into {out}")
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("test/data/remote"))
    record(parser.parse_args().out)


if __name__ == "__main__":
    main()
