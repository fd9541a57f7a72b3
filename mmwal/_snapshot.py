"""Immutable views of a store: the append-only tail columns and the :class:`Snapshot`.

A Reader (``_reader.py``) shows an immutable :class:`Snapshot`: the mapped
checkpoint, and a prefix of the tail (the documents added since the
checkpoint) as *append-only columns* (:class:`_Tail`): ids, vectors and norms
in arrays that grow by doubling, content and metadata (kept as the log's
msgpack bytes per record, decoded when a document is read: :class:`_TailDocs`),
and the order in which rows died (replaced or removed).  A refresh appends the new records to the
columns and publishes a new snapshot with one reference swap; a snapshot that
saw ``n`` rows and ``k`` deaths keeps seeing exactly those, because rows are
never rewritten and a death is recorded with its position in the death order
("alive in a snapshot iff ``death[row] >= its k``").  So threads search and
read their snapshot while another thread refreshes, and a refresh costs what
was appended, not the tail's size.

Row order of ``ids``/``embeddings``: surviving checkpoint rows in checkpoint
order, then live tail documents in the order of their last write.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import os
import threading
from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np

from . import _format as F
from ._checkpoint import CheckpointView
from ._checkpoint import row_norms as _row_norms
from ._search import colfile
from ._search import where as where_
from ._types import Document, Hit
from ._validate import as_vectors
from ._version import VersionView
from .errors import CorruptionError, InvalidInputError

__all__ = ["METRICS", "Fragment", "IdView", "Snapshot"]

METRICS = ("cosine", "dot", "l2")
#: Rows scored per step of a search over the mapped checkpoint.
SEARCH_ROWS = 65536
_ALIVE = np.iinfo(np.int64).max  # death position of a row that has not died
#: Bytes of vectors added since the last flush at which the tail computes their norms.
_FLUSH_BYTES = 16 << 20
#: Ids looked up in the version at once by a flush (_Tail._look_up).
_LOOKUP_IDS = 16384


class _TailDocs:
    """The contents and metadatas of the tail's rows, decoded when first read.

    Per add record: its first row, its documents as the log holds them (the
    msgpack of its contents and metadatas arrays, a copy out of the mapped
    segment) and where it was read (for errors).  Opening a Reader over a
    long tail thus decodes no document, and holds a few dozen bytes per
    record instead of Python objects per document.  A row's record is found
    by bisection; the most recently decoded records are cached (bounded by
    :data:`DOC_CACHE` documents).  Append-only, like the tail: snapshots
    share it, only the refreshing thread appends.
    """

    #: Documents of decoded records kept (the records last read).
    DOC_CACHE = 1 << 16

    def __init__(self) -> None:
        self.starts: list[int] = []  # first row of each record
        self.counts: list[int] = []
        self.raw: list[bytes] = []
        self.paths: list[str] = []
        self.offsets: list[int] = []
        self._cache: dict[int, tuple[list[str], list[Any]]] = {}
        self._cached = 0
        self._lock = threading.Lock()

    def extend(self, first_row: int, counts: list[int], raw: list[bytes], paths: list[str],
               offsets: list[int]) -> None:
        """Append records (their document counts, encoded documents, where they were read)."""
        self.starts.extend(itertools.accumulate(counts[:-1], initial=first_row))
        self.counts.extend(counts)
        self.raw.extend(raw)
        self.paths.extend(paths)
        self.offsets.extend(offsets)  # last: a reader sees a record once it is complete

    def record(self, rec: int) -> tuple[list[str], list[Any]]:
        """The decoded (contents, metadatas) of record ``rec``."""
        hit = self._cache.get(rec)
        if hit is not None:
            return hit
        count = self.counts[rec]
        out = F.decode_docs(self.raw[rec], count, self.paths[rec], self.offsets[rec])
        with self._lock:
            if rec not in self._cache:
                while self._cache and self._cached + count > self.DOC_CACHE:
                    self._cached -= len(self._cache.pop(next(iter(self._cache)))[0])
                self._cache[rec] = out
                self._cached += count
        return out

    def __getitem__(self, row: int) -> tuple[str, Any]:
        rec = bisect.bisect_right(self.starts, row) - 1
        contents, metas = self.record(rec)
        j = row - self.starts[rec]
        return contents[j], metas[j]


class _Tail:
    """The log tail since the checkpoint, as append-only columns shared by snapshots.

    Only the thread that refreshes (holding the Reader's refresh lock) appends.
    A clear starts a new ``_Tail`` (with ``cleared`` set), so snapshots taken
    before it keep theirs.
    """

    def __init__(self, dim: int, cleared: bool) -> None:
        self.dim = dim
        self.cleared = cleared  # a clear in the tail: every checkpoint row is dead
        self.ids: list[str] = []
        self.docs = _TailDocs()
        self.prev: list[int] = []  # the previous tail row of the same id, or -1
        self.newest: dict[str, int] = {}  # id -> its newest tail row (alive or not)
        self.vecs = np.empty((0, dim), np.float32)
        self.norms = np.empty(0, np.float32)
        self.death = np.empty(0, np.int64)  # row -> position in ``deaths``, or _ALIVE
        self.deaths: list[int] = []  # tail rows, in the order they died
        self.ckpt_deaths: list[int] = []  # checkpoint rows, in the order they died
        self.ckpt_death: dict[int, int] = {}  # checkpoint row -> its position there
        self.n = 0
        self.live = 0
        # Vectors are copied into ``vecs`` as records arrive; their norms are
        # computed per flush (one pass over the new rows), not per record.
        self.flushed = 0  # rows whose norms are in ``norms``
        self.presized = False  # sized for the log once (Reader._apply_frames)
        # Ids new to the tail whose version rows (if any) die, not looked up
        # yet: looked up together at the next flush, before any snapshot.
        self.unlooked: list[str] = []
        self.unlooked_in: VersionView | None = None

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` more rows (a hint: appends grow the arrays anyway)."""
        if self.n + rows > len(self.death):
            self._reserve(rows)

    def _reserve(self, extra: int) -> None:
        cap = len(self.death)
        new = max(64, 2 * cap, self.n + extra)
        # New arrays, filled, then swapped in: a snapshot keeps the arrays it
        # was given, whose first n rows never change.
        f = self.flushed
        vecs = np.empty((new, self.dim), np.float32)
        vecs[: self.n] = self.vecs[: self.n]
        norms = np.empty(new, np.float32)
        norms[:f] = self.norms[:f]
        death = np.empty(new, np.int64)  # rows past n are set as they are added: a
        death[: self.n] = self.death[: self.n]  # large reserve touches no page of them
        self.vecs, self.norms, self.death = vecs, norms, death

    def free_rows(self, count: int) -> np.ndarray:
        """The ``(count, dim)`` rows of ``vecs`` the next :meth:`add` fills, made room for.

        For a caller that writes vectors straight into the tail and then calls
        :meth:`add` with these very rows as ``embs`` (no copy then).  No
        snapshot sees rows past ``n``: writing there is safe.
        """
        if self.n + count > len(self.death):
            self._reserve(count)
        return self.vecs[self.n : self.n + count]

    def flush(self) -> None:
        """Bring the columns up to date (before a snapshot): the norms of the rows added
        since the last flush, and the version rows that new ids of the tail kill."""
        a, b = self.flushed, self.n
        if a < b:
            self.norms[a:b] = _row_norms(self.vecs[a:b])
            self.flushed = b
        if self.unlooked:
            self._look_up()

    def _look_up(self) -> None:
        """Record the version rows that the ids in :attr:`unlooked` replace, in their order.

        The lookups of many add records are made at once (one
        :meth:`VersionView.lookup_many` per :data:`_LOOKUP_IDS` ids): a row's
        place among the version rows that die matters only to snapshots,
        and none is taken before this runs.
        """
        keys, ckpt = self.unlooked, self.unlooked_in
        self.unlooked, self.unlooked_in = [], None
        if ckpt is None or self.cleared:
            return
        ckpt_death, ckpt_deaths = self.ckpt_death, self.ckpt_deaths
        for lo in range(0, len(keys), _LOOKUP_IDS):
            found = ckpt.lookup_many([k.encode("utf-8") for k in keys[lo : lo + _LOOKUP_IDS]])
            for crow in found[found >= 0].tolist():
                if crow not in ckpt_death:
                    ckpt_death[crow] = len(ckpt_deaths)
                    ckpt_deaths.append(crow)

    def _kill_tail_row(self, row: int) -> None:
        if self.death[row] == _ALIVE:
            self.death[row] = len(self.deaths)
            self.deaths.append(row)
            self.live -= 1

    def _kill(self, key: str, ckpt: VersionView | None) -> int:
        """Kill the current version of ``key`` (tail row or checkpoint row); its tail row."""
        old = self.newest.get(key, -1)
        if old >= 0:
            self._kill_tail_row(old)
        elif ckpt is not None and not self.cleared:
            row = ckpt.lookup(key.encode("utf-8"))
            if row >= 0 and row not in self.ckpt_death:
                self.ckpt_death[row] = len(self.ckpt_deaths)
                self.ckpt_deaths.append(row)
        return old

    def add(self, ids: list[str], embs: list[Any] | np.ndarray, counts: list[int],
            docs: list[bytes], paths: list[str], offsets: list[int],
            ckpt: VersionView | None) -> None:
        """Append add records, in log order: their ids, vector bytes and documents.

        Per record: ``embs`` its vector block (bytes, or a view valid for
        the call: it is copied here) - or ``embs`` is one ``(len(ids), dim)``
        float32 array of all the records' vectors, copied as it is (not at all
        when it is the rows :meth:`free_rows` gave); ``counts`` its documents,
        ``docs`` their encoding, ``paths``/``offsets`` where it was read
        (:meth:`_TailDocs.extend`).
        """
        count = len(ids)
        n0 = self.n
        if n0 + count > len(self.death):
            self._reserve(count)
        self.death[n0 : n0 + count] = _ALIVE
        # One copy into the array: a batch's block as it is, small records'
        # blocks joined first (one numpy assignment, not one per record).
        if isinstance(embs, np.ndarray):
            dest = self.vecs[n0 : n0 + count]
            if not (embs.base is dest.base and embs.ctypes.data == dest.ctypes.data):
                dest[...] = embs  # (rows from free_rows are in place already)
        else:
            data = embs[0] if len(embs) == 1 else b"".join(embs)
            self.vecs[n0 : n0 + count] = np.frombuffer(data, dtype="<f4").reshape(count,
                                                                                self.dim)
        prev, newest = self.prev, self.newest
        rows = dict(zip(ids, range(n0, n0 + count)))
        if len(rows) == count and newest.keys().isdisjoint(rows):
            # Only new ids: no tail row dies.  The version rows they replace
            # die in the order of the ids, looked up with those of the next
            # runs at the next flush (_look_up).
            if ckpt is not None and not self.cleared:
                if self.unlooked_in is not ckpt:
                    if self.unlooked:
                        self._look_up()
                    self.unlooked_in = ckpt
                self.unlooked.extend(ids)
            prev.extend(itertools.repeat(-1, count))  # before newest: see Snapshot._tail_row
            newest.update(rows)
        else:
            # The ids the tail does not hold yet may kill version rows: looked up
            # in the version all at once (first occurrence of each in this run).
            under: dict[str, int] = {}
            if ckpt is not None and not self.cleared:
                fresh = [k for k in dict.fromkeys(ids) if k not in newest]
                if fresh:
                    found = ckpt.lookup_many([k.encode("utf-8") for k in fresh]).tolist()
                    under = {k: r for k, r in zip(fresh, found) if r >= 0}
            kill_row, ckpt_death, ckpt_deaths = self._kill_tail_row, self.ckpt_death, \
                self.ckpt_deaths
            for row, key in enumerate(ids, n0):
                old = newest.get(key, -1)
                if old >= 0:
                    kill_row(old)
                else:
                    crow = under.get(key, -1)
                    if crow >= 0 and crow not in ckpt_death:
                        ckpt_death[crow] = len(ckpt_deaths)
                        ckpt_deaths.append(crow)
                prev.append(old)  # before newest[key]: see Snapshot._tail_row
                newest[key] = row
        self.ids.extend(ids)
        self.docs.extend(n0, counts, docs, paths, offsets)
        self.n = n0 + count
        self.live += count
        if (self.n - self.flushed) * self.dim * 4 >= _FLUSH_BYTES:
            self.flush()

    def remove(self, key: str, ckpt: VersionView | None) -> None:
        self._kill(key, ckpt)

    def rebased(self, old: VersionView, new: VersionView) -> _Tail | None:
        """This tail over ``new``, a version of the same seq (a compaction); None if impossible.

        The tail's rows stay as they are (shared, append-only as always); only
        the version rows it killed are renumbered, by id, into ``new``: the
        cost follows the tail's deaths of version rows, not its length, and
        no log record is read again.  Snapshots taken before keep this tail
        and their version.
        """
        self.flush()
        t = copy.copy(self)
        t.ckpt_deaths = []
        t.ckpt_death = {}
        t.unlooked = []  # (empty after the flush; not shared with this tail)
        for row in self.ckpt_deaths:
            nr = new.lookup(old.id_at(row).encode("utf-8"))
            if nr < 0 or nr in t.ckpt_death:
                return None  # not the same documents: rebuild from the log
            t.ckpt_death[nr] = len(t.ckpt_deaths)
            t.ckpt_deaths.append(nr)
        return t


class Snapshot:
    """An immutable view of a store at one seq: ``ids``, ``embeddings``, ``get``, ``search``.

    Everything read through one snapshot agrees: row ``i`` of
    ``snap.embeddings`` is always ``snap.ids[i]``, ``len(snap)`` counts exactly
    the documents ``get`` finds, and no refresh changes any of it.  Get one
    with :meth:`Reader.snapshot`; it stays valid after the Reader refreshes
    (its files stay mapped) and is cheap to keep for the length of a request.
    """

    __slots__ = ("_base", "_cache", "_ckpt", "_ckpt_live", "_death", "_k", "_kc", "_n",
                 "_norms", "_tail", "_tail_live", "_vecs", "checkpoint_id", "checkpoint_seq",
                 "dim", "seq")

    def __init__(self, ckpt: VersionView | None, ckpt_id: int, tail: _Tail, seq: int,
                 dim: int, ckpt_seq: int = 0) -> None:
        tail.flush()
        self._base = ckpt  # the mapped checkpoint, even when a clear made it all dead
        self.checkpoint_seq = ckpt_seq
        self._ckpt = None if tail.cleared else ckpt
        self.checkpoint_id = ckpt_id
        self._tail = tail
        self._n = tail.n
        self._k = len(tail.deaths)
        self._kc = len(tail.ckpt_deaths)
        self._vecs = tail.vecs
        self._norms = tail.norms
        self._death = tail.death
        self._ckpt_live = (self._ckpt.live - self._kc) if self._ckpt is not None else 0
        self._tail_live = tail.live
        self.seq = seq
        self.dim = dim
        self._cache: dict[str, Any] = {}

    # ------------------------------------------------------------------ rows
    def _ckpt_dead(self) -> np.ndarray | None:
        """Bool mask of checkpoint rows dead in this snapshot, or None when there are none."""
        if self._ckpt is None:
            return None
        base = self._ckpt.dead  # the version's deletion vectors
        if not self._kc:
            return base
        got = self._cache.get("ckpt_dead")
        if got is None:
            got = (np.zeros(self._ckpt.count, dtype=bool) if base is None else base.copy())
            got[np.asarray(self._tail.ckpt_deaths[: self._kc], dtype=np.int64)] = True
            self._cache["ckpt_dead"] = got
        return got  # type: ignore[no-any-return]

    def _ckpt_rows(self) -> np.ndarray:
        got = self._cache.get("ckpt_rows")
        if got is None:
            ckpt = self._ckpt
            if ckpt is None:
                got = np.empty(0, np.int64)
            else:
                dead = self._ckpt_dead()
                got = (np.arange(ckpt.count, dtype=np.int64) if dead is None
                       else np.flatnonzero(~dead))
            self._cache["ckpt_rows"] = got
        return got  # type: ignore[no-any-return]

    def _tail_alive(self) -> np.ndarray:
        """Bool mask of the snapshot's tail rows that are alive in it."""
        got = self._cache.get("tail_alive")
        if got is None:
            got = self._cache["tail_alive"] = self._death[: self._n] >= self._k
        return got  # type: ignore[no-any-return]

    def _tail_rows(self) -> np.ndarray:
        got = self._cache.get("tail_rows")
        if got is None:
            got = self._cache["tail_rows"] = np.flatnonzero(self._tail_alive())
        return got  # type: ignore[no-any-return]

    def _tail_row(self, key: str) -> int:
        """The tail row holding ``key`` as of this snapshot (alive or dead), or -1."""
        tail = self._tail
        row = tail.newest.get(key, -1)
        prev = tail.prev
        while row >= self._n:  # written after this snapshot: step back in time
            row = prev[row]
        return row

    # ------------------------------------------------------------------ public
    def __len__(self) -> int:
        return self._ckpt_live + self._tail_live

    def __contains__(self, id: object) -> bool:
        return isinstance(id, str) and self.get(id) is not None

    def __getitem__(self, id: str) -> Document:
        doc: Document | None = self.get(id)
        if doc is None:
            raise KeyError(id)
        return doc

    def get(self, id: str, default: Any = None) -> Any:
        """The Document with this id, or ``default`` (None) when there is none."""
        if type(id) is not str:
            if not isinstance(id, str):
                raise InvalidInputError(f"id must be a str, got {type(id).__name__}")
            id = str.__str__(id)  # a subclass's own __hash__/__eq__ must not decide
        row = self._tail_row(id)
        if row >= 0:
            if self._death[row] < self._k:
                return default  # removed or replaced within this snapshot's tail
            vec = self._vecs[row]
            vec.flags.writeable = False
            content, meta = self._tail.docs[row]
            return Document(id, vec, content, meta)
        ckpt = self._ckpt
        if ckpt is None:
            return default
        try:
            key = id.encode("utf-8")
        except UnicodeEncodeError:
            return default  # no stored id is not valid UTF-8
        crow = ckpt.lookup(key)
        if crow < 0:
            return default
        pos = self._tail.ckpt_death.get(crow)
        if pos is not None and pos < self._kc:
            return default
        content, meta = ckpt.doc(crow)
        return Document(id, ckpt.vector(crow), content, meta)

    @property
    def ids(self) -> IdView:
        """Live ids in row order: row i of ``embeddings`` is ``ids[i]``."""
        got = self._cache.get("ids")
        if got is None:
            got = self._cache["ids"] = IdView(self)
        return got  # type: ignore[no-any-return]

    @property
    def embeddings(self) -> np.ndarray:
        """(n, dim) float32, read-only; zero-copy when the version is one whole fragment.

        It is the mapped ``embeddings.npy`` itself when the version has one
        fragment without deletions and nothing in the tail supersedes it.
        Otherwise it is a new read-only array (live rows of each fragment in
        order, then live tail rows), built once per snapshot - a copy;
        :attr:`fragments` gives the zero-copy parts, and ``search`` never
        builds it.
        """
        got = self._cache.get("emb")
        if got is not None:
            return got  # type: ignore[no-any-return]
        ckpt = self._ckpt
        whole = ckpt.embeddings if ckpt is not None else None
        if whole is not None and not self._kc and not self._tail_live:
            got = whole  # the map itself, zero-copy
        else:
            parts = []
            if ckpt is not None and self._ckpt_live:
                parts.append(whole if whole is not None and not self._kc
                             else ckpt.gather(self._ckpt_rows()))
            parts.append(self._vecs[self._tail_rows()])
            got = np.concatenate(parts) if len(parts) > 1 else parts[0]
            got.flags.writeable = False
        self._cache["emb"] = got
        return got

    @property
    def fragments(self) -> list[Fragment]:
        """The zero-copy parts of this snapshot's version, one per fragment, in row order.

        Each has ``id``, ``ids`` (every row's id, dead rows too), ``embeddings``
        (the mapped ``embeddings.npy``, read-only) and ``live`` (bool per row:
        not deleted in the version nor superseded in this snapshot's tail).
        The live rows of all fragments, in order, then the live tail rows are
        exactly :attr:`ids` / :attr:`embeddings`.
        """
        got = self._cache.get("fragments")
        if got is None:
            got = []
            base = self._base
            if base is not None:
                dead = self._ckpt_dead()
                for p in base.parts:
                    n = p.view.count
                    if self._ckpt is None:  # a clear in the tail: every row is dead
                        live = np.zeros(n, dtype=bool)
                    elif dead is None:
                        live = np.ones(n, dtype=bool)
                    else:
                        live = ~dead[p.start:p.start + n]
                    live.flags.writeable = False
                    got.append(Fragment(p.entry.fid, FragmentIds(p.view), p.view.embeddings,
                                        live))
            self._cache["fragments"] = got
        return got  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ filters
    def _ckpt_match(self, expr: where_.Expr) -> np.ndarray:
        """Rows of the checkpoint whose metadata matches ``expr`` (dead rows included)."""
        ckpt = self._ckpt
        assert ckpt is not None
        masks = [where_.compile_columns(expr, checkpoint_columns(p.view), p.view.count)
                 for p in ckpt.parts]
        return np.concatenate(masks) if masks else np.zeros(0, dtype=bool)

    def _tail_match(self, expr: where_.Expr | None, doc: where_.DocExpr | None) -> np.ndarray:
        docs = self._tail.docs
        out = np.zeros(self._n, dtype=bool)
        alive = self._tail_alive()
        for row in np.flatnonzero(alive).tolist():
            content, meta = docs[row]
            out[row] = ((expr is None or where_.matches(expr, meta))
                        and (doc is None or where_.matches_document(doc, content)))
        return out

    def _ckpt_doc_match(self, doc: where_.DocExpr) -> np.ndarray:
        ckpt = self._ckpt
        assert ckpt is not None
        out = np.zeros(ckpt.count, dtype=bool)
        for row, (content, _meta) in enumerate(ckpt.iter_docs()):
            out[row] = where_.matches_document(doc, content)
        return out

    def _allowed(self, where: Any, where_document: Any = None,
                 ) -> tuple[np.ndarray | None, np.ndarray]:
        """(checkpoint rows, tail rows) that are alive and match; None: no checkpoint rows."""
        expr = None if where is None else where_.parse(where)
        doc = None if where_document is None else where_.parse_document(where_document)
        ckpt_ok = None
        if self._ckpt is not None and self._ckpt_live:
            ckpt_ok = np.ones(self._ckpt.count, dtype=bool)
            dead = self._ckpt_dead()
            if dead is not None:
                ckpt_ok &= ~dead
            if expr is not None:
                ckpt_ok &= self._ckpt_match(expr)
            if doc is not None:
                ckpt_ok &= self._ckpt_doc_match(doc)
        if expr is None and doc is None:
            tail_ok = self._tail_alive()
        else:
            tail_ok = self._tail_match(expr, doc)
        return ckpt_ok, tail_ok

    def find(self, where: Any = None, limit: int | None = None, *,
             where_document: Any = None) -> list[str]:
        """Ids of the live documents whose metadata matches ``where``, in row order.

        ``where`` is a Chroma-style filter (see :meth:`search`); None matches
        every document.  ``limit`` caps the number of ids returned.

        Examples
        --------
        >>> import mmwal, tempfile
        >>> d = tempfile.mkdtemp()
        >>> with mmwal.Store(d, dim=2, durability="os") as s:
        ...     _ = s.add_many(["a", "b"], [[1, 0], [0, 1]], metadatas=[{"p": 1}, {"p": 5}])
        >>> with mmwal.Reader(d) as r:
        ...     r.find({"p": {"$gte": 2}})
        ['b']
        """
        if limit is not None and (type(limit) is not int or limit < 0):
            raise InvalidInputError(f"limit must be None or an int >= 0, got {limit!r}",
                                    got=limit)
        ckpt_ok, tail_ok = self._allowed(where, where_document)
        out: list[str] = []
        if ckpt_ok is not None:
            ckpt = self._ckpt
            assert ckpt is not None
            rows = np.flatnonzero(ckpt_ok)
            if limit is not None:
                rows = rows[:limit]
            out.extend(ckpt.id_at(r) for r in rows.tolist())
        ids = self._tail.ids
        for r in np.flatnonzero(tail_ok).tolist():
            if limit is not None and len(out) >= limit:
                break
            out.append(ids[r])
        return out

    def search(self, q: Any, k: int = 10, metric: str = "cosine", *, where: Any = None,
               exact: bool | None = None, expansion: int | None = None,
               where_document: Any = None) -> Any:
        """Top-k search over every live document of this snapshot (matching ``where``).

        Parameters
        ----------
        q
            A query vector (dim,) or a batch (m, dim).
        k
            How many hits per query (fewer when fewer documents match).
        metric
            ``"cosine"`` or ``"dot"`` (similarity, higher is better) or ``"l2"``
            (Euclidean distance, lower is better).
        where
            A Chroma-style metadata filter on top-level keys, e.g.
            ``{"source": "a.pdf"}`` or ``{"$and": [{"page": {"$gte": 3}},
            {"lang": {"$in": ["en", "de"]}}]}``; operators ``$eq $ne $gt $gte
            $lt $lte $in $nin $exists``, combined with ``$and`` / ``$or``.
            Only matching documents are scored: the hits are exactly the top k
            of the matching documents.  A malformed filter raises
            :class:`mmwal.errors.InvalidInputError` naming the offending part.
        exact
            None (auto) or False: fragments that have an approximate (HNSW)
            index built for ``metric`` are searched through it (candidates
            re-scored exactly from the mapped matrix; see
            ``Config.ann_min_rows``), the others and the tail exactly.  True:
            every row is scored exactly.  Without an index (or without the
            ``ann`` extra installed) all three are exact.
        expansion
            Search breadth of the approximate index (an int >= 1; default
            ``Config.ann_expansion_search`` as built): larger is slower and
            finds more of the true top k.
        where_document
            A Chroma-style filter on the content text (``$contains``,
            ``$not_contains``, ``$regex``, ``$not_regex``, ``$and``, ``$or``).

        Returns
        -------
        list[Hit] best first, or a list of such lists for a 2-D ``q``.
        """
        if metric not in METRICS:
            raise InvalidInputError(f"metric must be one of {METRICS}, got {metric!r}",
                                    got=metric)
        if type(k) is not int or k < 1:
            raise InvalidInputError(f"k must be an int >= 1, got {k!r}", got=k)
        if exact is not None and type(exact) is not bool:
            raise InvalidInputError(f"exact must be None, True or False, got {exact!r}",
                                    got=exact)
        if expansion is not None and (type(expansion) is not int or expansion < 1):
            raise InvalidInputError(f"expansion must be None or an int >= 1, got "
                                    f"{expansion!r}", got=expansion)
        filtered = where is not None or where_document is not None
        if filtered:
            ckpt_ok, tail_ok = self._allowed(where, where_document)
        arr = np.asarray(q) if not isinstance(q, np.ndarray) else q
        single = arr.ndim == 1
        if arr.ndim not in (1, 2):
            raise InvalidInputError(f"q must have shape (dim,) or (m, dim), got {arr.shape}")
        Q = as_vectors(arr, self.dim, None if single else arr.shape[0], "q")
        if single:
            Q = Q[None, :]
        m = Q.shape[0]
        qn = _row_norms(Q)
        best_s = [np.empty(0, np.float32) for _ in range(m)]
        best_r = [np.empty(0, np.int64) for _ in range(m)]

        def merge(j: int, s: np.ndarray, r: np.ndarray) -> None:
            s = np.concatenate([best_s[j], s])
            r = np.concatenate([best_r[j], r])
            if len(s) > k:
                keep = np.argpartition(-s, k - 1)[:k]
                s, r = s[keep], r[keep]
            best_s[j], best_r[j] = s, r

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
                merge(j, scores[col, j], col.astype(np.int64) + base)

        approx = exact is not True

        ckpt = self._ckpt
        n_ckpt = 0
        if ckpt is not None and ckpt.count:
            n_ckpt = ckpt.count
        if n_ckpt and self._ckpt_live:
            assert ckpt is not None
            drop = ~ckpt_ok if filtered and ckpt_ok is not None else self._ckpt_dead()
            # Each fragment's mapped matrix in turn, in blocks; the top k merge.
            for part in ckpt.parts:
                E, norms, p0 = part.view.embeddings, part.view.norms, part.start
                h = part.view.ann if approx else None
                if h is not None and h.metric == metric:
                    d = None if drop is None else drop[p0:p0 + part.view.count]
                    if _search_part(h, E, norms, d, p0, Q, qn, metric, k, expansion,
                                    filtered, merge):
                        continue  # else: no usearch, a damaged index, too few hits
                if filtered and drop is not None:
                    d = drop[p0:p0 + part.view.count]
                    if _selective(d):  # score the few matching rows, not every row
                        _score_rows(E, norms, np.flatnonzero(~d), p0, Q, qn, metric, merge)
                        continue
                for a in range(0, part.view.count, SEARCH_ROWS):
                    b = min(part.view.count, a + SEARCH_ROWS)
                    d = None if drop is None else drop[p0 + a:p0 + b]
                    if d is not None and d.all():
                        continue
                    s = _score(E[a:b], norms[a:b], Q, qn, metric)
                    if d is not None:
                        s[d] = -np.inf
                    take(s, p0 + a)
        n = self._n
        if self._tail_live:
            T = self._vecs[:n]
            s = _score(T, self._norms[:n], Q, qn, metric)
            if filtered:
                s[~tail_ok] = -np.inf
            elif self._tail_live < n:
                s[~self._tail_alive()] = -np.inf
            take(s, n_ckpt)
        out: list[list[Hit]] = []
        for j in range(m):
            s, r = best_s[j], best_r[j]
            ok = np.isfinite(s)
            s, r = s[ok], r[ok]
            if metric == "l2" and len(r):
                # The expanded form |v|^2 - 2 v.q + |q|^2 loses precision near 0 in
                # float32: recompute the k winners' distances exactly.
                vecs = np.stack([ckpt.vector(x) if x < n_ckpt and ckpt is not None
                                 else self._vecs[x - n_ckpt] for x in r.tolist()])
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
                    hid = self._tail.ids[row - n_ckpt]
                hits.append(Hit(hid, score))
            out.append(hits)
        return out[0] if single else out

    def __repr__(self) -> str:
        return f"Snapshot(seq={self.seq}, documents={len(self)}, checkpoint={self.checkpoint_id})"

    def to_arrow(self, columns: Any = None) -> Any:
        """The live documents as a ``pyarrow.Table``, in row order (``pip install 'mmwal[arrow]'``).

        Columns ``id`` (string), ``content`` (string), ``metadata`` (string:
        each dict as JSON text, null for None) and ``embedding``
        (``fixed_size_list<float32>[dim]``); ``columns`` selects some of them,
        in the order given (an unknown name raises InvalidInputError).  The
        embedding column wraps :attr:`embeddings` without a copy: when that is
        the mapped checkpoint (no tail), the table points into the mapping.
        See docs/arrow.md.
        """
        from ._arrow import snapshot_table

        return snapshot_table(self, columns)

    def to_pandas(self, columns: Any = None) -> Any:
        """:meth:`to_arrow` as a pandas DataFrame: metadata as dicts, embeddings as arrays."""
        from ._arrow import dataframe

        return dataframe(self, columns)


#: A filter that leaves at most this many rows of a fragment (or this share of
#: them) is searched by scoring those rows exactly: cheaper than over-fetching.
SELECTIVE_ROWS = 8192
SELECTIVE_SHARE = 0.02


def _selective(drop: np.ndarray) -> bool:
    """Whether a filter leaves few enough rows of a fragment to score just those."""
    allowed = len(drop) - int(np.count_nonzero(drop))
    return allowed <= SELECTIVE_ROWS or allowed <= SELECTIVE_SHARE * len(drop)


def _score_rows(E: np.ndarray, norms: np.ndarray, rows: np.ndarray, p0: int, Q: np.ndarray,
                qn: np.ndarray, metric: str, merge: Any) -> None:
    """Score exactly ``rows`` of one fragment (first global row ``p0``) and merge them."""
    if not len(rows):
        return
    s = _score(E[rows], norms[rows], Q, qn, metric)
    for j in range(Q.shape[0]):
        merge(j, s[:, j], rows + p0)


def _search_part(h: Any, E: np.ndarray, norms: np.ndarray, drop: np.ndarray | None, p0: int,
                 Q: np.ndarray, qn: np.ndarray, metric: str, k: int, expansion: int | None,
                 filtered: bool, merge: Any) -> bool:
    """Search one fragment through its approximate index; False: search it exactly instead.

    Planning: a selective filter (few allowed rows) scores the allowed rows
    exactly; otherwise the index is asked for ``count`` candidates per query
    (more when many rows are excluded), rows excluded by ``drop`` (dead, or
    outside the filter) are dropped, and ``count`` doubles until every query
    keeps ``k`` candidates - or the whole fragment was asked for, and then
    the fragment is scored exactly.  Kept candidates are re-scored exactly
    from the mapped matrix, so scores equal exact search's.
    """
    n = E.shape[0]
    allowed = n if drop is None else n - int(np.count_nonzero(drop))
    if allowed == 0:
        return True
    if filtered and drop is not None and _selective(drop):
        _score_rows(E, norms, np.flatnonzero(~drop), p0, Q, qn, metric, merge)
        return True
    if h.get() is None:
        return False
    want = min(k, allowed)
    count = min(n, max(2 * want, int(np.ceil(want * n / allowed * 1.5))))
    while True:
        keys, counts = h.search(Q, count, expansion)
        cand = []
        short = False
        for j in range(Q.shape[0]):
            r = keys[j, : int(counts[j])].astype(np.int64)
            r = r[(r >= 0) & (r < n)]
            if drop is not None:
                r = r[~drop[r]]
            cand.append(r)
            short = short or len(r) < want
        if not short:
            break
        if count >= n:
            return False
        count = min(n, 2 * count)
    for j, r in enumerate(cand):
        s = _score(E[r], norms[r], Q[j:j + 1], qn[j:j + 1], metric)[:, 0]
        merge(j, s, r + p0)
    return True


def checkpoint_columns(ckpt: CheckpointView) -> where_.Columns:
    """The metadata columns of a checkpoint, built once per mapped checkpoint.

    Built from the decompressed content/metadata chunks on first use and kept
    on the (immutable) view, so every snapshot of that checkpoint shares them.
    """
    got: where_.Columns | None = ckpt.where_columns
    if got is None:
        d = ckpt.descriptor
        meta = d["files"].get(colfile.COLUMNS_FILE)
        if isinstance(d.get("columns"), dict) and isinstance(meta, list) and len(meta) == 2:
            try:
                got = colfile.load(os.path.join(ckpt.dir, colfile.COLUMNS_FILE), meta,
                                   ckpt.count)
            except CorruptionError as exc:  # derived data: rebuild it from the documents
                ckpt.columns_error = str(exc)
            else:
                ckpt.where_columns = got
                return got
        builder = where_.ColumnBuilder()
        for k in range(ckpt.nchunks):
            builder.add(meta for _content, meta in ckpt.chunk(k))
        got = builder.finish()
        ckpt.where_columns = got
    return got


class Fragment:
    """One fragment of a snapshot's version: its rows as mapped, and which are live.

    ``ids[i]`` is the id of row ``i`` of ``embeddings`` (a read-only memmap,
    zero-copy); ``live[i]`` says whether that row is a live document of the
    snapshot.  See :attr:`Snapshot.fragments`.
    """

    __slots__ = ("embeddings", "id", "ids", "live")

    def __init__(self, fid: int, ids: FragmentIds, embeddings: np.ndarray,
                 live: np.ndarray) -> None:
        self.id = fid
        self.ids = ids
        self.embeddings = embeddings
        self.live = live

    def __len__(self) -> int:
        return len(self.live)

    def __repr__(self) -> str:
        return (f"Fragment(id={self.id}, rows={len(self.live)}, "
                f"live={int(np.count_nonzero(self.live))})")


class _IdSequence(Sequence[str]):
    """A read-only sequence of ids whose subclasses say only how to read id ``i``."""

    def _id(self, i: int) -> str:
        raise NotImplementedError

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("row out of range")
        return self._id(i)


class FragmentIds(_IdSequence):
    """Every row's id of one fragment (dead rows too), read from its mapped ``ids.bin``."""

    def __init__(self, view: CheckpointView) -> None:
        self._view = view

    def __len__(self) -> int:
        return int(self._view.count)

    def _id(self, i: int) -> str:
        return self._view.id_at(i)

    def __iter__(self) -> Iterator[str]:
        v = self._view
        for a in range(0, v.count, 65536):
            for b in v.id_block(a, min(65536, v.count - a)):
                yield b.decode("utf-8", "surrogateescape")

    def __repr__(self) -> str:
        return f"FragmentIds(len={len(self)})"


class IdView(_IdSequence):
    """The live ids of one snapshot in row order (row i of its ``embeddings`` is ``ids[i]``).

    A lazy, read-only sequence: building a list of a million ids is not part
    of opening a Reader.  It belongs to the snapshot it was taken from: a
    refresh of the Reader does not change it.  Compares equal to a list or
    tuple of the same ids.
    """

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap
        self._ckpt_rows = snap._ckpt_rows()
        self._tail_rows = snap._tail_rows()

    def __len__(self) -> int:
        return len(self._ckpt_rows) + len(self._tail_rows)

    def _id(self, i: int) -> str:
        n = len(self._ckpt_rows)
        if i < n:
            ckpt = self._snap._ckpt
            assert ckpt is not None
            return ckpt.id_at(int(self._ckpt_rows[i]))
        return self._snap._tail.ids[int(self._tail_rows[i - n])]

    def __iter__(self) -> Iterator[str]:
        ckpt = self._snap._ckpt
        if ckpt is not None:
            for row in self._ckpt_rows.tolist():
                yield ckpt.id_at(row)
        ids = self._snap._tail.ids
        for row in self._tail_rows.tolist():
            yield ids[row]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (IdView, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        head = ", ".join(repr(x) for x in self[:5])
        return f"IdView([{head}{', ...' if len(self) > 5 else ''}], len={len(self)})"


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
