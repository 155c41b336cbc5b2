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
    """``int8``: int8 weights per output channel, asymmetric (half of bf16's bytes read per
    token). ``int4``: 4-bit symmetric weights in groups of 64 input channels, data-free; the
    lm_head stays int8 (NNCF's default for the last layer: 4 bits there cost the most accuracy
    and, measured here, ran slower). A group that does not divide a layer is adjusted to one
    that does."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters

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
