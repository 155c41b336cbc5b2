"""The backend registry: names, capabilities, `auto`, clear refusals, discovery (no rclpy)."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from smolvlm_ros.engine import (
    BackendError,
    Capability,
    Engine,
    EngineConfig,
    Frame,
    backend_names,
    backend_problems,
)
from smolvlm_ros.engine.backends import registry
from smolvlm_ros.engine.backends.registry import BackendSpec, Registry, choose, module_check
from smolvlm_ros.engine.backends.torch_backend import TorchBackend

MISSING = "smolvlm_ros_no_such_runtime"  # a module that is not installed anywhere
# What auto runs on a CPU: the OpenVINO backend where it is installed (requirements/cpu.txt).
CPU_AUTO = "openvino" if importlib.util.find_spec("openvino") else "torch"


def _plain_build(loaded, options=None):
    """Torch underneath, but registered with no capabilities: the engine must not rely on any."""
    backend = TorchBackend(loaded.model, loaded.device, loaded.dtype)
    backend.name = "plain"
    return backend


def _never_built(loaded, options=None):
    raise AssertionError("an unavailable backend was built")


@pytest.fixture
def test_backends():
    """Two backends registered at runtime, the way a new module would at its import."""
    specs = [
        BackendSpec(
            name="fastcpu",
            devices=("cpu",),
            dtypes=("float32",),
            build=_never_built,
            capabilities=frozenset({Capability.BATCHING}),
            priority={"cpu": 100},  # would beat torch, were it installed
            available=module_check(MISSING, "pip install -r requirements/cpu.txt", "fastruntime"),
        ),
        BackendSpec(
            name="plain", devices=("cpu",), dtypes=("float32",), build=_plain_build, priority={}
        ),
    ]
    for spec in specs:
        registry.register(spec)
    try:
        yield specs
    finally:
        for spec in specs:
            registry.unregister(spec.name)


def test_torch_is_registered_with_its_devices_dtypes_and_capabilities():
    assert "torch" in backend_names()
    spec = registry.get_backend("torch")
    assert spec.devices == ("cpu", "cuda")
    assert set(spec.dtypes) == {"float32", "bfloat16", "float16"}
    assert all(spec.supports(c) for c in Capability)
    assert spec.module == "smolvlm_ros.engine.backends.torch_backend"
    assert "torch" not in backend_problems()


def test_auto_picks_the_best_installed_backend_on_cpu_and_says_why():
    choice = choose("auto", "cpu")
    assert choice.name == CPU_AUTO
    assert choice.reason.startswith(f"auto: {CPU_AUTO} is the best available backend for cpu")
    assert choose("torch", "cpu").reason == "asked for torch"
    assert choose("auto", "cuda:0").name == "torch_static"  # a device index: the same device


def test_unknown_backend_lists_the_registered_ones():
    with pytest.raises(BackendError, match=r"unknown backend 'nope': expected one of auto"):
        choose("nope", "cpu")


def test_unsupported_device_and_dtype_say_what_to_do():
    with pytest.raises(BackendError, match=r"'torch' does not run on npu \(it runs on cpu, cuda\)"):
        choose("torch", "npu")
    with pytest.raises(BackendError, match=r"does not support dtype int8 .*set the dtype"):
        choose("torch", "cpu", "int8")
    with pytest.raises(BackendError, match="no backend is available for npu"):
        choose("auto", "npu")


def test_a_backend_registered_at_runtime_is_seen_and_auto_skips_it_when_unavailable(
    test_backends,
):
    assert {"fastcpu", "plain"} <= set(backend_names())
    problems = backend_problems()
    assert problems["fastcpu"] == (
        "fastruntime is not installed: pip install -r requirements/cpu.txt"
    )
    choice = choose("auto", "cpu")
    assert choice.name == CPU_AUTO  # fastcpu ranks higher but is not installed; plain lower
    # (other unavailable CPU backends, rknn off the board, are listed beside it)
    assert "fastcpu: fastruntime is not installed: pip install -r requirements/cpu.txt" in (
        choice.reason
    )
    assert ("fastcpu", problems["fastcpu"]) in choice.skipped
    with pytest.raises(BackendError, match="'fastcpu' is not available: fastruntime is not inst"):
        choose("fastcpu", "cpu")
    assert choose("plain", "cpu").reason == "asked for plain"
    with pytest.raises(BackendError, match="does not run on cuda"):
        choose("plain", "cuda")


def test_auto_with_a_dtype_skips_backends_that_lack_it(test_backends):
    registry.unregister("fastcpu")
    registry.register(
        BackendSpec("fastcpu", ("cpu",), ("float32",), _never_built, priority={"cpu": 100})
    )
    assert choose("auto", "cpu").name == "fastcpu"
    choice = choose("auto", "cpu", "bfloat16")
    assert choice.name == CPU_AUTO
    assert "fastcpu: does not support bfloat16" in choice.reason


def test_a_failing_availability_check_is_a_reason_not_a_crash():
    def broken_check():
        raise RuntimeError("driver probe exploded")

    reg = Registry(package=None)
    reg.register(BackendSpec("npu1", ("npu",), ("float16",), _never_built, available=broken_check))
    with pytest.raises(BackendError, match="availability check failed: RuntimeError: driver probe"):
        reg.choose("npu1", "npu")
    with pytest.raises(BackendError, match=r"no backend is available for npu \(npu1: its avail"):
        reg.choose("auto", "npu")


def test_bad_specs_are_refused():
    reg = Registry(package=None)
    with pytest.raises(BackendError, match="lower-case identifier"):
        reg.register(BackendSpec("auto", ("cpu",), ("float32",), _never_built))
    with pytest.raises(BackendError, match="priority for devices it does not run on"):
        reg.register(BackendSpec("x", ("cpu",), ("float32",), _never_built, priority={"cuda": 1}))
    reg.register(BackendSpec("x", ("cpu",), ("float32",), _never_built), module="one")
    with pytest.raises(BackendError, match="registered twice: by one and by two"):
        reg.register(BackendSpec("x", ("cpu",), ("float32",), _never_built), module="two")


def test_discovery_imports_each_module_once_and_reports_a_broken_one(tmp_path, monkeypatch):
    package = tmp_path / "fake_backends"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "good_backend.py").write_text("IMPORTS = globals().get('IMPORTS', 0) + 1\n")
    (package / "onnx_backend.py").write_text(f"import {MISSING}\n")
    (package / "_helpers.py").write_text("raise RuntimeError('private: never imported')\n")
    (package / "base.py").write_text("raise RuntimeError('the seam: never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry("fake_backends")
    reg.register(registry.get_backend("torch"))

    reg.discover()
    reg.discover()
    assert sys.modules["fake_backends.good_backend"].IMPORTS == 1
    assert "fake_backends._helpers" not in sys.modules
    assert "fake_backends.base" not in sys.modules
    why = reg.problems()["fake_backends.onnx_backend"]
    assert why == f"import failed: ModuleNotFoundError: No module named '{MISSING}'"
    choice = reg.choose("auto", "cpu")
    assert choice.name == "torch"
    assert f"onnx: {why}" in choice.reason
    with pytest.raises(BackendError, match=r"'onnx' is not available: fake_backends\.onnx_backend"):
        reg.choose("onnx", "cpu")
    assert reg.names() == ("torch",)
    for name in [m for m in sys.modules if m.startswith("fake_backends")]:
        monkeypatch.delitem(sys.modules, name)


def test_engine_on_auto_equals_torch_and_reports_the_choice(tiny_engine, photos):
    auto_engine = Engine.from_config(EngineConfig("random:tiny", device="cpu", dtype="float32"))
    assert EngineConfig("random:tiny").backend == "auto"
    assert auto_engine.backend_choice.name == CPU_AUTO
    assert auto_engine.backend_choice.reason.startswith(f"auto: {CPU_AUTO} is the best available")
    assert tiny_engine.backend_choice.reason == "asked for torch"
    frame = Frame(photos["rocket"])
    auto = auto_engine.caption(frame, max_new_tokens=10)
    asked = tiny_engine.caption(frame, max_new_tokens=10)
    assert auto.token_ids == asked.token_ids  # float32: every CPU backend is exact
    assert auto.backend.startswith(CPU_AUTO) and asked.backend == "torch"
    assert isinstance(auto_engine.backend.language.eos_ids, frozenset)


def test_an_unavailable_backend_fails_before_loading_the_model(test_backends):
    with pytest.raises(BackendError, match="fastruntime is not installed"):
        Engine.from_config(EngineConfig("no/such-model", device="cpu", backend="fastcpu"))


def test_the_engine_does_without_capabilities_the_backend_lacks(tiny_engine, photos, test_backends):
    """A backend with no batching, streaming or prefix reuse gives the same answers."""
    choice = choose("plain", "cpu")
    plain = Engine(tiny_engine.loaded, choice.spec.build(tiny_engine.loaded), backend_choice=choice)
    assert not any(plain.supports(c) for c in Capability)
    assert all(tiny_engine.supports(c) for c in Capability)
    frame = Frame(photos["coffee"])
    questions = ["What is this?", "Is there a cup?"]
    answers = plain.ask_many(frame, questions, max_new_tokens=6)
    assert [a.token_ids for a in answers] == [
        a.token_ids for a in tiny_engine.ask_many(frame, questions, max_new_tokens=6)
    ]
    assert {a.backend for a in answers} == {"plain"}
    frames = [Frame(photos["coffee"]), Frame(photos["rocket"])]
    assert [r.token_ids for r in plain.caption_batch(frames, max_new_tokens=4)] == [
        r.token_ids for r in tiny_engine.caption_batch(frames, max_new_tokens=4)
    ]
    seen: list[int] = []
    streamed = plain.caption(frame, max_new_tokens=5, on_token=seen.append)
    assert seen == streamed.token_ids
