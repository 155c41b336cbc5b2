"""This package's message definitions (msg/*.msg) for tools that work without ROS.

rosbags needs the .msg text to write Caption / VqaAnswer into a bag. It is found in the source
tree, in a ROS install prefix (share/smolvlm_ros/msg, where colcon puts it), or beside a pip
install (setup.py ships it to <prefix>/share/smolvlm_ros/msg).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MESSAGES = ("Provenance", "Timing", "Caption", "VqaAnswer")


def _candidates() -> list[Path]:
    dirs = [Path(__file__).resolve().parents[1] / "msg"]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            dirs.append(Path(prefix) / "share" / "smolvlm_ros" / "msg")
    dirs.append(Path(sys.prefix) / "share" / "smolvlm_ros" / "msg")
    return dirs


def message_definitions() -> dict[str, str]:
    """``smolvlm_ros/msg/<Name>`` -> .msg text, for every message of this package."""
    for directory in _candidates():
        if all((directory / f"{name}.msg").is_file() for name in MESSAGES):
            return {
                f"smolvlm_ros/msg/{name}": (directory / f"{name}.msg").read_text()
                for name in MESSAGES
            }
    searched = ", ".join(str(d) for d in _candidates())
    raise FileNotFoundError(f"smolvlm_ros message definitions not found (searched {searched})")


def typestore_with_our_messages():
    """A rosbags typestore (latest ROS 2 types) that also knows smolvlm_ros's messages."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    typestore = get_typestore(Stores.LATEST)
    types: dict = {}
    for name, text in message_definitions().items():
        types.update(get_types_from_msg(text, name))
    typestore.register(types)
    return typestore
