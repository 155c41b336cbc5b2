"""`smolvlm-dataset-bag`: turn a VQA or captioning benchmark on disk into a bag + references.

The model card's figures (VQAv2, TextVQA, COCO captions) are measured on those datasets; with
this bridge a user with real weights checks them through the very path the robot runs:

    smolvlm-dataset-bag vqav2 --images val2014 \\
        --questions v2_OpenEnded_mscoco_val2014_questions.json \\
        --annotations v2_mscoco_val2014_annotations.json --limit 500 --out vqav2_500
    smolvlm-replay vqav2_500/bag --out runs/vqav2 --references vqav2_500/references.jsonl

Layouts read (as the datasets ship them):

- ``vqav2``: questions ``{"questions": [{"image_id", "question", "question_id"}]}``,
  annotations ``{"annotations": [{"question_id", "answers": [{"answer"}]}]}``, images
  ``COCO_<split>_<image_id:012d>.jpg`` (any prefix ending in the zero-padded id; or ``<id>.jpg``);
- ``textvqa``: one file ``{"data": [{"image_id", "question", "question_id", "answers": [...]}]}``,
  images ``<image_id>.jpg``;
- ``coco-captions``: ``{"images": [{"id", "file_name"}], "annotations": [{"image_id",
  "caption"}]}``.

Each image becomes one sensor_msgs/CompressedImage on one camera topic, its file's bytes as they
are (no re-encoding: the model sees the benchmark's pixels), one per ``1/rate`` s of bag time;
references.jsonl names each image by frame index. VQA references carry all the annotators'
answers, so replay's VQA accuracy is the benchmark's (min(#matching / 3, 1)).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from smolvlm_ros.pipeline.intake import NS_PER_S, stamp_fields

FORMATS = ("vqav2", "textvqa", "coco-captions")
TOPIC = "/dataset/image_raw/compressed"
START_NS = 1_767_225_600 * NS_PER_S  # 2026-01-01T00:00:00Z: a bag built twice is identical
COMPRESSED = "sensor_msgs/msg/CompressedImage"


class DatasetError(ValueError):
    """The files are not in the layout the format expects; the text says what is missing."""


@dataclass
class Item:
    """One image with what is asked and expected about it."""

    image: Path
    questions: list[tuple[str, list[str]]] = field(default_factory=list)  # (question, answers)
    captions: list[str] = field(default_factory=list)


def _load(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: {err}") from None


def _coco_image(images: Path, image_id: int) -> Path:
    """A COCO image by id: COCO_val2014_000000000042.jpg (any split prefix) or 42.jpg."""
    for pattern in (f"*{image_id:012d}.jpg", f"{image_id}.jpg", f"*{image_id:012d}.png"):
        found = sorted(images.glob(pattern))
        if found:
            return found[0]
    raise DatasetError(f"no image for id {image_id} in {images}")


def vqav2(images: Path, questions: Path, annotations: Path | None) -> Iterator[Item]:
    if annotations is None:
        raise DatasetError("vqav2 needs --annotations (the answers are there)")
    answers = {
        a["question_id"]: [x["answer"] for x in a["answers"]]
        for a in _load(annotations).get("annotations", [])
    }
    by_image: dict[int, Item] = {}
    for q in _load(questions).get("questions", []):
        if q["question_id"] not in answers:
            raise DatasetError(f"question {q['question_id']} has no annotation in {annotations}")
        item = by_image.get(q["image_id"])
        if item is None:
            item = by_image[q["image_id"]] = Item(_coco_image(images, q["image_id"]))
        item.questions.append((q["question"], answers[q["question_id"]]))
    yield from by_image.values()


def textvqa(images: Path, questions: Path, annotations: Path | None) -> Iterator[Item]:
    by_image: dict[str, Item] = {}
    for q in _load(questions).get("data", []):
        if "answers" not in q:
            raise DatasetError(f"{questions}: question {q.get('question_id')} has no answers")
        item = by_image.get(q["image_id"])
        if item is None:
            path = images / f"{q['image_id']}.jpg"
            if not path.is_file():
                raise DatasetError(f"no image {path}")
            item = by_image[q["image_id"]] = Item(path)
        item.questions.append((q["question"], list(q["answers"])))
    yield from by_image.values()


def coco_captions(images: Path, questions: Path, annotations: Path | None) -> Iterator[Item]:
    data = _load(questions)
    captions: dict[int, list[str]] = {}
    for a in data.get("annotations", []):
        captions.setdefault(a["image_id"], []).append(a["caption"].strip())
    for image in data.get("images", []):
        if image["id"] not in captions:
            continue  # a subset's images list may be wider than its captions
        path = images / image["file_name"]
        if not path.is_file():
            raise DatasetError(f"no image {path}")
        yield Item(path, captions=captions[image["id"]])


READERS = {"vqav2": vqav2, "textvqa": textvqa, "coco-captions": coco_captions}


def _image_format(data: bytes, path: Path) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    raise DatasetError(f"{path}: neither JPEG nor PNG")


def convert(
    kind: str,
    images: Path,
    questions: Path,
    annotations: Path | None,
    out: Path,
    limit: int = 0,
    rate_hz: float = 1.0,
    topic: str = TOPIC,
) -> tuple[Path, Path, int]:
    """Write ``out``/bag and ``out``/references.jsonl; (bag, references, images written)."""
    if kind not in READERS:
        raise DatasetError(f"format {kind!r}: expected one of {', '.join(FORMATS)}")
    if rate_hz <= 0:
        raise DatasetError(f"rate must be > 0, got {rate_hz}")
    bag, refs = out / "bag", out / "references.jsonl"
    if bag.exists() or refs.exists():
        raise DatasetError(f"{out} already holds a bag or references: choose a new --out")
    items = []
    for item in READERS[kind](Path(images), Path(questions), annotations):
        items.append(item)
        if limit and len(items) >= limit:
            break
    if not items:
        raise DatasetError(f"{questions}: no questions or captions found")
    out.mkdir(parents=True, exist_ok=True)
    typestore = get_typestore(Stores.ROS2_HUMBLE)  # what most readers of a bag understand
    t = typestore.types
    period_ns = round(NS_PER_S / rate_hz)
    lines = []
    with Writer(bag, version=8, storage_plugin=StoragePlugin.MCAP) as writer:
        connection = writer.add_connection(topic, COMPRESSED, typestore=typestore)
        for index, item in enumerate(items):
            data = item.image.read_bytes()
            stamp = START_NS + index * period_ns
            msg = t[COMPRESSED](
                header=t["std_msgs/msg/Header"](
                    stamp=t["builtin_interfaces/msg/Time"](**stamp_fields(stamp)),
                    frame_id=item.image.name,  # which file, for a reader of the bag
                ),
                format=_image_format(data, item.image),
                data=np.frombuffer(data, dtype=np.uint8),
            )
            writer.write(connection, stamp, typestore.serialize_cdr(msg, COMPRESSED))
            for question, answers in item.questions:
                lines.append(
                    {"camera": topic, "frame": index, "question": question, "answers": answers}
                )
            if item.captions:
                lines.append({"camera": topic, "frame": index, "captions": item.captions})
    refs.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return bag, refs, len(items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smolvlm-dataset-bag",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("format", choices=FORMATS)
    parser.add_argument("--images", type=Path, required=True, help="the images' directory")
    parser.add_argument(
        "--questions",
        type=Path,
        required=True,
        help="questions JSON (vqav2, textvqa) or the captions JSON (coco-captions)",
    )
    parser.add_argument("--annotations", type=Path, help="vqav2: the annotations (answers) JSON")
    parser.add_argument("--out", type=Path, required=True, help="directory for bag/ + references")
    parser.add_argument("--limit", type=int, default=0, help="at most this many images (0: all)")
    parser.add_argument("--rate", type=float, default=1.0, help="images per second of bag time")
    parser.add_argument("--topic", default=TOPIC, help="the camera topic (ends in /compressed)")
    args = parser.parse_args(argv)
    try:
        bag, refs, count = convert(
            args.format, args.images, args.questions, args.annotations, args.out,
            args.limit, args.rate, args.topic,
        )  # fmt: skip
    except DatasetError as err:
        print(f"smolvlm-dataset-bag: {err}", file=sys.stderr)
        return 2
    print(
        f"{count} images -> {bag}, references -> {refs}\n"
        f"replay: smolvlm-replay {bag} --out RUN --references {refs}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
