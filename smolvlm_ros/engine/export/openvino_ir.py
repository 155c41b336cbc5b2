"""Exported torch programs -> OpenVINO models (IR), with the decoder's KV cache as state.

Why stateful: OpenVINO's CPU plugin fuses a decoder whose cache lives in model variables
(ReadValue -> Gather(beam_idx) -> Concat -> ScaledDotProductAttention -> Assign) into its own
KV-cache attention kernel, which keeps the cache in place and reorders rows by an index table
instead of copying. With the cache as plain inputs and outputs every token copies it twice and
the attention is decomposed: measured here (256M shape, 2 cores) 2x slower per token. The
transformation is the one optimum-intel applies to its own exports (``fuse_cache_reorder``,
``make_stateful``, ``build_state_initializer`` in optimum/exporters/openvino/stateful.py),
re-done for our graph:

- ``beam_idx`` [batch] selects, per row, which stored row of the cache it continues: arange
  for a normal batch, zeros to fan one stored prefix out to every row of a batch;
- the state starts empty, [batch, kv_heads, 0, head_dim], its batch taken from
  ``inputs_embeds``.

Quantisation (``int8``, ``int4``) uses NNCF: the decoder's weights become int8 (per-channel
asymmetric) or int4 (groups of 64; decoding is bound by reading weights), the vision encoder is
quantised statically to int8, weights and activations, calibrated on real photographs (it is
bound by compute: one 512 px tile is ~200 GFLOP).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from smolvlm_ros.engine.export.graphs import (
    DECODER_INPUTS,
    LOGITS,
    VISION_INPUTS,
    VISION_OUTPUT,
    DecoderShape,
    past_names,
    present_names,
)

BEAM_IDX = "beam_idx"


def _name_ports(ports: Iterable[Any], names: Iterable[str]) -> None:
    for port, name in zip(ports, names, strict=True):
        port.get_tensor().set_names({name})


def vision_model(program: Any) -> Any:
    """The exported vision stage as an OpenVINO model with named ports."""
    import openvino as ov

    model = ov.convert_model(program)
    _name_ports(model.inputs, VISION_INPUTS)
    _name_ports(model.outputs, [VISION_OUTPUT])
    return model


def merge_sibling_projections(model: Any) -> int:
    """Merge the linear layers that read the same tensor (q, k, v of each attention; gate and up
    of each MLP) into one MatMul over their concatenated weights, then split its output.

    Why: decoding is one token against every weight; the CPU plugin fuses such siblings itself
    only for uncompressed weights, so an int8 or int4 decoder ran 7 small matrix products per
    layer, each with its own dispatch, where it now runs 4 (256M shape, int8: 17.2 -> 14.4 ms
    per decode step). Only for the quantised decoders (``compress_decoder``): on the float32
    graph the plugin's own fusions (its LLMMLP kernel) are faster, and merging first undid
    them (bf16: 24.5 -> 33.4 ms). Per-output-channel (int8) and per-row-group (int4) scales
    make the merged weights quantise exactly as the separate ones. Returns the groups merged."""
    from collections import defaultdict

    from openvino import opset13

    groups: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul":
            continue
        weight = op.input_value(1).get_node()
        attributes = op.get_attributes()
        if weight.get_type_name() != "Constant" or attributes["transpose_a"]:
            continue
        if not attributes["transpose_b"]:
            continue
        source = op.input_value(0)
        groups[(source.get_node().get_name(), source.get_index())].append(op)
    merged = 0
    for siblings in groups.values():
        if len(siblings) < 2:
            continue
        weights = [op.input_value(1).get_node().get_data() for op in siblings]
        product = opset13.matmul(
            siblings[0].input_value(0),
            opset13.constant(np.concatenate(weights, axis=0)),
            transpose_a=False,
            transpose_b=True,
        )
        split = opset13.variadic_split(
            product, opset13.constant(-1), opset13.constant([w.shape[0] for w in weights])
        )
        for index, op in enumerate(siblings):
            op.output(0).replace(split.output(index))
        merged += 1
    model.validate_nodes_and_infer_types()
    return merged


def decoder_model(program: Any, shape: DecoderShape) -> Any:
    """The exported decoder as a stateful OpenVINO model: inputs ``inputs_embeds``,
    ``attention_mask``, ``position_ids``, ``beam_idx``; output ``logits``; the cache inside."""
    import openvino as ov
    from openvino import opset13
    from openvino._offline_transformations import apply_make_stateful_transformation

    model = ov.convert_model(program)
    pasts, presents = past_names(shape.layers), present_names(shape.layers)
    _name_ports(model.inputs, [*DECODER_INPUTS, *pasts])
    _name_ports(model.outputs, [LOGITS, *presents])

    beam = opset13.parameter(ov.PartialShape([-1]), ov.Type.i32, name=BEAM_IDX)
    beam.output(0).get_tensor().set_names({BEAM_IDX})
    model.add_parameters([beam])
    for name in pasts:  # every read of the cache goes through the row selection
        port = model.input(name)
        readers = list(port.get_target_inputs())
        selected = opset13.gather(port, beam, opset13.constant(0))
        for reader in readers:
            reader.replace_source_output(selected.output(0))
    model.validate_nodes_and_infer_types()

    apply_make_stateful_transformation(model, dict(zip(pasts, presents, strict=True)))
    batch = opset13.gather(
        opset13.shape_of(model.input(DECODER_INPUTS[0]), output_type="i64"),
        opset13.constant([0]),
        opset13.constant(0),
    )
    fixed = [np.array([n], np.int64) for n in (shape.kv_heads, 0, shape.head_dim)]
    empty_shape = opset13.concat([batch, *(opset13.constant(f) for f in fixed)], axis=0)
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue":
            zero = opset13.constant(0.0, dtype=op.get_output_element_type(0))
            op.set_arguments([opset13.broadcast(zero, empty_shape)])
    model.validate_nodes_and_infer_types()
    return model


def compress_decoder(model: Any, quantization: str) -> Any:
    """Sibling projections merged (:func:`merge_sibling_projections`), then ``int8``: int8
    weights per output channel, asymmetric (half of bf16's bytes read per token). ``int4``:
    4-bit symmetric weights in groups of 64 input channels, data-free; the lm_head stays int8
    (NNCF's default for the last layer: 4 bits there cost the most accuracy and, measured here,
    ran slower). A group that does not divide a layer is adjusted to one that does."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters

    merge_sibling_projections(model)
    if quantization == "int8":
        return nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    if quantization == "int4":
        return nncf.compress_weights(
            model,
            mode=nncf.CompressWeightsMode.INT4_SYM,
            group_size=64,
            ratio=1.0,
            advanced_parameters=AdvancedCompressionParameters(
                group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST
            ),
        )
    raise ValueError(f"no decoder compression for quantization {quantization!r}")


def quantize_vision(model: Any, samples: list[dict[str, np.ndarray]]) -> Any:
    """Static int8 (weights and activations) calibrated on ``samples`` (vision inputs by
    name). SmoothQuant and bias correction come with NNCF's transformer preset."""
    import nncf

    return nncf.quantize(
        model,
        nncf.Dataset(samples),
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(samples),
    )
