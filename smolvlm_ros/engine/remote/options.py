"""How to reach the inference server: plain values from the settings, no HTTP library imported.

The API key is never a setting's value: ``ros2 param get`` (and every log of the parameters)
would show it. The settings name a file holding the key or an environment variable that does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_FORMATS = ("jpeg", "png")
# frame: each frame as one image (the server tiles it as its processor does); tiles: the
# engine's own tile plan, each tile and the global image sent as images of their own.
IMAGE_MODES = ("frame", "tiles")


class RemoteConfigError(ValueError):
    """The remote settings cannot work (no URL, an unreadable key file, ...)."""


@dataclass(frozen=True)
class RemoteOptions:
    """The remote backend's settings (see the schema's ``remote_*`` descriptions)."""

    url: str = ""  # base URL of the OpenAI-compatible API, e.g. http://gpu-server:8000/v1
    model: str = ""  # the server's model name; "": the first one /v1/models lists
    api_key_file: str = ""  # a file whose first line is the key
    api_key_env: str = ""  # or an environment variable holding it
    ca_bundle: str = ""  # PEM file of CAs to trust; "": the system's trust store
    image_format: str = "jpeg"
    jpeg_quality: int = 90
    image_max_edge: int = 1024  # frames are scaled down to this longest edge; 0: as they are
    image_mode: str = "frame"
    max_concurrency: int = 4  # requests in flight from this node at once
    timeout_s: float = 30.0  # a request without a deadline of its own
    retries: int = 2  # after a 5xx or a connection error (never after a 4xx)
    breaker_failures: int = 3  # failed requests in a row that open the circuit
    breaker_reset_s: float = 5.0  # open this long before one request probes the server

    def validate(self) -> RemoteOptions:
        if not self.url.strip():
            raise RemoteConfigError(
                "backend remote needs remote_url: the server's OpenAI-compatible base URL, "
                "e.g. http://gpu-server:8000/v1"
            )
        if not self.url.startswith(("http://", "https://")):
            raise RemoteConfigError(f"remote_url {self.url!r} must start with http:// or https://")
        if self.image_format not in IMAGE_FORMATS:
            raise RemoteConfigError(f"remote_image_format must be one of {IMAGE_FORMATS}")
        if self.image_mode not in IMAGE_MODES:
            raise RemoteConfigError(f"remote_images must be one of {IMAGE_MODES}")
        if self.ca_bundle and not Path(self.ca_bundle).expanduser().is_file():
            raise RemoteConfigError(f"remote_ca_bundle {self.ca_bundle!r} is not a file")
        return self

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    def api_key(self) -> str | None:
        """The key from the file or the variable the settings name; None when neither is set.
        A named source that is missing or empty is an error, not a silent anonymous request."""
        if self.api_key_file:
            path = Path(self.api_key_file).expanduser()
            try:
                key = path.read_text().strip().splitlines()[0].strip() if path.stat() else ""
            except (OSError, IndexError) as err:
                raise RemoteConfigError(
                    f"remote_api_key_file {str(path)!r} cannot be read: {err}"
                ) from None
            if not key:
                raise RemoteConfigError(f"remote_api_key_file {str(path)!r} is empty")
            return key
        if self.api_key_env:
            key = os.environ.get(self.api_key_env, "").strip()
            if not key:
                raise RemoteConfigError(
                    f"remote_api_key_env names ${self.api_key_env}, which is not set or empty"
                )
            return key
        return None
