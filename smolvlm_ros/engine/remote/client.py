"""The HTTP side of the remote backend: one pooled connection set per node, bounded
concurrency, per-request deadlines, retries on 5xx / connection errors only, and a circuit
breaker so that a node whose server is down fails each request at once (no frame backlog: the
scheduler keeps only the latest frame, and a caption that fails fast frees the worker) and
reports it in /diagnostics until the server is back.

httpx2 (already in every install through huggingface_hub) does the HTTP: pooling, timeouts,
TLS with verification on, streaming.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2

from smolvlm_ros.engine.backends.base import WholeAnswer, WholeRequest
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
from smolvlm_ros.engine.remote.options import RemoteOptions

BACKOFF_FIRST_S = 0.2  # first retry after this, doubling
CONNECT_TIMEOUT_S = 3.0  # a server that does not accept within this is down


class RemoteError(RuntimeError):
    """The server could not answer (after retries), or refused the request."""


class ServerUnavailable(RemoteError):
    """The circuit is open: the server failed recently, requests fail at once until it has
    been given ``breaker_reset_s`` to come back."""


class RequestRefused(RemoteError):
    """A 4xx: the request itself is wrong (bad key, unknown model, too long); never retried."""


class DeadlinePassed(RemoteError, TimeoutError):
    """The request's deadline passed before it could be sent (not the server's fault)."""


class _Retryable(Exception):
    """A 5xx or a connection failure: worth another try."""


class CircuitBreaker:
    """closed -> (``failures`` in a row) -> open -> (``reset_s`` later) half-open: one request
    probes; its success closes the circuit, its failure opens it again."""

    def __init__(
        self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.failures, self.reset_s, self._clock = max(1, failures), reset_s, clock
        self._lock = threading.Lock()
        self._streak = 0
        self._opened_at: float | None = None
        self._probing = False
        self.last_error = ""

    def allow(self) -> None:
        """Raise :class:`ServerUnavailable` unless a request may go out now."""
        with self._lock:
            if self._opened_at is None:
                return
            waited = self._clock() - self._opened_at
            if waited >= self.reset_s and not self._probing:
                self._probing = True  # this request is the probe
                return
            raise ServerUnavailable(
                f"server unavailable (circuit open {waited:.1f} s, next probe after "
                f"{self.reset_s:g} s): {self.last_error}"
            )

    def success(self) -> None:
        with self._lock:
            self._streak, self._opened_at, self._probing = 0, None, False

    def release(self) -> None:
        """A request that says nothing about the server ended: a probe may go out again."""
        with self._lock:
            self._probing = False

    def failure(self, error: str) -> None:
        with self._lock:
            self.last_error = error
            self._streak += 1
            if self._probing or self._streak >= self.failures:
                self._opened_at, self._probing = self._clock(), False

    def problem(self) -> str | None:
        with self._lock:
            if self._opened_at is None:
                return None
            down_s = self._clock() - self._opened_at
            return f"server unavailable for {down_s:.1f} s: {self.last_error}"


class RemoteClient:
    """Chat completions with images against one OpenAI-compatible server."""

    def __init__(self, options: RemoteOptions, clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options.validate()
        headers = {}
        key = options.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        verify: Any = str(Path(options.ca_bundle).expanduser()) if options.ca_bundle else True
        self._http = httpx2.Client(
            base_url=options.base_url,
            headers=headers,
            verify=verify,
            timeout=httpx2.Timeout(options.timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx2.Limits(
                max_connections=options.max_concurrency,
                max_keepalive_connections=options.max_concurrency,
            ),
        )
        self._slots = threading.BoundedSemaphore(options.max_concurrency)
        self.breaker = CircuitBreaker(options.breaker_failures, options.breaker_reset_s, clock)
        self._clock = clock
        self._model = options.model

    def close(self) -> None:
        self._http.close()

    def problem(self) -> str | None:
        return self.breaker.problem()

    # -- the server's model ---------------------------------------------------------------

    def model(self, deadline: float | None = None) -> str:
        """The model to ask for: the setting, else the first the server lists (asked once)."""
        if not self._model:
            body = self._send("GET", "/models", None, deadline)
            self._model = first_model(body)
        return self._model

    # -- requests -------------------------------------------------------------------------

    def run(self, requests: list[WholeRequest]) -> list[WholeAnswer]:
        """Answers in order; several requests go out together, at most ``max_concurrency`` at
        once. Daemon threads, not a pool: a node stopped mid-batch must not wait at exit for
        answers nobody will read."""
        if len(requests) == 1:
            return [self.run_one(requests[0])]
        answers: list[WholeAnswer | None] = [None] * len(requests)
        errors: list[BaseException | None] = [None] * len(requests)

        def work(index: int) -> None:
            try:
                answers[index] = self.run_one(requests[index])
            except BaseException as err:  # passed on to the caller below
                errors[index] = err

        threads = [
            threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(requests))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for error in errors:
            if error is not None:
                raise error
        return answers  # type: ignore[return-value]

    def run_one(self, request: WholeRequest) -> WholeAnswer:
        self.breaker.allow()  # fail at once while the server is known to be down
        t0 = time.perf_counter()
        o = self.options
        urls = [
            data_url(
                encode_image(image, o.image_format, o.jpeg_quality, o.image_max_edge),
                o.image_format,
            )
            for image in request.images
        ]
        encode_s = time.perf_counter() - t0
        started = time.perf_counter()
        stream = request.on_text is not None
        try:
            with self._slots:
                payload = build_payload(
                    self.model(request.deadline), urls, request.text, request.max_new_tokens,
                    request.sampling, request.min_new_tokens, stream,
                )  # fmt: skip
                if stream:
                    completion, stopped = self._stream(payload, request)
                else:
                    completion = parse_completion(
                        self._send("POST", "/chat/completions", payload, request.deadline)
                    )
                    stopped = ""
        except RequestRefused:
            self.breaker.success()  # the server is up and answered; the request was wrong
            raise
        except DeadlinePassed:
            self.breaker.release()  # says nothing about the server
            raise
        except (RemoteError, ResponseError) as err:
            self.breaker.failure(str(err))
            raise
        except BaseException:
            self.breaker.release()  # e.g. an exception from on_text: not the server's
            raise
        self.breaker.success()
        round_trip_s = time.perf_counter() - started
        prefill_s = (completion.prompt_ms or 0.0) / 1000.0
        decode_s = (
            completion.predicted_ms / 1000.0
            if completion.predicted_ms is not None
            else round_trip_s
        )
        return WholeAnswer(
            text=completion.text.strip(),
            finish_reason=stopped or completion.finish_reason or "length",
            model=completion.provenance,
            prompt_tokens=completion.prompt_tokens,
            generated_tokens=completion.completion_tokens or completion.chunks,
            encode_s=encode_s,
            prefill_s=prefill_s,
            decode_s=decode_s,
            round_trip_s=round_trip_s,
        )

    def _timeout(self, deadline: float | None) -> httpx2.Timeout:
        remaining = self.options.timeout_s
        if deadline is not None:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise DeadlinePassed("the request's deadline passed before it was sent")
        return httpx2.Timeout(remaining, connect=min(CONNECT_TIMEOUT_S, remaining))

    def _attempts(self, deadline: float | None):
        """Yield attempt numbers while retries remain and the deadline allows a backoff."""
        for attempt in range(self.options.retries + 1):
            if attempt:
                wait = BACKOFF_FIRST_S * 2 ** (attempt - 1)
                if deadline is not None and self._clock() + wait >= deadline:
                    return
                time.sleep(wait)
            yield attempt

    def _send(self, method: str, path: str, payload: dict | None, deadline: float | None) -> Any:
        last = ""
        for _ in self._attempts(deadline):
            try:
                response = self._http.request(
                    method, path, json=payload, timeout=self._timeout(deadline)
                )
                self._check(response)
                return response.json()
            except _Retryable as err:
                last = str(err)
            except httpx2.TransportError as err:
                last = f"{type(err).__name__}: {err or 'no response'}"
            except ValueError as err:  # a 2xx body that is not JSON
                raise RemoteError(f"the server's answer is not JSON: {err}") from None
        raise RemoteError(f"{method} {self.options.base_url}{path} failed: {last}")

    @staticmethod
    def _check(response: httpx2.Response) -> None:
        if response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}: {response.text[:200]}")
        if response.status_code >= 400:
            raise RequestRefused(f"HTTP {response.status_code}: {response.text[:300]}")

    def _stream(self, payload: dict, request: WholeRequest) -> tuple[Completion, str]:
        """A streamed completion; each text piece goes to ``request.on_text`` as it comes.
        Retried only until the first piece arrived (after that, retrying would repeat text).
        Cancel or deadline close the stream (the server stops generating)."""
        last = ""
        for _ in self._attempts(request.deadline):
            completion = Completion()
            try:
                with self._http.stream(
                    "POST",
                    "/chat/completions",
                    json=payload,
                    timeout=self._timeout(request.deadline),
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        self._check(response)
                    for chunk in sse_events(response.iter_lines()):
                        piece = apply_chunk(completion, chunk)
                        if piece:
                            request.on_text(piece)  # type: ignore[misc]
                        if request.should_stop is not None and request.should_stop():
                            return completion, "cancelled"
                        if request.deadline is not None and self._clock() > request.deadline:
                            return completion, "deadline"
                return completion, ""
            except _Retryable as err:
                last = str(err)
            except (httpx2.TransportError, ResponseError) as err:
                if completion.chunks:
                    raise RemoteError(
                        f"the stream broke after {completion.chunks} pieces: {err}"
                    ) from None
                last = f"{type(err).__name__}: {err or 'no response'}"
        raise RemoteError(f"POST {self.options.base_url}/chat/completions failed: {last}")
