"""Resident memory: freed heap pages go back to the kernel, and so do the pages of libraries never called.

Two things keep a long-running worker's RSS above what it uses (docs/deployment.md, "Memory"):

- glibc keeps memory that requests freed (decoded audio, model activations, upload buffers) in
  its heaps for reuse; ``malloc_trim`` hands the free pages back. The trimmer does so a moment
  after requests have finished, off the request threads.
- PyPI's torch wheel is the CUDA build, and loading it maps and touches the CUDA libraries (about
  250 MB) that this CPU-only service never calls. Their read-only pages are file-backed and clean:
  ``MADV_PAGEOUT`` gives them back (the kernel reads a page again should it ever be used).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import re
import threading

logger = logging.getLogger(__name__)

MADV_PAGEOUT = 21  # Linux 5.4+
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
    """Give back the resident pages of read-only mappings of UNUSED_LIBRARIES; return how many bytes were advised."""
    advised = 0
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.readlines()
    except OSError:
        return 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or "w" in fields[1] or not UNUSED_LIBRARIES.search(fields[5]):
            continue  # writable pages may hold the library's modified data: never touched
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if _libc.madvise(start, end - start, MADV_PAGEOUT) == 0:
            advised += end - start
    return advised


class Trimmer:
    """A thread that trims the heap shortly after requests finish, and pages unused libraries out now and then."""

    def __init__(self, delay: float = 1.0, page_out_every: float = 60.0):
        self.delay, self.page_out_every = delay, page_out_every
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
        waited = self.page_out_every  # page out on the first round (the models load meanwhile)
        while True:
            if self._finished.wait(timeout=self.delay * 5):
                self._finished.clear()
                # Requests often come in bursts: trim after a quiet moment, not after each one.
                while self._finished.wait(timeout=self.delay):
                    self._finished.clear()
                trim_heap()
            waited += self.delay * 5
            if waited >= self.page_out_every:
                waited = 0.0
                page_out_unused_libraries()
