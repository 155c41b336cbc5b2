"""Replay reads every bag a user has: rosbag2 sqlite3 and mcap as Humble writes them (no type
definitions), Jazzy bags with service-event topics, ROS 1 .bag files and bare .mcap files.

Each bag holds the same real photographs (smolvlm_ros.photos) on the same cameras, so each
replays to the same captions as a modern mcap bag does: the format must change nothing.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from replay_helpers import run_replay
from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag1 import Writer as Writer1
from rosbags.rosbag2 import StoragePlugin, Writer, storage_mcap
from rosbags.typesys import Stores, get_typestore

from smolvlm_ros.photos import PHOTO_NAMES, photo
from smolvlm_ros.pipeline.intake import stamp_fields
from smolvlm_ros.replay.bags import BagReader
from smolvlm_ros.tools.sample_bag import BAG_START_NS, DEMO_CAMERAS, write_sample_bag

CAMERAS = [c.topic for c in DEMO_CAMERAS]
RATE_HZ, SECONDS_PER_PHOTO = 2.0, 0.5  # one frame per photograph: 5 frames a camera


def _sample(path: Path, storage: str) -> Path:
    return write_sample_bag(path, DEMO_CAMERAS, RATE_HZ, SECONDS_PER_PHOTO, storage)


def _as_humble(bag: Path) -> Path:
    """Rewrite a rosbag2 directory's metadata as Humble does: version 5, no ros_distro, no
    type hashes; and for sqlite3, schema 3 with no message_definitions table."""
    meta_path = bag / "metadata.yaml"
    meta = yaml.safe_load(meta_path.read_text())
    info = meta["rosbag2_bagfile_information"]
    info["version"] = 5
    info.pop("ros_distro", None)
    info.pop("custom_data", None)
    for topic in info["topics_with_message_count"]:
        topic["topic_metadata"].pop("type_description_hash", None)
    meta_path.write_text(yaml.safe_dump(meta))
    for db in bag.glob("*.db3"):
        with sqlite3.connect(db) as conn:
            conn.execute("DROP TABLE message_definitions")
            conn.execute("UPDATE schema SET schema_version = 3")
    return bag


def _humble_mcap(path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An mcap whose schemas are empty: what rosbag2's mcap plugin writes when it finds no
    definition for a type (Humble-era recorders, stripped installs)."""

    def empty_schema(self, connection) -> None:
        schema = storage_mcap.Schema(len(self.schemas) + 1, connection.msgtype, "", "")
        self.schemas.append(schema)
        storage_mcap.write_schema(self.chunk.bio, schema)

    with monkeypatch.context() as patch:
        patch.setattr(storage_mcap.McapWriter, "add_msgtype", empty_schema)
        _sample(path, "mcap")
    return _as_humble(path)


# What Jazzy's rosbag2 stores for a service-event topic: the raw .srv text (ros2/rosbag2#2365).
SRV_EVENT_TYPE = "example_interfaces/srv/AddTwoInts_Event"
SRV_EVENT_DEF = (
    "=" * 80 + "\nSRV: example_interfaces/srv/AddTwoInts\nint64 a\nint64 b\n---\nint64 sum\n"
)


def _jazzy_with_service_events(path: Path, storage: str) -> Path:
    """A Jazzy-style bag: the cameras, plus a service-event topic whose definition does not
    parse and a topic whose definition is missing."""
    typestore = get_typestore(Stores.ROS2_JAZZY)
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    sample = _sample(path.parent / f"{path.name}_images", storage)
    with AnyReader([sample]) as reader, Writer(path, version=9, storage_plugin=plugin) as writer:
        out = {
            c.topic: writer.add_connection(c.topic, c.msgtype, typestore=typestore)
            for c in reader.connections
        }
        event = writer.add_connection(
            "/add_two_ints/_service_event", SRV_EVENT_TYPE, msgdef=SRV_EVENT_DEF,
            rihs01="RIHS01_" + "0" * 64,
        )  # fmt: skip
        for connection, log_ns, raw in reader.messages():
            writer.write(out[connection.topic], log_ns, raw)
            writer.write(event, log_ns, b"\x00\x01\x00\x00" + bytes(60))
    meta_path = path / "metadata.yaml"  # as Jazzy's recorder names itself
    meta = yaml.safe_load(meta_path.read_text())
    meta["rosbag2_bagfile_information"]["ros_distro"] = "jazzy"
    meta_path.write_text(yaml.safe_dump(meta))
    return path


