"""`python -m smolvlm_ros.bench`: the engine's speed, stage by stage, against plain transformers.

For one model (a checkpoint or `random:<shape>`) on one device it measures, on real photographs:

- single:     one caption of one frame (preprocess, encode, prefill, per-token decode, total)
- cameras:    N frames, one by one and batched through both stages (caption_batch)
- questions:  N questions about one frame, as N independent requests (embedding cache off) and
              with encode-once + shared prompt prefix (ask_many)
- reference:  the same work through the checkpoint's processor + plain `model.generate()`, on
              the same weights and settings, in the same run, with the ratio

Every generation makes exactly --max-new-tokens tokens (random weights rarely stop by
themselves, real ones do: forcing the count keeps runs comparable). Medians of --repeats runs
after --warmup runs. Results go to stdout and a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from smolvlm_ros.engine import Engine, Frame, Result
from smolvlm_ros.engine.reference import reference_generate
from smolvlm_ros.photos import PHOTO_NAMES, photo
from smolvlm_ros.settings import Group, Settings, SettingsError, names_in
from smolvlm_ros.settings.cli import add_setting_flags, settings_from_flags

# The engine's settings and those that shape the work: every engine and tiling setting, and the
# answer length (the benchmark forces exactly max_new_tokens so every run does the same work).
BENCH_SETTINGS = [*names_in(Group.ENGINE, Group.TILING), "max_new_tokens"]
BENCH_DEFAULTS = {"model": "random:256m"}

QUESTIONS = [
    "What is in this image?",
    "Is there a person?",
    "What colour is the largest object?",
    "Is the path ahead clear?",
    "How many objects are there?",
    "Where was this taken?",
    "What is on the left?",
    "What is on the right?",
]


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak on GPU, sampled process RSS on CPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_bytes = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak_bytes = max(self.peak_bytes, self._rss())

    def __enter__(self) -> PeakMemory:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak_bytes = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, self._rss())


def _measure(device: str, work: Callable[[], list[Result] | list[int]]) -> dict:
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        out = work()
        wall = time.perf_counter() - start
    run = {"wall_s": wall, "peak_mb": memory.peak_bytes / 2**20}
    if out and isinstance(out[0], Result):
        run["results"] = [
            {**asdict(r.timing), "finish_reason": r.finish_reason, "reused": r.reused_encoding}
            for r in out
        ]
    return run


def _stage_summary(runs: list[dict]) -> dict:
    """Medians over runs of the per-result stage times (first result of each run)."""

    def med(key: str) -> float:
        return statistics.median(r["results"][0][key] for r in runs)

    generated = runs[0]["results"][0]["generated_tokens"]
    decode_ms = med("decode_ms")
    return {
        "preprocess_ms": med("preprocess_ms"),
        "encode_ms": med("encode_ms"),
        "prefill_ms": med("prefill_ms"),
        "decode_ms_per_token": decode_ms / max(generated - 1, 1),
        "prompt_tokens": runs[0]["results"][0]["prompt_tokens"],
        "image_tokens": runs[0]["results"][0]["image_tokens"],
        "generated_tokens": generated,
    }


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings: Settings = args.settings
        t0 = time.perf_counter()
        self.engine = Engine.from_config(self.settings.engine_config())
        self.load_s = time.perf_counter() - t0
        self.device = self.engine.backend.device
        self.frames = [
            Frame(photo(PHOTO_NAMES[i % len(PHOTO_NAMES)]), camera=f"/camera_{i}/image_raw")
            for i in range(max(args.cameras, 1))
        ]
        tokens = self.settings.max_new_tokens
        self.limits = {"max_new_tokens": tokens, "min_new_tokens": tokens}

    # -- engine scenarios ------------------------------------------------------------------

    def single(self) -> list[Result]:
        self.engine.clear_cache()
        return [self.engine.caption(self.frames[0], **self.limits)]

    def cameras_sequential(self) -> list[Result]:
        self.engine.clear_cache()
        return [self.engine.caption(f, **self.limits) for f in self.frames]

    def cameras_batched(self) -> list[Result]:
        self.engine.clear_cache()
        return self.engine.caption_batch(self.frames, **self.limits)

    def questions_separate(self) -> list[Result]:
        results = []
        for question in QUESTIONS[: self.args.questions]:
            self.engine.clear_cache()  # what a stateless server does: every request from scratch
            results.append(self.engine.ask(self.frames[0], question, **self.limits))
        return results

    def questions_shared(self) -> list[Result]:
        self.engine.clear_cache()
        return self.engine.ask_many(self.frames[0], QUESTIONS[: self.args.questions], **self.limits)

    # -- plain transformers on the same weights and settings -------------------------------

    def _reference_generate(self, frame: Frame, text: str) -> list[int]:
        n = self.settings.max_new_tokens
        return reference_generate(self.engine, frame, text, max_new_tokens=n, min_new_tokens=n)

    def reference_single(self) -> list[list[int]]:
        return [self._reference_generate(self.frames[0], "Describe this image in one sentence.")]

    def reference_questions(self) -> list[list[int]]:
        return [
            self._reference_generate(self.frames[0], q) for q in QUESTIONS[: self.args.questions]
        ]

    def reference_cameras(self) -> list[list[int]]:
        return [
            self._reference_generate(f, "Describe this image in one sentence.") for f in self.frames
        ]

    # -- running ---------------------------------------------------------------------------

    def run(self, name: str) -> dict:
        work = getattr(self, name)
        for _ in range(self.args.warmup):
            work()
        runs = [_measure(self.device, work) for _ in range(self.args.repeats)]
        walls = [r["wall_s"] for r in runs]
        summary = {
            "wall_s_median": statistics.median(walls),
            "wall_s_min": min(walls),
            "peak_mb": max(r["peak_mb"] for r in runs),
        }
        if "results" in runs[0]:
            summary.update(_stage_summary(runs))
            count = len(runs[0]["results"])
            tokens = sum(r["generated_tokens"] for r in runs[0]["results"])
            summary["tokens_per_s"] = tokens / summary["wall_s_median"]
            summary["requests"] = count
        return {"summary": summary, "runs": runs}


SCENARIOS = {
    # name: (engine scenario, plain-transformers counterpart)
    "single": ("single", "reference_single"),
    "cameras_sequential": ("cameras_sequential", "reference_cameras"),
    "cameras_batched": ("cameras_batched", "reference_cameras"),
    "questions_separate": ("questions_separate", "reference_questions"),
    "questions_shared": ("questions_shared", "reference_questions"),
}


def environment(bench: Bench) -> dict:
    import transformers

    device = bench.device
    return {
        "model": bench.settings.model,
        "random_weights": bench.engine.is_random,
        "device": device,
        "device_name": (
            torch.cuda.get_device_name() if device.startswith("cuda") else platform.machine()
        ),
        "cpu_threads": torch.get_num_threads(),
        "dtype": bench.engine.backend.dtype,
        "backend": bench.engine.backend.name,
        "backend_reason": bench.engine.backend_choice.reason,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "tiling": {name: getattr(bench.settings, name) for name in names_in(Group.TILING)},
        "max_new_tokens": bench.settings.max_new_tokens,
        "cameras": bench.args.cameras,
        "questions": bench.args.questions,
        "repeats": bench.args.repeats,
        "warmup": bench.args.warmup,
        "model_load_s": bench.load_s,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m smolvlm_ros.bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_setting_flags(parser, BENCH_SETTINGS, defaults=BENCH_DEFAULTS)
    parser.add_argument("--cameras", type=int, default=3, help="frames in the cameras scenarios")
    parser.add_argument("--questions", type=int, default=4, help="questions about one frame")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    parser.add_argument("--no-reference", action="store_true", help="skip plain transformers")
    parser.add_argument("--json", type=Path, default=Path("bench.json"), help="where results go")
    args = parser.parse_args(argv)
    try:
        args.settings = settings_from_flags(
            args, BENCH_SETTINGS, Settings.from_mapping(BENCH_DEFAULTS)
        )
    except SettingsError as err:
        parser.error(str(err))
    if not 1 <= args.questions <= len(QUESTIONS):
        parser.error(f"--questions must be between 1 and {len(QUESTIONS)}")
    if args.cameras < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--cameras and --repeats must be at least 1, --warmup at least 0")
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(
            f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(SCENARIOS)}"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    env = environment(bench)
    print(
        f"# smolvlm_ros bench: {env['model']} on {env['device']} ({env['dtype']}), "
        f"{args.settings.max_new_tokens} new tokens, median of {args.repeats}"
    )
    if bench.engine.is_random:
        print("# (random weights: figures are real, generated text is not)")
    report: dict = {"environment": env, "scenarios": {}}
    references: dict[str, dict] = {}
    columns = ("wall s", "ref s", "ref/ours", "tok/s", "encode", "prefill", "ms/tok", "peak MB")
    print(f"{'scenario':<20} " + " ".join(f"{c:>8}" for c in columns))
    for name in args.scenarios.split(","):
        ours_name, ref_name = SCENARIOS[name]
        ours = bench.run(ours_name)
        entry = {"engine": ours}
        if not args.no_reference:
            if ref_name not in references:
                references[ref_name] = bench.run(ref_name)
            ref = references[ref_name]
            entry["reference"] = ref
            entry["speedup_vs_reference"] = (
                ref["summary"]["wall_s_median"] / ours["summary"]["wall_s_median"]
            )
        report["scenarios"][name] = entry
        s = ours["summary"]
        ref_s = (
            entry["reference"]["summary"]["wall_s_median"] if "reference" in entry else float("nan")
        )
        print(
            f"{name:<20} {s['wall_s_median']:>8.2f} {ref_s:>8.2f} "
            f"{entry.get('speedup_vs_reference', float('nan')):>8.2f} {s['tokens_per_s']:>8.1f} "
            f"{s['encode_ms']:>8.0f} {s['prefill_ms']:>8.0f} {s['decode_ms_per_token']:>8.1f} "
            f"{s['peak_mb']:>8.0f}",
            flush=True,
        )
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print("# stage columns: ms of the first request in the scenario; ref/ours > 1: engine faster")
    print(f"# full results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
