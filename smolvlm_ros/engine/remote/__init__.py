"""The remote engine: the model on an OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp's
llama-server), everything else on the robot. :mod:`.options` says how to reach the server,
:mod:`.mapping` turns a request into chat completions and the server's answer back (pure
functions, tested against recorded real responses), :mod:`.client` adds the HTTP behaviour a
fleet needs (pooling, deadlines, bounded concurrency, retries, a circuit breaker). The backend
that registers it is :mod:`smolvlm_ros.engine.backends.remote_backend`.
"""

from smolvlm_ros.engine.remote.options import IMAGE_FORMATS, IMAGE_MODES, RemoteOptions

__all__ = ["IMAGE_FORMATS", "IMAGE_MODES", "RemoteOptions"]
