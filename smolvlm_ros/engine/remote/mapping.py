"""Requests and responses of the OpenAI chat-completions API, as vLLM, SGLang, TGI and
llama-server speak it: pure functions, no HTTP, tested against responses recorded from a real
llama-server (test/data/remote/).

Images travel as base64 data URLs (``image_url`` content parts, the form every one of those
servers accepts); the text part follows them, as SmolVLM's chat template puts the images first.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL.Image

from smolvlm_ros.engine.backends.base import Sampling


class ResponseError(ValueError):
    """The server answered 2xx with something that is not a chat completion."""


def encode_image(
    image: np.ndarray, fmt: str = "jpeg", quality: int = 90, max_edge: int = 0
) -> bytes:
    """An RGB uint8 frame as JPEG / PNG bytes, scaled down (never up) to ``max_edge``."""
    pil = PIL.Image.fromarray(image)
    if max_edge and max(pil.size) > max_edge:
        scale = max_edge / max(pil.size)
        size = (max(1, round(pil.width * scale)), max(1, round(pil.height * scale)))
        pil = pil.resize(size, PIL.Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if fmt == "jpeg":
        pil.save(out, format="JPEG", quality=quality)
    else:
        pil.save(out, format="PNG")
    return out.getvalue()


def data_url(data: bytes, fmt: str) -> str:
    return f"data:image/{fmt};base64,{base64.b64encode(data).decode('ascii')}"


def build_payload(
    model: str,
    image_urls: list[str],
    text: str,
    max_new_tokens: int,
    sampling: Sampling,
    min_new_tokens: int = 0,
    stream: bool = False,
) -> dict[str, Any]:
    """The chat-completions request body for one user turn: the images, then the text."""
    content: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": url}} for url in image_urls
    ]
    content.append({"type": "text", "text": text})
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_new_tokens,
        "stream": stream,
    }
    if sampling.do_sample:
        payload.update(temperature=sampling.temperature, top_p=sampling.top_p)
        if sampling.top_k:
            payload["top_k"] = sampling.top_k  # vLLM, SGLang, llama-server accept it
        if sampling.seed is not None:
            payload["seed"] = sampling.seed
    else:
        payload["temperature"] = 0.0  # greedy, as the local backends decode by default
    if min_new_tokens:
        payload["min_tokens"] = min_new_tokens  # vLLM / SGLang; others ignore it
    if stream:
        payload["stream_options"] = {"include_usage": True}  # token counts in the last chunk
    return payload


@dataclass
class Completion:
    """What a server said about one request (streamed or not)."""

    text: str = ""
    finish_reason: str = ""  # stop | length | "" (a stream cut before its end)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str = ""  # the model name the server answered with
    fingerprint: str = ""  # system_fingerprint: the server's build (llama-server: b<N>-<hash>)
    prompt_ms: float | None = None  # server-side prompt processing (llama-server `timings`)
    predicted_ms: float | None = None  # server-side generation
    chunks: int = field(default=0, repr=False)  # stream chunks with text

    @property
    def provenance(self) -> str:
        """The model as provenance reports it: name and, where the server says, its build."""
        return f"{self.model}@{self.fingerprint}" if self.fingerprint else self.model


def _meta(completion: Completion, body: dict[str, Any]) -> None:
    """Fields that may come with any body or chunk: model, build, usage, timings."""
    completion.model = body.get("model") or completion.model
    completion.fingerprint = body.get("system_fingerprint") or completion.fingerprint
    usage = body.get("usage") or {}
    if usage:
        completion.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion.completion_tokens = int(usage.get("completion_tokens") or 0)
    timings = body.get("timings") or {}
    if "prompt_ms" in timings:
        completion.prompt_ms = float(timings["prompt_ms"])
    if "predicted_ms" in timings:
        completion.predicted_ms = float(timings["predicted_ms"])


def parse_completion(body: Any) -> Completion:
    """A non-streamed chat completion."""
    try:
        choice = body["choices"][0]
        text = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ResponseError(f"not a chat completion: {str(body)[:200]}") from None
    completion = Completion(text=text, finish_reason=choice.get("finish_reason") or "")
    _meta(completion, body)
    return completion


def sse_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream's ``data:`` lines, until ``[DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators, comments (": ping"), event names
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            yield json.loads(data)
        except json.JSONDecodeError:
            raise ResponseError(f"a stream event is not JSON: {data[:200]}") from None


def apply_chunk(completion: Completion, chunk: dict[str, Any]) -> str:
    """Fold one streamed chunk into ``completion``; returns the text it added ("" if none)."""
    if "error" in chunk:
        raise ResponseError(f"the server reported an error mid-stream: {chunk['error']}")
    _meta(completion, chunk)
    piece = ""
    for choice in chunk.get("choices") or []:
        piece += (choice.get("delta") or {}).get("content") or ""
        completion.finish_reason = choice.get("finish_reason") or completion.finish_reason
    if piece:
        completion.text += piece
        completion.chunks += 1
    return piece


def first_model(body: Any) -> str:
    """The first model a ``GET /models`` answer lists (what a one-model server serves)."""
    try:
        return str(body["data"][0]["id"])
    except (KeyError, IndexError, TypeError):
        raise ResponseError(f"the server lists no model: {str(body)[:200]}") from None
