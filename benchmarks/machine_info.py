"""What every benchmark shares: the machine description printed beside its figures, best-of timing,
bytes on disk. Imported by the scripts in this folder (run as `python benchmarks/<name>.py`, which
puts this folder first on sys.path)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Callable


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(extra: str = "") -> str:
    """CPUs, model, OS, Python and the load average at the start: timings on a shared machine are
    only comparable within one run, so the load is printed beside them."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    text = (
        f"{os.cpu_count()} CPUs (nproc {nproc}), {cpu_model()}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )
    if extra:
        text += f", {extra}"
    return f"{text}; load average {load:.1f} at the start"


def best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The fastest of `repeats` calls (seconds) and the last call's result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def dir_bytes(path: Path) -> int:
    """Bytes of every file below `path`."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


class Report:
    """Lines printed as they come (a long benchmark shows progress) and kept for its markdown file."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, s: str = "") -> None:
        print(s, flush=True)
        self.lines.append(s)

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
