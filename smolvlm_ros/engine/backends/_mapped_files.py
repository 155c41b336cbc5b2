"""Give back the pages of read-only file mappings a runtime no longer reads.

Why: OpenVINO maps an export's weight file (``*.bin``) into the process, and the CPU plugin
repacks every weight into its own kernel layout on the first inference. From then on it reads
only the repacked copy, yet the file's pages it read once stay in the process's resident set:
on the 256M shape with int8 weights that is ~220 MB of a ~1.1 GB process, the whole weight set
counted twice. ``madvise(MADV_DONTNEED)`` on those mappings drops the pages from the process
(the mappings stay valid; the files are mapped read-only and shared, so a later read would
fault the same bytes back from the page cache, never stale or zero data).

Linux only; elsewhere, or if anything fails, nothing is released and the caller goes on.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

MADV_DONTNEED = 4  # <sys/mman.h> on Linux


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc


def read_only_mappings(paths: Iterable[Path], maps: Path = Path("/proc/self/maps")) -> list:
    """``(start, end)`` of this process's read-only mappings of ``paths`` (resolved), from
    ``/proc/self/maps``; writable mappings are never listed (dropping their pages would lose
    writes)."""
    wanted = {os.path.realpath(p) for p in paths}
    found = []
    for line in maps.read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or "w" in fields[1] or not fields[5].startswith("/"):
            continue
        if os.path.realpath(fields[5].strip()) in wanted:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            found.append((start, end))
    return found


def release_mapped(paths: Iterable[Path]) -> int:
    """Drop this process's resident pages of the read-only mappings of ``paths``; returns the
    bytes of address space advised (0 when nothing was mapped or the platform has no madvise)."""
    if not Path("/proc/self/maps").exists():
        return 0
    libc = _libc()
    if libc is None:
        return 0
    released = 0
    for start, end in read_only_mappings(paths):
        if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
            released += end - start
        else:
            log.debug("madvise failed (errno %d); pages kept", ctypes.get_errno())
    return released
