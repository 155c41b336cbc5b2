"""What the remote path costs on top of the model: image encoding + HTTP + parsing, measured
against the local torch path on the same machine and the same frames.

    .venv/bin/python tools/remote_overhead.py [--model random:tiny] [--rounds 20] [--url URL]

Without --url it serves ``--model`` with llama-server on this machine (built and converted by
smolvlm_ros.tools.llama_server), so both paths share the CPU. Per caption of exactly
``--tokens`` tokens (max = min new tokens, as the benchmark does; greedy): the local torch
engine's total, the remote engine's total, the server's own prompt + generation time
(llama-server's ``timings``), the JPEG encoding, and the overhead = remote total - server time
(encoding, HTTP both ways, JSON). Medians over ``--rounds`` captions on the sample photographs;
the two paths alternate caption by caption so load drifting on a shared machine hits both.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess

from smolvlm_ros.engine import Engine, EngineConfig, Frame
from smolvlm_ros.engine.remote.options import RemoteOptions
from smolvlm_ros.photos import PHOTO_NAMES, photo
from smolvlm_ros.tools import llama_server


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(model: str, url: str, rounds: int, tokens: int) -> dict[str, float]:
    local = Engine.from_config(EngineConfig(model, device="cpu", dtype="float32", backend="torch"))
    remote = Engine.from_config(
        EngineConfig(model, device="cpu", backend="remote", remote=RemoteOptions(url))
    )
    frames = [Frame(photo(name)) for name in PHOTO_NAMES]
    bounds = {"max_new_tokens": tokens, "min_new_tokens": tokens}
    for engine in (local, remote):  # first calls (allocations, connection) are not timed
        engine.caption(frames[0], **bounds)
    keys = ("local", "remote", "server", "encode", "local_tokens", "remote_tokens")
    rows: dict[str, list[float]] = {k: [] for k in keys}
    for i in range(rounds):
        frame = frames[i % len(frames)]
        local.clear_cache()  # every local caption encodes its frame, as every remote one does
        t = local.caption(frame, **bounds).timing
        rows["local"].append(t.total_ms)
        rows["local_tokens"].append(t.generated_tokens)
        t = remote.caption(frame, **bounds).timing
        rows["remote_tokens"].append(t.generated_tokens)
        rows["remote"].append(t.total_ms)
        rows["server"].append(t.prefill_ms + t.decode_ms)
        rows["encode"].append(t.preprocess_ms)
    medians = {k: statistics.median(v) for k, v in rows.items()}
    overheads = [r - s for r, s in zip(rows["remote"], rows["server"], strict=True)]
    medians["overhead"] = statistics.median(overheads)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random:tiny")
    parser.add_argument("--url", default="", help="a running server; default: start llama-server")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=16)
    args = parser.parse_args()
    process = None
    url = args.url
    if not url:
        port = _port()
        process = subprocess.Popen(
            llama_server.serve_command(args.model, port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        llama_server.wait_ready(f"http://127.0.0.1:{port}", 120, process)
        url = f"http://127.0.0.1:{port}/v1"
    try:
        m = measure(args.model, url, args.rounds, args.tokens)
    finally:
        if process is not None:
            process.terminate()
            process.wait(10)
    print(f"{args.model}, {args.tokens} tokens per caption, median of {args.rounds}:")
    print(f"  tokens made: local {m['local_tokens']:.0f}, server {m['remote_tokens']:.0f}")
    print(f"  local torch total      {m['local']:8.1f} ms")
    print(f"  remote total           {m['remote']:8.1f} ms")
    print(f"    server prompt + gen  {m['server']:8.1f} ms")
    print(f"    overhead             {m['overhead']:8.1f} ms  (remote total - server time)")
    print(f"      of which JPEG      {m['encode']:8.1f} ms")


if __name__ == "__main__":
    main()
