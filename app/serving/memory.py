"""Resident memory: freed heap pages go back to the kernel, and so do the pages of libraries never called.

Two things keep a long-running worker's RSS above what it uses (docs/deployment.md, "Memory"):

- glibc keeps memory that requests freed (decoded audio, model activations, upload buffers) in
  its heaps for reuse; ``malloc_trim`` hands the free pages back. The trimmer does so a moment
  after requests have finished, off the request threads.
- PyPI's torch wheel is the CUDA build, and loading it maps and touches the CUDA libraries (about
  250 MB) that this CPU-only service never calls. Their read-only pages are the files' own, so
  they can be dropped from this process (the kernel reads a page again should it ever be used).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import re
import threading
import time

logger = logging.getLogger(__name__)

MADV_DONTNEED, MADV_PAGEOUT = 4, 21  # MADV_PAGEOUT: Linux 5.4+
# Libraries of the CUDA build that a CPU-only process loads but never runs.
UNUSED_LIBRARIES = re.compile(r"/nvidia/|/libtorch_cuda[^/]*\.so|/libc10_cuda\.so|/libcudnn|/libnccl|/libcublas|/libcusparse|/libnvrtc|/libnvJitLink")

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def trim_heap() -> None:
    """Give the pages glibc's heaps hold free back to the kernel."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def page_out_unused_libraries() -> int:
    """Drop this process's resident pages of UNUSED_LIBRARIES' read-only mappings; return the bytes advised.

    A read-only mapping that holds no page of its own (``Anonymous: 0``, nothing copied on write,
    such as relocated data) maps only the file: ``MADV_DONTNEED`` unmaps its pages, and a page that
    is ever used again is read back from the file. A mapping with pages of its own gets
    ``MADV_PAGEOUT``, which never loses data (and which the kernel skips for pages that other
    processes share).
    """
    advised = 0
    try:
        with open("/proc/self/smaps") as smaps:
            text = smaps.read()
    except OSError:
        return 0
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        header, _, rest = block.partition("\n")
        fields = header.split(maxsplit=5)
        if len(fields) < 6 or "w" in fields[1] or not UNUSED_LIBRARIES.search(fields[5]):
            continue  # writable pages hold the library's live data: never touched
        anonymous = re.search(r"^Anonymous:\s+(\d+) kB", rest, re.M)
        advice = MADV_DONTNEED if anonymous is not None and anonymous.group(1) == "0" else MADV_PAGEOUT
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if _libc.madvise(start, end - start, advice) == 0:
            advised += end - start
    return advised


class Trimmer:
    """A thread that trims the heap after requests finish, and pages unused libraries out now and then."""

    def __init__(self, delay: float = 1.0, busy_every: float = 10.0, page_out_every: float = 60.0):
        self.delay, self.busy_every, self.page_out_every = delay, busy_every, page_out_every
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-trimmer", daemon=True)

    def start(self) -> "Trimmer":
        """Start the thread."""
        self._thread.start()
        return self

    def request_finished(self) -> None:
        """Note that a request finished (its memory is free to give back)."""
        self._finished.set()

    def _run(self) -> None:
        now = time.monotonic()
        # The first page-out comes soon after start, once the models (loaded meanwhile) are in.
        last_trim, last_page_out, pending = now, now - self.page_out_every + 15.0, False
        while True:
            finished = self._finished.wait(timeout=self.delay)
            if finished:
                self._finished.clear()
                pending = True
            now = time.monotonic()
            # Trim after a quiet moment, or now and then while requests keep coming.
            if pending and (not finished or now - last_trim >= self.busy_every):
                trim_heap()
                last_trim, pending = now, False
            if now - last_page_out >= self.page_out_every:
                page_out_unused_libraries()
                last_page_out = now
