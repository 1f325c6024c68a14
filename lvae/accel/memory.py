"""Host memory: keep what PyTorch frees in the process heap instead of returning it to the OS.

With glibc's defaults every large tensor (above a threshold of at most 32 MB) gets a fresh ``mmap`` and is
unmapped when freed, so the next activation of that size faults its pages in again, zero-filled by the kernel.
On a CPU that kernel time can be a large part of the work: a 16-lambda forward of a Kodak image through
``rd_model_small`` took 1.1 million page faults and 1.65 s of kernel time for 2.5 s of compute
(benchmarks/HISTORY.md). :func:`reuse_freed_memory` turns that off; the process then keeps its peak memory
until it exits.
"""
import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
M_MMAP_MAX = -4


def reuse_freed_memory():
    """Serve every allocation from the heap (``M_MMAP_MAX = 0``) and never trim it (``M_TRIM_THRESHOLD = -1``;
    the largest positive value, 2**31 - 1, still let glibc return a free top over 2 GB, which a 16-lambda
    forward of rd_model_base leaves), so freed tensor memory is reused without page faults. Process-wide; glibc
    on Linux only. Returns True when applied, False where it does not apply (other C libraries and systems)."""
    if not sys.platform.startswith('linux'):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
