"""Peak resident memory of a block of code, sampled by a background thread (shared by the perf comparison
and every matrix stage, whose records carry their peak RSS), and :func:`measured`: a call's wall time and
peak RSS together."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RSS_INTERVAL_S = 0.05


def rss_bytes() -> int | None:
    """Resident set size of this process now (``/proc/self/statm``), or None where there is no /proc."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRss:
    """Context manager: a background thread samples the RSS every ``interval`` s; ``peak`` is the largest
    sample while the block ran (``ru_maxrss`` would be the peak of the whole process lifetime)."""

    def __init__(self, interval: float = RSS_INTERVAL_S) -> None:
        self.interval = interval
        self.start: int | None = None
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        now = rss_bytes()
        if now is not None:
            self.peak = now if self.peak is None else max(self.peak, now)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakRss:
        self.start = rss_bytes()
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()


def release_memory() -> None:
    """Collect garbage and hand freed heap back to the OS (glibc), so one phase's peak does not inherit
    the previous phase's freed-but-retained memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class Measure:
    """One timed call: one pipeline's run of one phase (``perf compare``) or one stage (``perf memory``)."""

    wall_s: float
    samples: int
    rss_start_bytes: int | None
    rss_peak_bytes: int | None

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s if self.wall_s > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        mib = 1 << 20
        return {"wall_s": round(self.wall_s, 4), "samples": self.samples,
                "samples_per_s": round(self.samples_per_s, 3),
                "rss_start_mib": None if self.rss_start_bytes is None else round(self.rss_start_bytes / mib, 1),
                "rss_peak_mib": None if self.rss_peak_bytes is None else round(self.rss_peak_bytes / mib, 1)}


def measured(samples: int, fn: Callable[..., Any], *args: Any) -> tuple[Any, Measure]:
    """Run ``fn(*args)`` timed with ``time.perf_counter`` and with its peak RSS sampled."""
    release_memory()
    with PeakRss() as mem:
        t0 = time.perf_counter()
        out = fn(*args)
        wall = time.perf_counter() - t0
    return out, Measure(wall, samples, mem.start, mem.peak)
