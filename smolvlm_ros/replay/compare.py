"""`smolvlm-compare RUN_A RUN_B [...]`: replays side by side.

Prints one table (models, settings, results, drop rate, latency, scores) and how often the
runs said different things about the same frame, from each run's summary.json and
results.jsonl, and writes one HTML page (--page) of the first two runs side by side: every frame
both answered, with its picture, the reference, both answers and their score deltas.

Runs of different bags are refused (exit 2): their "same frames" would be other frames. The
bag is known by the identity each run recorded (path, file sizes, a hash of its metadata and
data heads and tails); --allow-different-bags compares anyway, with a warning on the page.
Exit status 2 if a directory is not a replay output.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path

from smolvlm_ros.replay.report import STYLE, settings_rows, thumbnails

ROWS = [
    ("model", lambda s: s["model"]),
    ("mode", lambda s: s["mode"]),
    ("status", lambda s: s.get("status")),
    ("frames", lambda s: s["frames"]),
    ("results", lambda s: s["results"]),
    ("drop rate", lambda s: s.get("drop_rate")),
    ("latency p50 ms", lambda s: s.get("latency_ms", {}).get("p50")),
    ("latency p90 ms", lambda s: s.get("latency_ms", {}).get("p90")),
    ("results / s", lambda s: s.get("throughput_results_per_s")),
    ("results / bag s", lambda s: (s.get("bag_clock") or {}).get("results_per_bag_s")),
    ("VQA accuracy", lambda s: (s.get("scores") or {}).get("vqa_accuracy")),
    ("typed accuracy", lambda s: (s.get("scores") or {}).get("typed_accuracy")),
    ("BLEU-4", lambda s: (s.get("scores") or {}).get("bleu_4")),
    ("ROUGE-L", lambda s: (s.get("scores") or {}).get("rouge_l")),
    ("CIDEr", lambda s: (s.get("scores") or {}).get("cider")),
]
SCORE_KEYS = ("vqa_accuracy", "typed_right", "cider")
MAX_FRAMES = 300


class DifferentBags(ValueError):
    """The runs replayed different bags; the text says which."""


def load_run(path: Path) -> tuple[dict, dict[tuple, dict]]:
    """(summary, results by key: camera, stamp, kind, question)."""
    summary_path, results_path = path / "summary.json", path / "results.jsonl"
    if not summary_path.is_file() or not results_path.is_file():
        raise FileNotFoundError(f"{path} is not a replay output (no summary.json / results.jsonl)")
    summary = json.loads(summary_path.read_text())
    if summary.get("status") == "partial":  # its figures would be those of part of a bag
        stopped = (summary.get("progress") or {}).get("stopped", "still running")
        raise FileNotFoundError(
            f"{path} is a partial run ({stopped}): finish it with smolvlm-replay ... --resume"
        )
    results = {}
    for line in results_path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        results[(r["camera"], r["stamp"], r["kind"], r.get("question"))] = r
    return summary, results


def bag_of(summary: dict) -> dict:
    """The bag identity a run recorded (older runs: the path alone)."""
    return (summary.get("run") or {}).get("bag") or {"path": summary.get("bag")}


def check_same_bag(runs: list[Path], summaries: list[dict]) -> list[str]:
    """Raise DifferentBags when two runs replayed different bags; warnings where it cannot be
    told for sure (a run recorded no content hash)."""
    first = bag_of(summaries[0])
    warnings = []
    for run, summary in zip(runs[1:], summaries[1:], strict=True):
        other = bag_of(summary)
        if "sha256" in first and "sha256" in other:
            if first["sha256"] != other["sha256"]:
                raise DifferentBags(
                    f"{runs[0]} replayed {first['path']} (sha256 {first['sha256'][:12]}, "
                    f"files {first.get('sizes')}) but {run} replayed {other['path']} (sha256 "
                    f"{other['sha256'][:12]}, files {other.get('sizes')}): their frames are not "
                    "the same frames"
                )
        elif first.get("path") != other.get("path"):
            raise DifferentBags(f"{runs[0]} replayed {first['path']}, {run} {other['path']}")
        else:
            warnings.append(
                f"{run}: no bag content hash recorded (an older run): same path, "
                "but the bag may have changed"
            )
    return warnings


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def compare(runs: list[Path]) -> str:
    loaded = [load_run(run) for run in runs]
    width = max(len(str(r)) for r in runs) + 2
    lines = [f"{'':<16}" + "".join(f"{r!s:>{width}}" for r in runs)]
    for name, get in ROWS:
        lines.append(f"{name:<16}" + "".join(f"{_cell(get(s)):>{width}}" for s, _ in loaded))
    base = loaded[0][1]
    for run, (_, results) in zip(runs[1:], loaded[1:], strict=True):
        shared = base.keys() & results.keys()
        differ = sum(base[k]["text"] != results[k]["text"] for k in shared)
        lines.append(
            f"{run}: {len(shared)} results about the same frames as {runs[0]}, "
            f"{differ} with different text"
        )
    return "\n".join(lines)


def _score_cell(a: dict | None, b: dict | None) -> str:
    """Both runs' scores of one result and B - A."""
    sa, sb = (a or {}).get("scores") or {}, (b or {}).get("scores") or {}
    parts = []
    for key in SCORE_KEYS:
        if key in sa or key in sb:
            va, vb = sa.get(key), sb.get(key)
            delta = (
                f" (&Delta; {float(vb) - float(va):+.2f})"
                if va is not None and vb is not None
                else ""
            )
            parts.append(f"{key} {_cell(va)} &rarr; {_cell(vb)}{delta}")
    return "<br>".join(parts) or "-"


