"""``mmwal.Store``: the writer.  Any number of processes, each with its own Store."""

from __future__ import annotations

import functools
import os
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from . import _format as F
from . import _io
from ._fsutil import (
    Paths,
    atomic_write,
    check_filesystem,
    list_segments,
    makedirs,
    store_root,
)
from ._lock import FileLock
from ._types import DURABILITY_MODES, Config, StoreStats
from ._validate import (
    as_id,
    as_ids,
    as_text,
    as_texts,
    as_vectors,
    normalize_metadata,
    normalize_metadatas,
)
from ._version import open_manifest
from ._wal import Appender, create_segment
from .errors import (
    CheckpointWarning,
    DimensionError,
    InvalidInputError,
    LockTimeout,
    MmwalError,
    PoisonedError,
    StorageIOError,
    StoreClosedError,
)

__all__ = ["Store", "open_manifest"]

_pack = F.pack
_add_frame = F.add_frame
_time = time.time
_ADD = F.KIND_ADD
_MAX_PAYLOAD = F.MAX_PAYLOAD
#: An ASCII id of at most this many characters needs no further check.
_ASCII_ID = F.MAX_ID_BYTES

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

# Fork safety (RULES.md 16): a child must never use the parent's descriptors
# for locking.  The hook bumps a generation; each Store compares it on use.
_fork_generation = 0
_stores: weakref.WeakSet[Store] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _admitted(method: Callable[Concatenate[Store, _P], _R]) -> Callable[Concatenate[Store, _P], _R]:
    """A public Store call: refused once close() began, waited for by close()."""

    # The gate inlined (Store._enter/_leave): it runs around every call.
    def call(self: Store, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        if self._generation != _fork_generation and not self._closing:
            self._after_fork()
        gate = self._gate_lock
        with gate:
            if self._closing:
                raise self._closed_error()
            self._calls += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            with gate:
                self._calls -= 1
                if self._closing and not self._calls:
                    self._gate.notify_all()

    functools.update_wrapper(call, method)  # name and docstring (help(), doctests)
    return call


def _check_path(root: str) -> None:
    if os.path.exists(root) and not os.path.isdir(root):
        raise InvalidInputError(f"{root} exists and is not a directory; an mmwal store is a "
                                "directory: pass a new or existing store directory",
                                path=root)


def _create(paths: Paths, dim: int, lock: FileLock) -> None:
    """Create the store's files under the append lock; MANIFEST last (the commit point)."""
    lock.acquire_exclusive_slow()
    try:
        if os.path.exists(paths.manifest):
            return  # another process won the race
        io = _io.layer
        try:
            fd = io.open(paths.tail, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _io.io_error(exc, "open", paths.tail) from None
        try:
            if io.fstat(fd).st_size < F.TAIL_FILE_SIZE:
                io.ftruncate(fd, F.TAIL_FILE_SIZE)  # grows only; nobody maps it yet
        except OSError as exc:  # ENOSPC/EIO: a typed error, like every other step
            raise _io.io_error(exc, "write", paths.tail) from None
        finally:
            io.close(fd)
        if 1 not in list_segments(paths):
            create_segment(paths, 1, 1)
        body = {"format": F.MANIFEST_VERSION, "dim": dim, "created": time.time(),
                "checkpoint": 0, "checkpoint_seq": 0, "replay_segment": 1,
                "checkpoint_documents": 0, "fragments": 0}
        atomic_write(paths.manifest, F.encode_manifest(body, version=F.MANIFEST_VERSION))
    finally:
        lock.release_slow()


class Store:
    """A writer of an mmwal store; creates the store if it is missing.

    Parameters
    ----------
    path
        The store directory.
    dim
        Vector dimension; required to create a store, checked when given for an
        existing one, and may be omitted to open an existing store.
    durability
        ``"fsync"`` (default): a call returns only after its record is on stable
        storage; concurrent writers share fsyncs.  ``"os"``: the record is in
        the OS page cache on return (survives a kill of any process, not a power
        loss).  ``"interval"``: fdatasync every ``Config.sync_every_records``
        records or ``Config.sync_every_ms`` milliseconds.
    config
        A :class:`mmwal.Config`.

    Examples
    --------
    >>> import numpy as np, mmwal, tempfile
    >>> with mmwal.Store(tempfile.mkdtemp(), dim=4, durability="os") as store:
    ...     store.add("doc-1", np.ones(4, dtype=np.float32), content="hello")
    ...     store.add_many(["a", "b"], np.zeros((2, 4), dtype=np.float32))
    ...     store.remove("doc-1")
    1
    range(2, 4)
    4
    """

    def __init__(self, path: str | os.PathLike[str], dim: int | None = None,
                 durability: str = "fsync", config: Config | None = None) -> None:
        self._closed = True
        self._closing = True  # refuses calls until the Store is open
        # Calls take the bare lock (cheaper than the Condition's methods); close()
        # waits on the Condition built over it.
        self._gate_lock = threading.Lock()
        self._gate = threading.Condition(self._gate_lock)
        self._calls = 0  # public calls running now (close() waits for them)
        self._finishing = False  # one close() releases; others wait for it
        if durability not in DURABILITY_MODES:
            raise InvalidInputError(f"durability must be one of {DURABILITY_MODES}, got "
                                    f"{durability!r}", got=durability)
        if dim is not None and (type(dim) is not int or not 1 <= dim <= F.MAX_DIM):
            raise InvalidInputError(f"dim must be an int from 1 to {F.MAX_DIM} (one vector "
                                    f"must fit in one log record), got {dim!r:.40}", got=dim)
        if config is None:
            config = Config()
        elif not isinstance(config, Config):
            raise InvalidInputError(f"config must be an mmwal.Config, got {type(config).__name__}")
        self.path = store_root(path)
        self.config = config
        self.durability = durability
        self._paths = Paths(self.path)
        _check_path(self.path)
        self._open(dim)
        self._written: tuple[int, int] = (0, 0)  # (segment, end) of our newest frame
        self._unsynced = 0
        self._last_sync = time.monotonic()
        self._flusher: threading.Thread | None = None
        self._flush_wake = threading.Event()
        self._flush_stop = threading.Event()  # set by close(): ends the flusher's wait
        self._state_lock = threading.Lock()
        # The last automatic checkpoint failure (until a checkpoint succeeds),
        # and the seq before which no automatic checkpoint is tried again.
        self._auto_error: Exception | None = None
        self._auto_retry_seq = 0
        # add's hot path: nothing to do after the write (durability and config are fixed).
        self._os_only = durability == "os" and not config.auto_checkpoint
        self._closed = False
        self._closing = False
        _stores.add(self)

    def _open(self, dim: int | None) -> None:
        p = self._paths
        if dim is None and not os.path.exists(p.manifest):
            # Refuse before makedirs: a refused open must not leave an empty
            # store skeleton (dirs, lock files) behind (bad input writes nothing).
            raise InvalidInputError(
                f"no store at {p.root} yet: pass dim=... to create one", path=p.root)
        makedirs(p.root)
        check_filesystem(p.root)
        for d in (p.locks, p.wal, p.checkpoints):
            makedirs(d)
        self._lock = FileLock(p.append_lock, self.config.lock_timeout)
        self._ckpt_lock = FileLock(p.checkpoint_lock, self.config.lock_timeout)
        try:
            if not os.path.exists(p.manifest):
                if dim is None:
                    raise InvalidInputError(
                        f"no store at {p.root} yet: pass dim=... to create one", path=p.root)
                _create(p, dim, self._lock)
            manifest = open_manifest(p)
            if dim is not None and dim != manifest["dim"]:
                raise DimensionError(
                    f"the store at {p.root} was created with dim={manifest['dim']}, not {dim}; "
                    "open it without dim or with the same dim",
                    expected=manifest["dim"], got=dim)
            self.dim: int = manifest["dim"]
            self._manifest = manifest
            self._log = Appender(p, self._lock, self.config.segment_bytes)
        except BaseException:
            self._lock.close()
            self._ckpt_lock.close()
            raise
        self._generation = _fork_generation
        self._pid = os.getpid()

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"dim={self.dim}, durability={self.durability!r}"
        return f"Store({self.path!r}, {state})"

    def close(self) -> None:
        """Wait for running calls, flush (``"interval"``), release every descriptor.

        Idempotent and safe to call while other threads use the Store: calls
        that arrive once ``close()`` has begun raise
        :class:`mmwal.StoreClosedError`; calls already running finish normally
        (their records are committed as usual) and ``close()`` waits for them
        for at most ``Config.lock_timeout`` seconds (forever when it is None).

        Raises
        ------
        LockTimeout
            Calls were still running when the wait ended (e.g. a long
            checkpoint).  Nothing was released and new calls stay refused; call
            ``close()`` again once they have returned.
        """
        if self._closed:
            return
        if self._generation != _fork_generation:
            self._after_fork()  # a child: its own gate, no call of its own running
        timeout = self.config.lock_timeout
        with self._gate:
            self._closing = True
            if not self._gate.wait_for(lambda: self._calls == 0 or self._closed, timeout):
                raise LockTimeout(
                    f"close() of Store({self.path!r}) waited {timeout} s for {self._calls} "
                    "call(s) of other threads still running (a long checkpoint?); new calls "
                    "are refused: call close() again once they return",
                    path=self.path, calls=self._calls, timeout=timeout)
            if self._finishing:  # another thread is releasing: wait until it is done
                self._gate.wait_for(lambda: self._closed)
                return
            self._finishing = True
        try:
            if self.durability == "interval" and self._unsynced and self._poisoned is None:
                self._durable(*self._written)
        finally:
            self._flush_stop.set()
            self._flush_wake.set()
            t = self._flusher
            if t is not None and t is not threading.current_thread():
                t.join(timeout=5)
            self._log.close()
            self._lock.close()
            self._ckpt_lock.close()
            with self._gate:
                self._closed = True
                self._gate.notify_all()

    def __del__(self) -> None:
        try:
            if not self._closed and self._generation == _fork_generation:
                self.close()
        except Exception:
            pass

    @property
    def _poisoned(self) -> StorageIOError | None:
        # Kept on the appender: a failed fsync inside a segment roll poisons too.
        log = getattr(self, "_log", None)
        return None if log is None else log.poisoned

    @_poisoned.setter
    def _poisoned(self, err: StorageIOError | None) -> None:
        self._log.poisoned = err

    def _after_fork(self) -> None:
        """First use in a forked child: new descriptors, never the parent's locks."""
        self._lock.after_fork()
        self._ckpt_lock.after_fork()
        old = self._log
        self._log = Appender(self._paths, self._lock, self.config.segment_bytes)
        self._log.poisoned = old.poisoned
        # Our copies of the parent's descriptors can be closed: closing never
        # releases a flock the parent holds through its own descriptor.
        old.close()
        self._state_lock = threading.Lock()
        # The parent's gate may be held by a thread that does not exist here.
        self._gate_lock = threading.Lock()
        self._gate = threading.Condition(self._gate_lock)
        self._calls = 0
        self._finishing = False
        self._flusher = None
        self._flush_wake = threading.Event()
        self._flush_stop = threading.Event()
        self._written = (0, 0)
        self._unsynced = 0
        self._generation = _fork_generation
        self._pid = os.getpid()

    def _closed_error(self) -> StoreClosedError:
        state = "closed" if self._closed else "closing"
        return StoreClosedError(f"Store({self.path!r}) is {state}: no call is accepted after "
                                "close(); open a new mmwal.Store on the path to write again",
                                path=self.path)

    def _try_enter(self) -> bool:
        """Count one call in; False once close() has begun."""
        if self._generation != _fork_generation and not self._closing:
            self._after_fork()
        with self._gate_lock:
            if self._closing:
                return False
            self._calls += 1
            return True

    def _enter(self) -> None:
        if not self._try_enter():
            raise self._closed_error()

    def _leave(self) -> None:
        with self._gate_lock:
            self._calls -= 1
            if self._closing and not self._calls:
                self._gate.notify_all()

    def _check(self) -> None:
        """Refuse a write after a failed fsync (the caller was admitted)."""
        if self._poisoned is not None:
            raise PoisonedError(
                f"Store({self.path!r}) refuses writes after a failed fsync "
                f"({self._poisoned}); records acknowledged before it are safe: close this "
                "Store and open a new one", err=self._poisoned.errno, path=self.path, op="fsync")

    # ------------------------------------------------------------------ writes
    def _write(self, kind: int, count: int, payload: bytes) -> int:
        return self._done(*self._log.append(kind, count, payload), count, 6)

    def _done(self, first: int, seg: int, end: int, count: int, stacklevel: int) -> int:
        """After a frame is written: the durability of the mode, an automatic checkpoint."""
        mode = self.durability
        if mode == "os":
            pass
        elif mode == "fsync":
            self._durable(seg, end)
        else:
            self._interval(seg, end, count)
        if self.config.auto_checkpoint:
            self._auto_checkpoint(first + count - 1, stacklevel)
        return first

    def _auto_checkpoint(self, seq: int, stacklevel: int) -> None:
        """Checkpoint if due; a failure is reported, never raised (the record is committed).

        Raising here made a committed add look failed: the caller retried and
        the document was logged twice.
        """
        try:
            self._maybe_checkpoint(seq)
        except Exception as exc:  # whatever the cause: the write it follows succeeded
            self._auto_error = exc
            self._auto_retry_seq = seq + self.config.checkpoint_threshold
            # stacklevel: the caller's frame, above _auto_checkpoint <- _done
            # <- (_write) <- add/add_many/... <- (the gate of all but add)
            warnings.warn(CheckpointWarning(
                f"the automatic checkpoint of {self.path} after seq {seq} failed: "
                f"{type(exc).__name__}: {exc}; the write was committed and its seq returned. "
                f"No automatic checkpoint is tried before seq {self._auto_retry_seq}; "
                "Store.stats().auto_checkpoint_error keeps this error until a checkpoint "
                "succeeds, and Store.checkpoint() runs one now (raising the current cause)"),
                stacklevel=stacklevel)

    def _durable(self, seg: int, end: int) -> None:
        try:
            self._log.sync(seg, end)
        except MmwalError:
            raise  # e.g. LockTimeout after a successful fdatasync: not a failed fsync
        except OSError as exc:
            err = _io.io_error(exc, "fsync", self._paths.segment(seg))
            self._poisoned = err
            raise PoisonedError(
                f"fsync of {self._paths.segment(seg)} failed ({os.strerror(exc.errno or 0)}): "
                "the last write is not durable and this Store refuses further writes; "
                "close it and open a new one", err=exc.errno,
                path=self._paths.segment(seg), op="fsync") from None

    def _interval(self, seg: int, end: int, count: int) -> None:
        with self._state_lock:
            self._written = max(self._written, (seg, end))
            self._unsynced += count
            due = (self._unsynced >= self.config.sync_every_records
                   or (time.monotonic() - self._last_sync) * 1000 >= self.config.sync_every_ms)
            if due:
                self._unsynced = 0
                self._last_sync = time.monotonic()
            elif self._flusher is None:
                self._start_flusher()
        if due:
            self._durable(seg, end)
        else:
            self._flush_wake.set()

    def _start_flusher(self) -> None:
        ref = weakref.ref(self)
        wake = self._flush_wake
        stop = self._flush_stop
        period = self.config.sync_every_ms / 1000

        def run() -> None:
            while True:
                wake.wait()
                # Not time.sleep(period): close() must be able to end the wait.  A
                # sleeping flusher made close() block 5 s (its join timeout) and
                # outlive it when sync_every_ms is long.  close() flushed already.
                if stop.wait(period):
                    return
                wake.clear()
                s = ref()
                if s is None or s._generation != _fork_generation or not s._try_enter():
                    return  # a call like the others: close() waits for it
                try:
                    with s._state_lock:
                        pending, target = s._unsynced, s._written
                        s._unsynced = 0
                        s._last_sync = time.monotonic()
                    if pending and s._poisoned is None:
                        try:
                            s._durable(*target)
                        except MmwalError:
                            return  # poisoned: the next write raises
                finally:
                    s._leave()
                    del s

        t = threading.Thread(target=run, name="mmwal-interval-sync", daemon=True)
        self._flusher = t
        t.start()

    def add(self, id: str, embedding: Any, content: str = "",
            metadata: dict[str, Any] | None = None) -> int:
        """Add (or replace) one document; return its sequence number.

        Raises
        ------
        InvalidInputError, DimensionError
            For a bad id, vector, content or metadata; nothing is written.

        Notes
        -----
        What is accepted reads back equal, as plain types: ``str`` subclasses
        (``numpy.str_``) become ``str``, ``dict`` subclasses ``dict``, tuples
        and ``list`` subclasses ``list``, ``int``/``float`` subclasses ``int``/
        ``float``.  Refused: NaN/inf in metadata, ints beyond 64 bits, non-str
        keys, ``ExtType``/``Timestamp``/``datetime``, nesting deeper than 64
        levels, vectors with a norm above 2**62 (docs/concepts.md, "What a
        document may hold").
        """
        # The hot path.  The call gate of _admitted is inlined here (one frame
        # less per call); everything else is shared with add_many.
        if self._generation != _fork_generation and not self._closing:
            self._after_fork()
        gate = self._gate_lock
        with gate:
            if self._closing:
                raise self._closed_error()
            self._calls += 1
        try:
            log = self._log
            if log.poisoned is not None:
                self._check()
            if type(id) is not str or not id.isascii() or not 0 < len(id) <= _ASCII_ID:
                id = as_id(id)
            dim = self.dim
            vec = as_vectors(embedding, dim, None, "embedding")
            if type(content) is not str:
                content = as_text(content, "content")
            if metadata is not None:
                metadata = normalize_metadata(metadata)
            try:
                frame, n = _add_frame(_time(), dim, [id], [content], [metadata], vec)
            except (TypeError, ValueError, OverflowError) as exc:
                raise self._unpackable(exc) from None
            if self._os_only:
                return log.append_frame(_ADD, 1, frame, n)[0]  # nothing to wait for
            # stacklevel 4: _auto_checkpoint <- _done <- add <- caller
            return self._done(*log.append_frame(_ADD, 1, frame, n), 1, 4)
        finally:
            with gate:
                self._calls -= 1
                if self._closing and not self._calls:
                    self._gate.notify_all()

    @_admitted
    def add_many(self, ids: Any, embeddings: Any, contents: Any = None,
                 metadatas: Any = None) -> range:
        """Add (or replace) many documents as ONE atomic record; return their seqs.

        After any crash a reader sees the whole batch or none of it.  Within a
        batch, a repeated id keeps its last occurrence.  An empty batch writes
        nothing and returns an empty range.  ``ids``, ``contents`` and
        ``metadatas`` must be ordered sequences (list, tuple, array): a set,
        a dict or dict view, or an iterator raises ``InvalidInputError``.
        Each document is checked and normalised as in :meth:`add`.
        """
        self._check()
        ids = as_ids(ids)
        n = len(ids)
        if n == 0:
            return range(0)
        vecs = as_vectors(embeddings, self.dim, n, "embeddings")
        contents = [""] * n if contents is None else as_texts(contents, n, "contents")
        metadatas = ([None] * n if metadatas is None
                     else normalize_metadatas(metadatas, n, "metadatas"))
        try:
            frame, size = _add_frame(time.time(), self.dim, ids, contents, metadatas, vecs)
        except (TypeError, ValueError, OverflowError) as exc:
            raise self._unpackable(exc) from None
        if size > _MAX_PAYLOAD:
            raise InvalidInputError(
                f"this batch encodes to {size} bytes, more than one record may hold "
                f"({_MAX_PAYLOAD}); split it into smaller add_many calls", size=size)
        # stacklevel 5: _auto_checkpoint <- _done <- add_many <- gate <- caller
        first = self._done(*self._log.append_frame(_ADD, n, frame, size), n, 5)
        return range(first, first + n)

    @_admitted
    def remove(self, id: str) -> int:
        """Remove a document (removing an absent id is not an error); return the seq."""
        self._check()
        id = as_id(id)
        return self._write(F.KIND_REMOVE, 1, self._pack([time.time(), id]))

    @_admitted
    def remove_many(self, ids: Any) -> range:
        """Remove many documents with one write; return their seqs (one per id, in order).

        The ids are checked first (an ordered sequence of str, as for
        :meth:`add_many`); then one record per id is written, all with one
        write under one lock, so removing 10,000 ids costs about one append
        of their bytes rather than 10,000 appends.  Removing an absent id
        is not an error.  Unlike :meth:`add_many` the batch is not atomic:
        each removal is a record of its own, and a crash during the write
        can leave a prefix of them done (calling again is harmless).  With
        ``durability="fsync"`` the records are written and made durable one
        after the other while the lock is held (an fdatasync each, so a power
        loss also leaves a prefix; other writers wait meanwhile); in the other
        modes they go out with one write.  An empty list writes nothing and
        returns an empty range.
        """
        self._check()
        keys = as_ids(ids)
        if not keys:
            return range(0)
        now = time.time()
        payloads = [self._pack([now, k]) for k in keys]
        # stacklevel 5: _auto_checkpoint <- _done <- remove_many <- gate <- caller
        ordered = self.durability == "fsync"
        first = self._done(*self._log.append_frames(F.KIND_REMOVE, payloads, ordered),
                           len(keys), 5)
        return range(first, first + len(keys))

    @_admitted
    def clear(self) -> int:
        """Remove every document; return the seq."""
        self._check()
        return self._write(F.KIND_CLEAR, 1, self._pack([time.time()]))

    @staticmethod
    def _unpackable(exc: BaseException) -> InvalidInputError:
        # Values were checked and normalised already; what is left is a str the
        # UTF-8 encoder refuses (a lone surrogate, a UnicodeEncodeError).
        if isinstance(exc, UnicodeEncodeError):
            return InvalidInputError(
                f"cannot encode this document: its content or metadata holds a str that is "
                f"not valid UTF-8 ({exc.object[exc.start:exc.end]!r}, a lone surrogate); "
                "text is stored as UTF-8")
        return InvalidInputError(
            f"cannot encode this document: {exc}; metadata must be JSON-like (str keys; "
            "None, bool, int (64-bit), finite float, str, bytes, list, dict values)")

    @classmethod
    def _pack(cls, obj: Any) -> bytes:
        try:
            return _pack(obj)
        except (TypeError, ValueError, OverflowError) as exc:
            raise cls._unpackable(exc) from None

    @_admitted
    def sync(self) -> None:
        """Return once everything this Store appended is on stable storage."""
        self._check()
        with self._state_lock:
            target = self._written
            self._unsynced = 0
            self._last_sync = time.monotonic()
        # The current tail covers every frame this process wrote: frames in
        # older segments were made durable by the roll that sealed them.
        t = self._log.tail()
        self._durable(*max(target, (t.segment, t.end)))

    # ------------------------------------------------------------------ info
    def _refresh_manifest(self) -> dict[str, Any]:
        self._manifest = open_manifest(self._paths)
        return self._manifest

    @_admitted
    def needs_checkpoint(self) -> bool:
        """True when the log since the last checkpoint exceeds a Config threshold."""
        self._check()
        return self._needs_checkpoint()

    def _needs_checkpoint(self) -> bool:
        m = self._refresh_manifest()
        t = self._log.tail()
        if t.last_seq - m["checkpoint_seq"] >= self.config.checkpoint_threshold:
            return True
        return self._log_bytes(m["replay_segment"]) >= self.config.max_wal_bytes

    def _log_bytes(self, since: int) -> int:
        total = 0
        for s in list_segments(self._paths):
            if s >= since:
                try:
                    total += os.stat(self._paths.segment(s)).st_size
                except FileNotFoundError:
                    pass
        return total

    @_admitted
    def stats(self) -> StoreStats:
        """Counters of the store: seq, checkpoint, log and checkpoint sizes."""
        self._check()
        m = self._refresh_manifest()
        t = self._log.tail()
        segs = list_segments(self._paths)
        ckpt_bytes = 0
        if m["checkpoint"]:
            from ._version import read_version

            try:
                for e in read_version(self._paths, m).entries:
                    d = self._paths.checkpoint(e.fid)
                    ckpt_bytes += sum(x.stat().st_size for x in os.scandir(d) if x.is_file())
                    ckpt_bytes += e.dv_size
            except (FileNotFoundError, MmwalError):
                pass  # retired meanwhile (a newer version), or damaged: verify says which
        return StoreStats(
            path=self.path, dim=self.dim, durability=self.durability, seq=t.last_seq,
            checkpoint_id=m["checkpoint"], checkpoint_seq=m["checkpoint_seq"],
            checkpoint_documents=int(m.get("checkpoint_documents", 0)),
            records_since_checkpoint=t.last_seq - m["checkpoint_seq"],
            log_segments=len(segs), log_bytes=self._log_bytes(0),
            log_bytes_since_checkpoint=self._log_bytes(m["replay_segment"]),
            checkpoint_bytes=ckpt_bytes,
            auto_checkpoint_error=None if self._auto_error is None else (
                f"{type(self._auto_error).__name__}: {self._auto_error}"),
        )

    @property
    @_admitted
    def seq(self) -> int:
        """The last sequence number in the log (any process's)."""
        self._check()
        return self._log.tail().last_seq

    # ------------------------------------------------------------------ checkpoints
    def _maybe_checkpoint(self, seq: int) -> None:
        if seq - self._manifest["checkpoint_seq"] < self.config.checkpoint_threshold:
            return
        if seq < self._auto_retry_seq:
            return  # it failed recently: do not pay a failing fold on every write
        # Internal calls, not the public ones: this runs inside an admitted
        # add, and the public entry would refuse it once close() has begun.
        if self._needs_checkpoint() and self._ckpt_lock.try_exclusive():
            self._ckpt_lock.release_slow()
            self._checkpoint()

    @_admitted
    def checkpoint(self) -> Any:
        """Fold the log into a new checkpoint (see docs/concepts.md).

        After a failed automatic checkpoint (``Config(auto_checkpoint=True)``,
        reported by a :class:`mmwal.CheckpointWarning` and
        ``stats().auto_checkpoint_error``) this is the way to retry at once: it
        runs a checkpoint as usual and raises whatever makes it fail now (not
        the old exception); once one succeeds the report is cleared.
        """
        self._check()
        return self._checkpoint()

    def _checkpoint(self) -> Any:
        from ._publish import run_checkpoint

        info = run_checkpoint(self._paths, self._log, self._ckpt_lock, self.config)
        self._auto_error = None
        self._auto_retry_seq = 0
        self._refresh_manifest()
        return info

    @_admitted
    def compact(self, *, target_fragments: int | None = None,
                min_dead_fraction: float | None = None) -> Any:
        """Merge fragments and drop dead rows, as a new version; return a CompactionInfo.

        With no arguments: a full compaction (like SQLite's VACUUM) - every
        fragment of the current version merged into one, without its dead
        rows.  With either argument, a partial one: ``target_fragments``
        (default ``Config.max_fragments``) asks for at most that many
        fragments (tiered: the smallest neighbours merge first, large old
        fragments are left alone), and a fragment whose share of dead rows
        reaches ``min_dead_fraction`` (default
        ``Config.compact_dead_fraction``) is rewritten without them.  Runs
        under the checkpoint lock (a second ``compact()`` waits, then finds
        nothing to do and rewrites nothing); writers keep appending and
        readers keep reading meanwhile.  Folds no log record: the version
        keeps its seq.  ``checkpoint()`` compacts on
        its own with ``Config(auto_compact=True)`` (see docs/concepts.md).
        """
        self._check()
        if target_fragments is not None and (type(target_fragments) is not int
                                             or not 1 <= target_fragments <= 1 << 16):
            raise InvalidInputError(f"target_fragments must be None or an int from 1 to "
                                    f"65536, got {target_fragments!r:.60}",
                                    got=target_fragments)
        f = min_dead_fraction
        if f is not None and (type(f) not in (int, float) or not 0 <= f <= 1):
            raise InvalidInputError(f"min_dead_fraction must be None or a number from 0 to 1, "
                                    f"got {f!r:.60}", got=f)
        from ._publish import run_compact

        info = run_compact(self._paths, self._ckpt_lock, self.config, target_fragments,
                           None if f is None else float(f))
        self._refresh_manifest()
        return info

    # ------------------------------------------------------------------ Arrow and pandas
    @_admitted
    def add_arrow(self, table_or_batches: Any, *, id_column: str = "id",
                  embedding_column: str = "embedding", content_column: str | None = "content",
                  metadata_column: str | None = "metadata", batch_size: int = 1000,
                  ) -> list[range]:
        """Add the rows of an Arrow table in ``add_many`` batches; return their seq ranges.

        Needs pyarrow (``pip install 'mmwal[arrow]'``).  Rows are grouped into
        consecutive batches of ``batch_size`` whatever the input's chunking,
        and each batch is one ``add_many``: ONE atomic record.  The batches
        are not atomic together: on an error, the batches before the bad one
        stay written (the error says which rows, and its ``written`` attribute
        lists their seq ranges) and nothing of the bad batch is.

        Parameters
        ----------
        table_or_batches
            A ``pyarrow.Table``, ``RecordBatch``, ``RecordBatchReader``, an
            iterable of RecordBatches, any object with ``__arrow_c_stream__``
            (polars, DuckDB), or a dict of columns (the embeddings may be one
            2-D numpy array).
        id_column, embedding_column
            Required columns: ids (strings); embeddings (``fixed_size_list`` or
            ``list`` of numbers, of the store's dimension).
        content_column, metadata_column
            Optional columns (None: do not read).  Absent under their default
            names: every row gets ``""`` / None; a name given on purpose must
            exist.  Content: strings (null -> ``""``).  Metadata: a struct
            column, a map column, or a string column of JSON objects (null ->
            None); a struct gives every row every field of the struct.
        batch_size
            Rows per record.

        Returns
        -------
        list[range]
            One range of seqs per record written, in order (other processes'
            writes may fall between two records).

        Raises
        ------
        InvalidInputError, DimensionError
            Naming the column (and row) of a missing column, a wrong type or a
            bad value.

        Examples
        --------
        >>> import pyarrow as pa, mmwal, tempfile
        >>> t = pa.table({"id": ["a", "b"], "embedding": [[1.0, 0.0], [0.0, 1.0]]})
        >>> with mmwal.Store(tempfile.mkdtemp(), dim=2, durability="os") as s:
        ...     s.add_arrow(t)
        [range(1, 3)]
        """
        from ._arrow import ingest

        return ingest(self, table_or_batches, id_column=id_column,
                      embedding_column=embedding_column, content_column=content_column,
                      metadata_column=metadata_column, batch_size=batch_size)

    @_admitted
    def add_pandas(self, df: Any, *, id_column: str = "id",
                   embedding_column: str = "embedding", content_column: str | None = "content",
                   metadata_column: str | None = "metadata", batch_size: int = 1000,
                   ) -> list[range]:
        """Add the rows of a pandas DataFrame in ``add_many`` batches (see :meth:`add_arrow`).

        Needs pandas (``pip install 'mmwal[pandas]'``).  The embedding column
        holds one vector per row (numpy arrays or lists, as
        ``Reader.to_pandas`` gives them, or an Arrow list dtype); metadata
        holds dicts, JSON object strings or missing values (None/NaN).

        Examples
        --------
        >>> import numpy as np, pandas as pd, mmwal, tempfile
        >>> df = pd.DataFrame({"id": ["a", "b"], "embedding": list(np.eye(2)),
        ...                    "metadata": [{"p": 1}, None]})
        >>> with mmwal.Store(tempfile.mkdtemp(), dim=2, durability="os") as s:
        ...     s.add_pandas(df, batch_size=1)
        [range(1, 2), range(2, 3)]
        """
        from ._arrow import ingest

        return ingest(self, df, id_column=id_column, embedding_column=embedding_column,
                      content_column=content_column, metadata_column=metadata_column,
                      batch_size=batch_size, pandas=True)
