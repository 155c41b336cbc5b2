"""What differs between the Python versions the package runs on (3.10 on ROS 2 Humble, 3.11+)."""

from __future__ import annotations

import enum

if hasattr(enum, "StrEnum"):
    StrEnum = enum.StrEnum
else:  # Python 3.10: the same behaviour, spelled out

    class StrEnum(str, enum.Enum):  # type: ignore[no-redef]
        """Members are their values: equal to, hashed, printed and serialized as the string."""

        def __str__(self) -> str:
            return str.__str__(self)

        def __format__(self, spec: str) -> str:
            return str.__format__(str(self), spec)
