"""Which CPU runtime for SmolVLM: one run, same weights, same photo, 1 tile, 32 tokens (issue 13).

    .venv/bin/python tools/cpu_runtimes.py [--model random:256m] [--rounds 3] [--runners a,b]

Each runner is its own process (so thread pools and peak RSS are its own), started once per
round, rounds interleaved so that the machine's load drifts over all of them alike; each process
warms up once, then generates ``--repeats`` times. Printed: medians of vision, prefill (+ first
token), decode per token, end to end, the speed-up over plain ``generate()`` in its faster dtype
in this run; peak RSS (VmHWM, the smallest over rounds: a round that first builds an export
peaks higher); greedy-token agreement with the float32 reference; the load average at the start
and the end. Runners:

- ``transformers_*``: plain ``model.generate()`` on the processor's inputs (the README's way),
  timed from the frame like the engine runners (processor call included: ~30 ms);
- ``engine_torch_*``: this package's torch backend;
- ``ort_*``: ONNX Runtime on ``torch.onnx.export`` graphs of the same two stages (decoder with
  its KV cache as inputs/outputs), greedy loop on the host; ``int8``: dynamic int8 decoder,
  static int8 vision calibrated on the photographs (QDQ);
- ``ov_onnx``: OpenVINO reading those same ONNX files (cache as inputs/outputs, its default
  precision: bf16 where the CPU has it);
- ``openvino_*``: this package's openvino backend (stateful decoder), ``_int8`` / ``_int4`` its
  quantised exports;
- ``optimum_intel*``: the outside anchor, optimum-intel's own export and ``generate()``, in
  ``.venv-openvino`` (optimum-intel 2.2 needs transformers < 5: ``make openvino-anchor``); it is
  fed inputs made by this venv's processor (transformers 4 cannot read the random checkpoints'
  tokenizer), so its time leaves the processor call out: a ~30 ms head start.

The ONNX and optimum-intel exports are cached under ``<cache root>/cpu-runtimes/``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout, not an installed copy
ANCHOR_PYTHON = REPO / ".venv-openvino" / "bin" / "python"
PROMPT = "Describe this image in one sentence."
PHOTO = "astronaut"
RUNNERS = (
    "transformers_fp32", "transformers_bf16", "engine_torch_fp32", "engine_torch_bf16",
    "ort_fp32", "ort_int8", "ov_onnx", "openvino_fp32", "openvino_bf16", "openvino_bf16_int8",
    "openvino_bf16_int4", "optimum_intel", "optimum_intel_int8",
)  # fmt: skip


def _work_dir(model: str) -> Path:
    from smolvlm_ros.models.random_checkpoint import cache_root

    return cache_root() / "cpu-runtimes" / model.replace(":", "-").replace("/", "--")


# -- runners (each returns a callable: () -> (times dict, token ids)) -------------------------


def _engine(model: str, backend: str, dtype: str, quantization: str = "none"):
    from smolvlm_ros.engine import Engine, EngineConfig, Frame
    from smolvlm_ros.photos import photo

    engine = Engine.from_config(
        EngineConfig(model, device="cpu", dtype=dtype, backend=backend, quantization=quantization)
    )
    frame = Frame(photo(PHOTO))

    def run(tokens: int):
        engine.clear_cache()
        started = time.perf_counter()
        result = engine.caption(frame, PROMPT, max_new_tokens=tokens, min_new_tokens=tokens)
        t = result.timing
        return {
            "vision_s": t.encode_ms / 1e3,
            "prefill_s": t.prefill_ms / 1e3,
            "decode_token_s": t.decode_ms / 1e3 / max(1, tokens - 1),
            "e2e_s": time.perf_counter() - started,
        }, result.token_ids

    return run


def _transformers(model: str, dtype: str):
    import torch
    from transformers.generation.streamers import BaseStreamer

    from smolvlm_ros.engine import Engine, EngineConfig, Frame
    from smolvlm_ros.engine.reference import reference_inputs
    from smolvlm_ros.photos import photo

    engine = Engine.from_config(EngineConfig(model, device="cpu", dtype=dtype, backend="torch"))
    frame = Frame(photo(PHOTO))

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.calls: list[float] = []

        def put(self, value) -> None:
            self.calls.append(time.perf_counter())

        def end(self) -> None:
            pass

    def run(tokens: int):
        clock = Clock()
        started = time.perf_counter()
        inputs = reference_inputs(engine, frame, PROMPT)  # from the frame, as the engine runs
        with torch.inference_mode():
            out = engine.loaded.model.generate(
                **inputs, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                streamer=clock,
            )  # fmt: skip
        end = time.perf_counter()
        first = clock.calls[1]  # calls[0] is the prompt
        return (
            {
                "prefill_s": first - started,  # vision + prefill + first token
                "decode_token_s": (end - first) / max(1, tokens - 1),
                "e2e_s": end - started,
            },
            out[0, inputs["input_ids"].shape[1] :].tolist(),
        )

    return run


def _onnx_files(model: str, quantized: bool) -> tuple[Path, Path]:
    """The two stages as ONNX (torch.onnx.export, dynamo), int8 variants by ORT's quantiser."""
    import torch

    from smolvlm_ros.engine.export import graphs
    from smolvlm_ros.models.loading import load_model

    out = _work_dir(model) / "onnx"
    vision, decoder = out / "vision.onnx", out / "decoder.onnx"
    if not decoder.exists():
        out.mkdir(parents=True, exist_ok=True)
        loaded = load_model(model, "cpu", "float32")
        shape = graphs.DecoderShape.of(loaded.model)
        vision_program = graphs.export_vision(loaded.model)
        torch.onnx.export(
            vision_program, (), str(vision), input_names=list(graphs.VISION_INPUTS),
            output_names=[graphs.VISION_OUTPUT], dynamo=True,
        )  # fmt: skip
        decoder_program = graphs.export_decoder(loaded.model)
        torch.onnx.export(
            decoder_program, (), str(decoder),
            input_names=[*graphs.DECODER_INPUTS, *graphs.past_names(shape.layers)],
            output_names=[graphs.LOGITS, *graphs.present_names(shape.layers)], dynamo=True,
        )  # fmt: skip
        (out / "shape.json").write_text(json.dumps(shape.__dict__))
    if not quantized:
        return vision, decoder
    qvision, qdecoder = out / "vision_int8.onnx", out / "decoder_int8.onnx"
    if not qdecoder.exists():
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )

        from smolvlm_ros.engine.export.calibration import vision_samples
        from smolvlm_ros.models.loading import load_model

        loaded = load_model(model, "cpu", "float32")
        samples = vision_samples(loaded.processor, loaded.model.config.vision_config.patch_size)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.samples = iter(samples)

            def get_next(self):
                return next(self.samples, None)

        quantize_static(
            str(vision), str(qvision), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
        )  # fmt: skip
        quantize_dynamic(str(decoder), str(qdecoder), weight_type=QuantType.QInt8)
    return qvision, qdecoder


