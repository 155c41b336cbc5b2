"""How fast this CPU streams quantised weights through one-row matrix products (issue 13).

    .venv/bin/python tools/weight_stream.py [--layers 15,30,60,90,120] [--shape 576x3072]
        [--runtimes openvino,onnxruntime] [--bits 8,4] [--threads 0] [--repeats 100]
    .venv/bin/python tools/weight_stream.py --model random:256m [--runtimes openvino] [--bits 8]

A decode step of a small decoder is a chain of one-row matrix products, each reading its weights
once. This builds such a chain, ``--layers`` products of ``--shape`` (input x output features;
the default is SmolVLM-256M's merged gate|up projection), with random weights compressed the way
each runtime compresses a decoder: OpenVINO through NNCF (int8 per output channel, asymmetric,
as the backend's ``quantization: int8``; int4 symmetric in groups of 64, as ``int4``, here for
every product: the export keeps its lm_head int8), ONNX Runtime through its MatMulNBits
quantiser (8 or 4 bits, symmetric blocks, ``accuracy_level`` 4: int8 compute). It prints, per
chain length, the median time of one pass, the weights it read, and the rate (GB/s) and time per
product. ``--model`` chains a checkpoint's own decoder products instead, as the export merges
them (per layer q|k|v, o, gate|up, down; then the lm_head), with random weights of those shapes:
what one decode step's matrix products cost alone, without the attention and small kernels
between them.

Why: it shows where a decode step's floor lies on a given machine. While the whole chain fits
in the CPU's last-level cache its weights stream faster (~1.7x on the 2-core machine of the
README) than once it spills to memory; set beside a decode step's profile (``ov_profile.py``) it
separates the products' own cost from the rest of the step. Compare rows of one run only: shared
machines drift between runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout, not an installed copy


def _weights(shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """[inputs, outputs] float32 weights per product, scaled like a trained layer's."""
    rng = np.random.default_rng(0)
    return [(rng.standard_normal(shape) * 0.02).astype(np.float32) for shape in shapes]


def decoder_products(model: str) -> list[tuple[int, int]]:
    """(inputs, outputs) of a checkpoint's decoder products in the order of one decode step,
    sibling projections merged as in ``openvino_ir.merge_sibling_projections``."""
    from smolvlm_ros.models.loading import load_model

    text = load_model(model, "cpu", "float32", weights=False).model.config.text_config
    hidden, heads, kv_heads = text.hidden_size, text.num_attention_heads, text.num_key_value_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    layer = [
        (hidden, (heads + 2 * kv_heads) * head_dim),  # q|k|v
        (heads * head_dim, hidden),  # o
        (hidden, 2 * text.intermediate_size),  # gate|up
        (text.intermediate_size, hidden),  # down
    ]
    return layer * text.num_hidden_layers + [(hidden, text.vocab_size)]


