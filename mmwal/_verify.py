"""``mmwal.verify``: a full integrity scan that reports instead of raising."""

from __future__ import annotations

import os
import zlib
from typing import Any

import numpy as np

from ._checkpoint import FILES, CheckpointView, list_checkpoints
from ._fsutil import Paths, list_segments, store_root
from ._lock import FileLock
from ._replay import iter_ops, reader_lock, scan_log
from ._search.ann import ANN_FILE
from ._search.colfile import COLUMNS_FILE
from ._types import Problem, VerifyReport
from ._version import Version, VersionView, list_versions, load_version, read_version, version_path
from ._wal import LogCursor, Retired, read_segment_header
from .errors import MmwalError

__all__ = ["verify"]


#: How long verify waits for a running checkpoint before raising LockTimeout.
VERIFY_LOCK_TIMEOUT = 300.0


def verify(path: str | os.PathLike[str], *,
           lock_timeout: float | None = VERIFY_LOCK_TIMEOUT) -> VerifyReport:
    """Scan the whole store and report every problem found (never raises for damage).

    Checks the manifest; every log segment header, frame checksum, sequence
    continuity and payload; the current checkpoint's files against the sizes
    and CRC-32s in its descriptor, its id index against its ids, every content
    and metadata chunk; and, where the log still holds the operations a
    checkpoint folded in, that the checkpoint equals their replay.  The older
    checkpoints kept beside the current one (``Config.keep_checkpoints``) are
    checked the same way.  A torn,
    unacknowledged tail is not a problem: it is listed in ``report.notes``.

    Examples
    --------
    >>> import numpy as np, mmwal, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with mmwal.Store(d, dim=2, durability="os") as s:
    ...     _ = s.add("a", [1.0, 0.0])
    >>> report = mmwal.verify(d)
    >>> report.ok, report.records
    (True, 1)

    Notes
    -----
    Writers keep appending during a verify, but checkpoints wait: verify holds
    ``locks/checkpoint.lock`` shared for its whole run, so the MANIFEST, the
    checkpoint it names and the segments it needs cannot change or be retired
    under it (a retired file is never reported as damage).  It waits up to
    ``lock_timeout`` seconds (None: for ever) for a running checkpoint, then
    raises :class:`mmwal.LockTimeout`.
    """
    paths = Paths(store_root(path))
    lock = FileLock.for_reader(paths.checkpoint_lock, lock_timeout)
    if lock is not None:
        try:
            lock.acquire_shared()
        except BaseException:
            lock.close()
            raise
    try:
        return _verify(paths)
    finally:
        if lock is not None:
            lock.release_slow()
            lock.close()


def _verify(paths: Paths) -> VerifyReport:
    from ._version import open_manifest

    report = VerifyReport(path=paths.root)
    try:
        manifest = open_manifest(paths)
    except MmwalError as exc:
        report.problems.append(Problem(paths.manifest, getattr(exc, "offset", 0), str(exc)))
        return report
    try:
        _scan(paths, manifest, report)
    except MmwalError as exc:  # e.g. wal/ is not a directory: reported, never raised
        report.problems.append(Problem(getattr(exc, "path", paths.root),
                                       getattr(exc, "offset", 0), str(exc)))
    return report


def _scan(paths: Paths, manifest: dict[str, Any], report: VerifyReport) -> None:
    dim = manifest["dim"]
    report.checkpoint = manifest["checkpoint"]
    report.segments, report.records, report.first_seq, report.last_seq = scan_log(
        paths, dim, manifest["replay_segment"], report.problems, report.notes)
    if report.first_seq and report.first_seq != manifest["checkpoint_seq"] + 1:
        report.problems.append(Problem(
            paths.segment(manifest["replay_segment"]), 32,
            f"the log starts at seq {report.first_seq}, the checkpoint ends at "
            f"{manifest['checkpoint_seq']}"))
    checked: dict[int, CheckpointView | None] = {}
    if manifest["checkpoint"]:
        try:
            version = read_version(paths, manifest)
        except MmwalError as exc:
            report.problems.append(Problem(getattr(exc, "path", paths.manifest),
                                           getattr(exc, "offset", 0), str(exc)))
        else:
            view = _check_version(paths, version, dim, report, checked)
            if view is not None:
                report.documents = view.live
                _compare_with_log(paths, manifest, view, report)
    _check_older(paths, manifest, report, checked)
    _note_leftovers(paths, manifest, report)