def _graph_loop(model: str, vision_run, decoder_run, layers_from: Path):
    """Greedy generation on the host over two graph callables (cache as inputs/outputs)."""
    import numpy as np

    from smolvlm_ros.engine import Engine, EngineConfig, Frame
    from smolvlm_ros.engine.export import graphs
    from smolvlm_ros.photos import photo

    shape = json.loads((layers_from / "shape.json").read_text())
    engine = Engine.from_config(EngineConfig(model, device="cpu", dtype="float32", backend="torch"))
    frame = Frame(photo(PHOTO))
    plan = engine.plan(frame)
    pixels = engine.preprocess_image(frame, plan)
    patch = engine.loaded.model.config.vision_config.patch_size
    feed = {
        "pixel_values": pixels["pixel_values"][0].numpy(),
        "patch_attention_mask": graphs.patch_mask(pixels["pixel_attention_mask"][0], patch).numpy(),
    }
    ids = engine.prompt_ids(PROMPT, [plan]).numpy()
    table = engine.loaded.model.model.text_model.get_input_embeddings().weight.detach().numpy()
    image_token = engine.image_token_id
    names = graphs.past_names(shape["layers"])
    empty = np.zeros((1, shape["kv_heads"], 0, shape["head_dim"]), np.float32)

    def run(tokens: int):
        t0 = time.perf_counter()
        image = vision_run(feed)
        t1 = time.perf_counter()
        embeds = table[ids].copy()
        embeds[ids == image_token] = image
        n = len(ids)
        out = decoder_run(
            {"inputs_embeds": embeds[None], "attention_mask": np.ones((1, n), np.int64),
             "position_ids": np.arange(n, dtype=np.int64)[None], **dict.fromkeys(names, empty)}
        )  # fmt: skip
        made = [int(out[0][0].argmax())]
        t2 = time.perf_counter()
        for step in range(1, tokens):
            out = decoder_run(
                {"inputs_embeds": table[made[-1:]][None],
                 "attention_mask": np.ones((1, n + step), np.int64),
                 "position_ids": np.array([[n + step - 1]], np.int64),
                 **dict(zip(names, out[1:], strict=True))}
            )  # fmt: skip
            made.append(int(out[0][0].argmax()))
        t3 = time.perf_counter()
        return {
            "vision_s": t1 - t0,
            "prefill_s": t2 - t1,
            "decode_token_s": (t3 - t2) / max(1, tokens - 1),
            "e2e_s": t3 - t0,
        }, made

    return run


