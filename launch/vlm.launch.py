"""Launch vlm_node.

    ros2 launch smolvlm_ros vlm.launch.py
    ros2 launch smolvlm_ros vlm.launch.py model:=random:256m image_topic:=/front/image_raw
    ros2 launch smolvlm_ros vlm.launch.py params_file:=/path/to/my.yaml namespace:=robot1
    ros2 launch smolvlm_ros vlm.launch.py profile:=gpu image_topics:="['/front/img', '/rear/img']"
    ros2 launch smolvlm_ros vlm.launch.py respawn:=true   # restart after an internal failure
    ros2 launch smolvlm_ros vlm.launch.py autostart:=false  # then: ros2 lifecycle set /smolvlm ...

`profile` (cpu | gpu | remote) loads config/<profile>.yaml on top of the parameters file; `model`,
`backend`, `device` and `image_topics` override both when given; `image_topic` remaps the
default camera topic /camera/image_raw, so a camera driver is wired in without editing YAML.

The node is a lifecycle node: with `autostart:=true` (the default) it configures and activates
itself; with `autostart:=false` it waits unconfigured for `ros2 lifecycle set` or a lifecycle
manager. A node that exits non-zero ends the launch with a non-zero exit code (launch itself
would exit 0): start-up failures (exit code 1: a bad parameter or model) always, internal
failures (2) unless `respawn` restarts the node.
"""

import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

# vlm_node's exit code when start-up fails (smolvlm_ros.node.vlm_node.EXIT_START_FAILED; not
# imported, so that listing the arguments loads no torch).
EXIT_START_FAILED = 1

ARGUMENTS = {
    # name: (default, description); params_file's default is filled in below
    "params_file": (None, "YAML file with the node's parameters"),
    "namespace": ("", "Namespace of the node (and so of ~/caption and ~/ask)"),
    "profile": ("", "Profile loaded on top of params_file: cpu | gpu | remote (empty: none)"),
    "model": ("", "Override `model`: hub id, checkpoint directory or random:<shape>"),
    "backend": ("", "Override `backend`: torch"),
    "device": ("", "Override `device`: auto | cpu | cuda"),
    "image_topics": ("", "Override `image_topics`, as YAML: \"['/a/image_raw', '/b/image_raw']\""),
    "image_topic": (
        "/camera/image_raw",
        "Topic the default camera /camera/image_raw is remapped to",
    ),
    "use_sim_time": ("false", "Follow /clock (rosbag replay with --clock)"),
    "autostart": (
        "true",
        "Configure and activate at start (false: wait for `ros2 lifecycle set` or a manager)",
    ),
    "respawn": (
        "false",
        "Start the node again when it exits non-zero (2: stuck model or a worker that kept dying)",
    ),
    "respawn_delay": ("5.0", "Seconds before a respawn"),
}


def _node(context):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    def flag(name: str) -> bool:
        return arg(name).lower() in ("true", "1", "yes")

    overrides = {"use_sim_time": flag("use_sim_time"), "autostart": flag("autostart")}
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
            raise RuntimeError(f"profile {arg('profile')!r}: no {profile} (cpu | gpu | remote)")
        files.append(profile)
    respawn = flag("respawn")
    node = LifecycleNode(
        package="smolvlm_ros",
        executable="vlm_node",
        name="smolvlm",
        namespace=arg("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[*files, overrides],
        remappings=[("/camera/image_raw", arg("image_topic"))],
        respawn=respawn,
        respawn_delay=float(arg("respawn_delay")),
    )
    return [
        node,
        RegisterEventHandler(
            OnProcessExit(target_action=node, on_exit=lambda event, _: _check_exit(event, respawn))
        ),
    ]


def _check_exit(event, respawn: bool) -> None:
    """Launch exits 0 whatever its processes do, unless an exception ends it: raising here is
    how a failed node makes `ros2 launch` exit non-zero (LaunchService.run returns 1)."""
    code = event.returncode
    if code == 0 or (respawn and code != EXIT_START_FAILED):
        return
    what = "failed to start" if code == EXIT_START_FAILED else "stopped on a failure"
    raise RuntimeError(f"{event.action.name} {what} (exit code {code}): see its log above")


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
