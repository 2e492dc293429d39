"""reuse_freed_memory: while training on the CPU, freed memory stays in the process and is reused without page
faults; outside it (and whenever the user set glibc's malloc knobs) glibc's own behaviour is untouched."""

import ctypes
import resource

import pytest

from harness.measure import _glibc, reuse_freed_memory, rss_bytes

SIZE = 256 << 20  # far above glibc's largest dynamic mmap threshold (32 MB): by default it is unmapped at free
PAGE = resource.getpagesize()
pytestmark = pytest.mark.skipif(_glibc() is None, reason="the allocator knobs are glibc's")


def faults_and_rss_drop() -> tuple[int, int]:
    """(page faults while a fresh SIZE block is written the second time, resident bytes the first free gave back)"""
    libc = _glibc()
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)  # written, so resident
    before = rss_bytes()
    libc.free(block)
    dropped = before - rss_bytes()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
    libc.free(block)
    return faults, dropped


def test_inside_the_block_a_freed_block_stays_resident_and_is_reused_without_faults():
    pages = SIZE // PAGE
    with reuse_freed_memory("cpu") as active:
        assert active
        faults, dropped = faults_and_rss_drop()
    # the rewrite may touch a few pages of allocator bookkeeping, never a share of the block's own pages
    assert faults < pages // 100, f"{faults} page faults rewriting a reused {SIZE >> 20} MB block"
    assert dropped < SIZE // 100, f"free handed {dropped >> 20} MB back to the kernel inside the block"


def test_outside_it_glibc_hands_the_block_back_and_faults_it_in_again():
    faults, dropped = faults_and_rss_drop()
    # the block is unmapped at free (all of it leaves the resident set; 10% allows for pages of other memory
    # moving meanwhile) and mapped afresh, so its pages fault in again: at least one fault per 2 MB even if
    # the kernel backs it with transparent huge pages (4 KB pages fault 512x more)
    assert dropped > SIZE * 9 // 10
    assert faults >= SIZE // (2 << 20)


def test_the_users_malloc_settings_and_cuda_are_left_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    with reuse_freed_memory("cpu") as active:
        assert not active
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    with reuse_freed_memory("cpu") as active:
        assert not active
    monkeypatch.delenv("GLIBC_TUNABLES")
    with reuse_freed_memory("cuda") as active:
        assert not active
