"""Wall time and peak resident memory of a step (Linux: VmHWM, reset through /proc/self/clear_refs)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the process's peak RSS to its current RSS; False where the OS does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MB (since the last reset), or None if unknown.

    >>> (peak_rss_mb() or 1.0) > 0
    True
    """
    kib = _status_kib("VmHWM")
    if kib is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return kib / 1024.0


@dataclass
class StepCost:
    """Seconds and peak RSS (MB) of one step; ``peak_is_step`` says whether the peak was reset for it."""

    seconds: float = 0.0
    peak_rss_mb: float | None = None
    peak_is_step: bool = False

    def to_dict(self) -> dict:
        return {"seconds": self.seconds, "peak_rss_mb": self.peak_rss_mb, "peak_is_step": self.peak_is_step}


@contextmanager
def measure() -> Iterator[StepCost]:
    """Measure a ``with`` block.

    >>> with measure() as cost:
    ...     _ = sum(range(1000))
    >>> cost.seconds >= 0
    True
    """
    cost = StepCost()
    cost.peak_is_step = reset_peak_rss()
    start = time.perf_counter()
    try:
        yield cost
    finally:
        cost.seconds = time.perf_counter() - start
        cost.peak_rss_mb = peak_rss_mb()