def _check_version(paths: Paths, version: Version, dim: int, report: VerifyReport,
                   checked: dict[int, CheckpointView | None]) -> VersionView | None:
    """Check a version: each fragment once (``checked``), its deletion vectors, unique ids."""
    ok = True
    for e in version.entries:
        if e.fid not in checked:
            checked[e.fid] = _check_fragment(paths, e.fid, dim, report)
        if checked[e.fid] is None:
            ok = False
    if not ok:
        return None
    reuse = {fid: v for fid, v in checked.items() if v is not None}
    try:
        view = VersionView(paths, None, dim, reuse, version=version)
    except MmwalError as exc:
        report.problems.append(Problem(getattr(exc, "path", paths.checkpoints),
                                       getattr(exc, "offset", 0), str(exc)))
        return None
    if version.legacy and view.parts and view.parts[0].view.seq != version.seq:
        report.problems.append(Problem(paths.manifest, 16, f"checkpoint seq {version.seq} in "
                                       f"the manifest, {view.parts[0].view.seq} in the "
                                       "descriptor"))
    if len(view.parts) > 1:
        # An id is live in at most one fragment of a version.
        seen: set[bytes] = set()
        for p in view.parts:
            for row in range(p.view.count):
                if p.dead is not None and p.dead[row]:
                    continue
                key = p.view.id_bytes(row)
                if key in seen:
                    report.problems.append(Problem(
                        version_path(paths, version.id), 0,
                        f"id {key!r} is live in two fragments of version {version.id} (the "
                        f"second: fragment {p.entry.fid}, row {row})"))
                    return None
                seen.add(key)
    return view


def _check_older(paths: Paths, manifest: dict[str, Any], report: VerifyReport,
                 checked: dict[int, CheckpointView | None]) -> None:
    """Check the older versions kept beside the current one (``keep_checkpoints``).

    Their fragments are checked like the current version's (each fragment
    once, however many versions list it), their deletion vectors too, and
    each is compared with the log where it still holds what they folded in:
    damage there would otherwise go unseen until someone fell back on them.
    """
    current = manifest["checkpoint"]
    dim = manifest["dim"]
    for vid in list_versions(paths):
        if vid >= current:
            continue
        sub = VerifyReport(path=report.path)
        try:
            version = load_version(paths, vid, dim)
        except MmwalError as exc:
            if os.path.exists(version_path(paths, vid)):
                report.problems.append(Problem(getattr(exc, "path", version_path(paths, vid)),
                                               getattr(exc, "offset", 0), str(exc)))
            continue
        try:
            view = _check_version(paths, version, dim, sub, checked)
            if view is not None:
                _compare_with_log(paths, manifest, view, sub)
        except (MmwalError, OSError) as exc:
            sub.problems.append(Problem(version_path(paths, vid), 0, str(exc)))
        report.problems.extend(sub.problems)
        report.notes.extend(n for n in sub.notes if "no longer holds" not in n
                            and "was checked against its descriptor only" not in n)


def _check_checkpoint(paths: Paths, manifest: dict[str, Any], report: VerifyReport,
                      ) -> VersionView | None:
    """Check the version the MANIFEST names (every fragment, every deletion vector)."""
    try:
        version = read_version(paths, manifest)
    except MmwalError as exc:
        report.problems.append(Problem(getattr(exc, "path", paths.manifest),
                                       getattr(exc, "offset", 0), str(exc)))
        return None
    return _check_version(paths, version, manifest["dim"], report, {})


