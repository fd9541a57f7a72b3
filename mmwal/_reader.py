"""``mmwal.Reader``: read-only, mmap'd, never blocks writers for long.

A Reader maps the checkpoint the MANIFEST names and replays the log tail
after it (also by mmap).  It never writes, truncates or repairs anything; the
only lock it ever takes is a *shared* append lock, briefly, to tell a
half-written frame from damage (docs/concepts.md).

State = checkpoint rows (mapped) minus the rows the tail superseded, plus the
tail's documents (a dict in the seq order of their last write).  Row order of
``ids``/``embeddings`` is: surviving checkpoint rows in checkpoint order, then
tail documents in the order of their last write.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator, Sequence
from itertools import repeat
from typing import Any, overload

import numpy as np

from . import _format as F
from ._checkpoint import CheckpointView
from ._fsutil import Paths, store_root
from ._lock import FileLock
from ._store import open_manifest
from ._types import Document, Hit
from ._validate import as_vectors
from ._wal import RECOVERY_MODES, LogCursor, Retired
from .errors import ClosedError, CorruptionError, InvalidInputError

__all__ = ["Reader"]

METRICS = ("cosine", "dot", "l2")
#: Rows scored per step of a search over the mapped checkpoint.
SEARCH_ROWS = 65536
_MISSING = object()

# A tail document: (seq, the frame's embedding bytes (count * dim float32), its
# row in them, content, metadata) - the bytes are shared by a batch's documents.
_TailDoc = tuple[int, bytes, int, str, "dict[str, Any] | None"]


class IdView(Sequence[str]):
    """The live ids in row order (row i of ``Reader.embeddings`` is ``ids[i]``).

    A lazy, read-only sequence: building a list of a million ids is not part
    of opening a Reader.  Compares equal to a list or tuple of the same ids.
    """

    def __init__(self, reader: Reader) -> None:
        self._r = reader
        self._version = reader._version
        self._ckpt_rows = reader._live_ckpt_rows()
        self._tail_ids = [k for k, v in reader._tail.items() if v is not None]

    def __len__(self) -> int:
        return len(self._ckpt_rows) + len(self._tail_ids)

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self._ckpt_rows)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("row out of range")
        if i < n:
            ckpt = self._r._ckpt
            assert ckpt is not None
            return ckpt.id_at(int(self._ckpt_rows[i]))
        return self._tail_ids[i - n]

    def __iter__(self) -> Iterator[str]:
        ckpt = self._r._ckpt
        if ckpt is not None:
            for row in self._ckpt_rows.tolist():
                yield ckpt.id_at(row)
        yield from self._tail_ids

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (IdView, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(repr(x) for x in self[:5])
        return f"IdView([{head}{', ...' if len(self) > 5 else ''}], len={len(self)})"


class Reader:
    """A read-only view of an mmwal store: lookups, exact top-k search, refresh.

    Parameters
    ----------
    path
        The store directory (it must exist: a Reader never creates anything).
    recovery
        What to do with a damaged log record that has valid records after it:
        ``"strict"`` (default) raises :class:`mmwal.CorruptionError`;
        ``"point-in-time"`` stops before it; ``"skip-bad"`` skips it.

    Notes
    -----
    ``embeddings`` is a zero-copy read-only memmap of the checkpoint when the
    log tail is empty (nothing added, replaced or removed since the
    checkpoint).  Otherwise it is a new read-only in-memory array holding the
    surviving checkpoint rows followed by the tail documents, built on first
    access after each change; ``search`` never builds it (it scores the mapped
    checkpoint and the tail separately).  Run ``Store.checkpoint()`` to get back
    to zero-copy.

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

    def __init__(self, path: str | os.PathLike[str], *, recovery: str = "strict") -> None:
        self._closed = True
        if recovery not in RECOVERY_MODES:
            raise InvalidInputError(f"recovery must be one of {RECOVERY_MODES}, got "
                                    f"{recovery!r}", got=recovery)
        self.path = store_root(path)
        self.recovery = recovery
        self._paths = Paths(self.path)
        manifest = open_manifest(self._paths)
        self.dim: int = manifest["dim"]
        self._lock = FileLock.for_reader(self._paths.append_lock)
        self._version = 0
        self._ckpt: CheckpointView | None = None
        self._cursor: LogCursor | None = None
        self._closed = False
        try:
            self._load(manifest)
            self._catch_up()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ state
    def _load(self, manifest: dict[str, Any]) -> None:
        """Start over from the checkpoint ``manifest`` names (or a newer one).

        A slow Reader can find the checkpoint it was told about already
        retired by a newer one: then the MANIFEST has changed, and it moves on.
        """
        for _ in range(100):
            try:
                self._load_once(manifest)
                return
            except CorruptionError:
                newer = open_manifest(self._paths)
                if newer == manifest:
                    raise
                manifest = newer
        self._load_once(manifest)

    def _load_once(self, manifest: dict[str, Any]) -> None:
        try:
            st = os.stat(self._paths.manifest)
            self._mstat: tuple[int, ...] = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            self._mstat = ()
        cid = manifest["checkpoint"]
        if self._ckpt is None or self._ckpt.id != cid:
            self._ckpt = CheckpointView(self._paths, cid, self.dim) if cid else None
        if self._ckpt is not None and self._ckpt.seq != manifest["checkpoint_seq"]:
            raise CorruptionError(
                f"{self._paths.manifest}: names checkpoint {cid} at seq "
                f"{manifest['checkpoint_seq']}, its descriptor says {self._ckpt.seq}",
                path=self._paths.manifest, offset=F.MANIFEST_HEADER.size)
        self._ckpt_id = cid
        self._tail: dict[str, _TailDoc | None] = {}
        self._tail_live = 0
        self._cleared = False
        self._dead: set[int] = set()
        self._unresolved: list[str] = []
        self.seq: int = manifest["checkpoint_seq"]
        if self._cursor is not None:
            self._cursor.close()
        self._cursor = LogCursor(self._paths, manifest["replay_segment"], self.seq + 1,
                                 mode=self.recovery, lock=self._lock)
        self._version += 1
        self._cache: dict[str, Any] = {}

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
        cur = self._cursor
        assert cur is not None
        tail = self._tail
        unresolved = self._unresolved
        dim = self.dim
        decode_add = F.decode_add
        applied = 0
        for kind, seq, count, payload, path, offset in cur.frames():
            if kind == 1:  # add
                _ts, ids, contents, metas, emb = decode_add(count, payload, dim, path, offset)
                if count == 1:
                    key = ids[0]
                    old = tail.pop(key, _MISSING)
                    if old is _MISSING:
                        unresolved.append(key)
                        self._tail_live += 1
                    elif old is None:
                        self._tail_live += 1
                    tail[key] = (seq, emb, 0, contents[0], metas[0])
                else:
                    self._add_batch(seq, count, ids, contents, metas, emb)
            elif kind == 2:  # remove
                key = F.decode_payload(kind, count, payload, dim, path, offset)[1]
                old = tail.pop(key, _MISSING)
                if old is _MISSING:
                    unresolved.append(key)
                elif old is not None:
                    self._tail_live -= 1
                tail[key] = None
            else:  # clear
                F.decode_payload(kind, count, payload, dim, path, offset)
                tail.clear()
                self._tail_live = 0
                self._cleared = True
                self._dead.clear()
                unresolved.clear()
            applied += count
            self.seq = seq + count - 1
        if applied:
            self._version += 1
            self._cache = {}
        return applied

    def _add_batch(self, seq: int, count: int, ids: list[str], contents: list[str],
                   metas: list[Any], emb: bytes) -> None:
        """Apply an add_many frame: C-level dict and set operations where possible."""
        tail = self._tail
        docs = zip(range(seq, seq + count), repeat(emb), range(count), contents, metas)
        if len(set(ids)) != count:
            # Repeated ids within the batch: the last one wins, in its position.
            for key, doc in zip(ids, docs):
                old = tail.pop(key, _MISSING)
                if old is _MISSING:
                    self._unresolved.append(key)
                if old is _MISSING or old is None:
                    self._tail_live += 1
                tail[key] = doc
            return
        present = tail.keys() & set(ids)
        if present:
            for key in present:
                if tail.pop(key) is not None:
                    self._tail_live -= 1  # replaced: counted again below
            self._unresolved.extend(k for k in ids if k not in present)
        else:
            self._unresolved.extend(ids)
        tail.update(zip(ids, docs))
        self._tail_live += count

    def _resolve(self) -> None:
        """Mark checkpoint rows superseded by tail ids (lazily: lookups cost)."""
        if self._unresolved:
            ckpt = self._ckpt
            if ckpt is not None and not self._cleared:
                for key in self._unresolved:
                    row = ckpt.lookup(key.encode("utf-8"))
                    if row >= 0:
                        self._dead.add(row)
            self._unresolved = []

    def _live_ckpt_rows(self) -> np.ndarray:
        got = self._cache.get("rows")
        if got is None:
            self._resolve()
            ckpt = self._ckpt
            if ckpt is None or self._cleared:
                got = np.empty(0, dtype=np.int64)
            elif not self._dead:
                got = np.arange(ckpt.count, dtype=np.int64)
            else:
                mask = np.ones(ckpt.count, dtype=bool)
                mask[np.fromiter(self._dead, dtype=np.int64, count=len(self._dead))] = False
                got = np.flatnonzero(mask)
            self._cache["rows"] = got
        return got  # type: ignore[no-any-return]

    def _dead_mask(self) -> np.ndarray | None:
        """A bool mask of superseded checkpoint rows, or None when there are none."""
        self._resolve()
        if not self._dead:
            return None
        got = self._cache.get("dead")
        if got is None:
            ckpt = self._ckpt
            assert ckpt is not None
            got = np.zeros(ckpt.count, dtype=bool)
            got[np.fromiter(self._dead, dtype=np.int64, count=len(self._dead))] = True
            self._cache["dead"] = got
        return got  # type: ignore[no-any-return]

    def _tail_matrix(self) -> tuple[list[str], np.ndarray]:
        got = self._cache.get("tail")
        if got is None:
            ids = [k for k, v in self._tail.items() if v is not None]
            mat = np.empty((len(ids), self.dim), dtype=np.float32)
            row = 4 * self.dim
            flat = mat.reshape(-1).view(np.uint8) if ids else None
            for j, key in enumerate(ids):
                doc = self._tail[key]
                assert doc is not None and flat is not None
                flat[j * row : (j + 1) * row] = np.frombuffer(doc[1], dtype=np.uint8, count=row,
                                                              offset=row * doc[2])
            got = (ids, mat)
            self._cache["tail"] = got
        return got  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ public
    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"Reader({self.path!r}) is closed", path=self.path)

    def refresh(self) -> int:
        """Apply new log records, or move to a newer checkpoint; return how far seq moved.

        The return value is the number of operations by which ``seq`` advanced
        (after a move to a newer checkpoint, the net advance).
        """
        self._check()
        before = self.seq
        try:
            st = os.stat(self._paths.manifest)
            mstat: tuple[int, ...] = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            mstat = ()
        if mstat != self._mstat:
            m = open_manifest(self._paths)
            if m["checkpoint"] != self._ckpt_id:
                self._load(m)
            else:
                self._mstat = mstat
        self._catch_up()
        return max(0, self.seq - before)

    def _catch_up(self) -> None:
        """Apply the log; when a checkpoint retired our segment, move to that checkpoint."""
        for _ in range(100):
            try:
                self._apply_log()
                break
            except Retired:
                # A checkpoint retired the segment we were reading: move to it.
                m = open_manifest(self._paths)
                if m["checkpoint"] == self._ckpt_id:
                    missing = self._cursor.seg_id if self._cursor else 0
                    raise CorruptionError(
                        f"{self._paths.segment(missing)}: log segment missing while the "
                        "manifest still needs it; run `mmwal verify`",
                        path=self._paths.segment(missing), offset=0) from None
                self._load(m)

    def __len__(self) -> int:
        self._check()
        ckpt = self._ckpt
        if ckpt is None or self._cleared:
            return self._tail_live
        self._resolve()
        return int(ckpt.count) - len(self._dead) + self._tail_live

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and self.get(id) is not None

    def __getitem__(self, id: str) -> Document:
        doc: Document | None = self.get(id)
        if doc is None:
            raise KeyError(id)
        return doc

    def get(self, id: str, default: Any = None) -> Any:
        """The Document with this id, or ``default`` (None) when there is none."""
        self._check()
        if type(id) is not str:
            if not isinstance(id, str):
                raise InvalidInputError(f"id must be a str, got {type(id).__name__}")
            id = str.__str__(id)  # a subclass's own __hash__/__eq__ must not decide
        t = self._tail.get(id, _MISSING)
        if t is not _MISSING:
            if t is None:
                return default
            doc: _TailDoc = t  # type: ignore[assignment]
            vec = np.frombuffer(doc[1], dtype="<f4", count=self.dim, offset=4 * self.dim * doc[2])
            return Document(id, vec, doc[3], doc[4])
        ckpt = self._ckpt
        if ckpt is None or self._cleared:
            return default
        try:
            key = id.encode("utf-8")
        except UnicodeEncodeError:
            return default  # a lone surrogate: no stored id can hold one (add refuses them)
        row = ckpt.lookup(key)
        if row < 0:
            return default
        content, meta = ckpt.doc(row)
        return Document(id, ckpt.embeddings[row], content, meta)

    @property
    def ids(self) -> IdView:
        """Live ids in row order: row i of ``embeddings`` is ``ids[i]``."""
        self._check()
        got = self._cache.get("ids")
        if got is None:
            got = self._cache["ids"] = IdView(self)
        return got  # type: ignore[no-any-return]

    @property
    def embeddings(self) -> np.ndarray:
        """(n, dim) float32, read-only; zero-copy memmap when the log tail is empty."""
        self._check()
        got = self._cache.get("emb")
        if got is not None:
            return got  # type: ignore[no-any-return]
        ckpt = self._ckpt
        if ckpt is not None and not self._cleared and not self._tail_live:
            self._resolve()
            if not self._dead:  # the log tail changes nothing: the map itself, zero-copy
                self._cache["emb"] = ckpt.embeddings
                return ckpt.embeddings
        rows = self._live_ckpt_rows()
        _ids, tail = self._tail_matrix()
        if ckpt is not None and not self._cleared and len(rows) == ckpt.count and not len(tail):
            got = ckpt.embeddings
        else:
            parts = []
            if ckpt is not None and len(rows):
                parts.append(ckpt.embeddings if len(rows) == ckpt.count
                             else ckpt.embeddings[rows])
            parts.append(tail)
            got = np.concatenate(parts) if len(parts) > 1 else tail.copy()
            got.flags.writeable = False
        self._cache["emb"] = got
        return got

    def search(self, q: Any, k: int = 10, metric: str = "cosine") -> Any:
        """Exact top-k search over every live document.

        Parameters
        ----------
        q
            A query vector (dim,) or a batch (m, dim).
        k
            How many hits per query (fewer when the store holds fewer).
        metric
            ``"cosine"`` or ``"dot"`` (similarity, higher is better) or ``"l2"``
            (Euclidean distance, lower is better).

        Returns
        -------
        list[Hit] best first, or a list of such lists for a 2-D ``q``.
        """
        self._check()
        if metric not in METRICS:
            raise InvalidInputError(f"metric must be one of {METRICS}, got {metric!r}",
                                    got=metric)
        if type(k) is not int or k < 1:
            raise InvalidInputError(f"k must be an int >= 1, got {k!r}", got=k)
        arr = np.asarray(q) if not isinstance(q, np.ndarray) else q
        single = arr.ndim == 1
        if arr.ndim not in (1, 2):
            raise InvalidInputError(f"q must have shape (dim,) or (m, dim), got {arr.shape}")
        Q = as_vectors(arr, self.dim, None if single else arr.shape[0], "q")
        if single:
            Q = Q[None, :]
        m = Q.shape[0]
        qn = np.linalg.norm(Q, axis=1).astype(np.float32)
        best_s = [np.empty(0, np.float32) for _ in range(m)]
        best_r = [np.empty(0, np.int64) for _ in range(m)]

        def take(scores: np.ndarray, base: int) -> None:
            # scores: (c, m), higher is better; keep the top k per query.
            c = scores.shape[0]
            kk = min(k, c)
            if kk < c:
                idx = np.argpartition(-scores, kk - 1, axis=0)[:kk]
            else:
                idx = np.broadcast_to(np.arange(c)[:, None], (c, m))
            for j in range(m):
                col = idx[:, j]
                s = np.concatenate([best_s[j], scores[col, j]])
                r = np.concatenate([best_r[j], col.astype(np.int64) + base])
                if len(s) > k:
                    keep = np.argpartition(-s, k - 1)[:k]
                    s, r = s[keep], r[keep]
                best_s[j], best_r[j] = s, r

        ckpt = self._ckpt
        n_ckpt = 0
        if ckpt is not None and not self._cleared and ckpt.count:
            n_ckpt = ckpt.count
            dead = self._dead_mask()
            E, norms = ckpt.embeddings, ckpt.norms
            for a in range(0, n_ckpt, SEARCH_ROWS):
                b = min(n_ckpt, a + SEARCH_ROWS)
                s = _score(E[a:b], norms[a:b], Q, qn, metric)
                if dead is not None:
                    s[dead[a:b]] = -np.inf
                take(s, a)
        tail_ids, T = self._tail_matrix()
        if len(T):
            tnorms = self._cache.get("tnorms")
            if tnorms is None:
                tnorms = self._cache["tnorms"] = np.linalg.norm(T, axis=1).astype(np.float32)
            take(_score(T, tnorms, Q, qn, metric), n_ckpt)
        out: list[list[Hit]] = []
        for j in range(m):
            s, r = best_s[j], best_r[j]
            ok = np.isfinite(s)
            s, r = s[ok], r[ok]
            if metric == "l2" and len(r):
                # The expanded form |v|^2 - 2 v.q + |q|^2 loses precision near 0 in
                # float32: recompute the k winners' distances exactly.
                vecs = np.stack([ckpt.embeddings[x] if x < n_ckpt and ckpt is not None
                                 else T[x - n_ckpt] for x in r.tolist()])
                diff = vecs.astype(np.float64) - Q[j].astype(np.float64)
                s = -np.sqrt(np.einsum("ij,ij->i", diff, diff))
            order = np.lexsort((r, -s))
            hits = []
            for i in order.tolist():
                row = int(r[i])
                score = float(s[i])
                if metric == "l2":
                    score = -score
                if row < n_ckpt:
                    assert ckpt is not None
                    hid = ckpt.id_at(row)
                else:
                    hid = tail_ids[row - n_ckpt]
                hits.append(Hit(hid, score))
            out.append(hits)
        return out[0] if single else out

    # ------------------------------------------------------------------ lifecycle
    @property
    def checkpoint_id(self) -> int:
        """Id of the checkpoint this Reader maps (0: none yet)."""
        return int(self._ckpt_id)

    def close(self) -> None:
        """Drop the mappings and descriptors; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None
        self._ckpt = None
        self._tail = {}
        self._cache = {}
        if self._lock is not None:
            self._lock.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._closed:
            return f"Reader({self.path!r}, closed)"
        return f"Reader({self.path!r}, seq={self.seq}, checkpoint={self._ckpt_id})"


def _score(E: np.ndarray, norms: np.ndarray, Q: np.ndarray, qn: np.ndarray,
           metric: str) -> np.ndarray:
    """(rows, m) scores, higher is better (l2 returns the negated distance)."""
    with np.errstate(all="ignore"):  # damaged (non-finite) rows must not warn-raise
        return _score_unchecked(E, norms, Q, qn, metric)


def _score_unchecked(E: np.ndarray, norms: np.ndarray, Q: np.ndarray, qn: np.ndarray,
                     metric: str) -> np.ndarray:
    s: np.ndarray = E @ Q.T
    if metric == "dot":
        return s
    if metric == "cosine":
        denom = norms[:, None] * qn[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(denom > 0, s / np.where(denom > 0, denom, 1), 0.0)
        cos: np.ndarray = out.astype(np.float32, copy=False)
        return cos
    d2 = (norms[:, None] ** 2) - 2 * s + (qn[None, :] ** 2)
    neg: np.ndarray = -np.sqrt(np.maximum(d2, 0, out=d2))
    return neg
