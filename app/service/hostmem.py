"""Host memory of a serving process: keep glibc from stranding freed blocks.

Applying an edit makes large short-lived tensors on the host (W_m's int64 columns: 2 MB on the
default model, 128 MB on an 8B one) between small ones that live as long as the edit (its
record, masks, ids). glibc raises its mmap threshold as large blocks are freed, after which
they come from the heap, where the long-lived small blocks keep the freed pages resident: RSS
grew by 2 MB per stored edit on the default model (benchmarks/gpu_check.py's memory part). A
fixed threshold keeps large blocks in mmap, returned to the system when freed: about 5 KB per
stored edit then, the routing data alone. The threshold is a setting (`MEMOIR_MMAP_THRESHOLD`,
32 MB by default): at glibc's own 128 KB every decode step's KV-cache and logits blocks were
fresh mappings too, faulted in and unmapped each step, which slowed decoding and edits alike
(measured in docs/engines.md and benchmarks/README.md §6).

What the heap still strands between edits (freed blocks below a live one, in the engine thread's
arena) goes back with `trim()`, glibc's malloc_trim, once an edit job has answered.

`heap()` tells the two apart from outside: bytes malloc has handed out and not had back (what
the process holds) against free bytes it keeps in its arenas (allocator noise). RSS per edit
minus the first is what the allocator, not the memory, costs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter; setting it turns off the dynamic threshold
THRESHOLD = 128 * 1024  # glibc's own starting value


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def pin_mmap_threshold(nbytes: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold for this process; False where there is no glibc (musl, macOS)."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        log.debug("no glibc mallopt here; the mmap threshold stays dynamic")
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, nbytes))


class _Mallinfo2(ctypes.Structure):
    # glibc's struct mallinfo2 (2.33 and newer): every field a size_t
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def heap() -> dict[str, int] | None:
    """glibc's own count over every arena: `in_use` (handed out from the arenas), `free` (kept in
    them, resident or not), `mmapped` (large blocks, each its own mapping); None without glibc 2.33+."""
    fn = getattr(_libc(), "mallinfo2", None)
    if fn is None:
        return None
    fn.restype = _Mallinfo2
    info = fn()
    return {"in_use": int(info.uordblks), "free": int(info.fordblks), "mmapped": int(info.hblkhd)}


def trim() -> bool:
    """Give the free pages of every malloc arena back to the system; False where there is no glibc."""
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True
