"""The settings schema and what is derived from it: validation, CLI flags, profiles, README table.

No ROS here: the node's parameters from the same schema are tested over DDS in
test_node_surface.py / test_node.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from smolvlm_ros.settings import Group, Settings, SettingsError, names_in, schema
from smolvlm_ros.settings.docs import BEGIN, END, markdown_table, with_table

REPO = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented_and_grouped():
    for name, setting in schema().items():
        assert setting.spec.description.strip(), name
        assert isinstance(setting.spec.group, Group), name
        assert setting.type in (bool, int, float, str, tuple), name
        if setting.type is tuple:
            assert setting.spec.item in (str, float), name
    assert Settings().validate() == Settings()


def test_readme_parameter_table_is_generated_from_the_schema():
    readme = (REPO / "README.md").read_text()
    assert with_table(readme) == readme, "stale: run `python -m smolvlm_ros.settings --write`"
    table = readme[readme.index(BEGIN) : readme.index(END)]
    for name in schema():
        assert f"| `{name}` |" in table


def test_the_table_changes_when_the_schema_does(monkeypatch):
    """The check above can fail: a setting documented differently makes the README stale."""
    from dataclasses import replace

    import smolvlm_ros.settings.docs as docs

    readme = with_table(f"intro\n{BEGIN}\nold\n{END}\nrest\n")
    assert "| `max_new_tokens` | `32` | 1-4096 | yes |" in readme
    assert readme.startswith("intro\n") and readme.endswith(f"{END}\nrest\n")
    changed = dict(schema())
    setting = changed["max_new_tokens"]
    changed["max_new_tokens"] = replace(setting, spec=replace(setting.spec, description="new"))
    monkeypatch.setattr(docs, "schema", lambda: changed)
    assert with_table(readme) != readme
    assert "| `max_new_tokens` | `32` | 1-4096 | yes | new |" in markdown_table()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens 0: expected 1-4096"),
        ({"max_new_tokens": 1.5}, "max_new_tokens must be an integer, got 1.5"),
        ({"max_new_tokens": True}, "max_new_tokens must be an integer, got True"),
        ({"caption_rate_hz": math.nan}, "caption_rate_hz nan: must be a finite number"),
        ({"caption_rate_hz": -1}, "caption_rate_hz -1.0: expected 0-1000"),
        ({"device": "gpu"}, "device 'gpu': expected one of auto, cpu, cuda"),
        ({"backend": "tensorrt"}, "backend 'tensorrt': expected one of auto, openvino, remote"),
        ({"mosaic": "true"}, "mosaic must be true or false, got 'true'"),
        ({"image_topics": "/cam"}, "image_topics must be a list, got '/cam'"),
        ({"image_topics": []}, "image_topics must list at least one topic"),
        ({"image_topics": ["/a", "/a"]}, "image_topics lists a topic twice"),
        ({"image_topics": ["/a", " "]}, "image_topics has an empty item"),
        ({"questions": ["ok?", ""]}, "questions has an empty item"),
        ({"questions": ["ok?", "choice[A]: Q"]}, "questions: standing question 'choice[A]: Q'"),
        ({"npu_core_mask": "0_3"}, "npu_core_mask '0_3': expected one of auto, 0, 1, 2, 0_1"),
        ({"camera_rates_hz": [1, "a"]}, "camera_rates_hz must be a number, got 'a'"),
        ({"camera_rates_hz": [1.0, 2.0]}, "camera_rates_hz has 2 values for 1 image_topics"),
        ({"camera_priorities": [0.0]}, "camera_priorities [0.0]: expected 0.001-1000"),
        ({"caption_prompt": "  "}, "caption_prompt is empty"),
        ({"model": ""}, "model is empty"),
        ({"qos_reliability": "lossy"}, "expected one of best_effort, reliable"),
        ({"max_tiles": -1}, "max_tiles -1: expected 0-1024"),
        ({"capton_rate_hz": 1.0}, "unknown setting(s) capton_rate_hz; known: image_topics"),
    ],
)
def test_bad_values_are_refused_naming_the_setting(values, message):
    with pytest.raises(SettingsError) as info:
        Settings.from_mapping(values)
    assert message in str(info.value)


def test_loose_values_are_coerced_as_yaml_writes_them():
    settings = Settings.from_mapping(
        {"image_topics": ["/a", "/b"], "camera_rates_hz": [1, 2.5], "caption_rate_hz": 2}
    )
    assert settings.camera_rates_hz == (1.0, 2.5) and settings.caption_rate_hz == 2.0
    assert isinstance(settings.caption_rate_hz, float) and settings.image_topics == ("/a", "/b")
    assert settings.engine_config().tiling.max_tiles is None  # 0 means no cap
    assert Settings.from_mapping({"max_tiles": 4}).engine_config().tiling.max_tiles == 4


def _params(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text())["/**"]["ros__parameters"]


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "config").glob("*.yaml")))
def test_every_profile_is_valid_on_top_of_the_defaults(name):
    settings = Settings.from_mapping({**_params("vlm.yaml"), **_params(name)})
    assert settings.validate() is settings


def test_a_profile_with_a_typo_is_refused(tmp_path):
    params = {**_params("gpu.yaml"), "max_tile": 4}
    with pytest.raises(SettingsError, match=r"unknown setting.*max_tile;"):
        Settings.from_mapping(params)


# -- command-line flags ------------------------------------------------------------------------


def _replay_args(tmp_path: Path, *flags: str):
    from smolvlm_ros.replay.__main__ import parse_args

    bag = tmp_path / "bag"
    bag.mkdir(exist_ok=True)
    (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    return parse_args([str(bag), "--out", str(tmp_path / "out"), *flags])


def _bench_args(tmp_path: Path, *flags: str):
    from smolvlm_ros.bench import parse_args

    return parse_args([*flags])


FRONT_ENDS = {"replay": _replay_args, "bench": _bench_args}
EVERY_ENGINE_AND_TILING_FLAG = [
    "--model", "random:tiny", "--backend", "torch", "--device", "cpu", "--dtype", "float32",
    "--compile", "off", "--cpu-threads", "3", "--quantization", "int8", "--image-splitting",
    "--image-longest-edge", "1024", "--max-tiles", "4",
    "--max-image-tokens", "640", "--allow-upsampling", "--rknn-model", "/npu/m",
    "--npu-core-mask", "0_1",
]  # fmt: skip


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
def test_every_engine_and_tiling_setting_is_a_flag(tmp_path, front_end):
    settings = FRONT_ENDS[front_end](tmp_path, *EVERY_ENGINE_AND_TILING_FLAG).settings
    assert {name for name in names_in(Group.ENGINE, Group.TILING)} == {
        "model", "backend", "device", "dtype", "compile", "cpu_threads", "quantization",
        "image_splitting", "image_longest_edge", "max_tiles", "max_image_tokens",
        "allow_upsampling", "rknn_model", "npu_core_mask",
    }  # fmt: skip
    config = settings.engine_config()
    assert (config.model, config.backend, config.device, config.dtype, config.compile) == (
        "random:tiny", "torch", "cpu", "float32", "off",
    )  # fmt: skip
    assert (config.cpu_threads, config.quantization) == (3, "int8")
    assert (config.rknn_model, config.npu_core_mask) == ("/npu/m", "0_1")
    tiling = config.tiling
    assert tiling.image_splitting and tiling.allow_upsampling
    assert (tiling.longest_edge, tiling.max_tiles, tiling.max_image_tokens) == (1024, 4, 640)


def test_demo_exposes_the_same_flags():
    import argparse

    from smolvlm_ros.settings.cli import add_setting_flags
    from smolvlm_ros.tools.demo import DEMO_SETTINGS

    assert set(names_in(Group.ENGINE, Group.TILING)) <= set(DEMO_SETTINGS)
    parser = argparse.ArgumentParser()
    add_setting_flags(parser, DEMO_SETTINGS)
    flags = {a for action in parser._actions for a in action.option_strings}
    assert {schema()[name].flag for name in DEMO_SETTINGS} <= flags


@pytest.mark.parametrize("front_end", sorted(FRONT_ENDS))
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-new-tokens", "0"], "--max-new-tokens: max_new_tokens 0: expected 1-4096"),
        (["--device", "gpu"], "--device: device 'gpu': expected one of auto, cpu, cuda"),
        (["--max-tiles", "x"], "argument --max-tiles: invalid int value: 'x'"),
    ],
)
def test_bad_flags_exit_with_the_schemas_message(tmp_path, capsys, front_end, flags, message):
    with pytest.raises(SystemExit) as info:
        FRONT_ENDS[front_end](tmp_path, *flags)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_flags_left_out_keep_the_front_ends_own_defaults(tmp_path):
    bench = _bench_args(tmp_path).settings
    assert bench.model == "random:256m" and bench.max_new_tokens == Settings().max_new_tokens
    replay = _replay_args(tmp_path, "--questions", "Is it open?", "Any people?").settings
    assert replay.questions == ("Is it open?", "Any people?") and replay.model == Settings().model


def test_backend_settings_reach_the_backend_options():
    settings = Settings.from_mapping(
        {"backend": "rknn", "rknn_model": "~/npu/smolvlm", "npu_core_mask": "0_1_2",
         "quantization": "int8", "cpu_threads": 3}
    )  # fmt: skip
    options = settings.engine_config().backend_options()
    assert (options.rknn_model, options.npu_core_mask) == ("~/npu/smolvlm", "0_1_2")
    assert (options.quantization, options.cpu_threads, options.remote) == ("int8", 3, None)
