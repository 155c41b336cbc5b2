"""The node's ROS parameters, derived from the settings schema (smolvlm_ros/settings).

Every setting becomes a parameter with the same name, default and description; ranges become
integer ranges (`ros2 param describe`), and settings that cannot change at run time are
read-only. Values go through the schema's own validation, at start-up and on every
`ros2 param set`, so the node, a YAML file and the command-line tools refuse the same values
with the same messages.
"""

from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import IntegerRange, ParameterDescriptor
from rclpy.exceptions import ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter

from smolvlm_ros.settings import Setting, Settings, SettingsError, schema

# Parameters ROS itself uses (QoS overrides, sim time): never "unknown".
_ROS_OWN = ("qos_overrides.", "use_sim_time", "start_type_description_service")


def _descriptor(setting: Setting) -> ParameterDescriptor:
    numeric = setting.type is float or setting.spec.item is float
    allowed = setting.range_text()
    descriptor = ParameterDescriptor(
        description=setting.spec.description + (f" [{allowed}]" if allowed else ""),
        read_only=not setting.spec.live,  # model, device, topics, tiling: a new configuration
        # YAML writes `2` or `[1, 2]` for these: accept integers for float parameters.
        dynamic_typing=numeric,
    )
    if setting.type is int and setting.spec.minimum is not None:
        descriptor.integer_range = [
            IntegerRange(
                from_value=int(setting.spec.minimum), to_value=int(setting.spec.maximum), step=1
            )
        ]
    return descriptor


def _initial(setting: Setting) -> Any:
    """What to declare: a value, or a type for lists ROS cannot infer from an empty default."""
    if setting.spec.item is float:
        return None  # dynamically typed: YAML may give [1, 2] or [1.0, 2.5]
    if setting.type is tuple:
        return list(setting.default) if setting.default else Parameter.Type.STRING_ARRAY
    return setting.default


def declare_setting(node: Node, name: str) -> Any:
    """Declare one setting as a parameter (once) and return its raw value; ``autostart`` is
    needed before the node is configured, the others are declared at the first configure."""
    if node.has_parameter(name):  # a later configure: the value as set since
        try:
            return node.get_parameter(name).value
        except ParameterUninitializedException:  # a list declared by type, never given
            return None
    setting = schema()[name]
    return node.declare_parameter(name, _initial(setting), _descriptor(setting)).value


def declare_parameters(node: Node) -> Settings:
    """Declare every setting on ``node`` (those not declared yet) and return the validated
    settings it was given, at every configure;
    :class:`SettingsError` names a bad value or an unknown parameter (a typo in the YAML, which
    ROS alone would ignore)."""
    values = {}
    for name in schema():
        value = declare_setting(node, name)
        if value is not None:
            values[name] = value
    unknown = sorted(
        name
        for name in node._parameter_overrides
        if not node.has_parameter(name) and not name.startswith(_ROS_OWN)
    )
    if unknown:
        raise SettingsError(
            f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(schema())}"
        )
    return Settings.from_mapping(values)


def changed_settings(current: Settings, params: list[Parameter]) -> Settings | None:
    """``current`` with the live settings among ``params`` applied and validated, or None if
    none of them is ours (ROS has already refused read-only ones)."""
    ours = {p.name: p.value for p in params if p.name in schema()}
    if not ours:
        return None
    return Settings.from_mapping(ours, current)
