"""Export ahead of time: ``python -m smolvlm_ros.engine.export --model M [--quantization Q]``.

The node and the benchmark export on first use; doing it here first (e.g. when a robot image is
built) moves those minutes out of the first start. Prints one line per export: its directory,
whether it was built now or found, and how long the export took when it was built.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from smolvlm_ros.engine.export import QUANTIZATIONS, ExportError, ensure_export
from smolvlm_ros.models.loading import DEFAULT_MODEL, ModelLoadError, load_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m smolvlm_ros.engine.export", description=__doc__
    )
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id, directory, random:<shape>")
    parser.add_argument(
        "--quantization",
        choices=[*QUANTIZATIONS, "all"],
        default="none",
        help="none: float32 graphs; int8: also the int8 ones (built from the float32 export); "
        "int4: also int8 and the 4-bit decoder; all: every one",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress log")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        loaded = load_model(args.model, device="cpu", dtype="float32")
        wanted = QUANTIZATIONS if args.quantization == "all" else (args.quantization,)
        for quantization in wanted:
            started = time.perf_counter()
            export = ensure_export(loaded, quantization)
            state = "exported" if export.created else "cached"
            took = time.perf_counter() - started
            print(f"{quantization}: {export.directory} ({state}, {took:.1f} s)")
    except (ModelLoadError, ExportError, ImportError) as err:
        print(f"export failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
