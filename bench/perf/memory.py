"""Peak resident memory of a block of code, sampled by a background thread (shared by the perf comparison
and every matrix stage, whose records carry their peak RSS)."""

from __future__ import annotations

import ctypes
import gc
import os
import threading

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
