"""`smolvlm-replay BAG --out DIR`: replay a rosbag2 through the engine, offline.

    smolvlm-replay drive.mcap_dir --out runs/a --model random:tiny
    smolvlm-replay drive --out runs/b --mode live --compute-s 2.5 --caption-rate 1.0
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
from pathlib import Path

import numpy as np
from tqdm import tqdm

from smolvlm_ros.engine import DEFAULT_CAPTION_PROMPT, Engine, EngineConfig, TilingConfig
from smolvlm_ros.models.loading import DEFAULT_MODEL, ModelLoadError
from smolvlm_ros.pipeline.runner import CaptionSettings
from smolvlm_ros.replay.outputs import JsonlWriter, ResultBag, result_record
from smolvlm_ros.replay.report import write_report
from smolvlm_ros.replay.run import MODES, ReplayConfig, replay
from smolvlm_ros.replay.scoring import load_references, score


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="smolvlm-replay",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("bag", type=Path, help="rosbag2 directory (mcap or sqlite3)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (new)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="as the node's `model` parameter")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16")
    )
    parser.add_argument("--topics", nargs="+", default=[], help="image topics (default: all)")
    parser.add_argument("--mode", choices=MODES, default="every")
    parser.add_argument("--compute-s", type=float, default=1.0, help="live mode: s per result")
    parser.add_argument("--caption-rate", type=float, default=1.0, help="live mode: Hz per camera")
    parser.add_argument("--prompt", default=DEFAULT_CAPTION_PROMPT)
    parser.add_argument("--questions", nargs="+", default=[], help="standing questions")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--image-splitting", action="store_true")
    parser.add_argument("--max-frame-age", type=float, default=0.0, help="s; 0: no limit")
    parser.add_argument("--change-threshold", type=float, default=0.0)
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
    if not (args.bag / "metadata.yaml").is_file():
        parser.error(f"{args.bag} is not a rosbag2 directory (no metadata.yaml)")
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} exists and is not empty: results are never overwritten")
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        references = load_references(args.references) if args.references else None
    except (ValueError, OSError) as err:
        print(f"smolvlm-replay: {err}", file=sys.stderr)
        return 2
    if args.live:
        return _live(args, references)
    try:
        config = ReplayConfig(
            mode=args.mode,
            topics=tuple(args.topics),
            compute_s=args.compute_s,
            caption_rate_hz=args.caption_rate,
            max_frame_age_s=args.max_frame_age,
            change_threshold=args.change_threshold,
            captions=CaptionSettings(args.prompt, args.max_new_tokens, tuple(args.questions)),
        ).validate()
        engine = Engine.from_config(
            EngineConfig(
                args.model,
                device=args.device,
                dtype=args.dtype,
                tiling=TilingConfig(image_splitting=args.image_splitting),
            )
        )
    except (ValueError, ModelLoadError) as err:
        print(f"smolvlm-replay: {err}", file=sys.stderr)
        return 2
    if engine.is_random:
        print(f"note: {args.model} has RANDOM weights: the text is noise", file=sys.stderr)

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
            stats = replay(args.bag, engine, config, on_result, bag.image, progress)
        except ValueError as err:
            print(f"\nsmolvlm-replay: {err}", file=sys.stderr)
            return 2
        finally:
            bag.close()
    wall_s = time.monotonic() - started

    summary = summarize(args, stats, records, wall_s)
    summary["model"], summary["random_weights"] = args.model, engine.is_random
    return _finish(args, references, stats, records, summary)


def _live(args: argparse.Namespace, references) -> int:
    """--live: the running node does the work; we play the bag and record."""
    from smolvlm_ros.replay.live import replay_live

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
    if references is not None:
        scores = score(records, references, stats.frame_stamps)
        for index, record_scores in scores.per_record.items():
            records[index]["scores"] = record_scores
        summary["scores"] = {k: v for k, v in vars(scores).items() if k != "per_record"}
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
