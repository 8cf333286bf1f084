"""Peak memory of a block of work, for the run summaries and the benchmarks.

CUDA: growth of ``max_memory_allocated`` over the allocation at entry. CPU on Linux: the
kernel's peak resident set (``VmHWM``) is reset at entry through ``/proc/self/clear_refs``, so
the result is the peak during the block minus the resident set at entry, whatever the process
did before (loading models, memory-mapping caches). Elsewhere: growth of ``ru_maxrss``, which
reads 0 when an earlier phase already peaked higher.
"""

from __future__ import annotations

import gc
import resource
import sys
from pathlib import Path

import torch


def _status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (None where there is no such file)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _maxrss_kib() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / 1024 if sys.platform == "darwin" else usage  # bytes on macOS, KiB on Linux


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (Linux ≥ 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class PeakMemory:
    """``with PeakMemory(device) as peak: work()`` → ``peak.mib``: peak growth in MiB.

    Example:
        >>> with PeakMemory("cpu") as peak:
        ...     x = torch.ones(1024, 1024)
        >>> peak.mib >= 0
        True
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.mib = 0.0
        self._base = 0.0
        self._exact = False

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self._exact = _reset_peak_rss()
            self._base = (_status_kib("VmRSS") if self._exact else _maxrss_kib()) / 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = (_status_kib("VmHWM") if self._exact else _maxrss_kib()) / 1024
        self.mib = max(0.0, peak - self._base)
