"""The small value types of the public API."""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from .errors import InvalidInputError

__all__ = ["CheckpointInfo", "Config", "Document", "Hit", "Op", "Problem", "StoreStats",
           "VerifyReport"]

DURABILITY_MODES = ("fsync", "os", "interval")
_RECOVERY = ("strict", "point-in-time", "skip-bad")
_MAX_COUNT = 1 << 62
_MAX_BYTES = 1 << 62
#: A chunk of this many documents is packed in memory at once.
_MAX_CHUNK_DOCUMENTS = 1 << 20
#: threading and portalocker refuse longer timeouts (OverflowError); a year is plenty.
_MAX_SECONDS = min(threading.TIMEOUT_MAX, 365 * 86400.0)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_seconds(x: Any) -> bool:
    """A finite, non-negative number of seconds that every timeout API accepts."""
    return (_is_number(x) and (isinstance(x, int) or math.isfinite(x))
            and 0 <= x <= _MAX_SECONDS)


@dataclass(frozen=True)
class Config:
    """Keyword knobs of a Store (frozen; build a new one to change a value).

    Parameters
    ----------
    checkpoint_threshold
        Records appended since the last checkpoint at which ``needs_checkpoint()``
        turns true (and, with ``auto_checkpoint``, a checkpoint runs).
    max_wal_bytes
        Log bytes since the last checkpoint at which ``needs_checkpoint()`` turns true.
    segment_bytes
        Size at which the active log segment is sealed and the next one started.
        A single record larger than this gets a segment of its own.
    sync_every_records, sync_every_ms
        For ``durability="interval"``: fdatasync after this many records or this
        many milliseconds, whichever comes first.
    keep_checkpoints
        Checkpoints kept in total, the current one included (0 and 1 both keep
        only the current one).
    metadata_compression_level
        lz4 frame compression level of checkpoint metadata chunks (0 = fast).
    lock_timeout
        Seconds to wait for a lock before raising :class:`mmwal.errors.LockTimeout`;
        ``None`` waits forever.
    auto_checkpoint
        Run a checkpoint from ``add``/``add_many``/``remove``/``clear`` when
        ``needs_checkpoint()`` (off by default).  If it fails, the write (already
        committed) still returns its seq; the failure is reported by a
        :class:`mmwal.CheckpointWarning` and ``Store.stats().auto_checkpoint_error``,
        and no automatic checkpoint is tried again for ``checkpoint_threshold``
        records (``Store.checkpoint()`` retries at once).
    chunk_documents
        Documents per compressed content/metadata chunk of a checkpoint.
    max_fragments
        Fragments a version may list before a checkpoint compacts (with
        ``auto_compact``); also the target of ``Store.compact()``.
    compact_dead_fraction
        Share of dead rows (replaced or removed) at which a fragment is
        rewritten by a compaction (and, with ``auto_compact``, by a checkpoint).
    auto_compact
        Compact at the end of ``checkpoint()`` when the new version lists more
        than ``max_fragments`` fragments or a fragment reaches
        ``compact_dead_fraction`` (on by default).
    ann_min_rows
        A checkpoint or compaction that writes a fragment of at least this many
        rows also builds an approximate (HNSW) index of it, when the ``ann``
        extra (usearch) is installed; 0 never builds one.  Readers map the
        index file read-only and search it with ``exact=None``/``False``.
    ann_metric, ann_dtype, ann_connectivity, ann_expansion_add, ann_expansion_search
        The index's metric (a search with another metric is exact), the
        precision of its own copy of the vectors (``"f16"`` default, ``"i8"``,
        ``"f32"``: candidates are re-scored exactly from the mapped float32
        matrix either way), the graph's connectivity, and the breadth of its
        build and default search (``search(expansion=...)`` overrides).  The
        search breadth is for an index of up to 100k rows; a larger one
        searches ``breadth * (rows / 100k) ** 0.6`` by default (1M rows: 4x),
        because recall at a fixed breadth falls as the graph grows.
    recovery
        ``"strict"`` (default), ``"point-in-time"`` or ``"skip-bad"``: what
        readers do with a damaged frame that has valid frames after it.
        ``Store.checkpoint()`` ignores it and is always strict: it never
        discards an acknowledged record on its own (it raises
        :class:`mmwal.CorruptionError`); salvage is ``mmwal repair``.

    Every field is checked when the Config is built - its type (a ``bool`` is
    not a number here), its range, and that times are finite (at most a
    year) - so a bad value raises :class:`mmwal.errors.InvalidInputError`
    before any Store touches the disk.

    Examples
    --------
    >>> import mmwal
    >>> cfg = mmwal.Config(checkpoint_threshold=50_000, keep_checkpoints=2)
    >>> cfg.segment_bytes
    67108864
    """

    checkpoint_threshold: int = 10_000
    max_wal_bytes: int = 256 << 20
    segment_bytes: int = 64 << 20
    sync_every_records: int = 1000
    sync_every_ms: float = 100.0
    keep_checkpoints: int = 2
    metadata_compression_level: int = 0
    lock_timeout: float | None = 30.0
    auto_checkpoint: bool = False
    chunk_documents: int = 256
    recovery: str = "strict"
    max_fragments: int = 8
    compact_dead_fraction: float = 0.2
    auto_compact: bool = True
    ann_min_rows: int = 50_000
    ann_metric: str = "cosine"
    ann_dtype: str = "f16"
    ann_connectivity: int = 16
    ann_expansion_add: int = 128
    ann_expansion_search: int = 64

    def __post_init__(self) -> None:
        # Every field is checked here, before a Store touches the disk with it:
        # types (bool is not an int here), ranges and finiteness.  An infinite
        # lock_timeout used to reach threading and raise OverflowError after
        # the store's directories were created.
        def bad(name: str, want: str) -> InvalidInputError:
            got = getattr(self, name)
            return InvalidInputError(f"Config.{name} must be {want}, got {got!r:.60}",
                                     field=name, value=got)

        for name, lo, hi in (("checkpoint_threshold", 1, _MAX_COUNT),
                             ("max_wal_bytes", 1, _MAX_BYTES),
                             ("segment_bytes", 4096, _MAX_BYTES),
                             ("sync_every_records", 1, _MAX_COUNT),
                             ("keep_checkpoints", 0, _MAX_COUNT),
                             ("chunk_documents", 1, _MAX_CHUNK_DOCUMENTS)):
            v = getattr(self, name)
            if type(v) is not int or not lo <= v <= hi:
                raise bad(name, f"an int from {lo} to {hi}")
        ms = self.sync_every_ms
        if not (_is_number(ms) and (isinstance(ms, int) or math.isfinite(ms))
                and 0 < ms <= _MAX_SECONDS * 1000):
            raise bad("sync_every_ms", f"a finite number > 0 and <= {_MAX_SECONDS * 1000:.0f}")
        lvl = self.metadata_compression_level
        if type(lvl) is not int or not 0 <= lvl <= 16:
            raise bad("metadata_compression_level", "an int from 0 to 16")
        lt = self.lock_timeout
        if lt is not None and not _is_seconds(lt):
            raise bad("lock_timeout", f"None (wait forever) or a finite number of seconds "
                      f"from 0 to {_MAX_SECONDS:.0f}")
        if type(self.auto_checkpoint) is not bool:
            raise bad("auto_checkpoint", "a bool")
        if type(self.auto_compact) is not bool:
            raise bad("auto_compact", "a bool")
        if type(self.max_fragments) is not int or not 1 <= self.max_fragments <= 1 << 16:
            raise bad("max_fragments", "an int from 1 to 65536")
        f = self.compact_dead_fraction
        if not (_is_number(f) and (isinstance(f, int) or math.isfinite(f)) and 0 < f <= 1):
            raise bad("compact_dead_fraction", "a number > 0 and <= 1")
        if type(self.recovery) is not str or self.recovery not in _RECOVERY:
            raise bad("recovery", "'strict', 'point-in-time' or 'skip-bad'")
        if type(self.ann_min_rows) is not int or not 0 <= self.ann_min_rows <= _MAX_COUNT:
            raise bad("ann_min_rows", f"an int from 0 to {_MAX_COUNT}")
        if self.ann_metric not in ("cosine", "dot", "l2"):
            raise bad("ann_metric", "'cosine', 'dot' or 'l2'")
        if self.ann_dtype not in ("f32", "f16", "i8"):
            raise bad("ann_dtype", "'f32', 'f16' or 'i8'")
        for name, lo, hi in (("ann_connectivity", 2, 256), ("ann_expansion_add", 1, 1 << 16),
                             ("ann_expansion_search", 1, 1 << 16)):
            v = getattr(self, name)
            if type(v) is not int or not lo <= v <= hi:
                raise bad(name, f"an int from {lo} to {hi}")

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)


