"""Giving back the compiler's resident pages once the kernels are loaded.

Once `Engine.warm_up` has run, every kernel is native code in anonymous memory. The LLVM library
Numba compiles and links with (libllvmlite) is not used again unless a new kernel has to be
compiled, yet importing Numba and loading the cached kernels leave 60-70 MB of its code pages
resident -- about as much as SmolLM2's weights. Those pages are clean and backed by the file,
so the OS drops them anyway when memory runs short; `release_compiler_pages` asks for that now
(madvise MADV_PAGEOUT, Linux 5.4 and later), so that what stays resident during generation is
the model and the runtime's working memory. A later compile reads them back in from the file.
Elsewhere it does nothing.
"""
from __future__ import annotations

import ctypes
import sys

MADV_PAGEOUT = 21  # linux/mman.h
COMPILER_LIBRARIES = ("libllvmlite",)


def _mappings(path_part: str):
    """(start, end) of this process's mappings whose file name contains `path_part` (Linux)."""
    with open("/proc/self/maps", encoding="utf-8") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and path_part in fields[5].rsplit("/", 1)[-1]:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                yield start, end


def release_compiler_pages() -> bool:
    """Ask the OS to drop the compiler library's resident pages; True if it accepted the advice
    for every mapping found (False where it is not Linux or the kernel predates MADV_PAGEOUT)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        madvise.restype = ctypes.c_int
        spans = [span for name in COMPILER_LIBRARIES for span in _mappings(name)]
    except (OSError, AttributeError):
        return False
    return bool(spans) and all(madvise(start, end - start, MADV_PAGEOUT) == 0 for start, end in spans)
