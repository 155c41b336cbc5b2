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


WRONG_ROW = ' class="wrong"'
ERROR_DROPS = ("decode_error", "inference_error", "out_of_memory")  # not by design, unlike
# "superseded" or "unchanged": a frame lost to one of these is a failure the page lists first


def is_wrong(record: dict) -> bool:
    """A scored result that did not match its reference (a caption has no right or wrong)."""
    scores = record.get("scores") or {}
    return scores.get("typed_right") is False or scores.get("vqa_accuracy", 1.0) < 1.0


def _given(record: dict) -> str:
    value = record.get("value")
    return record["text"] if value is None else f"{record['text']} ({value!r})"


def _rows_table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    def cell(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def per_question(records: list[dict]) -> list[tuple]:
    """(question, answers, scored, mean VQA accuracy, typed right share) per question asked."""
    rows: dict[str, dict[str, list]] = {}
    for record in records:
        if record["kind"] != "answer":
            continue
        row = rows.setdefault(record["question"], {"n": [], "vqa": [], "typed": []})
        row["n"].append(1)
        scores = record.get("scores") or {}
        if "vqa_accuracy" in scores:
            row["vqa"].append(scores["vqa_accuracy"])
        if "typed_right" in scores:
            row["typed"].append(float(scores["typed_right"]))
    return [
        (q, len(r["n"]), len(r["vqa"]) + len(r["typed"]), _mean(r["vqa"]), _mean(r["typed"]))
        for q, r in sorted(rows.items())
    ]


def per_camera(summary: dict, records: list[dict]) -> list[tuple]:
    """(camera, frames, captioned, dropped, captions, answers, VQA acc., typed, CIDEr)."""
    cameras = summary.get("cameras") or {}
    names = sorted(set(cameras) | {r["camera"] for r in records})
    rows = []
    for name in names:
        stats = cameras.get(name, {})
        own = [r for r in records if r["camera"] == name]
        scores = [r.get("scores") or {} for r in own]
        dropped = ", ".join(f"{k} {v}" for k, v in sorted((stats.get("dropped") or {}).items()))
        rows.append((
            name, stats.get("received"), stats.get("captioned"), dropped or "none",
            sum(r["kind"] == "caption" for r in own), sum(r["kind"] == "answer" for r in own),
            _mean([s["vqa_accuracy"] for s in scores if "vqa_accuracy" in s]),
            _mean([float(s["typed_right"]) for s in scores if "typed_right" in s]),
            _mean([s["cider"] for s in scores if "cider" in s]),
        ))  # fmt: skip
    return rows


def settings_rows(summary: dict) -> list[tuple[str, object]]:
    """The run's settings: what it replayed, with which model and flags (for reproducing it)."""
    run = summary.get("run") or {}
    rows: list[tuple[str, object]] = [
        ("bag", (run.get("bag") or {}).get("path", summary.get("bag"))),
        ("bag sha256 (metadata, head, tail)", (run.get("bag") or {}).get("sha256", "-")),
    ]
    for key in ("mode", "topics", "compute_s", "references_sha256"):
        if key in run:
            rows.append((key, run[key]))
    for key in ("backend", "backend_reason"):
        if key in summary:
            rows.append((key, summary[key]))
    rows += sorted((run.get("settings") or {}).items())
    return [(k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in rows]


def _failures(summary: dict, records: list[dict], images: dict) -> str:
    """Everything that went wrong, first on the page: frames lost to errors, references that
    matched nothing or got no answer, and wrong answers beside the expected ones."""
    parts = []
    if summary.get("status") == "partial":
        stopped = (summary.get("progress") or {}).get("stopped", "not finished")
        parts.append(f'<p class="warning">This run is partial: {html.escape(stopped)}.</p>')
    lost = [
        (camera, reason, count)
        for camera, stats in sorted((summary.get("cameras") or {}).items())
        for reason, count in sorted((stats.get("dropped") or {}).items())
        if reason in ERROR_DROPS and count
    ]
    if lost:
        parts.append(
            "<h3>Frames lost to errors</h3>" + _rows_table(("camera", "why", "frames"), lost)
        )
    unmatched = (summary.get("references") or {}).get("unmatched") or []
    if unmatched:  # a typo in a camera or stamp must not pass for a score over fewer frames
        parts.append(
            f'<h3 class="warning">{len(unmatched)} references match no frame (not scored)</h3>'
            + _rows_table(
                ("line", "camera", "at", "why"),
                ((u["line"], u["camera"], u["at"], u["reason"]) for u in unmatched),
            )
        )
    missing = (summary.get("scores") or {}).get("missing") or []
    if missing:
        parts.append(
            f"<h3>{len(missing)} references got no result about their frame</h3>"
            + _rows_table(
                ("line", "camera", "at", "question"),
                ((m["line"], m["camera"], m["at"], m["question"] or "(caption)") for m in missing),
            )
        )
    wrong = [r for r in records if is_wrong(r)]
    if wrong:
        rows = "".join(
            "<tr><td>"
            + (
                f'<img src="{images[key]}" alt="frame">'
                if (key := (r["camera"], r["stamp"])) in images
                else ""
            )
            + f"</td><td><code>{html.escape(r['camera'])} @ {r['stamp'] / 1e9:.3f}</code></td>"
            f"<td>{html.escape(r['question'] or '')}</td>"
            f"<td>{html.escape(' | '.join(r['scores'].get('expected', [])))}</td>"
            f"<td>{html.escape(_given(r))}{_answer_note(r)}</td></tr>"
            for r in wrong[:MAX_FRAMES]
        )
        parts.append(
            f'<h3>{len(wrong)} wrong answers</h3><table class="side"><tr><th>frame</th>'
            "<th>at</th><th>question</th><th>expected</th><th>given</th></tr>" + rows + "</table>"
        )
    return "".join(parts) or "<p>No failures: no frame lost to an error, every reference met.</p>"


def _frame_block(record: dict, answers: list[dict], image: str | None) -> str:
    """One captioned frame: the picture, then each result with its expected answer beside."""
    rows = [record, *answers]
    cells = "".join(
        f"<tr{WRONG_ROW if is_wrong(r) else ''}>"
        f"<td>{html.escape(r['question'] or '(caption)')}</td>"
        f"<td>{html.escape(_given(r))}{_answer_note(r)}</td>"
        f"<td>{html.escape(' | '.join((r.get('scores') or {}).get('expected', [])) or '-')}</td>"
        "</tr>"
        for r in rows
    )
    return (
        '<div class="frame">'
        + (f'<img src="{image}" alt="frame">' if image else "")
        + f"<div><code>{html.escape(record['camera'])} @ {record['stamp'] / 1e9:.3f}</code> "
        + f"<small>{record['timing']['total_ms']:.0f} ms</small>"
        + '<table class="side"><tr><th>asked</th><th>given</th><th>expected</th></tr>'
        + cells
        + "</table></div></div>"
    )


def write_report(path: Path, bag: Path, summary: dict, records: list[dict]) -> None:
    """A single self-contained HTML file (inline images and SVG, no scripts)."""
    captions = [r for r in records if r["kind"] == "caption"]
    # frames with a wrong answer first, then in bag order
    wrong_frames = {(r["camera"], r["stamp"]) for r in records if is_wrong(r)}
    captions.sort(key=lambda r: (r["camera"], r["stamp"]) not in wrong_frames)
    captions = captions[:MAX_FRAMES]
    answers: dict[tuple[str, int], list[dict]] = {}
    for record in records:
        if record["kind"] == "answer":
            answers.setdefault((record["camera"], record["stamp"]), []).append(record)
    wanted = {(r["camera"], r["stamp"]) for r in captions} | wrong_frames
    images = thumbnails(bag, wanted)
    frames = [
        _frame_block(
            r, answers.get((r["camera"], r["stamp"]), []), images.get((r["camera"], r["stamp"]))
        )
        for r in captions
    ]
    latencies = [r["timing"]["total_ms"] for r in records]
    scores = summary.get("scores") or {}
    warning = (
        '<p class="warning">Random weights: the text is noise; timings are real.</p>'
        if summary.get("random_weights")
        else ""
    )
    run_keys = ("model", "mode", "frames", "results", "wall_s", "throughput_results_per_s")
    run_table = _table((k, summary[k]) for k in (*run_keys, "drop_rate") if k in summary)
    clock = summary.get("bag_clock") or {}
    if clock:
        run_table += "<h3>On the bag's clock</h3>" + _table(
            [("bag seconds replayed", clock.get("seconds")),
             ("results per bag second", clock.get("results_per_bag_s")),
             *((f"frame -> result {k} ms", v) for k, v in (clock.get("latency_ms") or {}).items())]
        )  # fmt: skip
    shown = f"{len(captions)} captioned" + (
        f", first {MAX_FRAMES}" if len(captions) == MAX_FRAMES else ""
    )
    calibration = scores.get("calibration") or []
    score_table = (
        _table((k, v) for k, v in scores.items() if k not in ("calibration", "missing"))
        if scores
        else "<p>No references given."
    )
    if calibration:  # typed answers: is a confident answer more often right?
        score_table += "<h3>Calibration of typed answers</h3>" + _table(
            (row["bin"], f"{row['accuracy']:.2f} right of {row['answers']}") for row in calibration
        )
    questions = per_question(records)
    if questions:
        score_table += "<h3>Per question</h3>" + _rows_table(
            ("question", "answers", "scored", "VQA accuracy", "typed right"), questions
        )
    score_table += "<h3>Per camera</h3>" + _rows_table(
        ("camera", "frames", "captioned", "dropped", "captions", "answers", "VQA accuracy",
         "typed right", "CIDEr"),
        per_camera(summary, records),
    )  # fmt: skip
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in summary.get("bag_notes") or [])
    if notes:
        run_table += f"<h3>Bag notes</h3><ul>{notes}</ul>"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>smolvlm replay: {html.escape(str(bag))}</title>
<style>{STYLE}</style></head><body>
<h1>Replay of {html.escape(str(bag))}</h1>
{warning}
<h2>Failures</h2>
{_failures(summary, records, images)}
<h2>Run settings</h2>
{_table(settings_rows(summary))}
<h2>Run</h2>
{run_table}
<h2>Latency (frame to result)</h2>
{_table((f"{k} ms", f"{v:.0f}") for k, v in summary.get("latency_ms", {}).items())}
<div class="charts"><div><h3>Histogram</h3>{_histogram_svg(latencies)}</div>
<div><h3>Timeline (blue: captions, orange: answers)</h3>{_timeline_svg(records)}</div></div>
<h2>Scores</h2>
{score_table}
<h2>Frames ({shown}; those with a wrong answer first)</h2>
{"".join(frames)}
</body></html>
"""
    Path(path).write_text(page, encoding="utf-8")


STYLE = f"""
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }}
.charts {{ display: flex; gap: 2em; flex-wrap: wrap; }}
.frame {{ display: flex; gap: 1em; border-top: 1px solid #ddd; padding: .6em 0; }}
img {{ width: {THUMB_WIDTH}px; height: auto; }}
.warning {{ background: #fee; padding: .5em; }}
tr.wrong td {{ background: #fee; }}
"""
