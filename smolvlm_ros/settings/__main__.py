"""`python -m smolvlm_ros.settings [--write | --check] [README]`: the parameter table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smolvlm_ros.settings.docs import markdown_table, update_readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m smolvlm_ros.settings", description=__doc__)
    parser.add_argument("readme", nargs="?", type=Path, default=Path("README.md"))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="update the README's table")
    mode.add_argument("--check", action="store_true", help="exit 1 if the table is stale")
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        print(markdown_table())
        return 0
    current = update_readme(args.readme, write=args.write)
    if args.check and not current:
        print(f"{args.readme}: the parameter table is stale; run with --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
