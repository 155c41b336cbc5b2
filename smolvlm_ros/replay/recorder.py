"""Everything a replay writes, written as it goes (see :mod:`smolvlm_ros.replay.rundir`).

One object for the front end: results arrive (:meth:`Recorder.result` from the offline replay,
:meth:`Recorder.message` from a live node), jobs finish (:meth:`Recorder.job_done`), and the run
ends either with :meth:`Recorder.finish` (scores added, bag renamed, summary "complete") or with
:meth:`Recorder.stopped` (everything so far kept, summary "partial" with the reason).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from smolvlm_ros.engine import Result
from smolvlm_ros.replay.outputs import ResultBag, result_record
from smolvlm_ros.replay.rundir import (
    BAG,
    BAG_PARTIAL,
    COMPLETE,
    JOURNAL,
    PARTIAL,
    RESULTS,
    SUMMARY,
    LineLog,
    Resumed,
    record_key,
    write_json_atomic,
)

SUMMARY_EVERY_S = 2.0  # a partial summary.json at most this often while the run goes


class Recorder:
    """The results log, the job journal, the output bag and the partial summary of one run."""

    def __init__(self, out: Path, run_key: dict, resumed: Resumed, source: Path) -> None:
        """``source``: the input bag, whose image definitions the output bag declares."""
        self.out = out
        self.run_key = run_key
        self.records: list[dict] = list(resumed.records)
        self.resumed_jobs = len(resumed.jobs)
        self.frames_read = self.frames_total = 0
        self.jobs_done = len(resumed.jobs)
        self._results = LineLog(out / RESULTS)
        self._journal = LineLog(out / JOURNAL)
        self.bag = ResultBag(out / BAG_PARTIAL, source)
        if resumed.old_bag is not None:
            if resumed.records:
                self.bag.copy_results(resumed.old_bag, [record_key(r) for r in resumed.records])
            shutil.rmtree(resumed.old_bag)
        self._last_summary = float("-inf")
        self.progress_summary()

    def result(self, result: Result, publish_ns: int) -> None:
        """An engine result, from the offline replay."""
        record = result_record(result, publish_ns)
        self.records.append(record)
        self._results.write(record)
        self.bag.result(result, publish_ns)

    def message(self, record: dict, cdr: bytes) -> None:
        """A Caption / VqaAnswer a live node published (its line and its CDR bytes)."""
        self.records.append(record)
        self._results.write(record)
        self.bag.serialized(record["kind"], record["published"], cdr)

    def frames(self, done: int, total: int) -> None:
        self.frames_read, self.frames_total = done, total

    def job_done(self, index: int, results: int) -> None:
        """After a job's results are written: the journal line that lets --resume skip it."""
        self._journal.write({"job": index, "results": results})
        self.jobs_done += 1
        if time.monotonic() - self._last_summary >= SUMMARY_EVERY_S:
            self.progress_summary()

    def progress(self, stopped: str | None = None) -> dict:
        return {
            "frames_read": self.frames_read,
            "frames_total": self.frames_total,
            "jobs_done": self.jobs_done,
            "jobs_resumed": self.resumed_jobs,
            "results": len(self.records),
            **({"stopped": stopped} if stopped else {}),
        }

    def progress_summary(self, stopped: str | None = None, extra: dict | None = None) -> None:
        """summary.json while the run is not complete: how far it got (and why it stopped)."""
        summary = {"status": PARTIAL, "run": self.run_key, "progress": self.progress(stopped)}
        write_json_atomic(self.out / SUMMARY, {**summary, **(extra or {})})
        self._last_summary = time.monotonic()

    def stopped(self, reason: str, extra: dict | None = None) -> None:
        """The run ends early: close what is open, keep it all, say so in summary.json."""
        self._close()
        self.progress_summary(reason, extra)

    def finish(self, summary: dict) -> None:
        """The run is complete: results.jsonl rewritten with the scores (atomically, same lines
        in the same order), the bag under its final name, and last, summary.json "complete"."""
        self._close()
        self.bag.finish(self.out / BAG)
        tmp = self.out / f".{RESULTS}.tmp"
        tmp.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records),
            encoding="utf-8",
        )
        tmp.replace(self.out / RESULTS)
        (self.out / JOURNAL).unlink(missing_ok=True)
        write_json_atomic(
            self.out / SUMMARY,
            {"status": COMPLETE, "run": self.run_key, **summary, "progress": self.progress()},
        )

    def _close(self) -> None:
        self._results.close()
        self._journal.close()
        self.bag.close()