class Hit(NamedTuple):
    """One search result: the document id and its score.

    ``score`` is a similarity for ``"cosine"`` and ``"dot"`` (higher is better)
    and the Euclidean distance for ``"l2"`` (lower is better).
    """

    id: str
    score: float


class Document:
    """One stored document.

    Examples
    --------
    >>> import numpy as np, mmwal
    >>> d = mmwal.Document("a", np.zeros(3, dtype=np.float32), content="hi")
    >>> d.id, d.content, d.metadata
    ('a', 'hi', None)
    """

    __slots__ = ("content", "embedding", "id", "metadata")

    def __init__(self, id: str, embedding: np.ndarray, content: str = "",
                 metadata: dict[str, Any] | None = None) -> None:
        self.id = id
        self.embedding = embedding
        self.content = content
        self.metadata = metadata

    def __repr__(self) -> str:
        return (f"Document(id={self.id!r}, embedding=<{self.embedding.shape[0]} floats>, "
                f"content={self.content[:40]!r}, metadata={self.metadata!r})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Document):
            return NotImplemented
        return (self.id == other.id and self.content == other.content
                and self.metadata == other.metadata
                and np.array_equal(self.embedding, other.embedding))

    __hash__ = None  # type: ignore[assignment]


class Op(NamedTuple):
    """One logged operation, as :func:`mmwal.replay` yields it (an immutable named tuple).

    ``kind`` is ``"add"``, ``"remove"`` or ``"clear"``; ``id`` is None for a
    clear, ``embedding``/``content``/``metadata`` are None except for an add.
    ``timestamp`` is the writer's wall clock (seconds since the epoch).
    With ``replay(fields=...)`` the fields not asked for are None (the
    timestamp 0.0).  A named tuple rather than a dataclass: replay makes one
    per document, and a tuple is built several times faster.
    """

    seq: int
    kind: str
    id: str | None
    embedding: np.ndarray | None
    content: str | None
    metadata: dict[str, Any] | None
    timestamp: float


@dataclass(frozen=True)
class CheckpointInfo:
    """What ``Store.checkpoint()`` published: its id, the last seq folded in, live documents."""

    id: int
    seq: int
    documents: int
    #: Fragments the published version lists.
    fragments: int = 0
    #: New fragments written (the checkpoint's own, plus any an automatic compaction wrote).
    fragments_written: int = 0
    #: Fragments an automatic compaction merged or rewrote into the new ones.
    fragments_merged: int = 0
    #: Rows written into new fragments (new documents plus rows a compaction copied).
    rows_copied: int = 0
    #: Bytes of new files: fragments, deletion vectors, the version file.
    bytes_written: int = 0
    #: Wall time of the call (not compared: two infos of the same version are equal).
    seconds: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class CompactionInfo:
    """What ``Store.compact()`` did: the version it published and what it rewrote.

    ``fragments_merged == 0`` means there was nothing to do: no version was
    published and ``id`` is the current one.
    """

    id: int
    seq: int
    documents: int
    fragments_before: int
    fragments: int
    fragments_merged: int = 0
    fragments_written: int = 0
    rows_copied: int = 0
    rows_dropped: int = 0
    bytes_written: int = 0
    seconds: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class Problem:
    """One problem :func:`mmwal.verify` found: the file, the byte offset, what is wrong."""

    file: str
    offset: int
    what: str

    def __post_init__(self) -> None:
        # ``what`` is often the message of an error that already names the file
        # and offset ("<file>: offset <n>: ..."); printed after them it said the
        # path twice.  Keep only the part that says what is wrong.
        what = self.what
        for prefix in (f"{self.file}: ", f"offset {self.offset}: "):
            if what.startswith(prefix):
                what = what[len(prefix):]
        object.__setattr__(self, "what", what)

    def __str__(self) -> str:
        return f"{self.file}: offset {self.offset}: {self.what}"


@dataclass
class VerifyReport:
    """The result of :func:`mmwal.verify`: ``ok`` is true when ``problems`` is empty.

    ``notes`` lists harmless findings (a torn, unacknowledged tail; leftover
    files a later checkpoint will clean up).
    """

    path: str
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    segments: int = 0
    records: int = 0
    first_seq: int = 0
    last_seq: int = 0
    checkpoint: int = 0
    documents: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["ok"] = self.ok
        d["problems"] = [dataclasses.asdict(p) for p in self.problems]
        return d


@dataclass(frozen=True)
class StoreStats:
    """A snapshot of a store's counters (``Store.stats()``)."""

    path: str
    dim: int
    durability: str
    seq: int
    checkpoint_id: int
    checkpoint_seq: int
    checkpoint_documents: int
    records_since_checkpoint: int
    log_segments: int
    log_bytes: int
    log_bytes_since_checkpoint: int
    checkpoint_bytes: int
    #: The last failed automatic checkpoint of this Store object ("Type: message"),
    #: kept until a checkpoint succeeds; None when there is none.
    auto_checkpoint_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
