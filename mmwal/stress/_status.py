"""The status board: int64 counters every role publishes and the coordinator reads.

A small file mapped shared by every process of a run.  No lock guards it: each
slot has one writer (the role, or the coordinator for the global row), aligned
8-byte stores are not torn on the platforms mmwal supports, and a role killed
mid-update leaves a counter that is at worst one step stale.  That is why it is
a mapped file and not a ``multiprocessing.Queue``: a process SIGKILLed while it
holds a queue's internal lock would block every other process forever.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Board", "Phase"]


class Phase:
    """What a role is doing right now (the killer aims at the busy phases)."""

    IDLE = 0
    OPEN = 1
    APPEND = 2
    CHECKPOINT = 3
    REFRESH = 4
    CHECK = 5
    COMPACT = 6
    NAMES = ("idle", "open", "append", "checkpoint", "refresh", "check", "compact")


# Fields of a role row.
PID = 0
PHASE = 1
STARTS = 2  # incarnations started (the coordinator bumps it before each start)
OPS = 3  # acknowledged calls (writers)
DOCS = 4  # acknowledged documents (writers)
LAST_SEQ = 5  # the last seq this role knows (writers: acknowledged; readers: r.seq)
REFRESHES = 6
MAX_SEQ = 7  # the highest r.seq any incarnation of this reader saw
FULL_CHECKS = 8
CHECKED = 9  # documents whose exact value a reader checked
CHECKPOINTS = 10  # checkpoints completed
CKPT_MICROS = 11  # duration of the last checkpoint
VIOLATIONS = 12
PHASE_SINCE = 13  # time.monotonic_ns() when the phase began
CKPT_SEQ = 14  # the last seq folded into the last checkpoint
# Compactor (and the checkpointer's automatic compactions).
COMPACTIONS = 15  # compact() calls completed (those with nothing to do too)
COMPACT_MICROS = 16  # duration of the last one
COMPACT_PUBLISHED = 17  # ... that published a version (fragments_merged > 0)
MERGED = 18  # fragments merged or rewritten (sum of fragments_merged)
ROWS_COPIED = 19  # rows a compaction copied into new fragments
ROWS_DROPPED = 20  # dead rows a compaction dropped
FRAGMENTS = 21  # fragments of the version the last checkpoint/compaction published
KEEP = 22  # Config.keep_checkpoints of the current incarnation
AUTO_COMPACT = 23  # Config.auto_compact of the current incarnation (0/1)
SNAP_CHECKS = 24  # readers: old snapshots re-checked after versions retired
CHURN_CHECKED = 25  # readers: churn keys checked
FIELDS = 32

# Fields of the global row (row 0).
STOP = 0
INJECTED = 1


class Board:
    """Row 0 is global; row ``1 + i`` belongs to role ``i``."""

    def __init__(self, path: str, roles: int, *, create: bool = False) -> None:
        shape = (1 + roles, FIELDS)
        if create:
            with open(path, "wb") as f:
                f.write(bytes(8 * shape[0] * shape[1]))
        self.path = path
        self.a = np.memmap(path, dtype=np.int64, mode="r+", shape=shape)

    def row(self, role: int) -> np.ndarray:
        return self.a[1 + role]  # type: ignore[no-any-return]

    def get(self, role: int, field: int) -> int:
        return int(self.a[1 + role, field])

    def set(self, role: int, field: int, value: int) -> None:
        self.a[1 + role, field] = value

    def add(self, role: int, field: int, n: int = 1) -> None:
        self.a[1 + role, field] += n

    @property
    def stop(self) -> bool:
        return bool(self.a[0, STOP])

    def set_global(self, field: int, value: int) -> None:
        self.a[0, field] = value

    def get_global(self, field: int) -> int:
        return int(self.a[0, field])

    def column(self, field: int) -> np.ndarray:
        return np.array(self.a[1:, field])

    def close(self) -> None:
        mm = getattr(self.a, "_mmap", None)
        del self.a
        if mm is not None:
            try:
                mm.close()
            except (BufferError, ValueError):
                pass  # a view is still alive; the mapping goes with it
