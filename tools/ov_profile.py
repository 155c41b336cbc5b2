"""Where the openvino backend's time goes: per-kernel times of one export's graphs (issue 13).

    .venv/bin/python tools/ov_profile.py [--model random:256m] [--quantization int8]
        [--precision f32] [--prompt 100] [--steps 32] [--property KEY=VALUE ...] [--vision]

Compiles the export's decoder (or, with ``--vision``, its vision graph) alone, with the
backend's own properties for it (``compile_config``) at ``--precision`` and OpenVINO's per-node
counters on, runs a ``--prompt``-token prefill, one untimed decode step (it packs the weights
for the one-row kernels) and ``--steps`` timed ones (or, after one untimed tile, five 512 px
tiles), and prints the median step time, the time outside any kernel (wall minus kernels: the
runtime's own work per call) and the kernels' mean time per step, summed per kind (e.g.
``FullyConnectedCompressed brgemm_avx512_f32``, ``ScaledDotProductAttentionWithKVCache``).
OpenVINO reports each node's mean over every call since compile, the prompt included; each
call's own share is taken from it (:class:`KernelClock`).
``--property`` passes any CPU plugin property (``KV_CACHE_PRECISION=f16``,
``DYNAMIC_QUANTIZATION_GROUP_SIZE=0``...) to try a setting before the backend adopts it. The
counters add a little time per node: compare kernels within one run, and end-to-end speed with
``tools/cpu_runtimes.py``.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout, not an installed copy


class KernelClock:
    """Each call's own time per kernel kind. OpenVINO's CPU plugin reports, per node, its mean
    time over every call since compile (the prompt and the untimed calls included), so a call's
    own time is the growth of mean x calls: :meth:`call` must follow every inference."""

    def __init__(self, request) -> None:
        self.request = request
        self.calls = 0
        self.totals: dict[str, float] = {}

    def call(self) -> collections.Counter:
        self.calls += 1
        kernels: collections.Counter = collections.Counter()
        for info in self.request.profiling_info:
            total = info.real_time.total_seconds() * 1e3 * self.calls
            kernels[(info.node_type, info.exec_type)] += total - self.totals.get(info.node_name, 0)
            self.totals[info.node_name] = total
        return kernels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:256m")
    parser.add_argument("--quantization", default="int8", choices=("none", "int8", "int4"))
    parser.add_argument("--precision", default="f32", choices=("f32", "bf16"))
    parser.add_argument("--prompt", type=int, default=100, help="prefill length (tokens)")
    parser.add_argument("--steps", type=int, default=32, help="decode steps timed")
    parser.add_argument("--threads", type=int, default=0, help="0: the cores this process may use")
    parser.add_argument("--property", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--vision", action="store_true", help="the vision graph instead")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    for option in ("prompt", "steps"):
        if getattr(args, option) <= 0:
            parser.error(f"--{option} must be positive, got {getattr(args, option)}")

    import numpy as np
    import openvino as ov

    from smolvlm_ros.engine.backends.openvino_backend import compile_config, cpu_threads
    from smolvlm_ros.engine.export import ensure_export
    from smolvlm_ros.models.loading import load_model

    loaded = load_model(args.model, "cpu", "float32", weights=False)
    export = ensure_export(loaded, args.quantization)
    # the backend's own properties for this stage, with the precision asked for
    dtype = {"f32": "float32", "bf16": "bfloat16"}[args.precision]
    stage = "vision" if args.vision else "decoder"
    config = {
        **compile_config(dtype, args.quantization, cpu_threads(args.threads), stage),
        "INFERENCE_PRECISION_HINT": args.precision,
        "PERF_COUNT": True,
    }
    for item in args.property:
        key, equals, value = item.partition("=")
        if not (key and equals and value):
            parser.error(f"--property takes KEY=VALUE, got {item!r}")
        config[key] = value
    core = ov.Core()
    graph = export.vision_xml if args.vision else export.decoder_xml
    request = core.compile_model(core.read_model(graph), "CPU", config).create_infer_request()
    clock = KernelClock(request)
    kernels: collections.Counter = collections.Counter()  # summed over the timed calls
    times, outside = [], []  # ms: wall per call; wall minus its kernels (the runtime's own work)

    def infer(feed: dict, timed: bool = True) -> None:
        """One inference, its kernels read (every call: see KernelClock); kept if ``timed``."""
        started = time.perf_counter()
        request.infer(feed)
        wall = (time.perf_counter() - started) * 1e3
        call = clock.call()
        if timed:
            kernels.update(call)
            times.append(wall)
            outside.append(wall - sum(call.values()))

    if args.vision:
        size = loaded.model.config.vision_config.image_size
        patches = size // loaded.model.config.vision_config.patch_size
        feed = {
            "pixel_values": np.random.default_rng(0).standard_normal((1, 3, size, size)),
            "patch_attention_mask": np.ones((1, patches, patches), bool),
        }
        feed["pixel_values"] = feed["pixel_values"].astype(np.float32)
        infer(feed, timed=False)  # first call: weights packed
        for _ in range(5):
            infer(feed)
        what = "vision tile"
    else:
        table = np.load(export.embeddings, mmap_mode="r")
        rng = np.random.default_rng(0)
        prompt = args.prompt
        infer(
            {
                "inputs_embeds": table[rng.integers(0, len(table), (1, prompt))].astype(np.float32),
                "attention_mask": np.ones((1, prompt), np.int64),
                "position_ids": np.arange(prompt)[None],
                "beam_idx": np.zeros(1, np.int32),
            },
            timed=False,
        )
        for step in range(args.steps + 1):
            feed = {
                "inputs_embeds": np.asarray(table[[[int(rng.integers(0, len(table)))]]]),
                "attention_mask": np.ones((1, prompt + step + 1), np.int64),
                "position_ids": np.array([[prompt + step]]),
                "beam_idx": np.zeros(1, np.int32),
            }
            infer(feed, timed=step > 0)  # the first one-row step packs its kernels' weights
        what = f"decode step (after a {prompt}-token prompt)"
    runs = len(times)
    print(f"# {args.model} {export.directory.name}, {args.precision}, {config}")
    print(f"{what}: median {statistics.median(times):.2f} ms, min {min(times):.2f}")
    print(f"outside the kernels (the runtime's own work): {statistics.median(outside):.2f} ms")
    print(f"kernels, mean ms per run (sum {sum(kernels.values()) / runs:.2f}):")
    for (kind, implementation), total in kernels.most_common(args.top):
        print(f"  {total / runs:8.2f}  {kind}  {implementation}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
