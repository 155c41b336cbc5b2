"""vlm_node with faults injected into its language stage: the launcher of the fault tests.

FAULT INJECTION, not a mock: the node, the random:tiny model and the torch backend all run for
real. This wrapper only makes the backend's language stage fail the way real backends fail
when the prompt (a question, or the caption_prompt parameter) contains a trigger word:

    FAULT_RAISE  a RuntimeError from the backend (a driver error, a bad kernel)
    FAULT_OOM    torch.OutOfMemoryError, as CUDA raises it
    FAULT_HANG   the call never returns (a wedged driver or NPU)
    FAULT_KILL   SystemExit, which passes every ``except Exception`` and ends the worker thread

Run as ``python test/faulty_node.py --ros-args ...``, exactly like ``python -m smolvlm_ros.node``.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the source tree, like -m

import torch

from smolvlm_ros.engine import Engine
from smolvlm_ros.engine.backends.base import GenerationRequest


class FaultInjectingLanguageStage:
    """Wraps a real language stage; fails on a trigger word, else passes the call through."""

    def __init__(self, inner: Any, tokenizer: Any) -> None:
        self.inner = inner
        self.tokenizer = tokenizer

    def generate(self, request: GenerationRequest):
        prompts = self.tokenizer.batch_decode(request.input_ids)
        if any("FAULT_RAISE" in p for p in prompts):
            raise RuntimeError("injected backend failure")
        if any("FAULT_OOM" in p for p in prompts):
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (injected)"
            )
        if any("FAULT_HANG" in p for p in prompts):
            threading.Event().wait()  # never returns
        if any("FAULT_KILL" in p for p in prompts):
            raise SystemExit("injected thread-killing exit")
        return self.inner.generate(request)

    def __getattr__(self, name: str) -> Any:  # prefill, eos_ids, ...: the real stage's
        return getattr(self.inner, name)


_real_from_config = Engine.from_config.__func__


def _from_config_with_faults(cls, config) -> Engine:
    engine = _real_from_config(cls, config)
    engine.backend.language = FaultInjectingLanguageStage(engine.backend.language, engine.tokenizer)
    return engine


Engine.from_config = classmethod(_from_config_with_faults)

if __name__ == "__main__":
    from smolvlm_ros.node import main

    sys.exit(main())
