"""What the replay tests share: running the replay CLI as a user would, in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_replay(bag: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    """`smolvlm-replay BAG --out OUT` on random:tiny (CPU, 4 tokens), plus ``args``."""
    return subprocess.run(
        [sys.executable, "-m", "smolvlm_ros.replay", str(bag), "--out", str(out),
         "--model", "random:tiny", "--device", "cpu", "--max-new-tokens", "4", "--quiet", *args],
        capture_output=True, text=True, cwd=REPO, timeout=600, check=False,
    )  # fmt: skip
