"""The outside anchor for tools/cpu_runtimes.py: optimum-intel's OpenVINO export and generate().

Runs in .venv-openvino (optimum-intel 2.2 needs transformers < 5; `make openvino-anchor`):

    .venv-openvino/bin/python tools/optimum_anchor.py EXPORT_DIR INPUTS.npz THREADS TOKENS REPEATS

The inputs (input_ids, attention_mask, pixel_values, pixel_attention_mask) are the reference
processor's, made by tools/cpu_runtimes.py in the main venv (transformers 4.57 cannot read
the tokenizer that 5.x saved): the same tensors every other runner starts from. Prints one JSON
line: medians of prefill (vision + prefill + first token), decode per token, end to end, peak
RSS, the tokens of the last run.
"""

from __future__ import annotations

import json
import statistics
import sys
import time


def peak_rss_mb() -> float:
    """This process's high-water RSS since its exec (VmHWM; ru_maxrss would carry the parent's
    over fork + exec)."""
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def main() -> None:
    export, inputs_file, threads, tokens, repeats = sys.argv[1:6]
    threads, tokens, repeats = int(threads), int(tokens), int(repeats)
    import numpy as np
    import torch
    from optimum.intel import OVModelForVisualCausalLM
    from transformers.generation.streamers import BaseStreamer

    torch.set_num_threads(threads)
    started = time.perf_counter()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    model = OVModelForVisualCausalLM.from_pretrained(export, ov_config=config)
    load_s = time.perf_counter() - started
    inputs = {k: torch.from_numpy(v) for k, v in np.load(inputs_file).items()}

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.calls: list[float] = []

        def put(self, value) -> None:
            self.calls.append(time.perf_counter())

        def end(self) -> None:
            pass

    rows, made = [], []
    for index in range(repeats + 1):  # the first is the warm-up
        clock = Clock()
        t0 = time.perf_counter()
        out = model.generate(
            **inputs,
            do_sample=False,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            streamer=clock,
        )
        end = time.perf_counter()
        first = clock.calls[1]
        made = out[0, inputs["input_ids"].shape[1] :].tolist()
        if index:
            rows.append(
                {
                    "prefill_s": first - t0,
                    "decode_token_s": (end - first) / max(1, tokens - 1),
                    "e2e_s": end - t0,
                }
            )
    result = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    result.update(
        load_s=load_s,
        peak_rss_mb=peak_rss_mb(),
        tokens=made,
        prompt_tokens=int(inputs["input_ids"].shape[1]),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