def _check_fragment(paths: Paths, fid: int, dim: int, report: VerifyReport,
                    ) -> CheckpointView | None:
    """Check one fragment: files against its descriptor, ids, index, chunks, norms."""
    try:
        view = CheckpointView(paths, fid, dim)
    except MmwalError as exc:
        report.problems.append(Problem(getattr(exc, "path", paths.checkpoint(fid)),
                                       getattr(exc, "offset", 0), str(exc)))
        return None
    bad = report.problems.append
    files = view.descriptor["files"]
    ok = True
    extra = [f for f in (ANN_FILE, COLUMNS_FILE) if f in files]
    for name in (*FILES, *extra):
        fpath = os.path.join(view.dir, name)
        crc = 0
        try:
            with open(fpath, "rb") as f:
                while block := f.read(1 << 20):
                    crc = zlib.crc32(block, crc)
        except OSError as exc:
            bad(Problem(fpath, 0, f"unreadable: {exc}"))
            ok = ok and name in extra  # derived files: the data itself can still be checked
            continue
        if crc != files[name][1]:
            if name == COLUMNS_FILE:  # derived data: readers rebuild it from the documents
                bad(Problem(fpath, 0, f"CRC-32 {crc:#010x}, the descriptor says "
                            f"{files[name][1]:#010x}: the metadata columns are damaged "
                            "(readers rebuild them from the documents; a compaction that "
                            "rewrites the fragment writes new ones)"))
                continue
            if name == ANN_FILE:  # the data is intact: readers search this fragment exactly
                bad(Problem(fpath, 0, f"CRC-32 {crc:#010x}, the descriptor says "
                            f"{files[name][1]:#010x}: the approximate index is damaged "
                            "(readers search this fragment exactly; a compaction that "
                            "rewrites the fragment builds a new one)"))
                continue
            bad(Problem(fpath, 0, f"CRC-32 {crc:#010x}, the descriptor says "
                        f"{files[name][1]:#010x}: the file is damaged"))
            ok = False
    if not ok:
        return None
    try:
        offs = np.asarray(view.id_offsets)
        if offs[0] != 0 or np.any(np.diff(offs.astype(np.int64)) < 0) or \
                int(offs[-1]) != len(view.ids_bin):
            bad(Problem(os.path.join(view.dir, "ids_offsets.npy"), 128,
                        "id offsets are not increasing from 0 to the size of ids.bin"))
            return None
        seen: set[bytes] = set()
        for row in range(view.count):
            key = view.id_bytes(row)
            if key in seen:
                bad(Problem(os.path.join(view.dir, "ids.bin"), int(offs[row]),
                            f"id {key!r} appears twice"))
            seen.add(key)
            if view.lookup(key) != row:
                bad(Problem(os.path.join(view.dir, "index.npy"), 128,
                            f"the index does not map id {key!r} to its row {row}"))
                break
        used = int(np.count_nonzero(np.asarray(view.index) >= 0)) if view.count else 0
        if used != view.count:
            bad(Problem(os.path.join(view.dir, "index.npy"), 128,
                        f"the index holds {used} entries for {view.count} rows"))
        for k in range(view.nchunks):
            view.chunk(k)
        norms = np.linalg.norm(np.asarray(view.embeddings), axis=1) if view.count else \
            np.empty(0)
        if not np.allclose(norms, view.norms, rtol=1e-5, atol=1e-6):
            bad(Problem(os.path.join(view.dir, "norms.npy"), 128,
                        "norms do not match the embeddings"))
        if view.count and not np.isfinite(np.asarray(view.embeddings)).all():
            bad(Problem(os.path.join(view.dir, "embeddings.npy"), 128,
                        "embeddings hold non-finite values"))
    except MmwalError as exc:
        bad(Problem(getattr(exc, "path", view.dir), getattr(exc, "offset", 0), str(exc)))
        return None
    return view


