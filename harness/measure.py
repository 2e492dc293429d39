"""Peak memory of a stretch of work: CUDA's allocator counters on a GPU, the resident set on the CPU.

On Linux the kernel keeps the resident set's high-water mark (VmHWM); writing 5 to /proc/self/clear_refs
resets it to the current size, so the peak of a stretch is read exactly and costs the loop nothing. Elsewhere a
background thread samples the resident set every few milliseconds (may miss a short spike).
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from pathlib import Path

import torch


def rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: ru_maxrss is the best there is (kB on Linux, bytes on macOS)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _hwm_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_in_use(device: torch.device | str = "cpu") -> int:
    """Bytes in use now: CUDA's allocated memory on a GPU, the process's resident set on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.memory_allocated(device)
    return rss_bytes()


def memory_now(device: torch.device | str = "cpu") -> tuple[int, int]:
    """(in use, reserved) bytes now, cheap enough to read every step: CUDA's allocated and reserved memory (no
    synchronisation: the caller has synchronised), on the CPU the resident set for both (~20 us to read)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    rss = rss_bytes()
    return rss, rss


def release_freed_memory() -> None:
    """Hand freed memory back (Python garbage, glibc's free lists, CUDA's cache) so that a peak measured next is
    the next stretch's own. Without it, pages freed after loading a model stay resident and count."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = _glibc()
    if libc is not None:  # not glibc: nothing to trim
        libc.malloc_trim(0)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_INT_MAX = 2**31 - 1  # mallopt takes an int
# what glibc's dynamic thresholds grow to after the first large free (32 MB on 64-bit; trim is twice mmap)
_GROWN_MMAP_THRESHOLD, _GROWN_TRIM_THRESHOLD = 32 << 20, 64 << 20
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


@contextlib.contextmanager
def reuse_freed_memory(device: torch.device | str = "cpu"):
    """with reuse_freed_memory(device) as active: ...  keep freed memory in the process for the next step.

    Why: a CPU training step allocates and frees the same ~GB of activations every step. glibc hands blocks above
    its mmap threshold (<= 32 MB) and the heap's free top back to the kernel at free, so the next step faults
    them back in page by page, zeroed: on the default model (LoRA on all linear layers, 4 x 256) ~200k page
    faults per step and 15-25% of its time. Inside the block nothing is handed back; on leaving, the thresholds
    go to what glibc grows them to by itself and the kept memory is released. The peak resident set stays
    within glibc's own run-to-run spread (the same blocks are reused; default model, 4 x 128: 1.48-1.78 GB
    against 1.56-1.63 GB).
    Left alone (active is False): CUDA (its caching allocator reuses already), a C library that is not glibc,
    and an environment that sets glibc's MALLOC_*_ knobs or GLIBC_TUNABLES malloc ones (the user's choice wins;
    benchmarks/memory_vs_predicted.py relies on that).
    """
    libc = None
    user_set = any(k in os.environ for k in _MALLOC_ENV) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", "")
    if torch.device(device).type == "cpu" and not user_set:
        libc = _glibc()
    active = bool(libc and libc.mallopt(_M_MMAP_THRESHOLD, _INT_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
    try:
        yield active
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, _GROWN_MMAP_THRESHOLD)
            libc.mallopt(_M_TRIM_THRESHOLD, _GROWN_TRIM_THRESHOLD)
            libc.malloc_trim(0)


def _glibc():
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it, and only glibc has these mallopt knobs)
    except (OSError, AttributeError):
        return None
    return libc


class PeakMemory:
    """with PeakMemory(device) as peak: ...  then peak.bytes (peak in the block), peak.start_bytes.

    CUDA: torch.cuda.max_memory_allocated over the block (peak.reserved_bytes: the allocator's reserve).
    CPU: the process's peak resident set over the block (includes the model, as the GPU figure does).
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.005) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.bytes = self.start_bytes = self.reserved_bytes = 0
        self._stop = threading.Event()
        self._thread = None
        self._sampled = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self.start_bytes = rss_bytes()
        if not (_reset_hwm() and _hwm_bytes() is not None):
            self._sampled = self.start_bytes
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._sampled = max(self._sampled, rss_bytes())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
            self.reserved_bytes = torch.cuda.max_memory_reserved(self.device)
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.bytes = max(self._sampled, rss_bytes())
        else:
            self.bytes = _hwm_bytes()
        self.reserved_bytes = self.bytes


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start