def render_page(runs: list[Path], warnings: list[str]) -> str:
    """One self-contained HTML page: runs A and B side by side."""
    (sa, ra), (sb, rb) = load_run(runs[0]), load_run(runs[1])
    names = [html.escape(str(r)) for r in runs[:2]]
    banner = "".join(f'<p class="warning"><b>Warning:</b> {html.escape(w)}</p>' for w in warnings)
    table = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(_cell(get(sa)))}</td>"
        f"<td>{html.escape(_cell(get(sb)))}</td>{_delta(get(sa), get(sb))}</tr>"
        for name, get in ROWS
    )
    settings_a, settings_b = dict(settings_rows(sa)), dict(settings_rows(sb))
    differing = [
        (k, settings_a.get(k), settings_b.get(k))
        for k in sorted(settings_a.keys() | settings_b.keys())
        if settings_a.get(k) != settings_b.get(k)
    ]
    settings = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_cell(a))}</td>"
        f"<td>{html.escape(_cell(b))}</td></tr>"
        for k, a, b in differing
    )
    frames: dict[tuple[str, int], list[tuple]] = {}
    for key in sorted(ra.keys() & rb.keys(), key=lambda k: (k[1], k[0], k[2] != "caption")):
        frames.setdefault((key[0], key[1]), []).append(key)
    only = len(ra.keys() - rb.keys()), len(rb.keys() - ra.keys())
    shown = list(frames.items())[:MAX_FRAMES]
    bag = Path(bag_of(sa)["path"])
    images = thumbnails(bag, {k for k, _ in shown}) if bag.exists() else {}
    blocks = []
    for (camera, stamp), keys in shown:
        rows = "".join(
            "<tr><td>{asked}</td><td>{expected}</td><td>{a}</td><td>{b}</td><td>{s}</td></tr>".format(
                asked=html.escape(k[3] or "(caption)"),
                expected=html.escape(" | ".join(_expected(ra[k], rb[k])) or "-"),
                a=html.escape(ra[k]["text"]),
                b=html.escape(rb[k]["text"]),
                s=_score_cell(ra[k], rb[k]),
            )
            for k in keys
        )
        image = images.get((camera, stamp))
        blocks.append(
            '<div class="frame">'
            + (f'<img src="{image}" alt="frame">' if image else "")
            + f"<div><code>{html.escape(camera)} @ {stamp / 1e9:.3f}</code>"
            + f"<table><tr><th>asked</th><th>reference</th><th>{names[0]}</th>"
            + f"<th>{names[1]}</th><th>score A &rarr; B</th></tr>{rows}</table></div></div>"
        )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>smolvlm compare: {names[0]} vs {names[1]}</title>
<style>{STYLE}</style></head><body>
<h1>{names[0]} (A) vs {names[1]} (B)</h1>
{banner}
<h2>Figures</h2>
<table><tr><th></th><th>A</th><th>B</th><th>B - A</th></tr>{table}</table>
<h2>Settings that differ</h2>
{f"<table><tr><th></th><th>A</th><th>B</th></tr>{settings}</table>" if settings else "<p>none"}
<h2>Frames both answered ({len(frames)}; results only in A: {only[0]}, only in B: {only[1]})</h2>
{"".join(blocks)}
</body></html>
"""


def _delta(a, b) -> str:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool):
        return f"<td>{b - a:+.3f}</td>"
    return "<td></td>"


def _expected(a: dict, b: dict) -> list[str]:
    return (
        ((a.get("scores") or {}).get("expected")) or ((b.get("scores") or {}).get("expected")) or []
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smolvlm-compare",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", type=Path, nargs="+", help="replay output directories")
    parser.add_argument(
        "--page", type=Path, default=Path("compare.html"), help="HTML page of the first two runs"
    )
    parser.add_argument(
        "--allow-different-bags",
        action="store_true",
        help="compare runs of different bags anyway (with a warning on the page)",
    )
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give at least two runs to compare")
    try:
        summaries = [load_run(run)[0] for run in args.runs]
        try:
            warnings = check_same_bag(args.runs, summaries)
        except DifferentBags as err:
            if not args.allow_different_bags:
                print(
                    f"smolvlm-compare: refusing: {err} (--allow-different-bags to compare anyway)",
                    file=sys.stderr,
                )
                return 2
            warnings = [f"DIFFERENT BAGS: {err}"]
        for warning in warnings:
            print(f"WARNING: {warning}", file=sys.stderr)
        print(compare(args.runs))
        args.page.write_text(render_page(args.runs, warnings), encoding="utf-8")
    except (FileNotFoundError, json.JSONDecodeError, KeyError) as err:
        print(f"smolvlm-compare: {err}", file=sys.stderr)
        return 2
    print(f"page: {args.page}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
