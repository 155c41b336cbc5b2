"""Where a replay's results go: results.jsonl and a rosbag2 with the images and the results."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer

from smolvlm_ros.engine import CAPTION, Result
from smolvlm_ros.interfaces import typestore_with_our_messages
from smolvlm_ros.pipeline.intake import stamp_fields
from smolvlm_ros.replay.bags import BagReader

CAPTION_TOPIC = "/smolvlm/caption"
ANSWER_TOPIC = "/smolvlm/answer"


def result_record(result: Result, publish_ns: int) -> dict:
    """One results.jsonl line: what, about which frame, what it said, and what it cost."""
    return {
        "kind": result.kind,
        "camera": result.camera,
        "stamp": result.stamp_ns,
        "frame_id": result.frame_id,
        "published": publish_ns,
        "question": result.prompt if result.kind != CAPTION else None,
        "prompt": result.prompt,
        "text": result.text,
        # a typed question's answer type, value (bool, int, option, object) and confidence
        **(
            {
                "answer_type": result.typed.type,
                "value": result.typed.value,
                "confidence": result.typed.confidence,
            }
            if result.typed
            else {}
        ),
        "finish_reason": result.finish_reason,
        "model": result.model,
        "backend": result.backend,
        "device": result.device,
        "dtype": result.dtype,
        "tiles": [result.tile_rows, result.tile_cols],
        "timing": asdict(result.timing),
    }


def message_key(kind: str, msg: Any) -> tuple:
    """A Caption's / VqaAnswer's key, as :func:`smolvlm_ros.replay.rundir.record_key` of its
    results.jsonl line: the two are matched when a resumed run copies a stopped one's bag."""
    stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
    return (kind, msg.camera, stamp, msg.question if kind != CAPTION else None)


class ResultBag:
    """A new rosbag2 (mcap): the input image messages as recorded, plus Caption / VqaAnswer
    messages stamped with their source frames, on the node's topics.

    The image topics are declared with the input bag's own definitions (``source``), not ours:
    the CDR bytes are copied as recorded, so only the definitions they were written with are
    sure to read them back (a robot's Image definition may differ from this install's)."""

    def __init__(self, path: Path, source: Path | None = None) -> None:
        self.path = path
        self._definitions: dict[tuple[str, str], tuple[str, str]] = {}
        if source is not None:
            with BagReader(source) as reader:
                for connection in reader.connections:
                    key = (connection.topic, connection.msgtype)
                    self._definitions.setdefault(key, reader.definition(connection))
        self._closed = False
        self.typestore = typestore_with_our_messages()
        self._writer = Writer(path, version=8, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._images: dict[tuple[str, str], Any] = {}
        self._caption = self._writer.add_connection(
            CAPTION_TOPIC, "smolvlm_ros/msg/Caption", typestore=self.typestore
        )
        self._answer = self._writer.add_connection(
            ANSWER_TOPIC, "smolvlm_ros/msg/VqaAnswer", typestore=self.typestore
        )

    def image(self, connection: Any, log_ns: int, raw: bytes) -> None:
        key = (connection.topic, connection.msgtype)
        if key not in self._images:
            msgdef, digest = self._definitions.get(key, (None, None))
            self._images[key] = self._writer.add_connection(
                connection.topic, connection.msgtype, typestore=self.typestore,
                msgdef=msgdef, rihs01=digest,
            )  # fmt: skip
        self._writer.write(self._images[key], log_ns, raw)

    def copy_results(self, old_bag: Path, keys: list[tuple]) -> int:
        """Copy the Caption / VqaAnswer messages of ``keys`` (see :func:`message_key`) from a
        stopped run's bag, at their publish times; the count copied. Images are not copied:
        the resumed replay reads the whole input again and writes every image."""
        wanted = Counter(keys)
        copied = 0
        with AnyReader([old_bag], default_typestore=self.typestore) as reader:
            ours = [c for c in reader.connections if c.topic in (CAPTION_TOPIC, ANSWER_TOPIC)]
            for connection, log_ns, raw in reader.messages(connections=ours):
                kind = CAPTION if connection.topic == CAPTION_TOPIC else "answer"
                key = message_key(kind, reader.deserialize(raw, connection.msgtype))
                if wanted[key] > 0:
                    wanted[key] -= 1
                    self.serialized(kind, log_ns, bytes(raw))
                    copied += 1
        return copied

    def serialized(self, kind: str, publish_ns: int, cdr: bytes) -> None:
        """A Caption (kind "caption") or VqaAnswer already in CDR, e.g. as a live node sent it."""
        connection = self._caption if kind == CAPTION else self._answer
        self._writer.write(connection, publish_ns, cdr)

    def result(self, result: Result, publish_ns: int) -> None:
        t = self.typestore.types
        header = t["std_msgs/msg/Header"](
            stamp=t["builtin_interfaces/msg/Time"](**stamp_fields(result.stamp_ns)),
            frame_id=result.frame_id,
        )
        provenance = t["smolvlm_ros/msg/Provenance"](**result.provenance_fields())
        timing = t["smolvlm_ros/msg/Timing"](**result.timing_fields())
        if result.kind == CAPTION:
            msg = t["smolvlm_ros/msg/Caption"](
                header=header, camera=result.camera, text=result.text,
                provenance=provenance, timing=timing,
            )  # fmt: skip
            typename, connection = "smolvlm_ros/msg/Caption", self._caption
        else:
            msg = t["smolvlm_ros/msg/VqaAnswer"](
                header=header, camera=result.camera, question=result.prompt,
                answer=result.text, provenance=provenance, timing=timing,
                **self._typed_fields(result),
            )  # fmt: skip
            typename, connection = "smolvlm_ros/msg/VqaAnswer", self._answer
        self._writer.write(connection, publish_ns, self.typestore.serialize_cdr(msg, typename))

    def _typed_fields(self, result: Result) -> dict:
        """VqaAnswer's typed-answer fields, as the node fills them (a text answer: type "text",
        zeros); only those the message definition in use has."""
        typed = getattr(result, "typed", None)
        values = {
            "answer_type": typed.type if typed else "text",
            "yes": bool(typed.yes) if typed else False,
            "count": int(typed.count) if typed else 0,
            "choice": typed.choice if typed else "",
            "json": typed.json if typed else "",
            "confidence": float(typed.confidence) if typed else 0.0,
        }
        fields = {name for name, _ in self.typestore.fielddefs["smolvlm_ros/msg/VqaAnswer"][1]}
        return {name: value for name, value in values.items() if name in fields}

    def close(self) -> None:
        """Close the bag where it is (a stopped run's bag stays under its partial name)."""
        if not self._closed:
            self._closed = True
            self._writer.close()

    def finish(self, final: Path) -> None:
        """Close and move the bag to ``final``: only a complete run's bag gets that name."""
        self.close()
        self.path.rename(final)