def _time(run: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``run()`` after 20 warm-up calls (the first packs the weights)."""
    for _ in range(20):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _next_widths(weights: list[np.ndarray]) -> list[int | None]:
    """Per product, the input width of the next one (None after the last). Every next input is
    no wider than the output before it here (true of a decoder's products)."""
    widths: list[int | None] = [weight.shape[0] for weight in weights[1:]]
    for weight, width in zip(weights, widths, strict=False):
        if width > weight.shape[1]:
            raise ValueError(f"a product of {weight.shape[1]} outputs cannot feed {width} inputs")
    return [*widths, None]


def openvino_chain(weights: list[np.ndarray], bits: int, threads: int) -> Callable[[], object]:
    """The chain as an OpenVINO model compressed by NNCF, compiled with the backend's own
    decoder properties; returns one pass."""
    import nncf
    import openvino as ov
    from openvino import opset13 as ops

    from smolvlm_ros.engine.backends.openvino_backend import compile_config

    x = ops.parameter([1, 1, weights[0].shape[0]], np.float32, name="x")
    hidden = x
    for weight, following in zip(weights, _next_widths(weights), strict=True):
        hidden = ops.matmul(hidden, ops.constant(weight.T.copy()), False, True)
        if following is not None:  # the first columns feed the next product
            hidden = ops.slice(
                hidden, np.array([0]), np.array([following]), np.array([1]), np.array([2])
            )
    model = ov.Model([hidden], [x])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if bits == 8:  # (quietly: NNCF draws progress bars)
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        else:
            model = nncf.compress_weights(
                model,
                mode=nncf.CompressWeightsMode.INT4_SYM,
                group_size=64,
                ratio=1.0,
                all_layers=True,
            )
    quantization = {8: "int8", 4: "int4"}[bits]
    config = compile_config("float32", quantization, threads, "decoder")
    request = ov.Core().compile_model(model, "CPU", config).create_infer_request()
    feed = {"x": np.random.default_rng(1).random((1, 1, weights[0].shape[0]), dtype=np.float32)}
    return lambda: request.infer(feed)


def onnxruntime_chain(
    weights: list[np.ndarray], bits: int, threads: int, work: Path
) -> Callable[[], object]:
    """The chain as ONNX MatMuls quantised to MatMulNBits, in an ONNX Runtime CPU session."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    constant = numpy_helper.from_array
    initializers = [constant(np.array([0], np.int64), "start"), constant(np.array([2]), "axis")]
    nodes, current = [], "x"
    for index, (weight, following) in enumerate(zip(weights, _next_widths(weights), strict=True)):
        initializers.append(constant(weight, f"w{index}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{index}"], [f"product{index}"]))
        current = f"product{index}"
        if following is not None:
            initializers.append(constant(np.array([following], np.int64), f"stop{index}"))
            inputs = [current, "start", f"stop{index}", "axis"]
            nodes.append(helper.make_node("Slice", inputs, [f"h{index}"]))
            current = f"h{index}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, weights[0].shape[0]])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, None)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    block = {8: 32, 4: 64}[bits]
    config = DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=True, accuracy_level=4, bits=bits
    )
    quantizer = MatMulNBitsQuantizer(model, algo_config=config)
    quantizer.process()
    path = work / f"chain-{len(weights)}-{bits}.onnx"
    quantizer.model.save_model_to_file(str(path), use_external_data_format=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"x": np.random.default_rng(1).random((1, 1, weights[0].shape[0]), dtype=np.float32)}
    return lambda: session.run(None, feed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="15,30,60,90,120", help="chain lengths")
    parser.add_argument("--shape", default="576x3072", help="input x output features per product")
    parser.add_argument("--runtimes", default="openvino,onnxruntime")
    parser.add_argument("--bits", default="8,4", help="weight bits, comma-separated (8, 4)")
    parser.add_argument("--model", help="chain this checkpoint's decoder products instead")
    parser.add_argument("--threads", type=int, default=0, help="0: the cores this process may use")
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()

    from smolvlm_ros.engine.backends.openvino_backend import cpu_threads

    def numbers(text: str, option: str, separator: str = ",") -> list[int]:
        """Positive integers from ``text``, or a usage error that names ``option``."""
        try:
            values = [int(part) for part in text.lower().split(separator)]
        except ValueError:
            values = []
        if not values or min(values) <= 0:
            parser.error(f"{option} takes positive integers separated by {separator!r}: {text!r}")
        return values

    if args.repeats <= 0:
        parser.error(f"--repeats must be positive, got {args.repeats}")
    if args.model:
        chains = [decoder_products(args.model)]
        label = f"{args.model}'s decoder products ({len(chains[0])}: one decode step)"
    else:
        shape = numbers(args.shape, "--shape", "x")
        if len(shape) != 2 or shape[0] > shape[1]:
            parser.error(f"--shape is INPUTSxOUTPUTS with inputs <= outputs, got {args.shape!r}")
        chains = [[tuple(shape)] * count for count in numbers(args.layers, "--layers")]
        label = f"{args.shape} products"
    bits_list = numbers(args.bits, "--bits")
    runtimes = args.runtimes.split(",")
    if unknown := set(bits_list) - {8, 4}:
        parser.error(f"--bits takes 8 and 4, not {sorted(unknown)}")
    if unknown := set(runtimes) - {"openvino", "onnxruntime"}:
        parser.error(f"--runtimes takes openvino and onnxruntime, not {sorted(unknown)}")
    threads = cpu_threads(args.threads)
    logging.disable(logging.WARNING)  # NNCF's and the quantiser's progress tables
    import nncf

    nncf.set_log_level(logging.ERROR)

    print(f"# {label}, {threads} threads, median of {args.repeats} passes")
    print("runtime      bits  products  weights MB   pass ms    GB/s   us/product")
    with tempfile.TemporaryDirectory() as work:
        for shapes in chains:
            weights = _weights(shapes)
            count = len(weights)
            parameters = sum(inputs * outputs for inputs, outputs in shapes)
            for runtime in runtimes:
                for bits in bits_list:
                    if runtime == "openvino":
                        run = openvino_chain(weights, bits, threads)
                    else:
                        run = onnxruntime_chain(weights, bits, threads, Path(work))
                    seconds = _time(run, args.repeats)
                    megabytes = parameters * bits / 8 / 1e6
                    print(
                        f"{runtime:12s} {bits:4d}  {count:8d}  {megabytes:10.1f}  "
                        f"{seconds * 1e3:8.2f}  {megabytes / 1e3 / seconds:6.1f}  "
                        f"{seconds / count * 1e6:10.1f}",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
