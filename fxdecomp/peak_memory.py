"""Peak host memory of this process, as the benchmarks report it (Linux /proc)."""
from __future__ import annotations

from pathlib import Path


def reset_peak_rss() -> bool:
    """Reset the peak (VmHWM) to the current resident size; False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The process's peak resident memory (VmHWM) in MB, NaN where /proc does not say."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")
