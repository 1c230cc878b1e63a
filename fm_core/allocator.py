"""The C allocator's policy for large blocks, set once when a training run starts.

glibc serves a large request with its own ``mmap`` (returned to the system on free) only above a
threshold that it raises, by default, each time such a block is freed (up to 32 MiB). A training
step frees activation tensors of a few MiB at every layer, so after the first steps they come from
the heap, and memory freed there stays resident: the process's peak RSS becomes the sum of every
phase's high-water mark rather than the peak of what is live at once. A fixed threshold keeps
those blocks mapped and unmapped as they are allocated and freed. Measured in
``bench/lora.py --mmap-threshold config adaptive`` (35M shape, per-residue head, 1 MiB against
glibc's adaptive default): peak RSS of full fine-tuning 1.6 -> 1.3 GiB, of LoRA 1.5 -> 1.0 GiB,
for about 3% more CPU time (pages mapped afresh: 7 interleaved pairs of the 8M step, median)."""

from __future__ import annotations

import ctypes
import logging
import sys

from fm_core.config import ConfigError

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
GLIBC_MAX_MIB = 32  # HEAP_MAX_SIZE / 2 on 64-bit: mallopt refuses more


def set_mmap_threshold(mib: float | None) -> bool:
    """Blocks of at least ``mib`` MiB are mmapped (None: the allocator's adaptive default). Returns
    whether the setting took effect (glibc on Linux only; elsewhere a no-op)."""
    if mib is None:
        return False
    if not 0 < mib <= GLIBC_MAX_MIB:
        raise ConfigError(f"malloc_mmap_threshold_mib={mib}: must lie in (0, {GLIBC_MAX_MIB}] or be null")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    done = bool(libc.mallopt(M_MMAP_THRESHOLD, int(mib * 2**20)))
    log.debug("malloc mmap threshold %s MiB: %s", mib, "set" if done else "refused")
    return done
