"""mmwal: a multi-process write-ahead-logged store of embedding documents.

Writers in any number of processes append to one msgpack-framed log guarded by
advisory file locks; checkpoints fold the log into immutable ``.npy`` arrays
that readers memory-map; readers replay the log tail by mmap.

This module is the public contract: it only re-exports.
"""

from __future__ import annotations

from ._reader import Reader, ReaderStats
from ._replay import replay
from ._scale.publish import PublishInfo, publish
from ._scale.sharded import ShardedReader
from ._snapshot import Snapshot
from ._store import Store
from ._types import CheckpointInfo, Config, Document, Hit, Op, Problem, StoreStats, VerifyReport
from ._verify import verify
from .errors import (
    CheckpointWarning,
    CorruptionError,
    LockTimeout,
    MmwalError,
    StoreClosedError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointInfo",
    "CheckpointWarning",
    "Config",
    "CorruptionError",
    "Document",
    "Hit",
    "LockTimeout",
    "MmwalError",
    "Op",
    "Problem",
    "PublishInfo",
    "Reader",
    "ReaderStats",
    "ShardedReader",
    "Snapshot",
    "Store",
    "StoreClosedError",
    "StoreStats",
    "VerifyReport",
    "__version__",
    "publish",
    "replay",
    "verify",
]
