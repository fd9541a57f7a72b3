"""``mmwal.replay`` and the log half of ``mmwal.verify``."""

from __future__ import annotations

import itertools
import os
from collections.abc import Generator, Iterator
from typing import Any

import numpy as np

from . import _format as F
from ._fsutil import Paths, list_segments, store_root
from ._lock import FileLock
from ._types import Op, Problem
from ._wal import LogCursor, RawRun, Retired, read_segment_header
from .errors import CorruptionError, MmwalError, StorageIOError

__all__ = ["LogSeeker", "close_cursor", "iter_ops", "replay", "scan_log"]

#: Restarts in a row that found neither a newer MANIFEST nor new operations.
_MAX_RESTARTS = 100


def reader_lock(paths: Paths) -> FileLock | None:
    """A read-only lock object on append.lock for shared re-checks (None if missing)."""
    return FileLock.for_reader(paths.append_lock)


#: The fields of an Op that ``replay(fields=...)`` can leave out (seq and kind always come).
OP_FIELDS = ("id", "embedding", "content", "metadata", "timestamp")


def check_fields(fields: Any) -> frozenset[str] | None:
    """``replay``'s ``fields`` argument as a set of Op field names (None: all of them)."""
    if fields is None:
        return None
    from .errors import InvalidInputError

    if isinstance(fields, (str, bytes)) or not hasattr(fields, "__iter__"):
        raise InvalidInputError(f"fields must be a tuple of field names such as ('id', "
                                f"'embedding'), got {fields!r}", got=repr(fields))
    out = frozenset(fields)
    bad = sorted(str(f) for f in out if f not in OP_FIELDS and f not in ("seq", "kind"))
    if bad:
        raise InvalidInputError(f"fields {bad} are not Op fields; choose from "
                                f"{('seq', 'kind', *OP_FIELDS)}", got=bad)
    return out


_new_op = tuple.__new__  # Op is a named tuple: built from a tuple, without its __new__
_repeat = itertools.repeat


def iter_ops(frame: Any, dim: int, fields: frozenset[str] | None = None) -> Iterator[Op]:
    """The Ops of one raw frame (one per document of an add batch).

    With ``fields``, the Op fields not named are None (the timestamp 0.0), and
    contents and metadata that are not asked for are neither decoded nor
    checked (:func:`mmwal._format.decode_add_ids_vectors`).
    """
    seq = frame.first_seq
    kind = frame.kind
    if kind == F.KIND_ADD:
        n = frame.count
        want = fields is None or "content" in fields or "metadata" in fields
        ids: Any
        contents: Any = None
        metas: Any = None
        if want:
            ts, ids, contents, metas, emb = F.decode_add(
                n, frame.payload, dim, frame.path, frame.offset,
                fields is None or "metadata" in fields)
        else:
            ts, ids, emb, _docs = F.decode_add_ids_vectors(n, frame.payload, dim, frame.path,
                                                           frame.offset)
        if n == 1:  # a single document: one tuple, no batch machinery
            if fields is None:
                return iter((_new_op(Op, (seq, "add", ids[0], np.frombuffer(emb, dtype="<f4"),
                                          contents[0], metas[0], ts)),))
            return iter((_new_op(Op, (
                seq, "add", ids[0] if "id" in fields else None,
                np.frombuffer(emb, dtype="<f4") if "embedding" in fields else None,
                contents[0] if want and "content" in fields else None,
                metas[0] if want and "metadata" in fields else None,
                ts if "timestamp" in fields else 0.0)),))
        vecs: Any = np.frombuffer(emb, dtype="<f4").reshape(n, dim)
        if fields is not None:
            ids = ids if "id" in fields else _repeat(None, n)
            vecs = vecs if "embedding" in fields else _repeat(None, n)
            contents = contents if want and "content" in fields else _repeat(None, n)
            metas = metas if want and "metadata" in fields else _repeat(None, n)
            ts = ts if "timestamp" in fields else 0.0
        # One C-level pass builds the batch's Ops (a row view per vector).
        return map(_new_op, _repeat(Op, n), zip(range(seq, seq + n), _repeat("add", n), ids,
                                                vecs, contents, metas, _repeat(ts, n)))
    body = F.decode_payload(kind, frame.count, frame.payload, dim, frame.path, frame.offset)
    ts = body[0] if fields is None or "timestamp" in fields else 0.0
    if kind == F.KIND_REMOVE:
        return iter((Op(seq, "remove", body[1] if fields is None or "id" in fields else None,
                        None, None, None, ts),))
    return iter((Op(seq, "clear", None, None, None, None, ts),))


