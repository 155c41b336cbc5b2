"""A real HTTP server in the test process that answers with responses recorded from a real
llama-server (test/data/remote/, recorded by tools/record_remote.py): the remote backend's
failure handling is tested over real sockets and real HTTP, with the answers a server gives.

Each request to a path takes the next scripted reply for that path (the last one repeats);
a reply is a status, a body (JSON, or raw text such as a recorded SSE stream) and an optional
delay. Every request is kept (method, path, headers, JSON body) for the test to inspect.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "remote"


def recorded(name: str) -> Any:
    """A recorded response: parsed JSON for .json files, text for the rest."""
    text = (DATA / name).read_text(encoding="utf-8")
    return json.loads(text) if name.endswith(".json") else text


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list: JSON; str: sent as is (text/event-stream when it has data:)
    delay_s: float = 0.0  # before the reply starts
    chunk_delay_s: float = 0.0  # between SSE lines (a slow stream)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    arrived: float = 0.0  # time.monotonic()


class ScriptedServer:
    """ThreadingHTTPServer on 127.0.0.1, an ephemeral port; a context manager."""

    def __init__(self) -> None:
        self.replies: dict[str, list[Reply]] = {}
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0  # most requests being answered at once
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers (pooling is tested)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                server._answer(self, None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                server._answer(self, json.loads(raw) if raw else None)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self.replies[path] = list(replies)

    def requests_to(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path == path]

    def _answer(self, handler: BaseHTTPRequestHandler, body: Any) -> None:
        path = handler.path.removeprefix("/v1")
        with self._lock:
            self.seen.append(
                Seen(handler.command, path, dict(handler.headers), body, time.monotonic())
            )
            queue = self.replies.get(path)
            reply = (queue.pop(0) if len(queue) > 1 else queue[0]) if queue else Reply(404, {})
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(reply.delay_s)
            self._reply(handler, reply)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _reply(self, handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        try:
            if isinstance(reply.body, str) and "data:" in reply.body:
                self._stream(handler, reply)
                return
            payload = (
                reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
            ).encode()
            handler.send_response(reply.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a deadline): what a real server sees too

    @staticmethod
    def _stream(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        handler.send_response(reply.status)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for line in reply.body.splitlines(keepends=True):
            data = line.encode()
            handler.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            handler.wfile.flush()
            time.sleep(reply.chunk_delay_s)
        handler.wfile.write(b"0\r\n\r\n")

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def free_port() -> int:
    """A port nothing listens on (bound, then released): connections to it are refused."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
