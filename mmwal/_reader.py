"""``mmwal.Reader``: read-only, mmap'd, thread-safe and fork-safe; never blocks writers for long.

A Reader maps the checkpoint the MANIFEST names and replays the log tail
after it (also by mmap).  It never writes, truncates or repairs anything; the
only lock it ever takes is a *shared* append lock, briefly, to tell a
half-written frame from damage (docs/concepts.md).

What a Reader shows is an immutable :class:`~mmwal._snapshot.Snapshot`
(``_snapshot.py`` explains the append-only tail it is built on).  The Reader
owns the refreshing side: the log cursor, the state it appends to, the lock
that serialises refreshes, the optional background refresh thread, and the
after-fork handling.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import _format as F
from . import _store as _st
from ._fsutil import Paths, list_segments, store_root
from ._lock import FileLock
from ._snapshot import IdView, Snapshot, _Tail, checkpoint_columns
from ._types import Document
from ._version import VersionView, folded_past, open_manifest
from ._wal import RECOVERY_MODES, LogCursor, RawRun, Retired, read_tail_record
from .errors import ClosedError, CorruptionError, InvalidInputError, MmwalError

__all__ = ["Reader", "ReaderStats", "Snapshot"]

_log = logging.getLogger("mmwal")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: Serialises the after-fork handling of the threads of one child; a new lock
#: in every child (the parent's could have been held by one of its threads).
_FORK_GUARD = threading.Lock()
#: Documents of consecutive add records a refresh hands to the tail at once.
_RUN_DOCS = 4096
#: Most single-document add frames the cursor scans into one run (0: frame by frame);
#: a run's frames (~2 MB of 384-dim records) are still in the CPU caches when decoded.
_BULK = 1024
#: Largest vector block a Reader sizes its tail for up front (beyond: growth by doubling).
_PRESIZE_BYTES = 1 << 30


def _tail_rows_bound(cursor: LogCursor, dim: int) -> int:
    """At most how many documents the log holds from the cursor on (from segment sizes).

    Every add record carries its documents' vectors plus at least a 32-byte
    header and a few bytes of msgpack, so the log's bytes bound its documents;
    bounded by :data:`_PRESIZE_BYTES` of vectors.
    """
    total = 0
    for seg in list_segments(cursor.paths):
        if seg >= cursor.seg_id:
            try:
                total += os.stat(cursor.paths.segment(seg)).st_size
            except OSError:
                continue
    total -= cursor.offset
    per_row = dim * 4
    return max(0, min(total // (per_row + 16), _PRESIZE_BYTES // per_row))


def _refresh_period(refresh_every: Any) -> float | None:
    """A Reader's ``refresh_every`` argument, checked: None or seconds > 0."""
    if refresh_every is not None and (
            isinstance(refresh_every, bool) or not isinstance(refresh_every, (int, float))
            or not 0 < refresh_every < 1e9):
        raise InvalidInputError(f"refresh_every must be None or a number of seconds > 0, "
                                f"got {refresh_every!r}", got=refresh_every)
    return None if refresh_every is None else float(refresh_every)


def _new_fork_guard() -> None:
    global _FORK_GUARD
    _FORK_GUARD = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_fork_guard)


@dataclass(frozen=True)
class ReaderStats:
    """What a Reader serves and how current it is (``Reader.stats()``).

    ``lag`` is the newest seq in the log (from the writers' tail record) minus
    the applied ``seq``; None when the tail record cannot be trusted (e.g.
    after a reboot, before the first write).  ``fragments`` describes the
    mapped files: today one entry for the checkpoint.
    """

    path: str
    dim: int
    seq: int
    newest_seq: int | None
    lag: int | None
    documents: int
    checkpoint_id: int
    checkpoint_seq: int
    tail_records: int
    tail_documents: int
    refreshes: int
    last_refresh: float  # time.time() of the last successful refresh (or of the open)
    refresh_errors: int
    last_refresh_error: str | None
    refresh_every: float | None
    fragments: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _State:
    """What the refreshing thread owns: the mapped checkpoint, the tail, the log position."""

    __slots__ = ("ckpt", "ckpt_id", "ckpt_seq", "cursor", "mstat", "seq", "tail")

    def __init__(self, ckpt: VersionView | None, ckpt_id: int, ckpt_seq: int,
                 tail: _Tail, cursor: LogCursor, mstat: tuple[int, ...]) -> None:
        self.ckpt = ckpt
        self.ckpt_id = ckpt_id
        self.ckpt_seq = ckpt_seq
        self.seq = ckpt_seq
        self.tail = tail
        self.cursor = cursor
        self.mstat = mstat


