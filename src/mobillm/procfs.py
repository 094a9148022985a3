"""Memory figures of a process from the kernel (``/proc/PID/status``), not from Python: the one place that
parses that file. Imports nothing heavy, so a device process can report its memory without torch."""

from __future__ import annotations

import sys
from pathlib import Path


def status_kib(field: str, pid: int | str = "self") -> int | None:
    """A ``kB`` field of ``/proc/PID/status`` (``VmHWM``, ``VmRSS``, …) in KiB; None where there is no procfs."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def status_mib(field: str, pid: int | str = "self") -> float:
    """:func:`status_kib` in MiB, NaN where it cannot be read (the benchmarks' tables)."""
    kib = status_kib(field, pid)
    return float("nan") if kib is None else kib / 1024


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (``VmHWM``), the figure the benchmarks compare."""
    kib = status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource  # not Linux: ru_maxrss is the nearest equivalent (bytes on macOS, KiB elsewhere)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024