def replay(path: str | os.PathLike[str], after_seq: int = 0, *,
           mode: str = "strict", fields: Any = None) -> Iterator[Op]:
    """Yield every logged operation with seq > ``after_seq``, in seq order.

    Covers what the log still holds: operations folded into a checkpoint whose
    segments were retired are not in the log any more (start a Reader for the
    state).  One :class:`mmwal.Op` per document of an ``add_many``.  ``mode``
    is the recovery policy: ``"strict"`` (a torn tail ends the log quietly,
    damage followed by valid records raises CorruptionError),
    ``"point-in-time"`` (stop at the first damage) or ``"skip-bad"``.
    ``fields`` names the Op fields wanted, e.g. ``("id", "embedding")``: the
    others are None (``timestamp`` 0.0) and metadata not asked for is not
    checked on the way (``seq`` and ``kind`` always come).

    Examples
    --------
    >>> import numpy as np, mmwal, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with mmwal.Store(d, dim=2, durability="os") as s:
    ...     _ = s.add_many(["a", "b"], np.eye(2, dtype=np.float32))
    ...     _ = s.remove("a")
    >>> [(op.seq, op.kind, op.id) for op in mmwal.replay(d)]
    [(1, 'add', 'a'), (2, 'add', 'b'), (3, 'remove', 'a')]
    """
    from ._version import open_manifest

    if type(after_seq) is not int or after_seq < 0:
        from .errors import InvalidInputError

        raise InvalidInputError(f"after_seq must be an int >= 0, got {after_seq!r}")
    want = check_fields(fields)
    paths = Paths(store_root(path))
    dim = open_manifest(paths)["dim"]
    seeker = LogSeeker(paths, mode)
    # Ids and vectors only: runs of single-document records are scanned and
    # decoded in bulk (LogCursor.frames(bulk=...), _format.decode_add_run).
    bulk = _BULK if want is not None and want <= _BULK_FIELDS else 0
    while True:
        cur = seeker.cursor(after_seq)
        try:
            for frame in cur.frames(bulk):
                if isinstance(frame, RawRun):
                    assert want is not None  # (runs come only in the bulk mode)
                    after_seq = yield from _run_ops(frame, dim, want, after_seq)
                    continue
                last = frame.first_seq + frame.count - 1
                if last <= after_seq:
                    continue
                ops = iter_ops(frame, dim, want)
                if frame.first_seq <= after_seq:  # resumed inside a batch
                    ops = itertools.islice(ops, after_seq - frame.first_seq + 1, None)
                yield from ops
                after_seq = last
            return
        except Retired:
            seeker.retired(cur.seg_id, after_seq)
        finally:
            close_cursor(cur)


#: Frames a bulk scan of replay takes at a time, and the fields it serves.
_BULK = 1024
_BULK_FIELDS = frozenset(("seq", "kind", "id", "embedding"))


def _run_ops(run: RawRun, dim: int, want: frozenset[str], after_seq: int,
             ) -> Generator[Op, None, int]:
    """Yield the Ops (ids and vectors only) of a run after ``after_seq``; the new after_seq.

    The records before a bad one are yielded first, then its CorruptionError
    is raised - as frame by frame.
    """
    first = run.first_seq
    if first + len(run.offsets) - 1 <= after_seq:
        return after_seq
    ids, vecs, _docs, err = F.decode_add_run(run.buf, run.offsets, run.lengths, dim, run.path)
    k = len(ids)
    ops: Iterator[Op] = map(_new_op, _repeat(Op, k), zip(
        range(first, first + k), _repeat("add", k),
        ids if "id" in want else _repeat(None, k),
        vecs if "embedding" in want else _repeat(None, k),
        _repeat(None, k), _repeat(None, k), _repeat(0.0, k)))
    if first <= after_seq:  # resumed inside the run
        ops = itertools.islice(ops, after_seq - first + 1, None)
    yield from ops
    if err is not None:
        raise err
    return max(after_seq, first + k - 1)