_libc_trim: Callable[[int], int] | None = None


def _trim_heap() -> None:
    """Give freed heap memory back to the OS after a tail was dropped (glibc only)."""
    global _libc_trim
    if _libc_trim is None:
        fn: Any = lambda _pad: 0  # noqa: E731
        name = ctypes.util.find_library("c")
        if name and "libc" in name:
            try:
                fn = ctypes.CDLL(name).malloc_trim
            except (OSError, AttributeError):
                pass
        _libc_trim = fn
    _libc_trim(0)


class Reader:
    """A read-only view of an mmwal store: lookups, exact top-k search, refresh.

    Parameters
    ----------
    path
        The store directory (it must exist: a Reader never creates anything),
        or the URL of a store published with :func:`mmwal.publish`
        (``s3://bucket/prefix``, ``file:///dir``...): then the Reader serves
        the published version from ``cache_dir``, read-only, with no log tail
        (see :class:`mmwal._scale.remote.RemoteReader` for its options:
        ``storage_options``, ``cache_max_bytes``, ``retries``).
    recovery
        What to do with a damaged log record that has valid records after it:
        ``"strict"`` (default) raises :class:`mmwal.CorruptionError`;
        ``"point-in-time"`` stops before it; ``"skip-bad"`` skips it.
    refresh_every
        Seconds between refreshes done by a background daemon thread, so that
        request paths never pay for them (None: only explicit ``refresh()``).
        A failed background refresh keeps the last good snapshot, is counted
        in ``stats()`` and logged (logger ``"mmwal"``) once per error message.

    Notes
    -----
    *Threads.* A Reader may be shared by threads.  Every read uses the
    immutable :class:`Snapshot` current when it started; ``refresh()`` builds
    the next one aside and publishes it with one reference swap (refreshes
    are serialised).  Use :meth:`snapshot` when several reads must agree.

    *Fork.* A Reader opened before ``fork`` works in the child: on its first
    use there it reopens its lock descriptor (so the child never shares the
    parent's flock) and its locks, and restarts its refresh thread; the
    read-only mappings stay shared with the parent.

    ``embeddings`` is a zero-copy read-only memmap when the version is one
    fragment without deletions and the log tail is empty (nothing added,
    replaced or removed since the checkpoint).  Otherwise it is a new
    read-only in-memory array holding the live rows of each fragment followed
    by the tail documents, built on first access to each snapshot; ``search``
    never builds it, and :attr:`fragments` gives the zero-copy parts.  Run
    ``Store.checkpoint()`` then ``Store.compact()`` to get back to one
    zero-copy matrix.

    Examples
    --------
    >>> import numpy as np, mmwal, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with mmwal.Store(d, dim=2, durability="os") as s:
    ...     _ = s.add_many(["x", "y"], [[1.0, 0.0], [0.0, 1.0]], contents=["ex", "why"])
    >>> with mmwal.Reader(d) as r:
    ...     print(len(r), "x" in r, r["y"].content, r.search([0.9, 0.1], k=1))
    2 True why [Hit(id='x', score=0.9938837...)]
    """

    def __new__(cls, path: Any = None, *, recovery: str = "strict",
                refresh_every: float | None = None, cache_dir: Any = None,
                storage_options: dict[str, Any] | None = None, **remote: Any) -> Reader:
        # The same parameters as __init__ (inspect.signature(Reader) reads these),
        # plus the remote Reader's own (retries, cache_max_bytes).
        # A URL (s3://, file://, ...) names a published store: the remote
        # Reader serves it from a local cache (mmwal/_scale/remote.py).
        if cls is Reader and isinstance(path, str) and _URL.match(path):
            from ._scale.remote import RemoteReader

            return super().__new__(RemoteReader)
        return super().__new__(cls)

    _state: _State | None

    def __init__(self, path: str | os.PathLike[str], *, recovery: str = "strict",
                 refresh_every: float | None = None, cache_dir: Any = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        self._closed = True
        if cache_dir is not None or storage_options is not None:
            raise InvalidInputError(f"cache_dir and storage_options are for a published store "
                                    f"(a URL such as s3://bucket/prefix); {path!r} is a local "
                                    "path: drop them", got=str(path))
        self._thread: threading.Thread | None = None
        if recovery not in RECOVERY_MODES:
            raise InvalidInputError(f"recovery must be one of {RECOVERY_MODES}, got "
                                    f"{recovery!r}", got=recovery)
        self.path = store_root(path)
        self.recovery = recovery
        self.refresh_every = _refresh_period(refresh_every)
        self.on_refresh: Callable[[Reader, int], None] | None = None
        self._paths = Paths(self.path)
        manifest = open_manifest(self._paths)
        self.dim: int = manifest["dim"]
        self._lock = FileLock.for_reader(self._paths.append_lock)

        def load() -> None:
            self._state = self._load(manifest)
            self._catch_up()

        self._start(load)

    def _start(self, load: Callable[[], None]) -> None:
        """The end of opening, for every kind of Reader: refresh bookkeeping, ``load``
        (which sets the state), the first snapshot, the refresh thread; closed on error."""
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._generation = _st._fork_generation
        self._state = None
        self._refreshes = 0
        self._refresh_errors = 0
        self._last_error: str | None = None
        self._warned: set[str] = set()
        self._closed = False
        try:
            load()
            self._publish()
        except BaseException:
            self.close()
            raise
        self._last_refresh = time.time()
        if self.refresh_every is not None:
            self._start_thread()

    # ------------------------------------------------------------------ state
    def _new_state(self, manifest: dict[str, Any]) -> _State:
        try:
            st = os.stat(self._paths.manifest)
            mstat: tuple[int, ...] = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            mstat = ()
        cid = manifest["checkpoint"]
        ckpt = self._map_version(manifest)
        seq = manifest["checkpoint_seq"]
        paths = self._paths
        cursor = LogCursor(paths, manifest["replay_segment"], seq + 1, mode=self.recovery,
                           lock=self._lock, folded=lambda seg: folded_past(paths, seg))
        return _State(ckpt, cid, seq, _Tail(self.dim, False), cursor, mstat)

    def _map_version(self, manifest: dict[str, Any]) -> VersionView | None:
        """The version ``manifest`` names, mapped (None: no checkpoint yet).

        The current one is kept as it is; fragments the old version shares
        with the new one stay mapped (and keep their metadata columns): a
        switch maps only new files.
        """
        cid = manifest["checkpoint"]
        old = self._state
        if old is not None and old.ckpt_id == cid:
            return old.ckpt
        if not cid:
            return None
        reuse = old.ckpt.views if old is not None and old.ckpt is not None else None
        return VersionView(self._paths, manifest, self.dim, reuse)

    def _load(self, manifest: dict[str, Any]) -> _State:
        """A fresh state at the checkpoint ``manifest`` names (or a newer one).

        A slow Reader can find the checkpoint it was told about already
        retired by a newer one: then the MANIFEST has changed, and it moves on.
        """
        for attempt in range(100):
            try:
                return self._new_state(manifest)
            except CorruptionError:
                newer = open_manifest(self._paths)
                if newer == manifest or attempt == 99:
                    raise
                manifest = newer
        raise AssertionError("unreachable")

    def _switch(self, manifest: dict[str, Any], reuse: bool = True) -> None:
        old = self._state
        if not reuse and old is not None:
            old.cursor.close()  # and map the checkpoint again too
            self._state = old = None
        self._state = self._load(manifest)
        if old is not None:
            old.cursor.close()
            if old.tail.n:
                self._trim = True

    _trim = False

    def _rebase(self, m: dict[str, Any], mstat: tuple[int, ...]) -> bool:
        """Move to a version of the same seq (a compaction) keeping the tail; False: cannot.

        A compaction publishes a version that folds no record: the tail read
        so far is still the tail, only the version rows it killed need new
        numbers (:meth:`_Tail.rebased`).  Otherwise (a checkpoint folded
        records, a retired file, a clear in the tail) the caller rebuilds the
        state from the log as usual.
        """
        state = self._state
        if (state is None or state.ckpt is None or not m["checkpoint"]
                or m["checkpoint_seq"] != state.ckpt_seq or state.tail.cleared):
            return False
        try:
            new = VersionView(self._paths, m, self.dim, state.ckpt.views)
        except CorruptionError:
            return False  # retired meanwhile, or damaged: the full path decides
        if new.seq != state.ckpt_seq or new.live != state.ckpt.live:
            return False
        tail = state.tail.rebased(state.ckpt, new)
        if tail is None:
            return False
        state.ckpt, state.ckpt_id, state.tail, state.mstat = new, m["checkpoint"], tail, mstat
        return True

    def _apply_log(self) -> int:
        """Apply every valid frame after the position; return the ops applied."""
        # Replaying builds many small objects that live on: the cyclic GC would
        # rescan the growing heap again and again for nothing (none of these
        # objects form cycles).  Paused for the duration, as msgpack advises.
        gc_was = gc.isenabled()
        if gc_was:
            gc.disable()
        try:
            return self._apply_frames()
        finally:
            if gc_was:
                gc.enable()

    def _apply_frames(self) -> int:
        state = self._state
        assert state is not None
        dim = self.dim
        decode_add = F.decode_add_ids_vectors  # documents stay encoded until read
        ckpt = state.ckpt
        applied = 0
        if not state.tail.presized:
            # A fresh tail (a new Reader, a new version) is sized for the log once:
            # growing by doubling copied the vectors over and over (~0.3 s per
            # 100k documents of 384 dims).  Only the pages written are touched.
            state.tail.presized = True
            state.tail.reserve(_tail_rows_bound(state.cursor, dim))
        # Consecutive add records go to the tail together (one bookkeeping
        # pass per run, not per record); a remove or clear, the end, an error
        # or a run of _RUN_DOCS documents applies the run first, so the
        # order of the log is kept and every record the cursor passed is in.
        run: tuple[list[Any], ...] = ([], [], [], [], [], [])  # ids, embs, counts, docs, ...
        ids, embs, counts, docs_, paths, offsets = run
        extend, add_emb, add_count = ids.extend, embs.append, counts.append
        add_docs, add_path, add_offset = docs_.append, paths.append, offsets.append
        last = state.seq
        adding = False  # inside the tail's add of a run (an error there: not again)

        def apply_run() -> None:
            nonlocal adding
            if ids:
                a, b, c, d, e, f = (x[:] for x in run)
                for x in run:
                    x.clear()
                adding = True
                state.tail.add(a, b, c, d, e, f, ckpt)
                adding = False
            state.seq = last

        cursor = state.cursor
        try:
            for frame in cursor.frames(_BULK):
                if isinstance(frame, RawRun):
                    # A run of single-document add records, decoded in bulk and
                    # handed to the tail at once (after the records before it).
                    first, r_offsets = frame.first_seq, frame.offsets
                    apply_run()
                    rids, vecs, rdocs, err = F.decode_add_run(
                        frame.buf, r_offsets, frame.lengths, dim, frame.path,
                        state.tail.free_rows(len(r_offsets)))
                    k = len(rids)
                    if k:
                        state.tail.add(rids, vecs, [1] * k, rdocs, [frame.path] * k,
                                       r_offsets[:k], ckpt)
                        last = state.seq = first + k - 1
                        applied += k
                    if err is not None:
                        # As frame by frame: the records before the bad one are
                        # in, the cursor stays at it.
                        cursor.offset = r_offsets[k]
                        cursor.next_seq = first + k
                        raise err
                    continue
                kind, seq, count, payload, path, offset = frame
                if kind == F.KIND_ADD and count >= _RUN_DOCS // 64:
                    # A batch: applied at once, its vectors copied straight from the
                    # mapped segment into the tail (the view is not kept).
                    _ts, rids, emb, docs = decode_add(count, payload, dim, path, offset,
                                                      False)
                    apply_run()
                    state.tail.add(rids, [emb], [count], [docs], [path], [offset], ckpt)
                    last = state.seq = seq + count - 1
                elif kind == F.KIND_ADD:
                    _ts, rids, emb, docs = decode_add(count, payload, dim, path, offset)
                    extend(rids)
                    add_emb(emb)
                    add_count(count)
                    add_docs(docs)
                    add_path(path)
                    add_offset(offset)
                    last = seq + count - 1
                    if len(ids) >= _RUN_DOCS:
                        apply_run()
                else:
                    body = F.decode_payload(kind, count, payload, dim, path, offset)
                    apply_run()
                    if kind == F.KIND_REMOVE:
                        state.tail.remove(body[1], ckpt)
                    else:  # clear
                        state.tail = _Tail(dim, True)
                    last = seq
                    state.seq = last
                applied += count
        except BaseException:
            # The records the cursor passed before the error are applied, as
            # frame by frame - unless applying them is what failed (the Reader
            # then starts its state over); the error raised is the first one.
            if not adding:
                with contextlib.suppress(Exception):
                    apply_run()
            raise
        apply_run()
        return applied

    def _catch_up(self) -> None:
        """Apply the log; when a checkpoint retired our segment, move to that checkpoint."""
        for _ in range(100):
            try:
                self._apply_log()
                return
            except Retired:
                # A checkpoint folded (and is retiring) the segment we were reading.
                state = self._state
                assert state is not None
                m = open_manifest(self._paths)
                if m["checkpoint"] == state.ckpt_id:
                    missing = self._paths.segment(state.cursor.seg_id)
                    raise CorruptionError(
                        f"{missing}: log segment missing while the manifest still needs it; "
                        "run `mmwal verify`", path=missing, offset=0) from None
                self._switch(m)
        raise CorruptionError(f"{self._paths.manifest}: the store kept moving to newer "
                              "checkpoints while this Reader caught up; retry",
                              path=self._paths.manifest, offset=0)

    def _publish(self) -> None:
        s = self._state
        assert s is not None
        self._snap = Snapshot(s.ckpt, s.ckpt_id, s.tail, s.seq, self.dim, s.ckpt_seq)
        if self._trim:
            self._trim = False
            _trim_heap()

    # ------------------------------------------------------------------ public
    def _use(self) -> Snapshot:
        """The current snapshot, after the checks every public call makes."""
        if self._closed:
            raise ClosedError(f"Reader({self.path!r}) is closed", path=self.path)
        if self._generation != _st._fork_generation:
            self._after_fork()
        return self._snap

    def _after_fork(self, *, restart: bool = True) -> None:
        """First use in a forked child: own locks and descriptors, keep the mappings.

        Runs once per child even when several of its threads make their first
        call at once (``_FORK_GUARD`` is new in every child).
        """
        with _FORK_GUARD:
            if self._generation == _st._fork_generation:
                return  # another thread of this child did it
            # The parent's refresh lock may have been held by a parent thread that
            # does not exist here: then that refresh stopped part way in our copy
            # of the state (half a frame applied, the cursor not moved past it),
            # and the next refresh must start over from the MANIFEST.  The
            # published snapshot is whole either way.
            if self._refresh_lock.locked():
                self._dirty = True
            self._refresh_lock = threading.Lock()
            # The flock descriptor is the parent's open file description
            # (sharing it would share the lock): open our own.
            if self._lock is not None:
                self._lock.after_fork()
            self._stop = threading.Event()
            self._generation = _st._fork_generation
            if restart and self.refresh_every is not None and not self._closed:
                self._start_thread()

    def snapshot(self) -> Snapshot:
        """The current immutable view (``ids``, ``embeddings``, ``get``, ``search``, ``seq``).

        Examples
        --------
        >>> import mmwal, tempfile
        >>> d = tempfile.mkdtemp()
        >>> with mmwal.Store(d, dim=2, durability="os") as s:
        ...     _ = s.add("a", [1.0, 2.0])
        >>> with mmwal.Reader(d) as r:
        ...     snap = r.snapshot()
        ...     snap.ids[0], snap.embeddings[0].tolist(), snap.seq
        ('a', [1.0, 2.0], 1)
        """
        return self._use()

    @property
    def seq(self) -> int:
        """The last sequence number applied (the snapshot's)."""
        return self._use().seq

    def refresh(self) -> int:
        """Apply new log records, or move to a newer checkpoint; return how far seq moved.

        The return value is the number of operations by which ``seq`` advanced
        (after a move to a newer checkpoint, the net advance).  Costs what was
        appended since the last refresh (plus mapping a newer checkpoint, if
        any); concurrent calls are serialised.
        """
        self._use()
        with self._refresh_lock:
            advanced = self._refresh_locked()
        hook = self.on_refresh
        if hook is not None:
            hook(self, advanced)
        return advanced

    def _refresh_locked(self) -> int:
        if self._closed:
            raise ClosedError(f"Reader({self.path!r}) is closed", path=self.path)
        before = self._snap.seq
        try:
            if self._dirty:
                # The last refresh failed part way (damage, an I/O error, an
                # interrupt): its state may hold half a frame.  Start over from
                # the MANIFEST; the published snapshot was never touched.
                self._switch(open_manifest(self._paths), reuse=False)
                self._dirty = False
            self._refresh_state()
        except BaseException:
            self._dirty = True
            raise
        self._refreshes += 1
        self._last_refresh = time.time()
        return max(0, self._snap.seq - before)

    _dirty = False

    def _refresh_state(self) -> None:
        state = self._state
        assert state is not None
        try:
            st = os.stat(self._paths.manifest)
            mstat: tuple[int, ...] = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            mstat = ()
        if mstat != state.mstat:
            m = open_manifest(self._paths)
            if m["checkpoint"] != state.ckpt_id:
                if not self._rebase(m, mstat):
                    self._switch(m)
            else:
                state.mstat = mstat
        self._catch_up()
        self._publish()

    # ------------------------------------------------------------ background
    def _start_thread(self) -> None:
        t = threading.Thread(target=self._refresh_loop, name=f"mmwal-refresh {self.path}",
                             daemon=True)
        self._thread = t
        t.start()

    def _refresh_loop(self) -> None:
        every = self.refresh_every
        stop = self._stop
        assert every is not None
        while not stop.wait(every):
            if self._closed:
                return
            try:
                self.refresh()
            except ClosedError:
                return
            except Exception as exc:  # any failure: keep serving the last snapshot
                self._refresh_failed(exc)

    def _refresh_failed(self, exc: BaseException) -> None:
        """Count and log (once per message) a refresh that failed in the background."""
        self._refresh_errors += 1
        msg = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        self._last_error = msg
        if msg not in self._warned and len(self._warned) < 100:
            self._warned.add(msg)  # once per distinct error, not every period
            _log.warning("background refresh of %s failed: %s; the Reader keeps "
                         "serving seq %d", self.path, msg, self._snap.seq)

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self._use())

    def __contains__(self, id: object) -> bool:
        return id in self._use()

    def __getitem__(self, id: str) -> Document:
        return self._use()[id]

    def get(self, id: str, default: Any = None) -> Any:
        """The Document with this id, or ``default`` (None) when there is none."""
        return self._use().get(id, default)

    @property
    def ids(self) -> IdView:
        """Live ids in row order: row i of ``embeddings`` is ``ids[i]`` (of one snapshot)."""
        return self._use().ids

    @property
    def embeddings(self) -> np.ndarray:
        """(n, dim) float32, read-only; zero-copy only for one whole fragment and no tail.

        See :attr:`Snapshot.embeddings` and :attr:`fragments`.
        """
        return self._use().embeddings

    def search(self, q: Any, k: int = 10, metric: str = "cosine", *, where: Any = None,
               exact: bool | None = None, expansion: int | None = None,
               where_document: Any = None) -> Any:
        """Top-k search over every live document matching ``where``.

        See :meth:`mmwal.Snapshot.search` for the parameters: ``q`` is (dim,)
        or (m, dim); ``metric`` is ``"cosine"``, ``"dot"`` (similarity, higher
        is better) or ``"l2"`` (distance, lower is better); ``where`` is a
        Chroma-style metadata filter.

        Returns
        -------
        list[Hit] best first, or a list of such lists for a 2-D ``q``.

        Examples
        --------
        >>> import mmwal, tempfile
        >>> d = tempfile.mkdtemp()
        >>> with mmwal.Store(d, dim=2, durability="os") as s:
        ...     _ = s.add_many(["a", "b"], [[1, 0], [0.9, 0.1]],
        ...                    metadatas=[{"src": "x.pdf"}, {"src": "y.pdf"}])
        >>> with mmwal.Reader(d) as r:
        ...     [h.id for h in r.search([1, 0], k=2, where={"src": "y.pdf"})]
        ['b']
        """
        return self._use().search(q, k, metric, where=where, exact=exact, expansion=expansion,
                                  where_document=where_document)

    def find(self, where: Any = None, limit: int | None = None, *,
             where_document: Any = None) -> list[str]:
        """Ids of the live documents matching ``where``, in row order (see :meth:`search`)."""
        return self._use().find(where, limit, where_document=where_document)

    @property
    def fragments(self) -> list[Any]:
        """Per fragment of the current version: ``id``, ``ids``, mapped ``embeddings``, ``live``.

        The zero-copy way to the whole matrix when :attr:`embeddings` would be
        a copy (several fragments, deletions, or a tail); see
        :attr:`Snapshot.fragments`.  Taken from one snapshot: for several
        reads that must agree with each other, use :meth:`snapshot`.
        """
        return self._use().fragments

    def stats(self) -> ReaderStats:
        """Counters of what this Reader serves and how far behind the log it is."""
        snap = self._use()  # every figure from one snapshot: a refresh may run meanwhile
        ckpt_seq = snap.checkpoint_seq
        newest = _newest_seq(self._paths)
        frag: list[dict[str, Any]] = []
        for f in snap.fragments:
            view = f.ids._view
            try:
                cols = checkpoint_columns(view)
            except MmwalError as exc:  # damaged documents: say so, stats never raises
                cols = None
                view.columns_error = str(exc)
            h = f.ids._view.ann
            index = None if h is None else {
                "metric": h.metric, "dtype": h.meta.get("dtype"), "bytes": h.file_meta[0],
                "mapped": h.index is not None, "error": h.error}
            frag.append({"id": f.id, "rows": len(f), "dead_rows": len(f) - int(f.live.sum()),
                         "index": index,
                         "columns": sorted(cols) if cols is not None else [],
                         "columns_error": view.columns_error})
        return ReaderStats(
            path=self.path, dim=self.dim, seq=snap.seq, newest_seq=newest,
            lag=None if newest is None else max(0, newest - snap.seq), documents=len(snap),
            checkpoint_id=snap.checkpoint_id, checkpoint_seq=ckpt_seq,
            tail_records=snap.seq - ckpt_seq, tail_documents=snap._tail_live,
            refreshes=self._refreshes, last_refresh=self._last_refresh,
            refresh_errors=self._refresh_errors, last_refresh_error=self._last_error,
            refresh_every=self.refresh_every, fragments=frag)

    # ------------------------------------------------------------------ lifecycle
    @property
    def checkpoint_id(self) -> int:
        """Id of the checkpoint this Reader maps (0: none yet)."""
        return int(self._use().checkpoint_id)

    def close(self) -> None:
        """Stop the refresh thread, drop the mappings and descriptors; idempotent.

        Snapshots taken before keep their mappings until they are dropped.
        """
        if self._closed:
            return
        if self._generation != _st._fork_generation:
            self._after_fork(restart=False)  # a lock a parent thread held would never free
        self._closed = True
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread() and t.is_alive():
            t.join(timeout=60)
        with self._refresh_lock:
            if self._state is not None:
                self._state.cursor.close()
                self._state = None
            if self._lock is not None:
                self._lock.close()  # a plain close: it never unlocks a parent's lock

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return f"Reader({self.path!r}, closed)"
        return f"Reader({self.path!r}, seq={self._snap.seq}, checkpoint={self._snap.checkpoint_id})"

    def to_arrow(self, columns: list[str] | None = None) -> Any:
        """The live documents as a ``pyarrow.Table`` (see :meth:`mmwal.Snapshot.to_arrow`).

        Needs pyarrow (``pip install 'mmwal[arrow]'``).  The embedding column
        is zero-copy (it points into the mapped checkpoint) when
        :attr:`embeddings` is; otherwise it wraps that documented copy.

        Examples
        --------
        >>> import mmwal, tempfile
        >>> d = tempfile.mkdtemp()
        >>> with mmwal.Store(d, dim=2, durability="os") as s:
        ...     _ = s.add("a", [1.0, 2.0], "text", {"k": [1, 2]})
        >>> with mmwal.Reader(d) as r:
        ...     r.to_arrow().to_pylist()
        [{'id': 'a', 'content': 'text', 'metadata': '{"k":[1,2]}', 'embedding': [1.0, 2.0]}]
        """
        return self._use().to_arrow(columns)

    def to_pandas(self, columns: list[str] | None = None) -> Any:
        """The live documents as a pandas DataFrame (``pip install 'mmwal[pandas]'``).

        Built from :meth:`to_arrow`: ``metadata`` holds dicts (or None),
        ``embedding`` one float32 numpy array per row.
        """
        return self._use().to_pandas(columns)


def _newest_seq(paths: Paths) -> int | None:
    """The last seq the writers' tail record announces, if it can be trusted now."""
    t = read_tail_record(paths)
    return None if t is None else t.last_seq
