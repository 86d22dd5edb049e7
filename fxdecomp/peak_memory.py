"""Peak host memory of this process, as the benchmarks report it (Linux /proc)."""
from __future__ import annotations

import ctypes
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


def trim_heap() -> None:
    """Hand freed heap memory back to the system (glibc), so the next peak starts from what is
    held: otherwise one measurement's retained heap is the next one's peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class DeviceMeter:
    """Peak memory on the device a benchmark runs on: CUDA's allocator statistics on a GPU, the
    process's peak resident size on the CPU; one reader so every benchmark reports the same thing."""

    def __init__(self, device):
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            import torch
            torch.cuda.synchronize(self.device)

    def reset(self) -> None:
        """Start a new peak from what is held now."""
        self.sync()
        if self.device.type == "cuda":
            import torch
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()

    def peak_mb(self) -> float:
        self.sync()
        if self.device.type == "cuda":
            import torch
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return peak_rss_mb()

    def held_mb(self) -> float:
        """What is held now (on the CPU, right after ``reset``, the peak is what is held)."""
        if self.device.type == "cuda":
            import torch
            return torch.cuda.memory_allocated(self.device) / 2**20
        return peak_rss_mb()

    def peak(self, fn) -> tuple[float, float]:
        """(peak MB while ``fn()`` runs, MB it rose above what was held before)."""
        import gc
        gc.collect()
        trim_heap()
        self.reset()
        before = self.held_mb()
        out = fn()
        peak = self.peak_mb()
        del out
        return peak, peak - before