def _ros1(path: Path) -> Path:
    """A ROS 1 bag of the same frames (sensor_msgs with header.seq), written by rosbags."""
    typestore = get_typestore(Stores.ROS1_NOETIC)
    t = typestore.types
    period_ns = round(1e9 / RATE_HZ)
    with Writer1(path) as writer:
        conns = {
            cam.topic: writer.add_connection(
                cam.topic,
                "sensor_msgs/msg/CompressedImage" if cam.topic.endswith("/compressed")
                else "sensor_msgs/msg/Image",
                typestore=typestore,
            )
            for cam in DEMO_CAMERAS
        }  # fmt: skip
        for i in range(len(PHOTO_NAMES)):
            stamp = BAG_START_NS + i * period_ns
            for cam in DEMO_CAMERAS:
                bgr = cv2.cvtColor(photo(cam.photos[i % len(cam.photos)]), cv2.COLOR_RGB2BGR)
                header = t["std_msgs/msg/Header"](
                    seq=i, stamp=t["builtin_interfaces/msg/Time"](**stamp_fields(stamp)),
                    frame_id=cam.frame,
                )  # fmt: skip
                if cam.topic.endswith("/compressed"):
                    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
                    assert ok
                    msg = t["sensor_msgs/msg/CompressedImage"](
                        header=header, format="bgr8; jpeg compressed bgr8", data=jpeg.reshape(-1)
                    )
                    typename = "sensor_msgs/msg/CompressedImage"
                else:
                    msg = t["sensor_msgs/msg/Image"](
                        header=header, height=bgr.shape[0], width=bgr.shape[1], encoding="bgr8",
                        is_bigendian=0, step=bgr.shape[1] * 3, data=bgr.reshape(-1),
                    )  # fmt: skip
                    typename = "sensor_msgs/msg/Image"
                writer.write(conns[cam.topic], stamp, typestore.serialize_ros1(msg, typename))
    return path


