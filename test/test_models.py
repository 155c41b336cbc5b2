"""random:<shape> checkpoints: the real architectures, deterministic, loaded like real ones."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from smolvlm_ros.models import SHAPES, ModelLoadError, get_shape, load_model, resolve_model_path
from smolvlm_ros.models.random_checkpoint import (
    MARKER_FILE,
    build_checkpoint,
    build_config,
    build_tokenizer,
    ensure_random_checkpoint,
)

# Parameter counts of the public checkpoints (model cards / safetensors metadata).
PUBLIC_PARAMS = {"256m": 256.5e6, "500m": 507.5e6, "2b": 2246e6}


@pytest.mark.parametrize("name", sorted(PUBLIC_PARAMS))
def test_shapes_have_the_public_parameter_counts(name):
    from transformers import Idefics3ForConditionalGeneration

    with torch.device("meta"):  # shapes only, no memory
        model = Idefics3ForConditionalGeneration(build_config(get_shape(name)))
    params = sum(p.numel() for p in model.parameters())
    assert params == pytest.approx(PUBLIC_PARAMS[name], rel=0.003)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_tokenizer_puts_special_tokens_on_the_public_ids(name):
    shape = get_shape(name)
    tok = build_tokenizer(shape)
    assert len(tok) == shape.vocab_size
    for token, expected in (("<|endoftext|>", 0), ("<|im_start|>", 1), ("<|im_end|>", 2)):
        assert tok.convert_tokens_to_ids(token) == expected
    expected_ids = {
        "256m": {"<image>": 49190, "<fake_token_around_image>": 49189, "<end_of_utterance>": 49279},
        "2b": {"<image>": 49153, "<fake_token_around_image>": 49152, "<end_of_utterance>": 49154},
    }.get(name, {"<image>": 49190, "<end_of_utterance>": 49279})
    for token, expected in expected_ids.items():
        assert tok.convert_tokens_to_ids(token) == expected
    if name != "2b":
        assert tok.convert_tokens_to_ids("<global-img>") == 49152
        assert tok.convert_tokens_to_ids("<row_6_col_6>") == 49188


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_is_deterministic(tmp_path):
    shape = get_shape("tiny")
    a = build_checkpoint(shape, tmp_path / "a")
    b = build_checkpoint(shape, tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert _digest(a / name) == _digest(b / name), name


def test_ensure_builds_once_and_reuses(tmp_path):
    shape = get_shape("tiny")
    first = ensure_random_checkpoint(shape, tmp_path)
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_random_checkpoint(shape, tmp_path) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((first / MARKER_FILE).read_text())["shape"] == "tiny"
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no staging left behind


def test_a_checkpoint_directory_loads_like_a_downloaded_one(tmp_path):
    """A local directory goes through from_pretrained; the chat prompt is SmolVLM's."""
    path = build_checkpoint(get_shape("tiny"), tmp_path / "ckpt")
    loaded = load_model(str(path), device="cpu", dtype="float32")
    assert not loaded.is_random  # a directory is taken as a real checkpoint
    assert loaded.model.config.model_type == "idefics3"
    assert next(loaded.model.parameters()).dtype == torch.float32
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi?"}]}]
    prompt = loaded.processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "<|im_start|>User:<image>Hi?<end_of_utterance>\nAssistant:"


def test_random_spec_is_marked_random():
    loaded = load_model("random:tiny", device="cpu", dtype="bfloat16")
    assert loaded.is_random and loaded.spec == "random:tiny"
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "model is empty"),
        ("random:huge", "unknown model shape 'huge': expected one of tiny, 256m, 500m, 2b"),
        ("/no/such/checkpoint", "model directory '/no/such/checkpoint' does not exist"),
        ("./relative/missing", "does not exist"),
    ],
)
def test_bad_model_specs_are_explained(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        resolve_model_path(spec)


def test_a_directory_without_config_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match=r"has no config\.json: not a checkpoint"):
        resolve_model_path(str(tmp_path))


def test_an_unreachable_hub_id_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(ModelLoadError, match="needs network access or a copy in the Hugging Face"):
        load_model("HuggingFaceTB/SmolVLM-256M-Instruct", device="cpu")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": "tpu"}, "device 'tpu'"),
        ({"dtype": "int4"}, "dtype 'int4'"),
    ],
)
def test_bad_device_or_dtype(kwargs, message):
    with pytest.raises(ModelLoadError, match=message):
        load_model("random:tiny", **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_a_gpu_is_an_error():
    with pytest.raises(ModelLoadError, match="torch sees no CUDA GPU"):
        load_model("random:tiny", device="cuda")
