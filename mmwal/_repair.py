"""``mmwal repair``: salvage a store whose log is damaged, without rewriting a byte of it.

The design (docs/cli.md has the full story and a crash table):

* Nothing is shrunk, truncated or rewritten in place: readers may have any
  segment mapped (shrinking a mapped file raises SIGBUS in them), and a
  valid frame is never rewritten (RULES.md).
* Holding ``locks/checkpoint.lock`` and then ``locks/append.lock`` (the order
  ``run_checkpoint`` takes them in), the whole log from the manifest's replay
  segment is scanned: every CRC-valid, decodable frame, every damaged byte
  range, every segment that is missing or has a damaged header.
* The recovery mode decides what survives: ``point-in-time`` keeps the frames
  before the first damage, ``skip-bad`` keeps every valid frame.
* With ``--yes``: the MANIFEST, the ``tail`` file, every segment and the
  current checkpoint are copied into ``<store>/repair-backup-<UTC time>/``
  (fsynced, listed with sizes and CRC-32s in ``REPAIR.json``, written last),
  so that :func:`restore` rebuilds the pre-repair store from the backup
  alone, after any later checkpoint; the current
  checkpoint plus the surviving frames are folded into a new checkpoint by the
  library's own fold (``_checkpoint.fold``), published at ``max_seen`` - the
  highest seq any segment header, frame, damaged frame header or the tail
  record ever mentioned - so that no seq is handed out twice; a fresh empty
  segment with ``first_seq = max_seen + 1`` is created and the tail record
  pointed at it; the MANIFEST naming both is replaced atomically (the commit
  point); only then are the old segments (already backed up) unlinked.

Sequence numbers of dropped records are never reused: they are a gap that the
new checkpoint covers.  Every file operation goes through ``mmwal._io.layer``
so that the fault campaigns (``mmwal._faults.run_repair_faults``) reach it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import mmap
import os
import secrets
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from . import _format as F
from . import _io
from ._checkpoint import CheckpointView, _rmtree, fold
from ._fsutil import Paths, atomic_write, boot_id, fsync_dir, list_segments, read_file, write_all
from ._lock import FileLock
from ._publish import install_fragment, make_tmp_dir, publish_fold
from ._types import Config, VerifyReport
from ._version import VersionView, clean_orphans, deletion_path, next_id, read_version, version_path
from ._wal import RawFrame, create_segment, read_tail_record
from .errors import CorruptionError, FormatVersionError, InvalidInputError, MmwalError

__all__ = ["MODES", "Plan", "apply_plan", "make_plan", "read_tail_hint", "repair_locks", "restore"]

MODES = ("point-in-time", "skip-bad")
#: A seq read from an unverified frame header counts toward ``max_seen`` only
#: below this bound (a plausible value, not random bytes).
_PLAUSIBLE_SEQ = 1 << 53
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass
class Frame:
    """One CRC-valid, decodable frame found by the scan."""

    seg: int
    path: str
    offset: int
    end: int
    first_seq: int
    count: int
    kind: int
    payload: memoryview

    @property
    def last_seq(self) -> int:
        return self.first_seq + self.count - 1


@dataclass
class Damage:
    """Bytes (or a whole segment) that hold no valid frame where one was due."""

    path: str
    start: int
    end: int
    why: str
    harmless: bool = False  # a torn, unacknowledged tail: nothing is lost
    seqs: tuple[int, int] | None = None  # the seqs that lived there, when known


@dataclass
class Plan:
    """What a repair in ``mode`` keeps and drops (computed by :func:`make_plan`)."""

    root: str
    mode: str
    manifest: dict[str, Any]
    checkpoint_problems: list[str] = field(default_factory=list)
    keep: list[Frame] = field(default_factory=list)
    dropped: list[Frame] = field(default_factory=list)  # valid frames not kept
    damage: list[Damage] = field(default_factory=list)
    max_seen: int = 0
    segments: list[int] = field(default_factory=list)
    maps: list[Any] = field(default_factory=list)

    @property
    def problems(self) -> list[Damage]:
        return [d for d in self.damage if not d.harmless]

    @property
    def needed(self) -> bool:
        return bool(self.problems or self.dropped)

    @property
    def last_kept(self) -> int:
        return self.keep[-1].last_seq if self.keep else int(self.manifest["checkpoint_seq"])

    def close(self) -> None:
        self.keep.clear()
        self.dropped.clear()
        for m in self.maps:
            try:
                m.close()
            except (BufferError, ValueError):
                pass  # a payload view still refers to it: the GC closes it
        self.maps.clear()

    def as_dict(self) -> dict[str, Any]:
        rel = self._rel
        return {
            "path": self.root, "mode": self.mode, "needed": self.needed,
            "checkpoint": self.manifest.get("checkpoint"),
            "checkpoint_seq": self.manifest.get("checkpoint_seq"),
            "checkpoint_problems": self.checkpoint_problems,
            "kept_records": sum(f.count for f in self.keep),
            "kept_seqs": [self.keep[0].first_seq, self.last_kept] if self.keep else None,
            "dropped_records": self._dropped_runs(),
            "damage": [{"file": rel(d.path), "start": d.start, "end": d.end, "why": d.why,
                        "harmless": d.harmless, "seqs": list(d.seqs) if d.seqs else None}
                       for d in self.damage],
            "max_seen": self.max_seen,
            "new_first_seq": self.max_seen + 1,
        }

    def _dropped_runs(self) -> list[dict[str, Any]]:
        """Valid frames not kept, as one entry per segment: offsets, seqs, counts by kind."""
        runs: list[dict[str, Any]] = []
        for f in self.dropped:
            if not runs or runs[-1]["file"] != self._rel(f.path):
                runs.append({"file": self._rel(f.path), "offset": f.offset,
                             "seqs": [f.first_seq, f.last_seq], "records": 0, "kinds": {}})
            run = runs[-1]
            run["seqs"][1] = f.last_seq
            run["records"] += f.count
            kind = F.KIND_NAMES[f.kind]
            run["kinds"][kind] = run["kinds"].get(kind, 0) + f.count
        return runs

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)


# ============================================================================ scanning
def _frame_header_seq(mv: memoryview, off: int, size: int) -> int | None:
    """The last seq an (unverified) frame header at ``off`` claims, if it looks plausible."""
    if off + F.FRAME_HEADER_SIZE > size:
        return None
    magic, kind, flags, res, n, count, first, _crc, res2 = F.FRAME_HEADER.unpack_from(mv, off)
    if (magic != F.FRAME_MAGIC or kind not in F.KIND_NAMES or flags or res or res2
            or n > F.MAX_PAYLOAD or not 1 <= count <= max(n, 1)
            or not 0 < first < _PLAUSIBLE_SEQ):
        return None
    return int(first + count - 1)


def _claimed_seqs(mm: mmap.mmap, mv: memoryview, start: int, end: int) -> int:
    """The highest plausible seq any frame header in [start, end) claims (0 if none)."""
    magic = F.FRAME_MAGIC.to_bytes(4, "little")
    best = 0
    pos = start
    while True:
        pos = mm.find(magic, pos, end)
        if pos < 0:
            return best
        if pos % F.FRAME_ALIGN == 0:
            got = _frame_header_seq(mv, pos, end)
            if got is not None:
                best = max(best, got)
        pos += 1


def _find_valid(mv: memoryview, start: int, size: int, seed: int,
                dim: int, path: str) -> tuple[int, Frame | None, str]:
    """Look at ``start``: (offset, frame or None, why it is not a frame)."""
    got = _frame_header_seq(mv, start, size)
    expect = 0 if got is None else F.FRAME_HEADER.unpack_from(mv, start)[6]
    status, kind, count, n, nxt, why = F.check_frame(mv, start, size, seed, expect)
    if status != F.FRAME_OK:
        return start, None, why
    payload = mv[start + F.FRAME_HEADER_SIZE : start + F.FRAME_HEADER_SIZE + n]
    try:
        F.decode_payload(kind, count, payload, dim, path, start)
    except CorruptionError as exc:
        return start, None, f"CRC-valid frame whose payload does not decode ({exc})"
    return start, Frame(0, path, start, nxt, expect, count, kind, payload), ""


def _scan_segment(paths: Paths, seg: int, dim: int, plan: Plan,
                  ) -> tuple[F.SegmentHeader | None, list[Frame | Damage], int]:
    """Every valid frame and damaged range of one segment, in offset order.

    Returns (header or None, events, highest seq mentioned anywhere in it).
    """
    path = paths.segment(seg)
    io = _io.layer
    try:
        fd = io.open(path, os.O_RDONLY | _O_CLOEXEC)
    except OSError as exc:
        raise _io.io_error(exc, "open", path) from None
    try:
        size = io.fstat(fd).st_size
        mm = io.mmap(fd, size) if size else None
    except OSError as exc:
        raise _io.io_error(exc, "mmap", path) from None
    finally:
        io.close(fd)
    if mm is None:
        return None, [Damage(path, 0, 0, "empty segment file (no header)")], 0
    plan.maps.append(mm)
    mv = memoryview(mm)
    try:
        h = F.decode_segment_header(mv[: F.SEGMENT_HEADER_SIZE], path)
        if h.segment_id != seg:
            raise CorruptionError(f"header names segment {h.segment_id}", path=path, offset=16)
    except (CorruptionError, FormatVersionError) as exc:
        # Without the header's salt no frame can be verified: the whole file is lost,
        # but the seqs its frame headers claim still count toward max_seen.
        why = _why(str(exc), path)
        return None, [Damage(path, 0, size, f"damaged segment header: {why}")], \
            _claimed_seqs(mm, mv, F.SEGMENT_HEADER_SIZE, size)
    seen = h.first_seq - 1
    events: list[Frame | Damage] = []
    off = F.SEGMENT_HEADER_SIZE
    while off < size:
        _pos, frame, why = _find_valid(mv, off, size, h.seed, dim, path)
        if frame is not None:
            frame.seg = seg
            events.append(frame)
            seen = max(seen, frame.last_seq)
            off = frame.end
            continue
        # Not a frame here: where does the next valid one start?
        nxt = off + F.FRAME_ALIGN
        found = None
        while nxt + F.FRAME_HEADER_SIZE <= size:
            nxt = mm.find(F.FRAME_MAGIC.to_bytes(4, "little"), nxt, size)
            if nxt < 0:
                break
            if nxt % F.FRAME_ALIGN == 0:
                _p, found, _w = _find_valid(mv, nxt, size, h.seed, dim, path)
                if found is not None:
                    break
            nxt += 1
        end = found.offset if found is not None else size
        seen = max(seen, _claimed_seqs(mm, mv, off, end))
        zeros = found is None and mm[off:end].count(0) == end - off
        if not zeros:
            events.append(Damage(path, off, end, why or "not a valid frame"))
        off = end
    return h, events, seen


def _why(msg: str, path: str) -> str:
    """An error message without the path and offset the Damage already carries."""
    msg = msg.removeprefix(f"{path}: ")
    if msg.startswith("offset "):
        msg = msg.split(": ", 1)[-1]
    return msg.replace("; run `mmwal verify`", "")


def read_tail_hint(paths: Paths) -> tuple[int, int, int] | None:
    """(segment, end, last seq) of the tail record, when it is valid for this boot."""
    t = read_tail_record(paths)  # a hint only: without it the scan trusts the log alone
    return None if t is None else (t.segment, t.end, t.last_seq)


def make_plan(root: str, mode: str) -> Plan:
    """Scan the store at ``root`` and decide what a repair in ``mode`` keeps and drops.

    Read-only.  The caller holds the locks that make the answer stable (see
    :func:`repair_locks`).  Raises StoreNotFoundError / CorruptionError for a
    missing or unreadable MANIFEST (nothing can be salvaged without it).
    """
    from ._verify import _check_checkpoint
    from ._version import open_manifest

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    paths = Paths(root)
    manifest = open_manifest(paths)
    plan = Plan(paths.root, mode, manifest)
    dim = manifest["dim"]
    if manifest["checkpoint"]:
        report = VerifyReport(path=paths.root)
        view = _check_checkpoint(paths, manifest, report)
        plan.checkpoint_problems = [str(p) for p in report.problems]
        del view
    present = list_segments(paths)
    start = manifest["replay_segment"]
    last = max([start, *present])
    plan.segments = [s for s in present if s >= start]
    plan.max_seen = int(manifest["checkpoint_seq"])
    tail = read_tail_hint(paths)
    if tail is not None:
        plan.max_seen = max(plan.max_seen, tail[2])
    scans: dict[int, tuple[F.SegmentHeader | None, list[Frame | Damage]]] = {}
    for s in range(start, last + 1):
        if s in present:
            h, events, seen = _scan_segment(paths, s, dim, plan)
            scans[s] = (h, events)
            plan.max_seen = max(plan.max_seen, seen)

    _walk(plan, scans, start, last, tail)
    return plan


def _walk(plan: Plan, scans: dict[int, tuple[F.SegmentHeader | None, list[Frame | Damage]]],
          start: int, last: int, tail: tuple[int, int, int] | None) -> None:
    """Decide, in log order, which frames survive ``plan.mode`` and what each damage costs.

    ``expected`` is the next seq the log owes.  A damaged range's lost seqs run
    from ``expected`` to just before the next valid frame (or the next segment's
    first seq, or, at the very end, the highest seq ever used).
    """
    paths = Paths(plan.root)
    mode = plan.mode
    expected = int(plan.manifest["checkpoint_seq"]) + 1
    stopped = False  # point-in-time: everything from here on is dropped

    def next_first_seq(seg: int, events: list[Frame | Damage], i: int) -> int | None:
        """The first seq of the next valid frame or segment after ``events[i]`` of ``seg``."""
        for e in events[i + 1:]:
            if isinstance(e, Frame):
                return e.first_seq
        for s in range(seg + 1, last + 1):
            got = scans.get(s)
            if got is not None and got[0] is not None:
                return got[0].first_seq
        return None

    def damage(d: Damage, upto: int | None) -> None:
        nonlocal stopped, expected
        if stopped:
            plan.damage.append(d)
            return
        if upto is not None and upto >= expected:
            d.seqs = (expected, upto)
        plan.damage.append(d)
        if mode == "point-in-time":
            stopped = True
        elif d.seqs is not None:
            expected = d.seqs[1] + 1  # counted here, not again as a gap

    for s in range(start, last + 1):
        path = paths.segment(s)
        if s not in scans:
            nxt = next_first_seq(s, [], 0)
            damage(Damage(path, 0, 0, "segment missing from the sequence"),
                   None if nxt is None else nxt - 1)
            continue
        h, events = scans[s]
        if h is None:
            nxt = next_first_seq(s, [], 0)
            bad = events[0]
            assert isinstance(bad, Damage)
            damage(bad, plan.max_seen if nxt is None else nxt - 1)
            continue
        if stopped:
            pass  # point-in-time: nothing from here on is kept, gaps included
        elif h.first_seq > expected:
            damage(Damage(path, 0, F.SEGMENT_HEADER_SIZE,
                          f"segment starts at seq {h.first_seq}, expected {expected}: the "
                          "records in between are missing"), h.first_seq - 1)
        elif h.first_seq < expected:
            damage(Damage(path, 0, F.SEGMENT_HEADER_SIZE,
                          f"segment starts at seq {h.first_seq}, before the expected "
                          f"{expected}: it repeats sequence numbers"), None)
        for i, ev in enumerate(events):
            if isinstance(ev, Frame):
                if stopped:
                    plan.dropped.append(ev)
                elif ev.first_seq < expected:
                    damage(Damage(path, ev.offset, ev.end, f"a frame repeats seq "
                                  f"{ev.first_seq} (expected {expected})"), None)
                    if mode == "point-in-time":
                        plan.dropped.append(ev)
                else:
                    if ev.first_seq > expected:
                        damage(Damage(path, ev.offset, ev.offset, "records missing before "
                                      "this frame"), ev.first_seq - 1)
                    if stopped:
                        plan.dropped.append(ev)
                    else:
                        plan.keep.append(ev)
                        expected = ev.last_seq + 1
                continue
            # A damaged range.  Trailing bytes (no valid frame after them in this
            # segment) are a torn, unacknowledged tail when the log provably goes on
            # without them or, in the newest segment, when nothing says more was
            # written: the rules readers follow (docs/concepts.md).
            trailing = not any(isinstance(e, Frame) for e in events[i + 1:])
            if trailing and not stopped:
                if s < last:
                    nxt_scan = scans.get(s + 1)
                    ev.harmless = (nxt_scan is not None and nxt_scan[0] is not None
                                   and nxt_scan[0].first_seq == expected)
                else:
                    ev.harmless = tail is None or tail[0] < s or (
                        tail[0] == s and tail[1] <= ev.start)
            if ev.harmless:
                plan.damage.append(ev)
                continue
            nxt = next_first_seq(s, events, i)
            damage(ev, plan.max_seen if nxt is None else nxt - 1)


# ============================================================================ locking
class repair_locks:  # noqa: N801 (a context manager used like a function)
    """Hold checkpoint.lock, then append.lock: shared (for a look) or exclusive (to repair).

    Either way no checkpoint can replace the MANIFEST or retire files meanwhile.

    Writers wait (up to their ``Config.lock_timeout``) while the exclusive pair is
    held; the order is the one ``run_checkpoint`` uses, so no deadlock.
    """

    def __init__(self, root: str, exclusive: bool, timeout: float | None) -> None:
        self.paths = Paths(root)
        self.exclusive = exclusive
        self.timeout = timeout
        self._held: list[FileLock] = []

    def __enter__(self) -> repair_locks:
        try:
            if self.exclusive:
                for path in (self.paths.checkpoint_lock, self.paths.append_lock):
                    lock = FileLock(path, self.timeout)
                    try:
                        lock.acquire_exclusive_slow()
                    except BaseException:
                        lock.close()
                        raise
                    self._held.append(lock)
            else:
                # Shared checkpoint.lock: no checkpoint moves the MANIFEST or
                # retires a file while the store is looked at (a plan computed
                # against files retired meanwhile would report false damage).
                for path in (self.paths.checkpoint_lock, self.paths.append_lock):
                    got = FileLock.for_reader(path, self.timeout)
                    if got is None:
                        continue
                    try:
                        got.acquire_shared()
                    except BaseException:
                        got.close()
                        raise
                    self._held.append(got)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        while self._held:
            lock = self._held.pop()
            try:
                lock.release_slow()
            finally:
                lock.close()


# ============================================================================ backup
#: Name of the file that lists what a backup holds; written last, so a backup
#: without it is incomplete (a crash or an error during the copy).
BACKUP_INDEX = "REPAIR.json"
_BLOCK = 1 << 20


def _mkdir(path: str) -> None:
    try:
        _io.layer.mkdir(path)
    except OSError as exc:
        raise _io.io_error(exc, "mkdir", path) from None


def _copy_file(src: str, dst: str, advance: Callable[[int], None]) -> list[int]:
    """Copy ``src`` to the new file ``dst`` durably, through the I/O layer; -> [size, CRC-32]."""
    io = _io.layer
    try:
        fin = io.open(src, os.O_RDONLY | _O_CLOEXEC)
    except OSError as exc:
        raise _io.io_error(exc, "open", src) from None
    try:
        try:
            fout = io.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _io.io_error(exc, "open", dst) from None
        try:
            pos = crc = 0
            while True:
                try:
                    block = io.pread(fin, _BLOCK, pos)
                except OSError as exc:
                    raise _io.io_error(exc, "read", src) from None
                if not block:
                    break
                write_all(fout, block, pos, dst)
                crc = zlib.crc32(block, crc)
                pos += len(block)
                advance(len(block))
            try:
                io.fsync(fout)
            except OSError as exc:
                raise _io.io_error(exc, "fsync", dst) from None
        finally:
            io.close(fout)
    finally:
        io.close(fin)
    return [pos, crc]


def _backup_files(plan: Plan) -> tuple[list[str], list[str], dict[str, list[int]]]:
    """What the backup holds, relative to the store: enough to rebuild the store alone.

    MANIFEST, the tail record, every segment in ``wal/``, and the current
    version: its version file, every file of every fragment it lists and its
    deletion vectors (the next checkpoint may retire any of them, and a backup
    that only pointed at them could then no longer be restored).  Returns
    (files, fragment directories, the size and CRC-32 each fragment's
    descriptor records for its files).
    """
    paths = Paths(plan.root)
    rel = ["MANIFEST"]
    if os.path.exists(paths.tail):
        rel.append("tail")
    rel += [os.path.relpath(paths.segment(s), paths.root) for s in list_segments(paths)]
    dirs: list[str] = []
    want: dict[str, list[int]] = {}
    if plan.manifest["checkpoint"]:
        v = read_version(paths, plan.manifest)
        if not v.legacy:
            rel.append(os.path.relpath(version_path(paths, v.id), paths.root))
        for e in v.entries:
            cdir = paths.checkpoint(e.fid)
            dirs.append(os.path.relpath(cdir, paths.root))
            try:
                names = _io.layer.listdir(cdir)
            except OSError as exc:
                raise _io.io_error(exc, "listdir", cdir) from None
            rel += [os.path.relpath(os.path.join(cdir, n), paths.root) for n in sorted(names)]
            view = CheckpointView(paths, e.fid, plan.manifest["dim"])
            for name, meta in view.descriptor["files"].items():
                want[os.path.relpath(os.path.join(cdir, name), paths.root)] = list(meta)
            del view
            if e.dv:
                rel.append(os.path.relpath(deletion_path(paths, e.fid, e.dv), paths.root))
                want[rel[-1]] = [e.dv_size, e.dv_crc]
    return rel, dirs, want


def _backup(plan: Plan, show: bool) -> str:
    """Copy everything the pre-repair store needs into ``repair-backup-<time>/``, durably.

    The copy goes through the I/O layer; each file's size and CRC-32 goes into
    ``REPAIR.json``, written last (atomically): a backup without it is
    incomplete and ``restore`` refuses it.  The checkpoint's files are checked
    against their descriptor as they are copied (the backup must not hold
    damage the repair did not see).
    """
    from ._progress import progress

    paths = Paths(plan.root)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    backup = os.path.join(paths.root, f"repair-backup-{stamp}")
    n = 1
    while os.path.exists(backup):
        n += 1
        backup = os.path.join(paths.root, f"repair-backup-{stamp}-{n}")
    files, dirs, want = _backup_files(plan)
    _mkdir(backup)
    fsync_dir(paths.root)
    for d in ("wal", "checkpoints", *dirs):
        _mkdir(os.path.join(backup, d))
    try:
        total = sum(_io.layer.stat(os.path.join(paths.root, r)).st_size for r in files)
    except OSError as exc:
        raise _io.io_error(exc, "stat", paths.root) from None
    held: dict[str, list[int]] = {}
    with progress(total, "backup", "B", enabled=None if show else False) as bar:
        for r in files:
            got = held[r] = _copy_file(os.path.join(paths.root, r), os.path.join(backup, r),
                                       bar.update)
            exp = want.get(r)
            if exp is not None and got != exp:
                raise CorruptionError(
                    f"{os.path.join(paths.root, r)}: size/CRC-32 {got[0]}/{got[1]:#010x}, "
                    f"its checkpoint records {exp[0]}/{exp[1]:#010x}: the checkpoint is "
                    "damaged; nothing was repaired", path=os.path.join(paths.root, r),
                    offset=0)
    for d in (*dirs, "checkpoints", "wal", ""):
        fsync_dir(os.path.join(backup, d))
    index = {**plan.as_dict(), "started": time.time(), "files": held,
             "restore": RESTORE_HOWTO}
    atomic_write(os.path.join(backup, BACKUP_INDEX),
                 json.dumps(index, indent=2).encode("utf-8"))
    return backup


RESTORE_HOWTO = ("`mmwal restore THIS_DIRECTORY NEW_PATH` rebuilds the store as it was before "
                 "the repair at NEW_PATH (it checks every file against the sizes and CRC-32s "
                 "listed under \"files\" first); then stop every process using the store and "
                 "move NEW_PATH into its place")


def _raw_frames(frames: list[Frame]) -> Callable[[], Iterator[RawFrame]]:
    def gen() -> Iterator[RawFrame]:
        for f in frames:
            yield RawFrame(f.kind, f.first_seq, f.count, f.payload, f.path, f.offset)
    return gen


def apply_plan(plan: Plan, config: Config | None = None, *,
               show_progress: bool = False) -> dict[str, Any]:
    """Carry out ``plan`` (computed under the exclusive :class:`repair_locks`).

    Returns what was done: backup directory, new checkpoint, documents, seqs.
    ``show_progress`` draws a progress bar of the backup copy on a terminal.
    """
    if plan.checkpoint_problems:
        raise CorruptionError("the checkpoint is damaged; repair only salvages the log",
                              path=plan.root, offset=0)
    config = config or Config()
    paths = Paths(plan.root)
    manifest = plan.manifest
    dim = manifest["dim"]
    backup = _backup(plan, show_progress)

    # 1. The salvaged state as a new fragment, by the library's own fold.
    clean_orphans(paths, manifest)  # leftovers of crashed checkpoints
    prev = VersionView(paths, manifest, dim) if manifest["checkpoint"] else None
    ckpt_id = next_id(paths, manifest)
    tmp = make_tmp_dir(paths, ckpt_id)
    try:
        res = fold(paths, dim, prev, manifest["replay_segment"], 0,
                   manifest["checkpoint_seq"] + 1, plan.last_kept, tmp, ckpt_id, config,
                   frames=_raw_frames(plan.keep), seq_as=plan.max_seen)
        if res.body is not None:
            install_fragment(paths, tmp, ckpt_id)
        else:
            _rmtree(tmp)
    except BaseException:
        with contextlib.suppress(OSError, MmwalError):
            _rmtree(tmp)  # else a leftover the next checkpoint removes
        raise

    # 2. A fresh segment continuing after every seq ever used, and the tail record
    #    pointing at it (pending word first, as a roll does: a crash in between
    #    makes the next writer rebuild the record from the newest segment).
    new_seg = max([manifest["replay_segment"], *list_segments(paths)]) + 1
    try:
        fd = _io.layer.open(paths.tail, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
    except OSError as exc:
        raise _io.io_error(exc, "open", paths.tail) from None
    try:
        try:
            if _io.layer.fstat(fd).st_size < F.TAIL_FILE_SIZE:
                _io.layer.ftruncate(fd, F.TAIL_FILE_SIZE)  # a lost tail file: grows only
        except OSError as exc:
            raise _io.io_error(exc, "write", paths.tail) from None
        write_all(fd, (1).to_bytes(8, "little"), F.PENDING_OFFSET, paths.tail)
        create_segment(paths, new_seg, plan.max_seen + 1)
        seg_end = F.SEGMENT_HEADER_SIZE
        tail = F.Tail(new_seg, seg_end, plan.max_seen, 0, new_seg, seg_end)
        write_all(fd, F.encode_tail(boot_id(), tail), 0, paths.tail)
    finally:
        _io.layer.close(fd)

    # 3. The commit point: deletion vectors, the version file, then the MANIFEST.
    _, version, _ = publish_fold(
        paths, manifest, prev, res, ckpt_id, plan.max_seen, new_seg,
        {"repaired": time.time(), "repair_backup": os.path.basename(backup)})
    del prev
    documents = version.documents

    # 4. Unlink the old segments (backed up above; readers that map them keep
    #    their mappings).  Checkpoints are all kept: the next ordinary
    #    checkpoint applies keep_checkpoints.
    plan.close()
    for s in list_segments(paths):
        if s < new_seg:
            try:
                _io.layer.unlink(paths.segment(s))
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise _io.io_error(exc, "unlink", paths.segment(s)) from None
    fsync_dir(paths.wal)
    return {"backup": backup, "checkpoint": ckpt_id, "documents": documents,
            "seq": plan.max_seen, "next_seq": plan.max_seen + 1, "segment": new_seg}



# ============================================================================ restore
def restore(backup: str, dest: str, *, show_progress: bool = False) -> dict[str, Any]:
    """Rebuild, at the new path ``dest``, the store a repair backup was taken of.

    Every file listed in the backup's ``REPAIR.json`` is checked against its
    recorded size and CRC-32 while it is copied (through the I/O layer) into a
    temporary directory next to ``dest``; the directory is renamed to ``dest``
    only when all of them match, so ``dest`` is either absent or complete.
    The store in place is not touched: stop the processes that use it, then
    move ``dest`` into its place.

    Raises
    ------
    InvalidInputError
        ``dest`` exists.
    CorruptionError
        The backup is incomplete (no ``REPAIR.json``: the repair failed
        before finishing it) or a file differs from what it lists.
    """
    from ._progress import progress

    backup = os.path.abspath(backup)
    dest = os.path.abspath(dest)
    index_path = os.path.join(backup, BACKUP_INDEX)
    if os.path.lexists(dest):
        raise InvalidInputError(f"{dest} exists; restore builds a new store: give a path that "
                                "does not exist yet", path=dest)
    try:
        index = json.loads(read_file(index_path, 1 << 26))
        files = index["files"]
        if not isinstance(files, dict) or "MANIFEST" not in files or not all(
                isinstance(v, list) and len(v) == 2 and all(type(x) is int for x in v)
                for v in files.values()):
            raise ValueError("no valid \"files\" listing with a MANIFEST")
    except FileNotFoundError:
        raise CorruptionError(f"{index_path}: missing; {backup} is not a complete repair "
                              "backup (the repair stopped before finishing it: the store "
                              "itself was not changed)", path=index_path, offset=0) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptionError(f"{index_path}: unreadable ({exc}); the backup cannot be "
                              "checked, so it is not restored", path=index_path,
                              offset=0) from None
    for rel in files:
        parts = rel.split("/")
        if os.path.isabs(rel) or ".." in parts or not all(parts):
            raise CorruptionError(f"{index_path}: lists {rel!r}, not a path inside the backup",
                                  path=index_path, offset=0)
    parent = os.path.dirname(dest)
    tmp = os.path.join(parent, f".tmp-restore-{os.path.basename(dest)}-{secrets.token_hex(4)}")
    _mkdir(tmp)
    try:
        dirs = sorted({os.path.dirname(r) for r in files} | {"wal", "checkpoints", "locks"})
        for d in dirs:
            if d and not os.path.isdir(os.path.join(tmp, d)):
                head = ""
                for part in d.split("/"):
                    head = os.path.join(head, part)
                    if not os.path.isdir(os.path.join(tmp, head)):
                        _mkdir(os.path.join(tmp, head))
        total = sum(v[0] for v in files.values())
        with progress(total, "restore", "B", enabled=None if show_progress else False) as bar:
            for rel, want in sorted(files.items()):
                src = os.path.join(backup, *rel.split("/"))
                if not os.path.exists(src):
                    raise CorruptionError(f"{src}: missing from the backup ({index_path} "
                                          "lists it)", path=src, offset=0)
                got = _copy_file(src, os.path.join(tmp, *rel.split("/")), bar.update)
                if got != want:
                    raise CorruptionError(
                        f"{src}: size/CRC-32 {got[0]}/{got[1]:#010x}, {BACKUP_INDEX} says "
                        f"{want[0]}/{want[1]:#010x}: the backup is damaged; nothing was "
                        "restored", path=src, offset=0)
        for d in sorted(dirs, key=lambda d: -d.count("/")):
            fsync_dir(os.path.join(tmp, d))
        try:
            _io.layer.rename(tmp, dest)
        except OSError as exc:
            raise _io.io_error(exc, "rename", dest) from None
    except BaseException:
        with contextlib.suppress(OSError, MmwalError):
            _rmtree(tmp)
        raise
    fsync_dir(parent)
    return {"backup": backup, "path": dest, "files": len(files),
            "bytes": sum(v[0] for v in files.values()),
            "checkpoint": index.get("checkpoint"), "checkpoint_seq": index.get("checkpoint_seq")}
