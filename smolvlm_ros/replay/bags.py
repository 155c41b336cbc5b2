"""Open any bag a user has, read only its image topics, and never crash on the rest.

rosbags' AnyReader builds one typestore from every connection's definitions and raises when a
bag carries none (ROS 2 Humble's sqlite3 bags, mcap files whose recorder found no schema), or
when one of them does not parse (Jazzy's service-event topics store the raw .srv text). Replay
reads nothing but sensor_msgs Image and CompressedImage, so this reader builds its typestore from
those connections' definitions alone, falls back to the distribution's own definitions where the
bag carries none (the bag's distribution when it says, Humble otherwise; Noetic for ROS 1), and
leaves every other topic unread, with a note saying so.

Accepted: a rosbag2 directory (metadata.yaml; sqlite3 or mcap), a bare ``.mcap`` or ``.db3`` file,
a ROS 1 ``.bag``. Messages come back as ROS 2 CDR (:meth:`BagReader.cdr`) for the output bag.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rosbags.interfaces import MessageDefinitionFormat
from rosbags.rosbag1 import Reader as Reader1
from rosbags.rosbag1 import ReaderError as Reader1Error
from rosbags.rosbag2 import Reader as Reader2
from rosbags.rosbag2 import ReaderError as Reader2Error
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

from smolvlm_ros.pipeline.intake import IMAGE_TYPES, stamp_to_ns

ROS1_SUFFIX = ".bag"
ROS2_FILE_SUFFIXES = (".mcap", ".db3")
FALLBACK_ROS2 = Stores.ROS2_HUMBLE  # most public image bags are Humble's, with no definitions
_IDL_SEPARATOR = "=" * 80 + "\n"


class BagError(ValueError):
    """The bag cannot be replayed; the text says why and what would be accepted."""


def _store_for(distro: str | None, ros1: bool) -> Stores:
    """The typestore of the bag's ROS distribution, when it names one rosbags knows."""
    if ros1:
        return Stores.ROS1_NOETIC
    try:
        return Stores(f"ros2_{distro.strip().lower()}") if distro else FALLBACK_ROS2
    except ValueError:
        return FALLBACK_ROS2


def _definitions(msgdef: Any, msgtype: str) -> dict:
    """The types a connection's own definition declares (raises on text rosbags cannot parse)."""
    if msgdef.format == MessageDefinitionFormat.MSG:
        return dict(get_types_from_msg(msgdef.data, msgtype))
    types: dict = {}
    if msgdef.data.startswith(f"{_IDL_SEPARATOR}IDL: "):
        for part in msgdef.data.split(_IDL_SEPARATOR)[1:]:
            _, idl = part.split("\n", 1)
            types.update(get_types_from_idl(idl))
    else:
        types.update(get_types_from_idl(msgdef.data))
    return types