def captions(out: Path) -> list[tuple[str, int, str]]:
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return [(r["camera"], r["stamp"], r["text"]) for r in lines if r["kind"] == "caption"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> list[tuple[str, int, str]]:
    """The captions of a modern (version 8, definitions included) mcap bag."""
    root = tmp_path_factory.mktemp("baseline")
    done = run_replay(_sample(root / "bag", "mcap"), root / "out")
    assert done.returncode == 0, done.stderr
    result = captions(root / "out")
    assert len(result) == 2 * len(PHOTO_NAMES)
    return result


def test_humble_bags_would_defeat_rosbags_anyreader(tmp_path, monkeypatch):
    """The premise: without a fallback, rosbags refuses these bags."""
    for bag in (
        _as_humble(_sample(tmp_path / "sqlite", "sqlite3")),
        _humble_mcap(tmp_path / "mcap", monkeypatch),
    ):
        with pytest.raises(AnyReaderError, match="no type definitions"), AnyReader([bag]):
            pass
    jazzy = _jazzy_with_service_events(tmp_path / "j", "mcap")
    with pytest.raises(AnyReaderError), AnyReader([jazzy]):
        pass


@pytest.mark.parametrize("kind", ["humble-sqlite3", "humble-mcap", "jazzy-mcap", "jazzy-sqlite3",
                                  "ros1", "bare-mcap"])  # fmt: skip
def test_every_bag_format_replays_to_the_same_captions(kind, baseline, tmp_path, monkeypatch):
    if kind == "humble-sqlite3":
        bag = _as_humble(_sample(tmp_path / "bag", "sqlite3"))
    elif kind == "humble-mcap":
        bag = _humble_mcap(tmp_path / "bag", monkeypatch)
    elif kind.startswith("jazzy"):
        bag = _jazzy_with_service_events(tmp_path / "bag", kind.split("-")[1])
    elif kind == "ros1":
        bag = _ros1(tmp_path / "drive.bag")
    else:
        (bag,) = _sample(tmp_path / "bag", "mcap").glob("*.mcap")
    with BagReader(bag) as reader:
        assert sorted(reader.topics()) == sorted(CAMERAS)
        assert all(count == len(PHOTO_NAMES) for count in reader.topics().values())
        notes, store = " ".join(reader.notes), reader.store
    if kind.startswith("humble"):
        assert "no definitions in the bag" in notes and "ros2_humble" in notes
    if kind.startswith("jazzy"):
        assert "/add_two_ints/_service_event" in notes and "not read" in notes
        assert store == Stores.ROS2_JAZZY  # the bag's own distribution, named in its metadata
    out = tmp_path / "out"
    done = run_replay(bag, out)
    assert done.returncode == 0, done.stderr
    assert captions(out) == baseline
    with AnyReader([out / "bag"]) as reader:  # the output bag holds the images, as ROS 2 CDR
        counts = {c.topic: c.msgcount for c in reader.connections}
        for connection, _, raw in reader.messages(
            connections=[c for c in reader.connections if c.topic == CAMERAS[0]]
        ):
            msg = reader.deserialize(raw, connection.msgtype)
            assert (msg.height, msg.width, msg.encoding) == (480, 640, "bgr8")
    assert counts[CAMERAS[0]] == counts[CAMERAS[1]] == len(PHOTO_NAMES)
    summary = json.loads((out / "summary.json").read_text())
    assert bool(summary["bag_notes"]) == (kind not in ("ros1", "bare-mcap"))  # said, not hidden
    assert (out / "report.html").read_text().count('src="data:image/jpeg;base64,') == 10


def test_a_bag_that_is_no_bag_is_refused_clearly(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a bag")
    done = run_replay(notes, tmp_path / "out")
    assert done.returncode == 2 and "not a bag (expected a rosbag2 directory" in done.stderr
    broken = tmp_path / "broken.bag"
    broken.write_bytes(b"#ROSBAG V2.0\n" + bytes(100))
    done = run_replay(broken, tmp_path / "out2")
    assert done.returncode == 2 and f"cannot read {broken}" in done.stderr, done.stderr


def test_8uc3_reads_as_bgr_and_a_wrong_size_frame_is_a_counted_drop(tmp_path):
    """Three frames of one camera: the photograph as bgr8, the same bytes as 8UC3 (cv_bridge's
    reading: BGR), and an NV21 frame with 7 bytes too many, refused and counted."""
    typestore = get_typestore(Stores.LATEST)
    t = typestore.types
    bgr = cv2.cvtColor(photo("coffee"), cv2.COLOR_RGB2BGR)
    height, width = bgr.shape[:2]
    frames = [
        ("bgr8", width * 3, bgr.reshape(-1)),
        ("8UC3", width * 3, bgr.reshape(-1)),
        ("nv21", width, np.zeros(width * height * 3 // 2 + 7, np.uint8)),
    ]
    bag = tmp_path / "bag"
    with Writer(bag, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        cam = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=typestore)
        for i, (encoding, step, data) in enumerate(frames):
            stamp = BAG_START_NS + i * 500_000_000
            msg = t["sensor_msgs/msg/Image"](
                header=t["std_msgs/msg/Header"](
                    stamp=t["builtin_interfaces/msg/Time"](**stamp_fields(stamp)), frame_id="cam"
                ),
                height=height, width=width, encoding=encoding, is_bigendian=0, step=step,
                data=data,
            )  # fmt: skip
            writer.write(cam, stamp, typestore.serialize_cdr(msg, "sensor_msgs/msg/Image"))
    out = tmp_path / "out"
    done = run_replay(bag, out)
    assert done.returncode == 0, done.stderr
    texts = [text for _, _, text in captions(out)]
    assert len(texts) == 2 and texts[0] == texts[1]  # same pixels, same words
    stats = json.loads((out / "summary.json").read_text())["cameras"]["/cam/image_raw"]
    assert (stats["received"], stats["captioned"]) == (3, 2)
    assert stats["dropped"] == {"decode_error": 1}
