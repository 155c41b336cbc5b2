"""`python -m smolvlm_ros.replay.compare RUN_A RUN_B [...]`: replays side by side.

Prints one table (models, settings, results, drop rate, latency, scores) and how often the
runs said different things about the same frame, from each run's summary.json and
results.jsonl. Exit status 2 if a directory is not a replay output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROWS = [
    ("model", lambda s: s["model"]),
    ("mode", lambda s: s["mode"]),
    ("frames", lambda s: s["frames"]),
    ("results", lambda s: s["results"]),
    ("drop rate", lambda s: s.get("drop_rate")),
    ("latency p50 ms", lambda s: s.get("latency_ms", {}).get("p50")),
    ("latency p90 ms", lambda s: s.get("latency_ms", {}).get("p90")),
    ("results / s", lambda s: s.get("throughput_results_per_s")),
    ("VQA accuracy", lambda s: (s.get("scores") or {}).get("vqa_accuracy")),
    ("BLEU-4", lambda s: (s.get("scores") or {}).get("bleu_4")),
    ("ROUGE-L", lambda s: (s.get("scores") or {}).get("rouge_l")),
    ("CIDEr", lambda s: (s.get("scores") or {}).get("cider")),
]


def load_run(path: Path) -> tuple[dict, dict[tuple, str]]:
    summary_path, results_path = path / "summary.json", path / "results.jsonl"
    if not summary_path.is_file() or not results_path.is_file():
        raise FileNotFoundError(f"{path} is not a replay output (no summary.json / results.jsonl)")
    texts = {}
    for line in results_path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        texts[(r["camera"], r["stamp"], r["kind"], r.get("question"))] = r["text"]
    return json.loads(summary_path.read_text()), texts


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
    for run, (_, texts) in zip(runs[1:], loaded[1:], strict=True):
        shared = base.keys() & texts.keys()
        differ = sum(base[k] != texts[k] for k in shared)
        lines.append(
            f"{run}: {len(shared)} results about the same frames as {runs[0]}, "
            f"{differ} with different text"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smolvlm-compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="replay output directories")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give at least two runs to compare")
    try:
        print(compare(args.runs))
    except (FileNotFoundError, json.JSONDecodeError, KeyError) as err:
        print(f"smolvlm-compare: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