class BagReader:
    """One bag, opened; ``connections`` are its image connections (all others are skipped and
    listed in ``notes``). Use as a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.ros1 = self.path.is_file() and self.path.suffix == ROS1_SUFFIX
        if not self.path.exists():
            raise BagError(f"{self.path}: no such bag")
        if self.path.is_dir() and not (self.path / "metadata.yaml").is_file():
            raise BagError(
                f"{self.path} is not a rosbag2 directory (no metadata.yaml); give a rosbag2 "
                "directory, a .mcap or .db3 file, or a ROS 1 .bag"
            )
        if self.path.is_file() and self.path.suffix not in (ROS1_SUFFIX, *ROS2_FILE_SUFFIXES):
            raise BagError(
                f"{self.path}: not a bag (expected a rosbag2 directory, a .mcap or .db3 file, "
                "or a ROS 1 .bag)"
            )
        self._reader: Any = None
        self.connections: list = []
        self.notes: list[str] = []
        self.store = Stores.EMPTY
        self.typestore: Any = None
        self._ros2_store: Any = None

    def __enter__(self) -> BagReader:
        try:
            self._reader = Reader1(self.path) if self.ros1 else Reader2(self.path)
            self._reader.open()
        except (Reader1Error, Reader2Error, OSError, KeyError, ValueError) as err:
            raise BagError(f"cannot read {self.path}: {err}") from None
        try:
            self._select()
        except BaseException:
            self._reader.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._reader.close()

    def _select(self) -> None:
        """Keep the image connections and build the typestore that reads them."""
        everything = list(self._reader.connections)
        self.connections = [c for c in everything if c.msgtype in IMAGE_TYPES]
        skipped = sorted({(c.topic, c.msgtype) for c in everything} - {
            (c.topic, c.msgtype) for c in self.connections
        })  # fmt: skip
        if skipped:
            listed = ", ".join(f"{topic} ({msgtype})" for topic, msgtype in skipped[:6])
            more = f" and {len(skipped) - 6} more" if len(skipped) > 6 else ""
            self.notes.append(f"not images, not read: {listed}{more}")
        distro = None if self.ros1 else self._reader.ros_distro
        self.store = _store_for(distro, self.ros1)
        types = dict(get_typestore(self.store).fielddefs)
        fallback_for: set[str] = set()
        for connection in self.connections:
            if connection.msgdef.format == MessageDefinitionFormat.NONE or not (
                connection.msgdef.data.strip()
            ):
                fallback_for.add(connection.msgtype)
                continue
            try:  # the bag's own definition wins: it is what the data was written with
                types.update(_definitions(connection.msgdef, connection.msgtype))
            except Exception as err:  # rosbags' parser raises several kinds
                fallback_for.add(connection.msgtype)
                self.notes.append(
                    f"{connection.topic}: its {connection.msgtype} definition does not parse "
                    f"({err}); using {self.store.value}'s"
                )
        if fallback_for:
            self.notes.append(
                f"no definitions in the bag for {', '.join(sorted(fallback_for))}: "
                f"using {self.store.value}'s"
            )
        self.typestore = get_typestore(Stores.EMPTY)
        self.typestore.register(types)

    def topics(self) -> dict[str, int]:
        """Image topic -> message count (from the bag's index: no message is read)."""
        counts: dict[str, int] = {}
        for connection in self.connections:
            counts[connection.topic] = counts.get(connection.topic, 0) + connection.msgcount
        return counts

    def messages(self, connections: list | None = None) -> Iterator[tuple[Any, int, bytes]]:
        """(connection, log time ns, raw bytes) in log-time order, of the image connections."""
        yield from self._reader.messages(connections=connections or self.connections)

    def definition(self, connection: Any) -> tuple[str, str]:
        """(message definition, RIHS01 hash) to declare for this connection's messages as
        :meth:`cdr` returns them, in an output bag: the bag's own text where it carries one
        (what its data was written with, byte for byte), else that of the typestore the bag is
        read with (its distribution's, or Humble's). A ROS 1 bag's messages are converted to
        ROS 2 CDR against Humble's definitions, so those are declared."""
        msgtype = connection.msgtype
        if self.ros1:
            if self._ros2_store is None:
                self._ros2_store = get_typestore(FALLBACK_ROS2)
            store = self._ros2_store
            return store.generate_msgdef(msgtype, ros_version=2)[0], store.hash_rihs01(msgtype)
        own = connection.msgdef
        if own.format != MessageDefinitionFormat.NONE and own.data.strip():
            digest = connection.digest
            if not str(digest).startswith("RIHS01_"):  # older bags store an md5 or nothing
                digest = self.typestore.hash_rihs01(msgtype)
            return own.data, digest
        msgdef, _ = self.typestore.generate_msgdef(msgtype, ros_version=2)
        return msgdef, self.typestore.hash_rihs01(msgtype)

    def deserialize(self, raw: bytes, connection: Any) -> Any:
        if self.ros1:
            return self.typestore.deserialize_ros1(raw, connection.msgtype)
        return self.typestore.deserialize_cdr(raw, connection.msgtype)

    def cdr(self, raw: bytes, connection: Any) -> bytes:
        """The message as ROS 2 CDR (ROS 1 messages converted, header.seq dropped)."""
        if not self.ros1:
            return raw
        # rosbags converts against ROS 2 definitions (it skips the ROS 1 header's seq itself);
        # an Image and a CompressedImage are laid out alike in both but for that header.
        if self._ros2_store is None:
            self._ros2_store = get_typestore(FALLBACK_ROS2)
        return bytes(self._ros2_store.ros1_to_cdr(raw, connection.msgtype))


def image_connections(reader: BagReader, wanted: tuple[str, ...]) -> list:
    """The bag's image connections, or the requested topics (with a clear error if missing)."""
    images = reader.connections
    available = sorted({c.topic for c in images})
    if not wanted:
        if not images:
            raise BagError(
                f"{reader.path} has no sensor_msgs Image or CompressedImage topics"
                + (f" ({reader.notes[0]})" if reader.notes else "")
            )
        return images
    missing = [t for t in wanted if t not in available]
    if missing:
        raise BagError(
            f"topic(s) {', '.join(missing)} not in the bag; its image topics: "
            f"{', '.join(available) or 'none'}"
        )
    return [c for c in images if c.topic in wanted]


def header_stamps(reader: BagReader, connections: list) -> dict[str, set[int]]:
    """Each topic's header stamps (ns): one read of those topics, to match references by stamp
    before a model is loaded."""
    stamps: dict[str, set[int]] = {}
    for connection, _, raw in reader.messages(connections):
        msg = reader.deserialize(raw, connection)
        stamps.setdefault(connection.topic, set()).add(stamp_to_ns(msg.header.stamp))
    return stamps


_SAMPLE_BYTES = 1 << 20  # of each data file's head and tail, hashed for the bag's identity


def bag_identity(path: Path) -> dict:
    """What says two runs replayed the same bag, in a fraction of a second on bags of any size:
    the path, each file's size, and a SHA-256 of the metadata (rosbag2: metadata.yaml, with its
    message counts and time span) and of the first and last MiB of each data file."""
    path = Path(path).resolve()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    sizes = {}
    for file in files:
        size = file.stat().st_size
        sizes[file.name] = size
        digest.update(f"{file.name}\0{size}\0".encode())
        with file.open("rb") as data:
            if file.name == "metadata.yaml" or size <= 2 * _SAMPLE_BYTES:
                digest.update(data.read())
            else:
                digest.update(data.read(_SAMPLE_BYTES))
                data.seek(size - _SAMPLE_BYTES)
                digest.update(data.read())
    return {"path": str(path), "sizes": sizes, "sha256": digest.hexdigest()}
