"""`smolvlm-replay BAG --out DIR`: replay a rosbag2 through the engine, offline.

    smolvlm-replay drive.mcap_dir --out runs/a --model random:tiny
    smolvlm-replay drive --out runs/b --mode live --compute-s 2.5 --caption-rate-hz 1.0
    smolvlm-replay drive --out runs/c --questions "Is the path clear?" "Any people?"

    smolvlm-replay drive --out runs/d --references refs.jsonl --questions "Is there a cat?"

Writes DIR/results.jsonl (one line per caption or answer, with scores when references are
given), DIR/summary.json, DIR/report.html and DIR/bag (a rosbag2 with the input images and
/smolvlm/caption, /smolvlm/answer at their source stamps). Runs are deterministic: greedy
decoding, and in live mode an emulated compute time instead of a measured one.

Nothing is lost: results are written as they arrive, the bag stays DIR/bag.partial and
summary.json says "partial" until the run is complete; after Ctrl-C or a failure the same command
with --resume continues where it stopped, to the results an uninterrupted run gives.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from smolvlm_ros.engine import Engine
from smolvlm_ros.models.loading import ModelLoadError
from smolvlm_ros.replay.bags import (
    BagError,
    BagReader,
    bag_identity,
    header_stamps,
    image_connections,
)
from smolvlm_ros.replay.recorder import Recorder
from smolvlm_ros.replay.report import write_report
from smolvlm_ros.replay.run import MODES, ReplayConfig, replay
from smolvlm_ros.replay.rundir import REPORT, RunDirError, check_run, open_run
from smolvlm_ros.replay.scoring import (
    Reference,
    check_scoring_dependencies,
    load_references,
    match_references,
    score,
)
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

# A test hook: fail the run (RuntimeError) once this many results are written, to check that a
# failure leaves a partial run that --resume completes. Unset in normal use.
FAIL_AFTER_ENV = "SMOLVLM_REPLAY_FAIL_AFTER"


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
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the stopped run in --out (same bag and flags): finished work is kept",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()) and not args.resume:
        parser.error(
            f"--out {args.out} exists and is not empty: results are never overwritten; "
            "--resume continues a stopped run there, or choose a new --out"
        )
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
    if references:
        check_scoring_dependencies(references)
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


def run_key(args: argparse.Namespace) -> dict:
    """What a --resume must match: the bag (identity, not just its path), the settings and
    the references (by content). JSON-normalised, as it is compared with summary.json's."""
    references = None
    if args.references:
        references = hashlib.sha256(Path(args.references).read_bytes()).hexdigest()
    key = {
        "bag": bag_identity(args.bag),
        "mode": "live-node" if args.live else args.mode,
        "topics": list(args.topics),
        "compute_s": args.compute_s,
        "references_sha256": references,
        "settings": {name: getattr(args.settings, name) for name in REPLAY_SETTINGS},
    }
    return json.loads(json.dumps(key))


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
    try:  # the output directory too, before the model: resuming the wrong run costs seconds
        args.run_key = run_key(args)
        check_run(args.out, args.run_key, args.resume)
    except (RunDirError, OSError) as err:
        print(f"smolvlm-replay: {err}", file=sys.stderr)
        return 2
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

    recorder = _open(args)
    if recorder is None:
        return 2
    resumed = set(args.resumed.jobs)
    fail_after = int(os.environ.get(FAIL_AFTER_ENV, "0"))

    def on_result(result, publish_ns: int) -> None:
        recorder.result(result, publish_ns)
        if fail_after and len(recorder.records) >= fail_after:
            raise RuntimeError(f"{FAIL_AFTER_ENV}={fail_after}: failing as asked (a test hook)")

    started = time.monotonic()
    with tqdm(total=None, unit="frame", disable=args.quiet, file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            recorder.frames(done, total)
            bar.total = total
            bar.update(done - bar.n)

        try:
            stats = replay(
                args.bag, engine, config, on_result, recorder.bag.image, progress,
                references or (), done_jobs=resumed, on_job=recorder.job_done,
            )  # fmt: skip
        except BaseException as err:  # whatever stops the run: keep what it did
            return _stopped(args, recorder, err)
    wall_s = time.monotonic() - started

    summary = summarize(args, stats, recorder.records, wall_s)
    summary["model"], summary["random_weights"] = args.settings.model, engine.is_random
    summary["backend"] = engine.backend.name
    summary["backend_reason"] = engine.backend_choice.reason
    if stats.skipped_jobs:
        summary["resumed_jobs"] = stats.skipped_jobs
    return _finish(args, references, stats, recorder, summary)


def _open(args: argparse.Namespace) -> Recorder | None:
    """The output directory, new or (--resume) continued; None when it cannot be used."""
    try:
        args.resumed = open_run(args.out, args.run_key, args.resume)
        recorder = Recorder(args.out, args.run_key, args.resumed, args.bag)
    except (RunDirError, OSError) as err:
        print(f"smolvlm-replay: {err}", file=sys.stderr)
        return None
    for note in args.resumed.notes:
        print(f"note: {note}", file=sys.stderr)
    return recorder


def _stopped(args: argparse.Namespace, recorder: Recorder, err: BaseException) -> int:
    """Ctrl-C or a failure: what was done stays, marked partial, with how to go on."""
    interrupted = isinstance(err, KeyboardInterrupt)
    reason = "interrupted (Ctrl-C)" if interrupted else f"failed: {type(err).__name__}: {err}"
    recorder.stopped(reason)
    print(
        f"\nsmolvlm-replay: {reason}; {len(recorder.records)} results kept in {args.out} "
        "(summary.json: partial); the same command with --resume continues",
        file=sys.stderr,
    )
    if isinstance(err, ValueError):
        return 2
    return 130 if interrupted else 1


def _live(args: argparse.Namespace, references) -> int:
    """--live: the running node does the work; we play the bag and record."""
    from smolvlm_ros.replay.live import replay_live

    if args.resume:
        print(
            "smolvlm-replay: --resume does not apply to --live: a running node's timing is not "
            "repeatable, so a stopped live run cannot be continued to the same results",
            file=sys.stderr,
        )
        return 2
    if references and any(ref.question is not None for ref in references):
        print(
            "note: --live: the node asks its own questions parameter, not the references'; "
            "reference questions it does not ask are counted as missing",
            file=sys.stderr,
        )
    recorder = _open(args)
    if recorder is None:
        return 2
    started = time.monotonic()
    try:
        stats = replay_live(
            args.bag, args.node, tuple(args.topics), recorder.message, recorder.bag.image,
            args.rate, args.settle_s,
        )  # fmt: skip
    except (ValueError, TimeoutError) as err:
        recorder.stopped(f"failed: {err}")
        print(f"smolvlm-replay: {err}", file=sys.stderr)
        return 2
    except BaseException as err:  # whatever stops the run: keep what it did
        return _stopped(args, recorder, err)
    stats.results = len(recorder.records)
    summary = summarize(args, stats, recorder.records, time.monotonic() - started)
    summary["mode"] = "live-node"
    records = recorder.records
    summary["model"] = records[0]["model"] if records else "(no results)"
    summary["random_weights"] = summary["model"].startswith("random:")
    return _finish(args, references, stats, recorder, summary)


def _finish(args, references, stats, recorder: Recorder, summary: dict) -> int:
    """Scores (if references), report.html, then the outputs finalised: summary.json says
    "complete" last of all."""
    checked: Preflight = args.preflight
    records = recorder.records
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
    summary["run"] = recorder.run_key  # the settings, shown in the report
    write_report(args.out / REPORT, args.bag, summary, records)
    recorder.finish(summary)
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
    summary["bag_clock"] = bag_clock(stats, records)
    return summary


def bag_clock(stats, records: list[dict]) -> dict:
    """Figures on the bag's own clock, which a loaded machine or a --rate cannot distort: frame
    -> result latency (a result's publish time minus its frame's header stamp; live: when it
    reached us, to a frame period) and results per second of bag replayed."""
    span_s = (stats.last_ns - stats.first_ns) / 1e9 if stats.first_ns is not None else 0.0
    figures: dict = {
        "seconds": round(span_s, 3),
        "results_per_bag_s": round(len(records) / span_s, 3) if span_s > 0 else None,
    }
    delays = [(r["published"] - r["stamp"]) / 1e6 for r in records]
    if delays:
        p50, p90 = np.percentile(delays, (50, 90))
        figures["latency_ms"] = {"p50": float(p50), "p90": float(p90), "max": max(delays)}
    return figures


if __name__ == "__main__":
    sys.exit(main())
