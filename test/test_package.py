"""The package as users get it: ROS build products, interfaces, launch, config, pip core."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from smolvlm_ros.settings import Settings, schema

REPO = Path(__file__).resolve().parents[1]
PREFIX = Path(os.environ.get("AMENT_PREFIX_PATH", sys.prefix).split(os.pathsep)[0])


@pytest.mark.ros
def test_interfaces_have_the_documented_fields():
    from smolvlm_ros.msg import Caption, Provenance, Timing, VqaAnswer
    from smolvlm_ros.srv import AskQuestion

    assert set(Caption.get_fields_and_field_types()) == {
        "header", "camera", "text", "provenance", "timing"
    }  # fmt: skip
    assert set(VqaAnswer.get_fields_and_field_types()) == {
        "header", "camera", "question", "answer", "answer_type", "yes", "count", "choice",
        "json", "confidence", "provenance", "timing",
    }  # fmt: skip
    assert {"model", "backend", "device", "prompt", "tile_rows", "tile_cols", "tiling_note"} <= set(
        Provenance.get_fields_and_field_types()
    )
    assert set(Timing.get_fields_and_field_types()) == {
        "queue_wait_ms", "preprocess_ms", "encode_ms", "prefill_ms", "decode_ms", "total_ms",
        "prompt_tokens", "image_tokens", "generated_tokens", "finish_reason",
    }  # fmt: skip
    assert AskQuestion.Request.get_fields_and_field_types() == {
        "question": "string",
        "camera": "string",
        "image": "sensor_msgs/Image",
        "max_new_tokens": "uint32",
        "max_age_s": "double",
        "timeout_s": "double",
        "answer_type": "string",
        "options": "sequence<string>",
        "json_schema": "string",
    }
    assert AskQuestion.Response.get_fields_and_field_types() == {
        "success": "boolean",
        "error": "string",
        "answer": "smolvlm_ros/VqaAnswer",
    }


@pytest.mark.ros
def test_ros_install_layout():
    """What `colcon build` installs: the ros2 run executable, launch, config, package.xml."""
    share = PREFIX / "share" / "smolvlm_ros"
    executable = PREFIX / "lib" / "smolvlm_ros" / "vlm_node"
    assert executable.is_file() and os.access(executable, os.X_OK)
    # run by the interpreter the package was built for, not whichever python3 is first on PATH
    interpreter = Path(executable.read_text().splitlines()[0].removeprefix("#!"))
    assert interpreter.is_absolute() and "python" in interpreter.name, interpreter
    assert os.access(interpreter, os.X_OK), interpreter
    for relative in ("launch/vlm.launch.py", "config/vlm.yaml", "package.xml"):
        assert (share / relative).is_file(), relative
    index = PREFIX / "share" / "ament_index" / "resource_index" / "packages" / "smolvlm_ros"
    assert index.is_file()


def test_license_is_the_declared_one():
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "<license>Apache-2.0</license>" in (REPO / "package.xml").read_text()
    assert 'license="Apache-2.0"' in (REPO / "setup.py").read_text()


@pytest.mark.ros
def test_package_xml():
    from catkin_pkg.package import parse_package

    package = parse_package(REPO / "package.xml")
    assert package.name == "smolvlm_ros"
    assert package.get_build_type() == "ament_cmake"
    depends = {d.name for d in package.build_depends + package.exec_depends}
    assert {"rclpy", "std_msgs", "sensor_msgs", "rosidl_default_runtime"} <= depends
    assert "rosidl_interface_packages" in {g.name for g in package.member_of_groups}


def test_default_config_documents_every_parameter_and_is_valid():
    text = (REPO / "config" / "vlm.yaml").read_text()
    params = yaml.safe_load(text)["/**"]["ros__parameters"]
    for name in schema():  # set, or shown in a comment (empty lists cannot be set)
        assert f"    {name}:" in text or f"    # {name}:" in text, name
    assert Settings.from_mapping(params) == Settings()  # the file states the defaults


def test_profiles_are_valid_on_top_of_the_defaults():
    base = yaml.safe_load((REPO / "config" / "vlm.yaml").read_text())["/**"]["ros__parameters"]
    for name in ("cpu", "gpu"):
        profile = yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())
        params = {**base, **profile["/**"]["ros__parameters"]}
        assert Settings.from_mapping(params).device == ("cpu" if name == "cpu" else "cuda")


def test_launch_file_declares_its_arguments():
    """`launch` is not installable here: check the file's structure without running it."""
    source = (REPO / "launch" / "vlm.launch.py").read_text()
    tree = ast.parse(source)
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in functions
    arguments = next(
        n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "ARGUMENTS"
    )
    names = {key.value for key in arguments.keys}
    assert names == {
        "params_file", "namespace", "profile", "model", "backend", "device", "image_topics",
        "image_topic", "use_sim_time", "respawn", "respawn_delay", "autostart",
    }  # fmt: skip
    assert 'executable="vlm_node"' in source and 'package="smolvlm_ros"' in source


def test_core_imports_without_ros():
    """Everything but smolvlm_ros.node must work where rclpy does not exist."""
    code = (
        "import sys; sys.modules['rclpy'] = None\n"
        "import smolvlm_ros.engine, smolvlm_ros.models, smolvlm_ros.pipeline.scheduler\n"
        "import smolvlm_ros.pipeline.intake, smolvlm_ros.photos, smolvlm_ros.tools.sample_bag\n"
        "import smolvlm_ros.bench\n"
        "import smolvlm_ros.pipeline.requests, smolvlm_ros.pipeline.runner\n"
        "import smolvlm_ros.node.supervision\n"
        "import smolvlm_ros.replay.__main__, smolvlm_ros.replay.compare\n"
        "assert not any(m.startswith('rclpy') and sys.modules[m] for m in sys.modules)\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_pip_wheel_holds_the_core(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("smolvlm_ros-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("engine/engine.py", "models/loading.py", "pipeline/scheduler.py"):
        assert f"smolvlm_ros/{module}" in names
    assert not any(name.startswith("smolvlm_ros/msg/") for name in names)
    # the .msg texts, so smolvlm-replay can write Caption / VqaAnswer into bags without ROS
    assert "smolvlm_ros-0.1.0.data/data/share/smolvlm_ros/msg/Caption.msg" in names
    entry_points = zipfile.ZipFile(wheel).read("smolvlm_ros-0.1.0.dist-info/entry_points.txt")
    for script in (b"smolvlm-bench", b"smolvlm-replay", b"smolvlm-compare", b"smolvlm-dataset-bag"):
        assert script in entry_points
    metadata = next(n for n in names if n.endswith("METADATA"))
    requires = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Dist: transformers" in requires
    assert "torch==" not in requires  # a user's own (CUDA) torch must be kept
    # replay's caption metrics: an extra the CLI names when it is missing
    assert "Provides-Extra: scoring" in requires
    assert 'pycocoevalcap>=1.2; extra == "scoring"' in requires
