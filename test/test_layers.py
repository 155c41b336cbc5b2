"""The layers, enforced: which part of smolvlm_ros may import which, and where ROS may be used.

    models -> engine -> pipeline -> settings -> node        (each may use those to its left)
    replay, bench: use engine and pipeline (and settings), never node or tools
    tools: on top, may use anything

models, engine, pipeline, settings, replay and bench never import ROS (rclpy, message packages,
the generated smolvlm_ros.msg / srv / action), so they work where ROS is not installed; only
node, tools and replay/live.py (a DDS client) may. Every import counts, function-level ones too.
Tests are split the same way: a module that needs ROS is marked ``ros`` (``-m "not ros"`` runs
the core alone).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "smolvlm_ros"

# Each layer and the layers it may import (its own always).
BASE = {"compat", "photos", "interfaces"}  # plain helpers anyone may use
CORE = {"compat", "models", "engine", "pipeline", "settings"}
ALLOWED: dict[str, set[str]] = {
    "package": set(),  # smolvlm_ros/__init__.py
    "compat": set(),
    "photos": set(),  # sample photographs
    "interfaces": set(),  # the .msg definitions as rosbags types
    "models": {"compat"},
    "engine": {"compat", "models", "photos"},  # photos: int8 calibration of an export
    "pipeline": {"compat", "models", "engine"},
    "settings": {"compat", "models", "engine", "pipeline"},
    "node": CORE | BASE,
    "replay": CORE | BASE,
    "bench": CORE | BASE,
    "tools": CORE | BASE | {"node", "replay", "bench"},
}
# Where ROS may be imported: these layers, and these files of other layers.
ROS_LAYERS = {"node", "tools"}
ROS_FILES = {"replay/live.py"}
ROS_PACKAGES = {
    "rclpy", "rcl_interfaces", "rosidl_runtime_py", "builtin_interfaces", "std_msgs",
    "sensor_msgs", "rosgraph_msgs", "diagnostic_msgs", "action_msgs", "lifecycle_msgs",
    "unique_identifier_msgs", "composition_interfaces", "launch", "launch_ros",
    "ament_index_python", "catkin_pkg",
}  # fmt: skip
GENERATED = {"msg", "srv", "action"}  # smolvlm_ros.msg etc.: built by rosidl, need ROS


def layer_of(relative: Path) -> str:
    """The layer of a file, from its path inside the package."""
    if len(relative.parts) == 1:
        stem = relative.stem
        return "package" if stem == "__init__" else stem
    return relative.parts[0]


def imported_modules(tree: ast.AST, module: str) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of every import anywhere in the file, relative ones resolved."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = module.split(".")[: -node.level]
                base = ".".join(parent + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base == PACKAGE:  # from smolvlm_ros import engine
                for alias in node.names:
                    yield node.lineno, f"{PACKAGE}.{alias.name}"
            else:
                yield node.lineno, base


def is_ros(name: str) -> bool:
    parts = name.split(".")
    if parts[0] == PACKAGE:
        return len(parts) > 1 and parts[1] in GENERATED
    return parts[0] in ROS_PACKAGES


def violations(root: Path) -> list[str]:
    """Every import under ``root`` (a smolvlm_ros package directory) that breaks the layers."""
    found = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        layer = layer_of(relative)
        module = ".".join((PACKAGE, *relative.with_suffix("").parts))
        if relative.name == "__init__.py":
            module = module.rsplit(".", 1)[0] + ".__init__"
        where = f"{PACKAGE}/{relative.as_posix()}"
        if layer not in ALLOWED:
            found.append(f"{where}: layer {layer!r} is not in the table of test_layers.py")
            continue
        ros_ok = layer in ROS_LAYERS or relative.as_posix() in ROS_FILES
        for line, name in imported_modules(ast.parse(path.read_text(), str(path)), module):
            if is_ros(name):
                if not ros_ok:
                    found.append(f"{where}:{line}: {layer} may not import ROS ({name})")
                continue
            parts = name.split(".")
            if parts[0] != PACKAGE or len(parts) == 1:
                continue
            target = layer_of(Path(*parts[1:]).with_suffix(".py"))
            if target != layer and target not in ALLOWED[layer]:
                found.append(f"{where}:{line}: {layer} may not import {target} ({name})")
    return found


def test_the_package_keeps_its_layers():
    assert violations(REPO / PACKAGE) == []


def test_the_checker_finds_wrong_imports(tmp_path):
    root = tmp_path / PACKAGE
    for folder in ("engine", "pipeline", "replay", "tools"):
        (root / folder).mkdir(parents=True)
        (root / folder / "__init__.py").write_text("")
    (root / "engine" / "fine.py").write_text("import numpy\nfrom smolvlm_ros.models import x\n")
    (root / "engine" / "bad.py").write_text(
        "import rclpy\n\n\ndef later():\n    from smolvlm_ros.pipeline import scheduler\n"
    )
    (root / "pipeline" / "relative.py").write_text("from ..node import vlm_node\n")
    (root / "replay" / "run.py").write_text("from smolvlm_ros import tools\n")
    (root / "replay" / "live.py").write_text("import rclpy\nfrom sensor_msgs.msg import Image\n")
    (root / "replay" / "outputs.py").write_text("from smolvlm_ros.msg import Caption\n")
    (root / "tools" / "demo.py").write_text("import rclpy\nfrom smolvlm_ros.node import main\n")
    (root / "gadgets").mkdir()
    (root / "gadgets" / "x.py").write_text("")
    assert violations(root) == [
        f"{PACKAGE}/engine/bad.py:1: engine may not import ROS (rclpy)",
        f"{PACKAGE}/engine/bad.py:5: engine may not import pipeline (smolvlm_ros.pipeline)",
        f"{PACKAGE}/gadgets/x.py: layer 'gadgets' is not in the table of test_layers.py",
        f"{PACKAGE}/pipeline/relative.py:1: pipeline may not import node (smolvlm_ros.node)",
        f"{PACKAGE}/replay/outputs.py:1: replay may not import ROS (smolvlm_ros.msg)",
        f"{PACKAGE}/replay/run.py:1: replay may not import tools (smolvlm_ros.tools)",
    ]


# -- tests: the ROS group is marked -------------------------------------------------------------

ROS_TEST_HELPERS = {"ros_helpers", "faulty_node"}


def _marked_ros(decorators: list[ast.expr]) -> bool:
    return any("pytest.mark.ros" in ast.unparse(d) for d in decorators)


def unmarked_ros_tests(test_dir: Path) -> list[str]:
    """Test modules (or tests) that need ROS without the ``ros`` marker: those importing rclpy,
    a ROS message package, smolvlm_ros.msg/srv/action or ros_helpers, or using the ``ros``
    fixture (a node over DDS)."""

    def needs_ros(node: ast.AST) -> bool:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                names = [a.name for a in sub.names]
            elif isinstance(sub, ast.ImportFrom) and not sub.level:
                names = [sub.module or ""]
                if sub.module == PACKAGE:
                    names = [f"{PACKAGE}.{a.name}" for a in sub.names]
            else:
                continue
            if any(is_ros(n) or n.split(".")[0] in ROS_TEST_HELPERS for n in names):
                return True
        return False

    found = []
    for path in sorted(test_dir.glob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        module_marked = any(
            isinstance(stmt, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in stmt.targets)
            and "pytest.mark.ros" in ast.unparse(stmt.value)
            for stmt in tree.body
        )
        if module_marked:
            continue
        top_level = [s for s in tree.body if isinstance(s, ast.Import | ast.ImportFrom)]
        if any(needs_ros(s) for s in top_level):
            found.append(f"{path.name}: imports ROS but has no pytestmark = pytest.mark.ros")
            continue
        for stmt in tree.body:
            if not isinstance(stmt, ast.FunctionDef | ast.ClassDef) or _marked_ros(
                stmt.decorator_list
            ):
                continue
            args = stmt.args.args if isinstance(stmt, ast.FunctionDef) else []
            if needs_ros(stmt) or any(a.arg == "ros" for a in args):
                found.append(f"{path.name}::{stmt.name}: needs ROS but is not marked ros")
    return found


def test_every_test_that_needs_ros_is_marked():
    assert unmarked_ros_tests(REPO / "test") == []


def test_the_marker_check_finds_unmarked_tests(tmp_path):
    (tmp_path / "test_a.py").write_text("import rclpy\n")
    (tmp_path / "test_b.py").write_text(
        "import pytest\nfrom ros_helpers import NodeProcess\npytestmark = [pytest.mark.ros]\n"
    )
    (tmp_path / "test_c.py").write_text(
        "import pytest\n\n\n@pytest.mark.ros\ndef test_marked():\n    import rclpy\n\n\n"
        "def test_unmarked():\n    from smolvlm_ros.msg import Caption\n\n\n"
        "def test_fixture(ros):\n    pass\n\n\ndef test_core():\n    import numpy\n"
    )
    assert unmarked_ros_tests(tmp_path) == [
        "test_a.py: imports ROS but has no pytestmark = pytest.mark.ros",
        "test_c.py::test_unmarked: needs ROS but is not marked ros",
        "test_c.py::test_fixture: needs ROS but is not marked ros",
    ]


@pytest.mark.parametrize("name", ["rclpy.node", "sensor_msgs.msg", "smolvlm_ros.srv"])
def test_ros_names(name):
    assert is_ros(name)
    assert not is_ros("smolvlm_ros.engine") and not is_ros("rosbags.highlevel")
