"""report.html: one self-contained page to look at a replay: the numbers, the latency
distribution and timeline, and every captioned frame with what the model said about it."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from smolvlm_ros.pipeline.intake import ImageDecodeError, message_to_rgb, stamp_to_ns
from smolvlm_ros.replay.bags import BagReader

THUMB_WIDTH = 240
MAX_FRAMES = 300  # a page, not a video: enough to read through


def thumbnails(bag: Path, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """JPEG data URIs of the frames (camera, stamp ns) the results are about."""
    out: dict[tuple[str, int], str] = {}
    with BagReader(Path(bag)) as reader:
        topics = {camera for camera, _ in wanted}
        connections = [c for c in reader.connections if c.topic in topics]
        if not connections:
            return out
        for connection, _, raw in reader.messages(connections=connections):
            msg = reader.deserialize(raw, connection)
            key = (connection.topic, stamp_to_ns(msg.header.stamp))
            if key not in wanted or key in out:
                continue
            try:
                rgb = message_to_rgb(msg)
            except ImageDecodeError:  # counted in the run already; the page shows no picture
                continue
            height = round(rgb.shape[0] * THUMB_WIDTH / rgb.shape[1])
            small = cv2.resize(rgb, (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
            if ok:
                out[key] = "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode()
    return out


def _histogram_svg(values: list[float], width: int = 520, height: int = 160) -> str:
    if not values:
        return "<p>no results</p>"
    counts, edges = np.histogram(values, bins=min(20, max(5, len(values) // 3)))
    bar = width / len(counts)
    top = max(counts.max(), 1)
    bars = "".join(
        f'<rect x="{i * bar:.1f}" y="{height - 20 - c / top * (height - 30):.1f}" '
        f'width="{bar - 2:.1f}" height="{c / top * (height - 30):.1f}" fill="#4a7">'
        f"<title>{edges[i]:.0f}-{edges[i + 1]:.0f} ms: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    labels = (
        f'<text x="0" y="{height - 4}" font-size="11">{edges[0]:.0f} ms</text>'
        f'<text x="{width - 60}" y="{height - 4}" font-size="11">{edges[-1]:.0f} ms</text>'
    )
    return f'<svg width="{width}" height="{height}" role="img">{bars}{labels}</svg>'


def _timeline_svg(records: list[dict], width: int = 520, height: int = 160) -> str:
    points = [(r["stamp"], r["timing"]["total_ms"], r["kind"]) for r in records]
    if not points:
        return "<p>no results</p>"
    t0 = min(p[0] for p in points)
    span = max(max(p[0] for p in points) - t0, 1)
    top = max(p[1] for p in points) or 1
    dots = "".join(
        f'<circle cx="{10 + (t - t0) / span * (width - 20):.1f}" '
        f'cy="{height - 20 - ms / top * (height - 30):.1f}" r="3" '
        f'fill="{"#27a" if kind == "caption" else "#c72"}"><title>{ms:.0f} ms</title></circle>'
        for t, ms, kind in points
    )
    axis = (
        f'<text x="0" y="{height - 4}" font-size="11">0 s</text>'
        f'<text x="{width - 60}" y="{height - 4}" font-size="11">{span / 1e9:.1f} s</text>'
        f'<text x="0" y="12" font-size="11">{top:.0f} ms</text>'
    )
    return f'<svg width="{width}" height="{height}" role="img">{dots}{axis}</svg>'


def _answer_note(answer: dict) -> str:
    """How an answer scored and, typed, how sure the model was."""
    scores = answer.get("scores", {})
    notes = []
    if "confidence" in answer:
        notes.append(f"confidence {answer['confidence']:.2f}")
    if "vqa_accuracy" in scores:
        notes.append(f"acc {scores['vqa_accuracy']:.2f}")
    if "typed_right" in scores:
        notes.append("right" if scores["typed_right"] else "wrong")
    return f" <i>({', '.join(notes)})</i>" if notes else ""


def _table(rows: Iterable[tuple[str, object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    cells = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(cell(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{cells}</table>"


def write_report(path: Path, bag: Path, summary: dict, records: list[dict]) -> None:
    """A single self-contained HTML file (inline images and SVG, no scripts)."""
    captions = [r for r in records if r["kind"] == "caption"][:MAX_FRAMES]
    answers: dict[tuple[str, int], list[dict]] = {}
    for record in records:
        if record["kind"] == "answer":
            answers.setdefault((record["camera"], record["stamp"]), []).append(record)
    images = thumbnails(bag, {(r["camera"], r["stamp"]) for r in captions})
    frames = []
    for record in captions:
        key = (record["camera"], record["stamp"])
        qa = "".join(
            f"<li><b>{html.escape(a['question'])}</b> {html.escape(a['text'])}"
            + _answer_note(a)
            + "</li>"
            for a in answers.get(key, [])
        )
        score = record.get("scores", {}).get("cider")
        frames.append(
            '<div class="frame">'
            + (f'<img src="{images[key]}" alt="frame">' if key in images else "")
            + f"<div><code>{html.escape(record['camera'])} @ {record['stamp'] / 1e9:.3f}</code>"
            + f"<p>{html.escape(record['text'])}</p>"
            + (f"<p><i>CIDEr {score:.2f}</i></p>" if score is not None else "")
            + f"<small>{record['timing']['total_ms']:.0f} ms</small>"
            + (f"<ul>{qa}</ul>" if qa else "")
            + "</div></div>"
        )
    latencies = [r["timing"]["total_ms"] for r in records]
    scores = summary.get("scores") or {}
    warning = (
        '<p class="warning">Random weights: the text is noise; timings are real.</p>'
        if summary.get("random_weights")
        else ""
    )
    run_keys = ("model", "mode", "frames", "results", "wall_s", "throughput_results_per_s")
    run_table = _table((k, summary[k]) for k in (*run_keys, "drop_rate") if k in summary)
    shown = f"{len(captions)} captioned" + (
        f", first {MAX_FRAMES}" if len(captions) == MAX_FRAMES else ""
    )
    calibration = scores.get("calibration") or []
    score_table = (
        _table((k, v) for k, v in scores.items() if k != "calibration")
        if scores
        else "<p>No references given."
    )
    if calibration:  # typed answers: is a confident answer more often right?
        score_table += "<h3>Calibration of typed answers</h3>" + _table(
            (row["bin"], f"{row['accuracy']:.2f} right of {row['answers']}") for row in calibration
        )
    unmatched = (summary.get("references") or {}).get("unmatched") or []
    if unmatched:  # a typo in a camera or stamp must not pass for a score over fewer frames
        rows = "".join(
            f"<tr><td>{u['line']}</td><td>{html.escape(u['camera'])}</td>"
            f"<td>{html.escape(u['at'])}</td><td>{html.escape(u['reason'])}</td></tr>"
            for u in unmatched
        )
        score_table += (
            f'<h3 class="warning">{len(unmatched)} references match no frame (not scored)</h3>'
            "<table><tr><th>line</th><th>camera</th><th>at</th><th>why</th></tr>"
            f"{rows}</table>"
        )
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in summary.get("bag_notes") or [])
    if notes:
        run_table += f"<h3>Bag notes</h3><ul>{notes}</ul>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>smolvlm replay: {html.escape(str(bag))}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
.charts {{ display: flex; gap: 2em; flex-wrap: wrap; }}
.frame {{ display: flex; gap: 1em; border-top: 1px solid #ddd; padding: .6em 0; }}
.frame img {{ width: {THUMB_WIDTH}px; height: auto; }}
.warning {{ background: #fee; padding: .5em; }}
</style></head><body>
<h1>Replay of {html.escape(str(bag))}</h1>
{warning}
<h2>Run</h2>
{run_table}
<h2>Latency (frame to result)</h2>
{_table((f"{k} ms", f"{v:.0f}") for k, v in summary.get("latency_ms", {}).items())}
<div class="charts"><div><h3>Histogram</h3>{_histogram_svg(latencies)}</div>
<div><h3>Timeline (blue: captions, orange: answers)</h3>{_timeline_svg(records)}</div></div>
<h2>Scores</h2>
{score_table}
<h2>Frames ({shown})</h2>
{"".join(frames)}
</body></html>
"""
    Path(path).write_text(page, encoding="utf-8")
