"""The OpenVINO CPU backend on random:tiny: export, cache reuse, load, parity with the torch path.

Everything runs for real: the checkpoint is traced with torch.export, converted to OpenVINO IR
(the decoder made stateful), quantised with NNCF for int8, cached in a directory of this module
and compiled on the CPU. In float32 the backend must produce the torch path's greedy tokens on
the real photographs, alone, batched with padding and after a shared prefix; int8 is compared
with float32 by logit cosine and top-1 agreement (random weights: near-flat logits, so the
thresholds only catch a broken quantisation, and the real figures are in the README).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from smolvlm_ros.engine import Engine, EngineConfig, Frame
from smolvlm_ros.engine.backends.base import GenerationRequest
from smolvlm_ros.engine.backends.registry import BackendError, choose
from smolvlm_ros.engine.backends.torch_backend import TorchBackend, score_options
from smolvlm_ros.engine.engine import DEFAULT_CAPTION_PROMPT
from smolvlm_ros.engine.export import ExportError, ensure_export, export_path, missing_runtime
from smolvlm_ros.engine.export.cache import checkpoint_digest
from smolvlm_ros.engine.reference import reference_generate
from smolvlm_ros.engine.types import FINISH_CANCELLED
from smolvlm_ros.models.loading import load_model

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = ["What is this?", "Is there a cup on the table?", "Which colour is the largest thing?"]
HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(
    not HAVE_OPENVINO, reason="OpenVINO is not installed (pip install -r requirements/cpu.txt)"
)


@pytest.fixture(scope="module")
def ov_cache(tmp_path_factory):
    """This module's own cache root: checkpoints and exports are built here, from scratch."""
    root = tmp_path_factory.mktemp("ov-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SMOLVLM_ROS_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def loaded(ov_cache):
    return load_model("random:tiny", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def exported(loaded):
    return ensure_export(loaded, "none")


@pytest.fixture(scope="module")
def torch_engine(loaded):
    backend = TorchBackend(loaded.model, "cpu", "float32")
    return Engine(loaded, backend, backend_choice=choose("torch", "cpu"))


def _ov_engine(loaded, export, dtype="float32", threads=2) -> Engine:
    from smolvlm_ros.engine.backends.openvino_backend import OpenVINOBackend

    backend = OpenVINOBackend(export, loaded, dtype, threads)
    return Engine(loaded, backend, backend_choice=choose("openvino", "cpu"))


@pytest.fixture(scope="module")
def ov_engine(loaded, exported):
    return _ov_engine(loaded, exported)


# -- export and its cache ----------------------------------------------------------------------


@needs_openvino
def test_export_is_built_once_then_reused(loaded, exported, ov_cache):
    assert exported.created
    assert exported.directory.parent == ov_cache / "openvino"
    files = {p.name: p.stat().st_mtime_ns for p in exported.directory.iterdir()}
    assert {"vision.xml", "vision.bin", "decoder.xml", "decoder.bin", "embeddings.npy"} <= set(
        files
    )
    manifest = json.loads((exported.directory / "manifest.json").read_text())
    assert manifest["quantization"] == "none" and manifest["model"] == "random:tiny"
    assert set(manifest["versions"]) == {"torch", "transformers", "openvino"}

    again = ensure_export(loaded, "none")
    assert not again.created and again.directory == exported.directory
    assert {p.name: p.stat().st_mtime_ns for p in again.directory.iterdir()} == files


@needs_openvino
def test_the_command_line_finds_the_same_export(exported, ov_cache):
    out = subprocess.run(
        [sys.executable, "-m", "smolvlm_ros.engine.export", "--model", "random:tiny", "--quiet"],
        cwd=REPO,
        env={**os.environ, "SMOLVLM_ROS_CACHE": str(ov_cache)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert f"none: {exported.directory} (cached" in out.stdout


def test_the_export_key_follows_the_checkpoint_content(loaded, ov_cache, tmp_path):
    """A copy of the checkpoint reuses the export; an edited config does not."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(loaded.path, copy)
    original = checkpoint_digest(Path(loaded.path))
    assert checkpoint_digest(copy) == original
    config = json.loads((copy / "config.json").read_text())
    config["vocab_size_note"] = "edited"  # any change to the file is a different checkpoint
    (copy / "config.json").write_text(json.dumps(config))
    assert checkpoint_digest(copy) != original
    if HAVE_OPENVINO:
        assert export_path(loaded, "none") != export_path(loaded, "int8")


# -- choosing it -------------------------------------------------------------------------------


def test_a_missing_runtime_is_named_with_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(BackendError) as err:
        choose("openvino", "cpu")
    assert "OpenVINO (openvino) is not installed: pip install -r requirements/cpu.txt" in str(
        err.value
    )
    assert "make cpu-runtime" in str(err.value)
    auto = choose("auto", "cpu")
    assert auto.name == "torch"
    assert any(name == "openvino" and "not installed" in why for name, why in auto.skipped)
    monkeypatch.setitem(sys.modules, "nncf", None)
    assert "NNCF (nncf, for int8)" in missing_runtime("int8")
    with pytest.raises(ExportError, match=r"requirements/cpu\.txt"):
        ensure_export(None, "int8")  # refused before anything is looked at


@needs_openvino
def test_openvino_runs_the_cpu_only_in_float32_or_bfloat16():
    with pytest.raises(BackendError, match="does not run on cuda"):
        choose("openvino", "cuda")
    with pytest.raises(BackendError, match="does not support dtype float16"):
        choose("openvino", "cpu", "float16")


@needs_openvino
def test_engine_from_config_loads_the_cached_export_and_no_torch_weights(exported, photos):
    engine = Engine.from_config(
        EngineConfig(
            "random:tiny", device="cpu", dtype="float32", backend="openvino", cpu_threads=1
        )
    )
    backend = engine.backend
    assert backend.export.directory == exported.directory and not backend.export.created
    assert backend.name.startswith("openvino-") and backend.dtype == "float32"
    assert backend.threads == 1
    # the torch weights are not loaded (the export runs) until something asks for them
    loaded = engine.loaded
    assert not loaded.weights_loaded
    assert next(loaded.model.parameters()).device.type == "meta"
    frame = Frame(photos["motorcycle"])
    ours = engine.caption(frame, max_new_tokens=12).token_ids
    assert reference_generate(engine, frame, DEFAULT_CAPTION_PROMPT, 12) == ours  # plain generate()
    assert loaded.weights_loaded and next(loaded.model.parameters()).device.type == "cpu"


# -- parity with the torch path (float32) ------------------------------------------------------


@needs_openvino
def test_captions_equal_the_torch_path_on_every_photo(ov_engine, torch_engine, photos):
    for name, image in photos.items():
        frame = Frame(image, camera=name)
        ours = ov_engine.caption(frame, max_new_tokens=16)
        assert ours.token_ids == torch_engine.caption(frame, max_new_tokens=16).token_ids, name
        assert ours.backend.startswith("openvino-") and ours.dtype == "float32"


@needs_openvino
def test_left_padded_batches_equal_the_torch_path(ov_engine, torch_engine, photos):
    """Two prompts of different lengths in one batch: the shorter one is left-padded."""
    frames = [Frame(photos["coffee"]), Frame(photos["rocket"])]
    texts = ["Describe this image in one sentence.", "What?"]
    plans = [torch_engine.plan(f) for f in frames]
    ids = [torch_engine.prompt_ids(t, [p]) for t, p in zip(texts, plans, strict=True)]
    longest = max(len(i) for i in ids)
    assert len({len(i) for i in ids}) == 2
    input_ids = torch.zeros((2, longest), dtype=torch.long)
    mask = torch.zeros((2, longest), dtype=torch.long)
    for row, prompt in enumerate(ids):
        input_ids[row, longest - len(prompt) :] = prompt
        mask[row, longest - len(prompt) :] = 1
    embeddings = []
    for engine in (torch_engine, ov_engine):
        pixels = [engine.preprocess_image(f, p) for f, p in zip(frames, plans, strict=True)]
        embeddings.append(
            engine.backend.vision.encode(
                torch.cat([p["pixel_values"][0] for p in pixels]),
                torch.cat([p["pixel_attention_mask"][0] for p in pixels]),
            )
        )
    torch.testing.assert_close(embeddings[1], embeddings[0], rtol=1e-4, atol=1e-4)
    request = GenerationRequest(input_ids, mask, embeddings[0], max_new_tokens=12)
    theirs = torch_engine.backend.language.generate(request)
    ours = ov_engine.backend.language.generate(request)
    assert [g.token_ids for g in ours] == [g.token_ids for g in theirs]


@needs_openvino
def test_caption_batches_equal_single_captions(ov_engine, torch_engine, photos):
    frames = [Frame(photos[n], camera=n) for n in ("astronaut", "chelsea", "motorcycle")]
    ours = ov_engine.caption_batch(frames, max_new_tokens=12)
    theirs = torch_engine.caption_batch(frames, max_new_tokens=12)
    assert [r.token_ids for r in ours] == [r.token_ids for r in theirs]


@needs_openvino
def test_shared_prefix_questions_equal_the_torch_path(ov_engine, torch_engine, photos):
    frame = Frame(photos["astronaut"])
    ours = ov_engine.ask_many(frame, QUESTIONS, max_new_tokens=10)
    assert [r.token_ids for r in ours] == [
        r.token_ids for r in torch_engine.ask_many(frame, QUESTIONS, max_new_tokens=10)
    ]
    # the prefix state is copied, not consumed: the same prefix serves a second batch
    assert [r.token_ids for r in ov_engine.ask_many(frame, QUESTIONS, max_new_tokens=10)] == [
        r.token_ids for r in ours
    ]
    assert ours[1].token_ids == ov_engine.ask(frame, QUESTIONS[1], max_new_tokens=10).token_ids


@needs_openvino
def test_scores_equal_the_torch_path(ov_engine, torch_engine, photos):
    """Typed answers score options: the prompt once, then options of different lengths
    continuing its state (fanned out by beam_idx), against the torch path."""
    frame = Frame(photos["chelsea"])
    prompt = torch_engine.prompt_ids("Is it a cat?", [torch_engine.plan(frame)])
    (encoded,) = torch_engine._encode([frame], _limits())
    for options in (
        [torch.tensor([31, 42]), torch.tensor([7]), torch.tensor([100, 200, 300])],
        [torch.tensor([31]), torch.tensor([7])],  # one token each: the prompt pass only
    ):
        ours = ov_engine.backend.language.score(prompt, encoded.embeddings, options)
        theirs = score_options(
            torch_engine.loaded.model, "cpu", prompt, encoded.embeddings, options
        )
        assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-4)


def _limits():
    from smolvlm_ros.engine import Limits

    return Limits()


@needs_openvino
def test_streaming_and_cancel(ov_engine, torch_engine, photos):
    frame = Frame(photos["coffee"])
    streamed: list[int] = []
    result = ov_engine.caption(frame, max_new_tokens=12, on_token=streamed.append)
    assert streamed == result.token_ids
    calls = itertools.count(1)
    cut = ov_engine.caption(frame, max_new_tokens=12, should_stop=lambda: next(calls) >= 3)
    assert cut.finish_reason == FINISH_CANCELLED
    assert cut.token_ids == result.token_ids[: len(cut.token_ids)] and len(cut.token_ids) == 3


@needs_openvino
def test_seeded_sampling_repeats(loaded, exported, photos):
    from smolvlm_ros.engine.backends.base import Sampling

    engine = _ov_engine(loaded, exported)
    engine.sampling = Sampling(do_sample=True, temperature=0.9, top_p=0.9, seed=7)
    frame = Frame(photos["rocket"])
    first = engine.caption(frame, max_new_tokens=12).token_ids
    assert engine.caption(frame, max_new_tokens=12).token_ids == first


@needs_openvino
def test_threads_are_what_was_asked(loaded, exported):
    from smolvlm_ros.engine.backends.openvino_backend import cpu_threads

    assert cpu_threads(0) == len(os.sched_getaffinity(0))
    assert cpu_threads(3) == 3
    engine = _ov_engine(loaded, exported, threads=1)
    assert engine.backend.threads == 1


# -- int8 --------------------------------------------------------------------------------------


def _teacher_forced(reference: Engine, quantised: Engine, photos) -> tuple[list[float], float]:
    """The quantised backend reads the float32 greedy answer; its logits at every step are
    compared with float32's: (cosines, top-1 agreement)."""
    cosines, agree, total = [], 0, 0
    for image in photos.values():
        frame = Frame(image)
        answer = reference.caption(frame, max_new_tokens=8, min_new_tokens=8).token_ids
        plan = reference.plan(frame)
        prompt = reference.prompt_ids("Describe this image in one sentence.", [plan])
        ids = torch.cat([prompt, torch.tensor(answer)])[None]
        mask = torch.ones_like(ids)
        logits = []
        for engine in (reference, quantised):
            (encoded,) = engine._encode([frame], _limits())
            language = engine.backend.language
            logits.append(language.tail_logits(ids, mask, encoded.embeddings, 8)[0])
        cosines += torch.nn.functional.cosine_similarity(logits[0], logits[1], dim=-1).tolist()
        agree += int((logits[0].argmax(-1) == logits[1].argmax(-1)).sum())
        total += 8
    return cosines, agree / total


@needs_openvino
def test_int8_is_built_from_the_float32_export_and_stays_close(loaded, exported, photos):
    int8 = ensure_export(loaded, "int8")
    assert int8.created and int8.manifest["from"] == exported.directory.name
    assert int8.manifest["calibration"]["samples"] == 10
    quantised = _ov_engine(loaded, int8)
    assert quantised.backend.dtype == "float32+int8"
    cosines, agreement = _teacher_forced(_ov_engine(loaded, exported), quantised, photos)
    assert min(cosines) > 0.95, cosines
    assert agreement > 0.5, agreement


@needs_openvino
def test_int4_shares_int8s_vision_and_stays_close(loaded, exported, photos):
    """int4 = int8's calibrated vision graph (the same file, linked) + a 4-bit decoder
    compressed from the float32 one."""
    int8, int4 = ensure_export(loaded, "int8"), ensure_export(loaded, "int4")
    assert int4.created and int4.manifest["from"] == exported.directory.name
    assert int4.manifest["vision_from"] == int8.directory.name
    assert int4.vision_bin.stat().st_ino == int8.vision_bin.stat().st_ino
    import openvino as ov

    def weight_types(export):
        model = ov.Core().read_model(export.decoder_xml)
        return {
            op.get_output_element_type(0).get_type_name()
            for op in model.get_ops()
            if op.get_type_name() == "Constant" and op.get_output_size() == 1
        }

    assert "i4" in weight_types(int4) and "i4" not in weight_types(int8)
    quantised = _ov_engine(loaded, int4)
    assert quantised.backend.dtype == "float32+int4"
    cosines, agreement = _teacher_forced(_ov_engine(loaded, exported), quantised, photos)
    assert min(cosines) > 0.9, cosines
    assert agreement > 0.4, agreement


@needs_openvino
def test_a_quantised_decoder_computes_in_f32_and_the_vision_stage_in_the_dtype():
    from smolvlm_ros.engine.backends.openvino_backend import compile_config

    def precision(stage, quantization, dtype="bfloat16"):
        return compile_config(dtype, quantization, 2, stage)["INFERENCE_PRECISION_HINT"]

    assert precision("decoder", "int8") == precision("decoder", "int4") == "f32"
    assert precision("vision", "int8") == precision("decoder", "none") == "bf16"
    assert compile_config("float32", "none", 2, "decoder")["KV_CACHE_PRECISION"] == "f32"
    with pytest.raises(ValueError, match="stage"):
        compile_config("float32", "none", 2, "both")


# -- speed and memory properties of the compiled graphs ---------------------------------------


@needs_openvino
@pytest.mark.parametrize("quantization", ["none", "int8"])
def test_the_decoder_attention_runs_the_fused_kv_cache_kernel_with_a_float_mask(
    loaded, exported, quantization
):
    """The exported decoder hands every attention a float additive mask (a boolean one runs
    OpenVINO's slower generic kernel), and the CPU plugin fuses each layer's attention with its
    cache (ScaledDotProductAttentionWithKVCache): the stateful fast path, not a decomposed one.
    A quantised decoder has its sibling projections merged (q|k|v, gate|up: 4 matrix products
    per layer and the lm_head) and keeps that fused attention."""
    import openvino as ov

    from smolvlm_ros.engine.backends.openvino_backend import compile_config

    export = ensure_export(loaded, quantization)
    core = ov.Core()
    model = core.read_model(export.decoder_xml)
    ops = model.get_ops()
    attention = [op for op in ops if op.get_type_name() == "ScaledDotProductAttention"]
    layers = exported.manifest["decoder"]["layers"]
    assert len(attention) == layers
    assert {op.input(3).get_element_type().get_type_name() for op in attention} == {"f32"}
    per_layer = 7 if quantization == "none" else 4
    assert sum(op.get_type_name() == "MatMul" for op in ops) == per_layer * layers + 1
    config = {**compile_config("float32", quantization, 2, "decoder"), "PERF_COUNT": True}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    hidden = exported.manifest["decoder"]["hidden"]
    request.infer(
        {
            "inputs_embeds": np.zeros((1, 2, hidden), np.float32),
            "attention_mask": np.ones((1, 2), np.int64),
            "position_ids": np.arange(2)[None],
            "beam_idx": np.zeros(1, np.int32),
        }
    )
    kernels = [info.node_type for info in request.profiling_info]
    assert kernels.count("ScaledDotProductAttentionWithKVCache") == layers


@needs_openvino
def test_weight_stream_chains_the_int8_decoders_own_products(loaded):
    """tools/weight_stream.py --model times one decode step's matrix products alone: they must
    be the int8 export's products (merged q|k|v and gate|up), in the order a step runs them;
    and the tool runs end to end on them with both runtimes."""
    import openvino as ov

    sys.path.insert(0, str(REPO / "tools"))
    from weight_stream import decoder_products

    model = ov.Core().read_model(ensure_export(loaded, "int8").decoder_xml)
    exported = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "MatMul":
            outputs, inputs = op.input(1).get_partial_shape().to_shape()  # transpose_b
            exported.append((inputs, outputs))
    assert decoder_products("random:tiny") == exported

    tool = str(REPO / "tools" / "weight_stream.py")
    options = ["--model", "random:tiny", "--bits", "8,4", "--repeats", "3", "--threads", "1"]
    result = subprocess.run(
        [sys.executable, tool, *options],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    runtimes = ("openvino", "onnxruntime")
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith(runtimes)]
    assert [(row[0], row[1]) for row in rows] == [
        (runtime, bits) for runtime in runtimes for bits in ("8", "4")
    ]
    assert all(int(row[2]) == len(exported) and float(row[4]) > 0 for row in rows)


@needs_openvino
def test_merged_sibling_projections_compute_what_the_separate_ones_did():
    """Three products of one input (as q, k, v) and one of another input: the three become one
    product and a split, the lone one stays, and every output is what it was."""
    import openvino as ov
    from openvino import opset13

    from smolvlm_ros.engine.export.openvino_ir import merge_sibling_projections

    rng = np.random.default_rng(0)
    x = opset13.parameter([2, 3, 8], np.float32, name="x")
    y = opset13.parameter([2, 3, 8], np.float32, name="y")
    weights = [rng.standard_normal((rows, 8)).astype(np.float32) for rows in (8, 4, 4, 5)]
    products = [opset13.matmul(x, opset13.constant(w), False, True) for w in weights[:3]]
    products.append(opset13.matmul(y, opset13.constant(weights[3]), False, True))
    model = ov.Model([p.output(0) for p in products], [x, y])
    feed = {"x": rng.standard_normal((2, 3, 8)).astype(np.float32)}
    feed["y"] = rng.standard_normal((2, 3, 8)).astype(np.float32)
    core, exact = ov.Core(), {"INFERENCE_PRECISION_HINT": "f32"}  # the CPU's default may be bf16
    before = core.compile_model(model.clone(), "CPU", exact)(feed)
    assert merge_sibling_projections(model) == 1
    assert sum(op.get_type_name() == "MatMul" for op in model.get_ops()) == 2
    after = core.compile_model(model, "CPU", exact)(feed)
    for index in range(4):
        np.testing.assert_allclose(after[index], before[index], rtol=1e-5, atol=1e-5)


def _resident_kb(paths: list[Path]) -> int:
    """This process's resident kB of its mappings of ``paths`` (from /proc/self/smaps)."""
    wanted = {str(p.resolve()) for p in paths}
    resident, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping
            inside = len(fields) >= 6 and fields[5] in wanted
        elif inside and fields[0] == "Rss:":
            resident += int(fields[1])
    return resident


def test_only_read_only_mappings_of_the_named_files_are_released(tmp_path):
    """A writable mapping of the same file (its pages may hold writes) and other files'
    mappings are never advised away."""
    from smolvlm_ros.engine.backends._mapped_files import read_only_mappings

    weights, other = tmp_path / "decoder.bin", tmp_path / "other.bin"
    weights.touch()
    other.touch()
    maps = tmp_path / "maps"
    maps.write_text(
        f"7f0000000000-7f0000100000 r--s 00000000 fd:01 11 {weights}\n"
        f"7f0000100000-7f0000200000 rw-p 00000000 fd:01 11 {weights}\n"
        f"7f0000200000-7f0000300000 r--p 00000000 fd:01 12 {other}\n"
        "7f0000300000-7f0000400000 rw-p 00000000 00:00 0 \n"
        "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]\n"
    )
    assert read_only_mappings([weights], maps) == [(0x7F0000000000, 0x7F0000100000)]
    assert read_only_mappings([tmp_path / "missing.bin"], maps) == []


@needs_openvino
@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux only (/proc/self/smaps)")
def test_the_weight_files_are_not_kept_resident_after_the_build(loaded, photos):
    """Both graphs are warmed at build, then the mapped export files' pages are given back:
    captions still equal (the packed weights are all the plugin reads), and the files' pages are
    not back in the process afterwards."""
    int8 = ensure_export(loaded, "int8")
    files = [int8.vision_bin, int8.decoder_bin]
    engine = _ov_engine(loaded, int8)
    assert engine.backend.released_bytes > 0
    size_kb = sum(f.stat().st_size for f in files) >> 10
    first = [engine.caption(Frame(image), max_new_tokens=6).token_ids for image in photos.values()]
    assert _resident_kb(files) < 0.05 * size_kb, (_resident_kb(files), size_kb)
    engine.clear_cache()
    again = [engine.caption(Frame(image), max_new_tokens=6).token_ids for image in photos.values()]
    assert again == first


@needs_openvino
def test_the_benchmark_runs_it_beside_the_transformers_anchors(exported, ov_cache, tmp_path):
    """``--backend openvino``: its engine rows first, then the anchors on the torch weights it
    did not need (loaded on first use); float32 tokens agree with plain generate()."""
    out_json = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "smolvlm_ros.bench", "--model", "random:tiny", "--device", "cpu",
         "--dtype", "float32", "--backend", "openvino", "--max-new-tokens", "3",
         "--cameras", "1", "--questions", "2", "--repeats", "1", "--warmup", "0",
         "--copy-mib", "16", "--json", str(out_json)],
        capture_output=True, text=True, cwd=REPO, timeout=300, check=False,
        env={**os.environ, "SMOLVLM_ROS_CACHE": str(ov_cache)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(out_json.read_text())
    env = report["environment"]
    assert env["backend_requested"] == "openvino" and env["backend"].startswith("openvino-")
    (entry,) = report["cameras"]
    assert entry["agreement_with_generate"]["engine"]["identical"] == 1.0
