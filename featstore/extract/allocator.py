"""Keeping freed memory in the process: glibc hands large buffers (a batch of patches, a layer's activations)
back to the OS on free and faults them in again on the next batch; on a small CPU that page-fault time was
37-50% of the model's own time. Turning off mmap for large blocks and the trimming of the heap keeps them,
as ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...`` would, but set from inside
the process (and each reader worker), so nothing has to re-exec. The price is a higher peak RSS.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
_KEEP = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}
_DEFAULT = {M_MMAP_MAX: 65536, M_TRIM_THRESHOLD: 128 * 1024}  # glibc's documented defaults


def _mallopt(settings: dict[int, int]) -> bool:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False  # not glibc (musl, macOS): nothing to tune
    return all(libc.mallopt(k, v) == 1 for k, v in settings.items())


def keep_freed_memory() -> str:
    """Switch this process to keeping freed memory; returns what was done, for provenance.
    ``FEATSTORE_ALLOCATOR=system`` leaves glibc's defaults (lower peak memory, slower on small CPUs)."""
    if os.environ.get("FEATSTORE_ALLOCATOR") == "system":
        return "system default (FEATSTORE_ALLOCATOR=system)"
    if _mallopt(_KEEP):
        return "glibc malloc: mmap_max=0, trim_threshold=2147483647 (freed buffers kept for reuse)"
    return "system default (not glibc)"


def restore_default() -> None:
    _mallopt(_DEFAULT)


@contextlib.contextmanager
def freed_memory_kept(cpu: bool) -> Iterator[str]:
    """Keep freed memory for the duration of a run on the CPU (glibc's defaults again after); yields what was
    done, for provenance."""
    if not cpu:
        yield "system default"
        return
    try:
        yield keep_freed_memory()
    finally:
        restore_default()