def _compare_with_log(paths: Paths, manifest: dict[str, Any], view: VersionView,
                      report: VerifyReport) -> None:
    """Where the log still starts at seq 1, replay it and compare with the version."""
    segs = list_segments(paths)
    if not segs:
        return
    try:
        first = read_segment_header(paths.segment(segs[0])).first_seq
    except MmwalError:
        return
    if first != 1:
        report.notes.append("the log no longer holds the operations the checkpoint folded in; "
                            "the checkpoint was checked against its descriptor only")
        return
    state: dict[Any, tuple[Any, Any, Any]] = {}
    replayed = 0
    cur = LogCursor(paths, segs[0], 1, mode="strict", lock=reader_lock(paths))
    try:
        for frame in cur.frames():
            if frame.first_seq > view.seq:
                break
            for op in iter_ops(frame, manifest["dim"]):
                if op.seq > view.seq:
                    break
                replayed = op.seq
                if op.kind == "add":
                    state.pop(op.id, None)
                    state[op.id] = (op.embedding, op.content, op.metadata)
                elif op.kind == "remove":
                    state.pop(op.id, None)
                else:
                    state.clear()
    except (MmwalError, Retired):
        return  # the log's own problems were reported by scan_log
    finally:
        cur.close()
        if cur.lock is not None:
            cur.lock.close()
    if replayed < view.seq:
        # Folded segments retired out of order (unlinks are not ordered before the
        # directory fsync, so a power loss can keep an older one and lose a newer
        # one): the leftovers no longer hold every folded op.  Not damage.
        report.notes.append(f"the log left before the checkpoint ends at seq {replayed}, "
                            f"before the checkpoint's {view.seq}; the checkpoint was checked "
                            "against its descriptor only")
        return
    where = version_path(paths, view.id) if not view.version.legacy else os.path.join(
        paths.checkpoint(view.id), "DESCRIPTOR")
    if len(state) != view.live:
        report.problems.append(Problem(where, 0, f"the checkpoint holds {view.live} documents, "
                                       f"replaying the log up to seq {view.seq} gives "
                                       f"{len(state)}"))
        return
    dead = view.dead
    for row in range(view.count):
        if dead is not None and dead[row]:
            continue
        key = view.id_at(row)
        want = state.get(key)
        content, meta = view.doc(row)
        if want is None or not np.array_equal(want[0], view.vector(row)) or \
                want[1] != content or want[2] != meta:
            report.problems.append(Problem(where, 0, f"document {key!r} (row {row}) differs "
                                           "from the replay of the log"))
            return


def _note_leftovers(paths: Paths, manifest: dict[str, Any], report: VerifyReport) -> None:
    current = manifest["checkpoint"]
    for c in list_versions(paths):
        if c > current:
            report.notes.append(f"version {c} was never published (a crashed checkpoint); "
                                "the next checkpoint removes it")
    listed: set[int] = set()
    try:
        if current:
            listed |= {e.fid for e in read_version(paths, manifest).entries}
    except MmwalError:
        return  # reported above
    for vid in list_versions(paths):
        try:
            listed |= {e.fid for e in load_version(paths, vid, manifest["dim"]).entries}
        except MmwalError:
            if vid <= current:
                return  # a damaged retained version (reported above): nothing is certain

    for c in list_checkpoints(paths):
        if c not in listed:
            report.notes.append(f"fragment {c} is listed by no version (a crashed checkpoint, "
                                "or one retired by keep_checkpoints); the next checkpoint "
                                "removes it")
    for s in list_segments(paths):
        if s < manifest["replay_segment"]:
            report.notes.append(f"segment {s} is already folded into checkpoint {current}; "
                                "the next checkpoint retires it")
    try:
        tmps = [n for n in os.listdir(paths.checkpoints) if n.startswith(".tmp-")]
    except OSError:
        tmps = []
    if tmps:
        report.notes.append(f"{len(tmps)} temporary checkpoint director"
                            f"{'y' if len(tmps) == 1 else 'ies'} left by a crash")