class LogSeeker:
    """Opens cursors for a reader of the raw log that follows it across checkpoints.

    ``cursor(after_seq)`` starts at the segment holding ``after_seq + 1``;
    after the cursor raised :class:`Retired` (a checkpoint folded the segments
    under it), ``retired()`` moves the floor to the MANIFEST's replay segment,
    so the next cursor starts where the log now begins.  The cursors it opens
    check that their segment was not retired under them before they report
    damage (a stale view).
    """

    def __init__(self, paths: Paths, mode: str = "strict") -> None:
        self.paths = paths
        self.mode = mode
        self.floor = 0  # segments below it were folded by a checkpoint seen meanwhile
        self._stuck = 0
        self._last: tuple[int, int] = (-1, -1)

    def cursor(self, after_seq: int) -> LogCursor:
        paths = self.paths
        for _ in range(_MAX_RESTARTS):
            segs = [s for s in list_segments(paths) if s >= self.floor]
            if not segs:
                raise CorruptionError(f"{paths.wal}: no log segment", path=paths.wal, offset=0)
            start = _start_segment(paths, segs, after_seq)
            try:
                h = read_segment_header(paths.segment(start))
            except StorageIOError:
                if os.path.exists(paths.segment(start)):
                    raise
                continue  # retired between the listing and the read
            # No ``folded`` check: replay reads segments a checkpoint folded (but
            # did not retire yet) on purpose, and damage there is damage of the
            # log it reports.  Only a segment unlinked under the cursor is stale.
            return LogCursor(paths, start, h.first_seq, mode=self.mode, lock=reader_lock(paths))
        raise CorruptionError(f"{paths.wal}: log segments kept vanishing while being opened; "
                              "run `mmwal verify`", path=paths.wal, offset=0)

    def retired(self, seg_id: int, after_seq: int) -> None:
        """The cursor at ``seg_id`` raised Retired having yielded up to ``after_seq``."""
        from ._version import open_manifest

        newer = max(self.floor, open_manifest(self.paths)["replay_segment"])
        self._stuck = self._stuck + 1 if (newer, after_seq) == self._last else 0
        if self._stuck > _MAX_RESTARTS:
            path = self.paths.segment(seg_id)
            raise CorruptionError(f"{path}: log segment vanished {self._stuck} times without a "
                                  "newer MANIFEST; run `mmwal verify`", path=path, offset=0)
        self.floor, self._last = newer, (newer, after_seq)


def close_cursor(cur: LogCursor) -> None:
    """Close a cursor and the read-only lock object it was given."""
    cur.close()
    if cur.lock is not None:
        cur.lock.close()


def _start_segment(paths: Paths, segs: list[int], after_seq: int) -> int:
    """The newest segment whose first seq is <= after_seq + 1 (else the oldest)."""
    start = segs[0]
    for s in segs:
        try:
            h = read_segment_header(paths.segment(s))
        except (MmwalError, FileNotFoundError):
            continue
        if h.first_seq <= after_seq + 1:
            start = s
        else:
            break
    return start


def scan_log(paths: Paths, dim: int, start_segment: int, problems: list[Problem],
             notes: list[str], decode: bool = True) -> tuple[int, int, int, int]:
    """Check every segment from ``start_segment``: (segments, records, first seq, last seq)."""
    segs = [s for s in list_segments(paths) if s >= start_segment]
    if not segs:
        problems.append(Problem(paths.wal, 0, f"no log segment from {start_segment} on"))
        return 0, 0, 0, 0
    if segs[0] != start_segment:
        problems.append(Problem(paths.segment(start_segment), 0,
                                "the segment the manifest starts replay from is missing"))
    for a, b in zip(segs, segs[1:]):  # noqa: RUF007 (pairwise needs 3.10+, kept simple)
        if b != a + 1:
            problems.append(Problem(paths.segment(a + 1), 0, "segment missing from the sequence"))
    try:
        first = read_segment_header(paths.segment(segs[0])).first_seq
    except MmwalError as exc:
        problems.append(Problem(paths.segment(segs[0]), getattr(exc, "offset", 0), str(exc)))
        return len(segs), 0, 0, 0
    cur = LogCursor(paths, segs[0], first, mode="skip-bad", lock=reader_lock(paths))
    records = 0
    try:
        while True:
            try:
                for frame in cur.frames():
                    records += frame.count
                    if decode:
                        try:
                            for _ in iter_ops(frame, dim):
                                pass
                        except CorruptionError as exc:
                            problems.append(Problem(frame.path, frame.offset, str(exc)))
                break
            except CorruptionError as exc:
                problems.append(Problem(getattr(exc, "path", paths.wal),
                                        getattr(exc, "offset", 0), str(exc)))
                # A broken segment header or gap: continue with the next segment.
                if cur.seg_id + 1 > segs[-1]:
                    break
                cur.seg_id += 1
                cur.offset = F.SEGMENT_HEADER_SIZE
                try:
                    cur.next_seq = read_segment_header(paths.segment(cur.seg_id)).first_seq
                except MmwalError:
                    continue
            except Retired:
                problems.append(Problem(paths.segment(cur.seg_id), 0,
                                        "segment vanished during the scan (a checkpoint "
                                        "retired it?); run verify again"))
                break
    finally:
        cur.close()
        if cur.lock is not None:
            cur.lock.close()
    for path, off, why in cur.problems:
        if why.startswith("torn tail"):
            notes.append(f"{path}: offset {off}: {why} (harmless)")
        else:
            problems.append(Problem(path, off, why))
    return len(segs), records, first, cur.next_seq - 1
