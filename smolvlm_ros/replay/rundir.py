"""A replay's output directory, kept so that nothing done is lost and a stopped run resumes.

Replays of real bags run for hours; Ctrl-C, a crash or a full disk late in one must not throw
away what was computed. So, while a run is going:

- ``results.jsonl`` gets each result as it arrives (one line, flushed);
- ``jobs.jsonl`` (the journal) gets one line per finished scheduler job, after that job's
  results are written: ``{"job": n, "results": k}``. A job's results are replaced only together,
  so a run stopped between two results of one job redoes that job whole;
- the output bag is written under ``bag.partial`` and renamed to ``bag`` only at the very end, so
  a bag named ``bag`` is always complete;
- ``summary.json`` is rewritten atomically (temporary file + ``os.replace``) with ``"status":
  "partial"`` and how far the run got, and says ``"complete"`` only after everything else.

``--resume`` reopens such a directory: it checks that the bag and the settings are those of the
stopped run (its ``run`` key in summary.json), keeps the results of the journal's finished jobs,
and lets the replay skip those jobs. Replay is deterministic (greedy decoding, emulated compute
time in live mode), so job *n* is the same job in both runs and the resumed results equal an
uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rosbags.highlevel import AnyReader

from smolvlm_ros.interfaces import typestore_with_our_messages

RESULTS = "results.jsonl"
SUMMARY = "summary.json"
JOURNAL = "jobs.jsonl"
BAG = "bag"
BAG_PARTIAL = "bag.partial"  # the output bag while the run is not complete
BAG_PREVIOUS = "bag.previous"  # a stopped run's partial bag, while --resume copies from it
REPORT = "report.html"
PARTIAL, COMPLETE = "partial", "complete"


class RunDirError(ValueError):
    """The output directory cannot be used as asked; the text says what to do instead."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a reader (or a crash) never sees half a file: a temporary file in the
    same directory, flushed to disk, then renamed over the old one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as file:
        file.write(json.dumps(data, indent=2) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


class LineLog:
    """An append-only JSON-lines file, flushed after every line (a killed process keeps every
    line written before it died)."""

    def __init__(self, path: Path) -> None:
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _read_lines(path: Path) -> list[dict]:
    """The file's whole JSON lines; a last line cut short by a kill is left out."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


@dataclass
class Resumed:
    """What a stopped run left that the new one keeps."""

    records: list[dict] = field(default_factory=list)  # results of the finished jobs, in order
    jobs: dict[int, int] = field(default_factory=dict)  # finished job index -> its result count
    old_bag: Path | None = None  # the stopped run's output bag, to copy its results from
    notes: list[str] = field(default_factory=list)


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    """Where two run keys differ, as "settings.max_new_tokens: 4 then, 5 now"."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            line
            for k in sorted(old.keys() | new.keys())
            for line in _differences(old.get(k), new.get(k), f"{where}.{k}" if where else k)
        ]
    if old == new:
        return []
    text = [repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..." for v in (old, new)]
    return [f"{where}: {text[0]} then, {text[1]} now"]


def check_run(out: Path, run_key: dict, resume: bool) -> bool:
    """Whether ``out`` holds a stopped run to resume (False: it is empty or absent); raises
    RunDirError when it cannot be used as asked. Changes nothing, so the front end asks it
    before loading a model: a wrong --out costs seconds, not a model load."""
    if not out.exists() or not any(out.iterdir()):
        return False
    summary_path = out / SUMMARY
    if not resume:
        raise RunDirError(
            f"--out {out} exists and is not empty: results are never overwritten; "
            "give --resume to continue a stopped run there, or choose a new --out"
        )
    if not summary_path.is_file():
        raise RunDirError(f"--resume: {out} holds no replay (no {SUMMARY}); choose a new --out")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if summary.get("status") == COMPLETE:
        raise RunDirError(f"--resume: the run in {out} is already complete")
    old_key = summary.get("run") or {}
    if old_key != run_key:
        raise RunDirError(
            f"--resume: {out} was a run of another bag or other settings ("
            + "; ".join(_differences(old_key, run_key))
            + "): give the same bag and flags, or choose a new --out"
        )
    return True


def open_run(out: Path, run_key: dict, resume: bool) -> Resumed:
    """Make ``out`` ready for a run described by ``run_key`` (bag identity and settings);
    with ``resume``, keep what a stopped run with the same key finished. Raises RunDirError."""
    if not check_run(out, run_key, resume):
        out.mkdir(parents=True, exist_ok=True)
        return Resumed(notes=[f"--resume: nothing in {out} yet, starting"] if resume else [])
    return _keep_finished(out)


def _keep_finished(out: Path) -> Resumed:
    """Cut results.jsonl and the journal back to the finished jobs; set the old bag aside."""
    resumed = Resumed()
    records = _read_lines(out / RESULTS)
    kept = 0
    for entry in _read_lines(out / JOURNAL):
        if kept + entry["results"] > len(records):
            break  # the journal never runs ahead of the results; if it does, trust the results
        resumed.jobs[entry["job"]] = entry["results"]
        kept += entry["results"]
    resumed.records = records[:kept]
    partial = out / BAG_PARTIAL
    if (out / BAG_PREVIOUS).exists():
        shutil.rmtree(out / BAG_PREVIOUS)
    if partial.exists():
        partial.rename(out / BAG_PREVIOUS)
        resumed.old_bag = out / BAG_PREVIOUS
    if resumed.jobs and not _readable(resumed.old_bag):
        # Killed hard (SIGKILL, power): the bag was never closed. Its results cannot be copied,
        # so they are computed again, to keep results.jsonl and the bag the same set.
        resumed.notes.append(
            "the stopped run's output bag was not closed (killed?): its results are computed again"
        )
        resumed.jobs, resumed.records = {}, []
    journal = "".join(json.dumps({"job": j, "results": n}) + "\n" for j, n in resumed.jobs.items())
    _replace_text(out / JOURNAL, journal)
    _replace_text(
        out / RESULTS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in resumed.records)
    )
    resumed.notes.append(
        f"--resume: kept {len(resumed.records)} results of {len(resumed.jobs)} finished jobs"
    )
    return resumed


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _readable(bag: Path | None) -> bool:
    if bag is None:
        return False
    try:
        with AnyReader([bag], default_typestore=typestore_with_our_messages()):
            return True
    except Exception:  # rosbags raises several kinds for a bag that was never closed
        return False


def record_key(record: dict) -> tuple:
    """What makes a result itself: which frame, which kind, which question."""
    return (record["kind"], record["camera"], record["stamp"], record.get("question"))
