"""The settings schema: every user-facing setting declared once, and what is derived from it
(command-line flags, the README table; the node derives its ROS parameters in node/parameters.py).
"""

from smolvlm_ros.settings.schema import (
    LIVE,
    MAX_NEW_TOKENS_LIMIT,
    Group,
    Setting,
    Settings,
    SettingsError,
    names_in,
    schema,
)

__all__ = [
    "LIVE",
    "MAX_NEW_TOKENS_LIMIT",
    "Group",
    "Setting",
    "Settings",
    "SettingsError",
    "names_in",
    "schema",
]
