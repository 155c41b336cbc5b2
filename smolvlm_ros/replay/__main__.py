"""`smolvlm-replay BAG --out DIR`: replay a rosbag2 through the engine, offline.

    smolvlm-replay drive.mcap_dir --out runs/a --model random:tiny
    smolvlm-replay drive --out runs/b --mode live --compute-s 2.5 --caption-rate-hz 1.0
    smolvlm-replay drive --out runs/c --questions "Is the path clear?" "Any people?"

    smolvlm-replay drive --out runs/d --references refs.jsonl --questions "Is there a cat?"

Writes DIR/results.jsonl (one line per caption or answer, with scores when references are
given), DIR/summary.json, DIR/report.html and DIR/bag (a rosbag2 with the input images and
/smolvlm/caption, /smolvlm/answer at their source stamps). Runs are deterministic: greedy
decoding, and in live mode an emulated compute time instead of a measured one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from smolvlm_ros.engine import Engine
from smolvlm_ros.models.loading import ModelLoadError
from smolvlm_ros.replay.bags import BagError, BagReader, header_stamps, image_connections
from smolvlm_ros.replay.outputs import JsonlWriter, ResultBag, result_record
from smolvlm_ros.replay.report import write_report
from smolvlm_ros.replay.run import MODES, ReplayConfig, replay
from smolvlm_ros.replay.scoring import Reference, load_references, match_references, score
from smolvlm_ros.settings import Group, SettingsError, names_in
from smolvlm_ros.settings.cli import add_setting_flags, settings_from_flags

# Every engine and tiling setting, and those of the rest that offline replay applies.
REPLAY_SETTINGS = [
    *names_in(Group.ENGINE, Group.TILING, Group.GENERATION),
    "caption_rate_hz",
    "max_frame_age_s",
    "change_threshold",
    "max_batch",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="smolvlm-replay",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument(
        "bag", type=Path, help="rosbag2 directory (mcap or sqlite3), .mcap / .db3 file, ROS 1 .bag"
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory (new)")
    parser.add_argument("--topics", nargs="+", default=[], help="image topics (default: all)")
    parser.add_argument("--mode", choices=MODES, default="every")
    parser.add_argument("--compute-s", type=float, default=1.0, help="live mode: s per result")
    add_setting_flags(parser, REPLAY_SETTINGS)
    parser.add_argument("--references", type=Path, help="JSONL of reference answers/captions")
    parser.add_argument(
        "--live",
        action="store_true",
        help="play into a running vlm_node (use_sim_time) over DDS and record what it publishes",
    )
    parser.add_argument("--node", default="/smolvlm", help="--live: the node's name")
    parser.add_argument("--rate", type=float, default=1.0, help="--live: playback speed")
    parser.add_argument("--settle-s", type=float, default=10.0, help="--live: wait after the bag")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} exists and is not empty: results are never overwritten")
    try:
        args.settings = settings_from_flags(args, REPLAY_SETTINGS)
    except SettingsError as err:
        parser.error(str(err))
    return args


@dataclass
class Preflight:
    """What was learnt about the bag and the references before any model loaded."""

    references: list[Reference] | None  # those that name a replayed frame; None: none given
    unmatched: list[dict] = field(default_factory=list)  # the others, each with its reason
    given: int = 0
    notes: list[str] = field(default_factory=list)  # about the bag: topics skipped, fallbacks


def preflight(args: argparse.Namespace) -> Preflight:
    """Check the bag (readable, has the image topics) and the references (parse, name frames
    of the replayed cameras) in seconds, so that no mistake surfaces after a model load and a
    long replay. Raises ValueError (BagError, ReferenceError) with what is wrong."""
    references = load_references(args.references) if args.references else None
    with BagReader(args.bag) as reader:
        connections = image_connections(reader, tuple(args.topics))
        counts: dict[str, int] = {}
        for connection in connections:
            counts[connection.topic] = counts.get(connection.topic, 0) + connection.msgcount
        stamps = None
        if references and any(ref.stamp is not None for ref in references):
            stamps = header_stamps(reader, connections)
        notes = list(reader.notes)
    if references is None:
        return Preflight(None, notes=notes)
    matched, unmatched = match_references(references, counts, stamps)
    if references and not matched:
        shown = "; ".join(
            f"line {u['line']}: {u['camera']} {u['at']}: {u['reason']}" for u in unmatched[:3]
        )
        raise BagError(
            f"--references {args.references}: none of its {len(references)} references "
            f"names a frame of the replayed cameras ({shown})"
        )
    return Preflight(matched, unmatched, len(references), notes)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        checked = preflight(args)
    except (ValueError, OSError) as err:
        print(f"smolvlm-replay: {err}", file=sys.stderr)
        return 2
    for note in checked.notes:
        print(f"note: {note}", file=sys.stderr)
    for item in checked.unmatched:
        print(
            f"warning: reference line {item['line']} ({item['camera']} {item['at']}) matches "
            f"nothing: {item['reason']}",
            file=sys.stderr,
        )
    args.preflight = checked
    references = checked.references
    if args.live:
        return _live(args, references)
    try:
        settings = args.settings
        config = ReplayConfig(
            mode=args.mode,
            topics=tuple(args.topics),
            compute_s=args.compute_s,
            caption_rate_hz=settings.caption_rate_hz,
            max_frame_age_s=settings.max_frame_age_s,
            change_threshold=settings.change_threshold,
            max_batch=settings.max_batch,
            captions=settings.captions(),
        ).validate()
        engine = Engine.from_config(settings.engine_config())
    except (ValueError, ModelLoadError) as err:
        print(f"smolvlm-replay: {err}", file=sys.stderr)
        return 2
    if engine.is_random:
        print(f"note: {args.settings.model} has RANDOM weights: the text is noise", file=sys.stderr)

    args.out.mkdir(parents=True, exist_ok=True)
    bag = ResultBag(args.out / "bag")
    records: list[dict] = []
    started = time.monotonic()

    def on_result(result, publish_ns: int) -> None:
        records.append(result_record(result, publish_ns))
        bag.result(result, publish_ns)

    with tqdm(total=None, unit="frame", disable=args.quiet, file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        try:
            stats = replay(
                args.bag, engine, config, on_result, bag.image, progress, references or ()
            )
        except ValueError as err:
            print(f"\nsmolvlm-replay: {err}", file=sys.stderr)
            return 2
        finally:
            bag.close()
    wall_s = time.monotonic() - started

    summary = summarize(args, stats, records, wall_s)
    summary["model"], summary["random_weights"] = args.settings.model, engine.is_random
    summary["backend"] = engine.backend.name
    summary["backend_reason"] = engine.backend_choice.reason
    return _finish(args, references, stats, records, summary)


def _live(args: argparse.Namespace, references) -> int:
    """--live: the running node does the work; we play the bag and record."""
    from smolvlm_ros.replay.live import replay_live

    if references and any(ref.question is not None for ref in references):
        print(
            "note: --live: the node asks its own questions parameter, not the references'; "
            "reference questions it does not ask are counted as missing",
            file=sys.stderr,
        )

    args.out.mkdir(parents=True, exist_ok=True)
    bag = ResultBag(args.out / "bag")
    records: list[dict] = []

    def on_record(record: dict, cdr: bytes) -> None:
        records.append(record)
        bag.serialized(record["kind"], record["published"], cdr)

    started = time.monotonic()
    try:
        stats = replay_live(
            args.bag, args.node, tuple(args.topics), on_record, bag.image, args.rate, args.settle_s
        )
    except (ValueError, TimeoutError) as err:
        print(f"smolvlm-replay: {err}", file=sys.stderr)
        return 2
    finally:
        bag.close()
    stats.results = len(records)
    summary = summarize(args, stats, records, time.monotonic() - started)
    summary["mode"] = "live-node"
    summary["model"] = records[0]["model"] if records else "(no results)"
    summary["random_weights"] = summary["model"].startswith("random:")
    return _finish(args, references, stats, records, summary)


def _finish(args, references, stats, records: list[dict], summary: dict) -> int:
    """Scores (if references), results.jsonl, summary.json, report.html."""
    checked: Preflight = args.preflight
    summary["bag_notes"] = checked.notes
    if references is not None:
        scores = score(records, references, stats.frame_stamps)
        for index, record_scores in scores.per_record.items():
            records[index]["scores"] = record_scores
        summary["scores"] = {k: v for k, v in vars(scores).items() if k != "per_record"}
        summary["references"] = {
            "given": checked.given,
            "matched": len(references),
            "unmatched": checked.unmatched,
        }
    jsonl = JsonlWriter(args.out / "results.jsonl")
    for record in records:
        jsonl.write(record)
    jsonl.close()
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    write_report(args.out / "report.html", args.bag, summary, records)
    print(f"{len(records)} results from {stats.frames} frames -> {args.out}", file=sys.stderr)
    if "scores" in summary:
        print(json.dumps(summary["scores"]), file=sys.stderr)
    return 0


def summarize(args, stats, records: list[dict], wall_s: float) -> dict:
    """Run-level figures: counts, latency percentiles, throughput, drops per camera."""
    latencies = [r["timing"]["total_ms"] for r in records]
    received = sum(s.received for s in stats.cameras.values())
    dropped = sum(sum(s.dropped.values()) for s in stats.cameras.values())
    summary = {
        "bag": str(args.bag),
        "mode": args.mode,
        "frames": stats.frames,
        "results": len(records),
        "wall_s": round(wall_s, 2),
        "throughput_results_per_s": round(stats.results / wall_s, 3) if wall_s else None,
        "drop_rate": round(dropped / received, 4) if received else None,
        "cameras": {
            name: {"received": s.received, "captioned": s.captioned, "dropped": dict(s.dropped)}
            for name, s in stats.cameras.items()
        },
    }
    if latencies:
        p50, p90, p99 = np.percentile(latencies, (50, 90, 99))
        summary["latency_ms"] = {"p50": p50, "p90": p90, "p99": p99, "max": max(latencies)}
    return summary


if __name__ == "__main__":
    sys.exit(main())