def _ort(model: str, quantized: bool, threads: int):
    import onnxruntime as ort

    vision, decoder = _onnx_files(model, quantized)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    sv = ort.InferenceSession(str(vision), options, providers=["CPUExecutionProvider"])
    sd = ort.InferenceSession(str(decoder), options, providers=["CPUExecutionProvider"])
    return _graph_loop(
        model, lambda f: sv.run(None, f)[0], lambda f: sd.run(None, f), vision.parent
    )


def _ov_onnx(model: str, threads: int):
    import openvino as ov

    vision, decoder = _onnx_files(model, False)
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    cv = core.compile_model(core.read_model(vision), "CPU", config)
    cd = core.compile_model(core.read_model(decoder), "CPU", config)
    rv, rd = cv.create_infer_request(), cd.create_infer_request()

    def decode(feed):
        result = rd.infer(feed)
        return [result[o] for o in cd.outputs]

    return _graph_loop(model, lambda f: rv.infer(f)[cv.outputs[0]], decode, vision.parent)


def _optimum(model: str, quantized: bool, threads: int, tokens: int, repeats: int) -> dict:
    """The anchor runs in its own venv: this process only starts it and reads its JSON."""
    from smolvlm_ros.models.loading import resolve_model_path

    if not ANCHOR_PYTHON.exists():
        raise RuntimeError(f"{ANCHOR_PYTHON} missing: make openvino-anchor")
    out = _work_dir(model) / ("optimum-intel-int8" if quantized else "optimum-intel")
    if not (out / "openvino_language_model.xml").exists():
        cli = ANCHOR_PYTHON.parent / "optimum-cli"
        command = [str(cli), "export", "openvino", "--model", resolve_model_path(model),
                   "--task", "image-text-to-text", *(["--weight-format", "int8"] if quantized
                   else []), str(out)]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
    import numpy as np

    from smolvlm_ros.engine import Engine, EngineConfig, Frame
    from smolvlm_ros.engine.reference import reference_inputs
    from smolvlm_ros.photos import photo

    engine = Engine.from_config(EngineConfig(model, device="cpu", dtype="float32", backend="torch"))
    inputs = reference_inputs(engine, Frame(photo(PHOTO)), PROMPT)
    inputs_file = out / "inputs.npz"
    np.savez(inputs_file, **{k: v.numpy() for k, v in inputs.items()})
    del engine
    script = REPO / "tools" / "optimum_anchor.py"
    done = subprocess.run(
        [str(ANCHOR_PYTHON), str(script), str(out), str(inputs_file), str(threads), str(tokens),
         str(repeats)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"optimum-intel anchor failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """High-water RSS of this process since its exec (VmHWM; ru_maxrss carries a parent's)."""
    with open("/proc/self/status") as status:
        line = next(x for x in status if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def run_one(name: str, model: str, threads: int, tokens: int, repeats: int) -> dict:
    """Warm up once, then ``repeats`` generations; medians, tokens and peak RSS."""
    if name.startswith("optimum_intel"):
        return _optimum(model, name.endswith("int8"), threads, tokens, repeats)
    import torch

    torch.set_num_threads(threads)
    builders = {
        "transformers_fp32": lambda: _transformers(model, "float32"),
        "transformers_bf16": lambda: _transformers(model, "bfloat16"),
        "engine_torch_fp32": lambda: _engine(model, "torch", "float32"),
        "engine_torch_bf16": lambda: _engine(model, "torch", "bfloat16"),
        "ort_fp32": lambda: _ort(model, False, threads),
        "ort_int8": lambda: _ort(model, True, threads),
        "ov_onnx": lambda: _ov_onnx(model, threads),
        "openvino_fp32": lambda: _engine(model, "openvino", "float32"),
        "openvino_bf16": lambda: _engine(model, "openvino", "bfloat16"),
        "openvino_fp32_int8": lambda: _engine(model, "openvino", "float32", "int8"),
        "openvino_bf16_int8": lambda: _engine(model, "openvino", "bfloat16", "int8"),
        "openvino_fp32_int4": lambda: _engine(model, "openvino", "float32", "int4"),
        "openvino_bf16_int4": lambda: _engine(model, "openvino", "bfloat16", "int4"),
    }
    started = time.perf_counter()
    run = builders[name]()
    load_s = time.perf_counter() - started
    run(tokens)  # warm-up
    rows, made = [], []
    for _ in range(repeats):
        times, made = run(tokens)
        rows.append(times)
    medians = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
    return {**medians, "load_s": load_s, "peak_rss_mb": peak_rss_mb(), "tokens": made}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random:256m")
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one runner, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.model, args.threads, args.tokens, args.repeats)))
        return 0
    names = args.runners.split(",")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    load_before = os.getloadavg()
    date = time.strftime("%Y-%m-%d %H:%M %Z")
    for round_index in range(args.rounds):
        for name in names:
            command = [sys.executable, __file__, "--one", name, "--model", args.model,
                       "--threads", str(args.threads), "--tokens", str(args.tokens),
                       "--repeats", str(args.repeats)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            if done.returncode != 0:
                print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {round_index + 1} {name}: {runs[name][-1]['e2e_s']:.2f} s, load "
                  f"{os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)  # fmt: skip
    load_after = os.getloadavg()
    reference = next((runs[n][0]["tokens"] for n in ("openvino_fp32", "engine_torch_fp32",
                      "transformers_fp32") if runs.get(n)), None)  # fmt: skip
    # the anchor of the speed-ups: plain generate() in its faster dtype, measured in this run
    anchors = [statistics.median(r["e2e_s"] for r in runs[n])
               for n in ("transformers_fp32", "transformers_bf16") if runs.get(n)]  # fmt: skip
    anchor = min(anchors) if anchors else None
    header = ("runner", "vision s", "prefill s", "decode ms/tok", "e2e s", "x generate()",
              "peak RSS MB", "agree", "load s")  # fmt: skip
    print(f"# {args.model}, photo {PHOTO} 640x480, 1 tile, {args.tokens} tokens, {args.threads}"
          f" threads, {args.rounds} rounds x {args.repeats}, {date}; load average "
          f"{load_before[0]:.2f} -> {load_after[0]:.2f}")  # fmt: skip
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    summary = {}
    for name, results in runs.items():
        if not results:
            continue
        med = {k: statistics.median(r[k] for r in results if k in r)
               for k in ("vision_s", "prefill_s", "decode_token_s", "e2e_s", "load_s")
               if any(k in r for r in results)}  # fmt: skip
        # the smallest: a round that first built an export (ONNX, quantisation) peaks higher
        med["peak_rss_mb"] = min(r["peak_rss_mb"] for r in results)
        tokens = results[-1]["tokens"]
        agree = sum(a == b for a, b in zip(tokens, reference or [], strict=False)) / len(tokens)
        summary[name] = {**med, "agree": agree, "runs": results}

        def cell(key: str, scale: float = 1.0, fmt: str = "{:.2f}", med=med) -> str:
            return fmt.format(med[key] * scale) if key in med else "-"

        speedup = f"{anchor / med['e2e_s']:.2f}x" if anchor else "-"
        summary[name]["x_generate"] = anchor / med["e2e_s"] if anchor else None
        print(f"| {name} | {cell('vision_s')} | {cell('prefill_s')} | "
              f"{cell('decode_token_s', 1000, '{:.1f}')} | {cell('e2e_s')} | {speedup} | "
              f"{cell('peak_rss_mb', 1, '{:.0f}')} | {agree:.2f} | "
              f"{cell('load_s', 1, '{:.0f}')} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"date": date, "load": [load_before, load_after],
                                         "args": vars(args) | {"json": str(args.json)},
                                         "runners": summary}, indent=1, default=str))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
