"""The plain transformers path, as its docs show it: processor(text, images) + model.generate().

Not used for inference: it is the yardstick. The parity tests check the engine against it and
the benchmark times it beside the engine, on the same weights and tiling settings.
"""

from __future__ import annotations

import PIL.Image
import torch

from smolvlm_ros.engine.engine import Engine
from smolvlm_ros.engine.types import Frame


def reference_inputs(engine: Engine, frame: Frame, text: str) -> dict:
    """The checkpoint's processor on one frame and prompt, with the engine's tiling plan."""
    plan = engine.plan(frame)
    return engine.processor(
        text=engine.chat_prompt(text),
        images=[[PIL.Image.fromarray(frame.image)]],
        size={"longest_edge": plan.longest_edge},
        do_image_splitting=plan.splitting,
        return_tensors="pt",
    )


@torch.inference_mode()
def reference_generate(
    engine: Engine, frame: Frame, text: str, max_new_tokens: int, min_new_tokens: int = 0
) -> list[int]:
    """Greedy new token ids from ``model.generate()`` on the reference inputs."""
    inputs = reference_inputs(engine, frame, text).to(engine.backend.device)
    out = engine.loaded.ensure_weights().generate(
        **inputs,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        min_new_tokens=min_new_tokens or None,
    )
    if engine.backend.device.startswith("cuda"):
        torch.cuda.synchronize()
    return out[0, inputs["input_ids"].shape[1] :].tolist()
