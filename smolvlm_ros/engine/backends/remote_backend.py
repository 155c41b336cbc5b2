"""Backend ``remote``: the whole model on an OpenAI-compatible inference server (vLLM, SGLang,
TGI, llama-server) shared by a fleet; the node keeps intake, scheduling, prompts, provenance,
timing and diagnostics on the robot.

A server takes whole requests (images + text -> text), so this backend has no vision or
language stage: it has ``whole`` (the client), and the engine hands it
:class:`~smolvlm_ros.engine.backends.base.WholeRequest` objects. It loads no weights (the
checkpoint's processor and tokenizer are still read: tiling, token ids for streaming). Never
picked by ``auto``: it needs ``remote_url``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from smolvlm_ros.engine.backends.registry import BackendSpec, Capability, module_check, register

if TYPE_CHECKING:
    from smolvlm_ros.engine.backends.base import BackendOptions
    from smolvlm_ros.engine.remote.client import RemoteClient
    from smolvlm_ros.models.loading import LoadedModel


class RemoteBackend:
    """The server behind one client; ``device`` names the server (no credentials)."""

    name = "remote"
    dtype = "server"  # whatever the server runs; its model name and build go in provenance
    vision = None
    language = None

    def __init__(self, client: RemoteClient) -> None:
        self.whole = client
        url = urlsplit(client.options.base_url)
        self.device = f"remote:{url.scheme}://{url.hostname}{f':{url.port}' if url.port else ''}"

    def close(self) -> None:
        self.whole.close()


def _build(loaded: LoadedModel, options: BackendOptions) -> RemoteBackend:
    from smolvlm_ros.engine.remote.client import RemoteClient
    from smolvlm_ros.engine.remote.options import RemoteOptions

    return RemoteBackend(RemoteClient(options.remote or RemoteOptions()))


register(
    BackendSpec(
        name="remote",
        devices=("cpu", "cuda"),  # whatever the robot has: the model runs elsewhere
        dtypes=("float32", "bfloat16", "float16"),
        build=_build,
        capabilities=frozenset({Capability.BATCHING, Capability.STREAMING}),
        available=module_check("httpx2", "pip install -r requirements/core.txt"),
        description="an OpenAI-compatible inference server (vLLM, SGLang, TGI, llama-server)",
        needs_weights=False,
        explicit_only=True,
    )
)
