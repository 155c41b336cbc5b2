"""Launch vlm_node.

    ros2 launch smolvlm_ros vlm.launch.py
    ros2 launch smolvlm_ros vlm.launch.py model:=random:256m image_topic:=/front/image_raw
    ros2 launch smolvlm_ros vlm.launch.py params_file:=/path/to/my.yaml namespace:=robot1
    ros2 launch smolvlm_ros vlm.launch.py profile:=gpu image_topics:="['/front/img', '/rear/img']"
    ros2 launch smolvlm_ros vlm.launch.py respawn:=true   # restart after an internal failure

`profile` (cpu | gpu) loads config/<profile>.yaml on top of the parameters file; `model`,
`backend`, `device` and `image_topics` override both when given; `image_topic` remaps the
default camera topic /camera/image_raw, so a camera driver is wired in without editing YAML.
"""

import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

ARGUMENTS = {
    # name: (default, description); params_file's default is filled in below
    "params_file": (None, "YAML file with the node's parameters"),
    "namespace": ("", "Namespace of the node (and so of ~/caption and ~/ask)"),
    "profile": ("", "Hardware profile loaded on top of params_file: cpu | gpu (empty: none)"),
    "model": ("", "Override `model`: hub id, checkpoint directory or random:<shape>"),
    "backend": ("", "Override `backend`: torch"),
    "device": ("", "Override `device`: auto | cpu | cuda"),
    "image_topics": ("", "Override `image_topics`, as YAML: \"['/a/image_raw', '/b/image_raw']\""),
    "image_topic": (
        "/camera/image_raw",
        "Topic the default camera /camera/image_raw is remapped to",
    ),
    "use_sim_time": ("false", "Follow /clock (rosbag replay with --clock)"),
    "respawn": (
        "false",
        "Start the node again when it exits non-zero (2: stuck model or a worker that kept dying)",
    ),
    "respawn_delay": ("5.0", "Seconds before a respawn"),
}


def _node(context):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    overrides = {"use_sim_time": arg("use_sim_time").lower() in ("true", "1", "yes")}
    for name in ("model", "backend", "device"):
        if arg(name):
            overrides[name] = arg(name)
    if arg("image_topics"):
        topics = yaml.safe_load(arg("image_topics"))
        overrides["image_topics"] = [topics] if isinstance(topics, str) else list(topics)
    files = [arg("params_file")]
    if arg("profile"):
        profile = os.path.join(
            get_package_share_directory("smolvlm_ros"), "config", f"{arg('profile')}.yaml"
        )
        if not os.path.isfile(profile):
            raise RuntimeError(f"profile {arg('profile')!r}: no {profile} (cpu | gpu)")
        files.append(profile)
    return [
        Node(
            package="smolvlm_ros",
            executable="vlm_node",
            name="smolvlm",
            namespace=arg("namespace"),
            output="screen",
            emulate_tty=True,
            parameters=[*files, overrides],
            remappings=[("/camera/image_raw", arg("image_topic"))],
            respawn=arg("respawn").lower() in ("true", "1", "yes"),
            respawn_delay=float(arg("respawn_delay")),
        )
    ]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("smolvlm_ros")
    defaults = dict(ARGUMENTS)
    defaults["params_file"] = (
        os.path.join(share, "config", "vlm.yaml"),
        ARGUMENTS["params_file"][1],
    )
    declared = [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, (default, description) in defaults.items()
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_node)])
