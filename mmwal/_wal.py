"""The write-ahead log: segments, the appender and the cursor that reads frames.

Protocol (docs/concepts.md has the full story and the crash table):

* One appender at a time holds ``locks/append.lock`` exclusively across
  "learn the tail -> write one frame with one pwrite -> publish the new tail".
* The tail (segment, end offset, last seq) lives in the shared ``tail`` file,
  mapped by every writer: O(1) to learn, checksummed, tied to the boot id, and
  never trusted over the log: when it is torn, from another boot, or a writer
  died between announcing a write and publishing it (the *pending* word), the
  next writer rebuilds it by scanning the newest segment.
* Bytes past the last valid frame are garbage no reader ever accepted.  The
  writer whose rescan finds them seals the segment and rolls to a new one
  (Appender._rebuild); only if it fails between publishing its rescan and the
  roll does the next frame go over them.  Nothing is ever truncated.
"""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, overload

from . import _format as F
from . import _io
from ._fsutil import Paths, atomic_write, boot_id, fsync_dir, list_segments, write_all
from ._lock import FileLock
from .errors import CorruptionError, InvalidInputError, PoisonedError, StorageIOError

__all__ = ["Appender", "LogCursor", "RawFrame", "RawRun", "create_segment", "read_segment_header",
           "read_tail_record"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_PENDING = struct.Struct("<Q")
PENDING_OFFSET = F.PENDING_OFFSET
_AREA = F.TAIL_AREA
_SET_PENDING = slice(PENDING_OFFSET, PENDING_OFFSET + 8)
_ONE = (1).to_bytes(8, "little")
_pack_prefix_into = F.FRAME_PREFIX.pack_into
_pack_crc_into = F.CRC_WORDS.pack_into
_payload_frame = F.payload_frame
_unpack_header = F.FRAME_HEADER.unpack_from
_FRAME_MAGIC = F.FRAME_MAGIC
# A frame header read as (magic, kind, flags, reserved) | payload length | count |
# first seq | (crc, reserved): the bulk scan's view of it.
_unpack_run_header = struct.Struct("<QIIQQ").unpack_from
assert struct.calcsize("<QIIQQ") == F.FRAME_HEADER_SIZE
_RUN_WORD = F.FRAME_MAGIC | F.KIND_ADD << 32  # kind 1, flags 0, reserved 0
_MAX_PAYLOAD = F.MAX_PAYLOAD
_crc32 = zlib.crc32


def create_segment(paths: Paths, seg_id: int, first_seq: int) -> None:
    """Create segment ``seg_id`` complete and durable before any frame goes in.

    temp name -> header -> fsync -> rename -> fsync ``wal/`` (RULES.md 9).
    """
    path = paths.segment(seg_id)
    header = F.encode_segment_header(
        F.SegmentHeader(seg_id, secrets.randbits(64), first_seq, time.time())
    )
    # rename, not replace: an existing segment must never be clobbered.
    atomic_write(path, header, replace=False)


def read_segment_header(path: str) -> F.SegmentHeader:
    io = _io.layer
    try:
        fd = io.open(path, os.O_RDONLY | _O_CLOEXEC)
    except OSError as exc:
        raise _io.io_error(exc, "open", path) from None
    try:
        raw = io.pread(fd, F.SEGMENT_HEADER_SIZE, 0)
    except OSError as exc:
        raise _io.io_error(exc, "read", path) from None
    finally:
        io.close(fd)
    return F.decode_segment_header(raw, path)


# ====================================================================== reading
def read_tail_record(paths: Paths) -> F.Tail | None:
    """The writers' tail record if it is valid for this boot (read-only), else None.

    A hint only: whoever cannot read it trusts the log alone.
    """
    io = _io.layer
    try:
        fd = io.open(paths.tail, os.O_RDONLY | _O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = io.pread(fd, F.TAIL_SIZE, 0)
    except OSError:
        return None
    finally:
        io.close(fd)
    return F.decode_tail(raw, boot_id()) if len(raw) == F.TAIL_SIZE else None


class Retired(Exception):
    """Internal: the segment the cursor needs is gone (a checkpoint retired it)."""


class _Mapped:
    """A read-only mapping of one segment, re-mapped when the file has grown."""

    __slots__ = ("fd", "header", "mm", "path", "seed", "seg_id", "size")
    header: F.SegmentHeader
    seed: int

    def __init__(self, paths: Paths, seg_id: int) -> None:
        io = _io.layer
        self.seg_id = seg_id
        self.path = paths.segment(seg_id)
        try:
            self.fd = io.open(self.path, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            raise Retired(seg_id) from None
        except OSError as exc:
            raise _io.io_error(exc, "open", self.path) from None
        self.mm: mmap.mmap | None = None
        self.size = 0
        try:
            self.grow()
            if self.mm is None:
                raise CorruptionError(f"{self.path}: empty segment file: expected a "
                                      f"{F.SEGMENT_HEADER_SIZE}-byte header",
                                      path=self.path, offset=0)
            self.header = F.decode_segment_header(self.mm[: F.SEGMENT_HEADER_SIZE], self.path)
        except BaseException:
            self.close()
            raise
        if self.header.segment_id != seg_id:
            self.close()
            raise CorruptionError(f"{self.path}: offset 16: header names segment "
                                  f"{self.header.segment_id}", path=self.path, offset=16)
        self.seed = self.header.seed

    def grow(self) -> bool:
        """Re-map if the file grew; return whether the mapping changed."""
        io = _io.layer
        try:
            size = io.fstat(self.fd).st_size
        except OSError as exc:
            raise _io.io_error(exc, "fstat", self.path) from None
        if size <= self.size:
            return False
        try:
            mm = io.mmap(self.fd, size)
        except OSError as exc:
            raise _io.io_error(exc, "mmap", self.path) from None
        # The old map may still be referenced by views handed out (memoryviews of
        # payloads); dropping our reference is enough, it closes when unused.
        self.mm = mm
        self.size = size
        return True

    def close(self) -> None:
        self.mm = None
        if self.fd >= 0:
            try:
                _io.layer.close(self.fd)
            except OSError:
                pass
            self.fd = -1


class RawFrame(NamedTuple):
    """One valid frame as the cursor found it (payload is a view into the map)."""

    kind: int
    first_seq: int
    count: int  # type: ignore[assignment]  # shadows tuple.count on purpose
    payload: memoryview
    path: str
    offset: int


class RawRun(NamedTuple):
    """Consecutive valid single-document add frames, found by a bulk scan.

    Frame ``i`` carries seq ``first_seq + i``; its payload is
    ``buf[offsets[i] + 32 : offsets[i] + 32 + lengths[i]]``.  ``buf`` is a
    view of the whole mapped segment (valid as long as the mapping is).
    """

    first_seq: int
    offsets: list[int]
    lengths: list[int]
    buf: memoryview
    path: str


#: Shortest run a bulk scan hands on as one :class:`RawRun`; shorter ones are
#: yielded frame by frame (the per-run work would cost more than it saves).
BULK_MIN = 16

RECOVERY_MODES = ("strict", "point-in-time", "skip-bad")


class LogCursor:
    """Reads valid frames in seq order from a starting segment, lock-free.

    ``mode`` is the recovery policy (RocksDB's WAL recovery modes): ``"strict"``
    (default) stops quietly at a torn tail and raises CorruptionError for a bad
    frame that has valid frames after it; ``"point-in-time"`` stops at the first
    bad frame whatever follows; ``"skip-bad"`` skips bad frames and continues
    with the next valid one (sequence numbers may then have gaps).
    ``problems`` collects what was skipped or tolerated, as (path, offset, why).
    """

    def __init__(self, paths: Paths, seg_id: int, next_seq: int, *, mode: str = "strict",
                 lock: FileLock | None = None, offset: int | None = None,
                 stop_segment: int | None = None,
                 folded: Callable[[int], bool] | None = None) -> None:
        if mode not in RECOVERY_MODES:
            from .errors import InvalidInputError

            raise InvalidInputError(f"unknown recovery mode {mode!r}; use one of {RECOVERY_MODES}",
                                    mode=mode)
        self.paths = paths
        self.mode = mode
        self.lock = lock
        self.seg_id = seg_id
        self.offset = F.SEGMENT_HEADER_SIZE if offset is None else offset
        self.next_seq = next_seq
        self.problems: list[tuple[str, int, str]] = []
        self._map: _Mapped | None = None
        self.done = False  # point-in-time stopped for good
        # Bytes per document ending an add frame's payload (its vector block,
        # 4 * dim) whose CRC-32 a caller derives (:meth:`split_crc`); 0: none.
        self.split = 0
        self._split_at: tuple[str, int, int, int] | None = None  # path, offset, tail, CRC
        # Segments from stop_segment on are not read (a checkpoint folds only
        # sealed segments and must not look at the active one, which writers
        # are appending to while it holds no lock).
        self.stop_segment = stop_segment
        # folded(seg_id): whether the current MANIFEST has moved past segment
        # seg_id (a newer checkpoint folded it).  Damage seen in a folded
        # segment is a stale view, not a fact about the store (see _stale).
        self.folded = folded

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def _check_split(self, mv: memoryview, off: int, end: int, tail: int, seed: int,
                     crc: int, path: str) -> bool:
        """The CRC check of the frame at ``off``, in two parts: the payload's last ``tail``
        bytes apart; the CRC-32 before them is kept for :meth:`split_crc`."""
        pre = _crc32(mv[off + 32 : end - tail], _crc32(mv[off : off + 24], seed))
        if _crc32(mv[end - tail : end], pre) != crc:
            return False
        self._split_at = (path, off, tail, pre)
        return True

    def split_crc(self, frame: RawFrame, tail: int) -> int | None:
        """The CRC-32 over the seed, the covered header and the payload but its last
        ``tail`` bytes, of the add frame this cursor yielded last (None: not known).

        Known when :attr:`split` times the frame's count is ``tail``: the check
        of the frame computed it on its way.  With :meth:`frame_crc`, the
        CRC-32 of those last bytes follows without reading them again.
        """
        at = self._split_at
        if at is None or at[0] != frame.path or at[1] != frame.offset or at[2] != tail:
            return None
        return at[3]

    def frame_crc(self, frame: RawFrame) -> tuple[int, int] | None:
        """``(CRC-32 over the seed and the frame's 24 covered header bytes, its CRC field)``.

        For the frame this cursor yielded last (None if it is not that one's
        segment).  The frame's CRC was checked when it was yielded: it equals
        ``zlib.crc32(payload, first)``, which lets a caller derive the CRC-32
        of a part of the payload from the CRC-32 of the rest
        (:func:`mmwal._format.crc32_combine`) instead of reading it again.
        """
        m = self._map
        if m is None or m.mm is None or m.path != frame.path:
            return None
        head = m.mm[frame.offset : frame.offset + F.FRAME_HEADER_SIZE]
        if len(head) != F.FRAME_HEADER_SIZE:
            return None
        return _crc32(head[:24], m.seed), int.from_bytes(head[24:28], "little")

    def _mapped(self) -> _Mapped:
        m = self._map
        if m is None or m.seg_id != self.seg_id:
            if m is not None:
                m.close()
            self._map = None
            m = _Mapped(self.paths, self.seg_id)
            if m.header.first_seq != self.next_seq and self.offset == F.SEGMENT_HEADER_SIZE:
                if self.mode == "skip-bad" and m.header.first_seq > self.next_seq:
                    self.problems.append((m.path, 0, f"sequence gap: segment starts at "
                                          f"{m.header.first_seq}, expected {self.next_seq}"))
                    self.next_seq = m.header.first_seq
                else:
                    m.close()
                    raise CorruptionError(
                        f"{m.path}: offset 32: segment starts at seq {m.header.first_seq}, "
                        f"expected {self.next_seq}; the log has a gap", path=m.path, offset=32)
            self._map = m
        return m

    @overload
    def frames(self) -> Iterator[RawFrame]: ...

    @overload
    def frames(self, bulk: int) -> Iterator[RawFrame | RawRun]: ...

    def frames(self, bulk: int = 0) -> Iterator[RawFrame | RawRun]:
        """Yield every valid frame from the position on; stop at the end for now.

        Raises :class:`Retired` when the current segment no longer exists.

        ``bulk`` > 0 is the bulk mode: where the next frames are valid
        single-document add frames (the same checks as frame by frame), up to
        ``bulk`` of them are scanned in one tight loop and yielded as one
        :class:`RawRun` (runs shorter than :data:`BULK_MIN` as frames); the
        position moves past the run only when the consumer asks for the next
        item.  The first frame that does not qualify is left to the
        frame-by-frame path, which reports it as without bulk mode.
        """
        if self.done or (self.stop_segment is not None and self.seg_id >= self.stop_segment):
            return
        while True:
            m = self._mapped()
            m.grow()
            mm = m.mm
            assert mm is not None
            mv = memoryview(mm)
            limit = m.size
            off = self.offset
            seed = m.seed
            path = m.path
            expect = self.next_seq
            split = self.split
            while True:
                if bulk:
                    # Single-document add frames, scanned in a loop that only
                    # collects where they are (the checks of the inlined path
                    # below, with kind 1 and count 1 required).
                    offs: list[int] = []
                    lens: list[int] = []
                    add_off, add_len = offs.append, lens.append
                    o, e = off, expect
                    stop, last = expect + bulk, limit - 32
                    while o <= last and e < stop:
                        # magic+kind+flags+reserved as one word, and the CRC with
                        # the reserved word after it (zero) as another.
                        word, n, count, first, crc_word = _unpack_run_header(mv, o)
                        end = o + 32 + n
                        if (word != _RUN_WORD or count != 1 or first != e or end > limit
                                or n > _MAX_PAYLOAD
                                or _crc32(mv[o + 32 : end], _crc32(mv[o : o + 24], seed))
                                != crc_word):
                            break
                        add_off(o)
                        add_len(n)
                        e += 1
                        o = (end + 7) & ~7
                    if len(offs) >= BULK_MIN:
                        yield RawRun(expect, offs, lens, mv, path)
                    else:
                        for fo, n in zip(offs, lens):
                            yield RawFrame(1, expect, 1, mv[fo + 32 : fo + 32 + n], path, fo)
                            expect += 1
                            self.next_seq = expect
                            self.offset = (fo + 32 + n + 7) & ~7
                    expect = e
                    self.next_seq = e
                    off = o
                    self.offset = o
                    if e == stop:
                        continue  # a whole run: the next one starts here, not frame by frame
                # The common case inlined (the same checks as F.check_frame, which
                # runs below whenever anything is off, to say what and why).
                if off + 32 <= limit:
                    magic, kind, flags, res, n, count, first, crc, res2 = _unpack_header(mv, off)
                    end = off + 32 + n
                    if (magic == _FRAME_MAGIC and first == expect and end <= limit
                            and n <= _MAX_PAYLOAD and not (flags or res or res2)
                            and (kind == 1 or (count == 1 and kind in (2, 3)))
                            and 1 <= count <= max(n, 1)
                            and (_crc32(mv[off + 32 : end], _crc32(mv[off : off + 24], seed))
                                 == crc if not split or kind != 1 or count * split > n
                                 else self._check_split(mv, off, end, count * split, seed, crc,
                                                        path))):
                        yield RawFrame(kind, first, count, mv[off + 32 : end], path, off)
                        expect = first + count
                        self.next_seq = expect
                        off = (end + 7) & ~7
                        self.offset = off
                        continue
                status, kind, count, n, nxt, why = F.check_frame(mv, off, limit, seed, expect)
                if status != F.FRAME_OK:
                    break
                yield RawFrame(kind, expect, count, mv[off + 32 : off + 32 + n], path, off)
                expect += count
                self.next_seq = expect
                off = nxt
                self.offset = off
            # Not a valid continuing frame at ``off``: move on, wait, or complain.
            next_exists, next_continues = self._next_segment_state()
            if next_continues:
                if status == F.FRAME_BAD or off < limit:
                    self.problems.append((m.path, off, "torn tail before the next segment"))
                if self.stop_segment is not None and self.seg_id + 1 >= self.stop_segment:
                    return
                self.seg_id += 1
                self.offset = F.SEGMENT_HEADER_SIZE
                continue
            # (A next segment created since the look above is found by the next
            # refresh; _settle re-checks under the lock whenever we do not return.)
            if (status == F.FRAME_END and off >= limit and not next_exists
                    and not self._tail_claims_more(m, off)):
                if not os.path.exists(m.path):
                    # Our segment was unlinked while mapped: a checkpoint retired
                    # it (and maybe the next ones), so "no next segment" does not
                    # mean "nothing written yet".  The caller moves to the newer
                    # checkpoint the MANIFEST names.
                    raise Retired(self.seg_id)
                return  # nothing written here yet
            # A next segment that exists but does not continue the sequence (damaged
            # header, gap) is not "the end for now": returning here silently dropped
            # every later segment.  _settle re-checks under the lock (a writer may
            # have appended and rolled since we mapped) and reports it.
            if not self._settle(m, off, why):
                return
            # _settle found the bytes valid now (a writer just finished): go on.

    def _next_segment_state(self) -> tuple[bool, bool]:
        """(whether segment seg_id+1 exists, whether it continues the sequence)."""
        path = self.paths.segment(self.seg_id + 1)
        if not os.path.exists(path):
            return False, False
        try:
            h = read_segment_header(path)
        except CorruptionError:
            return True, False
        except StorageIOError as exc:
            if exc.errno == errno.ENOENT:
                return False, False  # retired since the look above
            # Not a fact about the log (EIO, EMFILE, EACCES...): said as it is,
            # never as "does not continue the sequence", a corruption report.
            raise
        return True, h.first_seq == self.next_seq

    def _next_segment_continues(self) -> bool:
        return self._next_segment_state()[1]

    def _settle(self, m: _Mapped, off: int, why: str) -> bool:
        """Decide what invalid bytes at ``off`` are; True if a valid frame is there now.

        Lock-free readers see half-written frames (RULES.md 20): look again
        under a shared append lock, when no writer is mid-write.
        """
        lock = self.lock
        if lock is not None:
            lock.acquire_shared()
        try:
            m.grow()
            assert m.mm is not None
            mv = memoryview(m.mm)
            status, _k, _c, _n, _nxt, why = F.check_frame(mv, off, m.size, m.seed, self.next_seq)
            if status == F.FRAME_OK:
                return True
            if self._next_segment_continues():
                return True  # frames() moves to it
            committed = self._committed_beyond(m, mv, off)
            # Before calling it damage, make sure the view is current: a slow
            # cursor whose segment (and its successors) a checkpoint folded and
            # retired meanwhile finds "no next segment" and the tail record far
            # ahead - evidence about a log it is no longer reading.  Checked
            # after the evidence was gathered: retirement follows the MANIFEST
            # replace, so a MANIFEST read now reflects any retirement seen above.
            if committed is not None and self._stale(m):
                raise Retired(self.seg_id)
        finally:
            if lock is not None:
                lock.release_slow()
        if committed is None:
            return False  # torn, unacknowledged tail: the end for now
        if self.mode == "strict":
            raise CorruptionError(
                f"{m.path}: offset {off}: invalid frame ({why}) followed by committed data "
                f"({committed}); run `mmwal verify` and see `mmwal repair`",
                path=m.path, offset=off)
        self.problems.append((m.path, off, f"{why}; {committed}"))
        if self.mode == "point-in-time":
            self.done = True
            return False
        # skip-bad: continue at the next valid frame in this segment, if any.
        nxt = _find_valid_frame(mv, off + F.FRAME_ALIGN, m.size, m.seed)
        if nxt is None:
            if os.path.exists(self.paths.segment(self.seg_id + 1)):
                h = read_segment_header(self.paths.segment(self.seg_id + 1))
                self.seg_id += 1
                self.offset = F.SEGMENT_HEADER_SIZE
                self.next_seq = h.first_seq
                return True
            return False
        self.offset, self.next_seq = nxt
        return True

    def _stale(self, m: _Mapped) -> bool:
        """Whether segment ``m`` is no longer part of the current log.

        True when its file was unlinked or replaced (a checkpoint retired it;
        the mapping outlives the name) or the MANIFEST has moved past it.
        """
        try:
            st = os.stat(m.path)
            mine = os.fstat(m.fd)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # cannot tell: report what was found
        if (st.st_ino, st.st_dev) != (mine.st_ino, mine.st_dev):
            return True
        return self.folded is not None and self.folded(m.seg_id)

    def _tail_record(self) -> F.Tail | None:
        return read_tail_record(self.paths)

    def _tail_claims_more(self, m: _Mapped, off: int) -> bool:
        """At the end of the file: does the tail record say frames exist past ``off``?

        A writer publishes its new end only after its pwrite returned, and files
        never shrink, so a record read *before* an fstat can never claim more
        than the fstat shows - unless the segment was cut short (damage).
        """
        t = self._tail_record()
        if t is None or t.segment != m.seg_id or t.end <= off:
            return False
        m.grow()
        return m.size < t.end

    def _committed_beyond(self, m: _Mapped, mv: memoryview, off: int) -> str | None:
        """Evidence that acknowledged data follows ``off``, or None."""
        t = self._tail_record()
        if t is not None:
            if t.segment > m.seg_id:
                return f"the tail record is in segment {t.segment}"
            if t.segment == m.seg_id and t.end > off:
                return f"the tail record ends at offset {t.end}"
            if t.segment == m.seg_id:
                return None  # the writers' own record says the log ends here
        found = _find_valid_frame(mv, off + F.FRAME_ALIGN, m.size, m.seed)
        if found is not None:
            return f"a valid frame at offset {found[0]}"
        if os.path.exists(self.paths.segment(m.seg_id + 1)):
            return f"segment {m.seg_id + 1} exists but does not continue the sequence"
        return None


def _find_valid_frame(mv: Any, start: int, limit: int, seed: int) -> tuple[int, int] | None:
    """The first (offset, first_seq) of a frame with a valid checksum at or after ``start``."""
    magic = F.FRAME_MAGIC.to_bytes(4, "little")
    data: Any = mv.obj if isinstance(mv, memoryview) else mv
    pos = start
    while True:
        pos = data.find(magic, pos, limit)
        if pos < 0:
            return None
        if pos % F.FRAME_ALIGN == 0 and pos + F.FRAME_HEADER_SIZE <= limit:
            seq = F.FRAME_HEADER.unpack_from(mv, pos)[6]
            if F.check_frame(mv, pos, limit, seed, seq)[0] == F.FRAME_OK:
                return pos, seq
        pos += 1


# ====================================================================== writing
class Appender:
    """The writing side of the log for one Store object in one process."""

    def __init__(self, paths: Paths, lock: FileLock, segment_bytes: int) -> None:
        self.paths = paths
        self.lock = lock
        self.segment_bytes = segment_bytes
        self.boot = boot_id()
        io = _io.layer
        self._io = io
        self._pwrite = io.pwrite
        try:
            self._tail_fd = io.open(paths.tail, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
            # The tail is a hint that is never fsynced: after a power loss it may
            # be short or missing.  Growing it is safe for other mappers
            # (shrinking would not be); its contents are validated on use.
            if io.fstat(self._tail_fd).st_size < F.TAIL_FILE_SIZE:
                io.ftruncate(self._tail_fd, F.TAIL_FILE_SIZE)
            self._tail = io.mmap(self._tail_fd, F.TAIL_FILE_SIZE, write=True)
        except OSError as exc:
            raise _io.io_error(exc, "open", paths.tail) from None
        self._seg_id = -1
        self._seg_fd = -1
        self._seed = 0
        self._old_fds: list[tuple[int, int]] = []
        self.poisoned: StorageIOError | None = None  # set by a failed fsync
        # Held across "look up a segment descriptor -> fdatasync it", so that
        # _use_segment never closes a descriptor a syncing thread is using.
        self._fd_lock = threading.Lock()
        self._raw = b""  # the tail area this appender last wrote or read and trusted
        self._cur = F.Tail(0, 0, 0, 0, 0, 0)  # its decoded fields

    # -------------------------------------------------------------- tail record
    def _read_tail(self) -> F.Tail:
        """The trusted tail, rebuilding it if needed.  Caller holds the append lock."""
        raw = self._tail[:_AREA]
        if raw == self._raw:  # what we last published or trusted, pending clear
            return self._cur
        pending = _PENDING.unpack_from(raw, PENDING_OFFSET)[0]
        t = F.decode_tail(raw, self.boot)
        if t is None or pending or t.pending:
            t = self._rebuild(t)
            self._publish(t)
        else:
            self._raw = raw
            self._cur = t
        return t

    def _publish(self, t: F.Tail) -> None:
        raw = F.encode_tail(self.boot, t)  # includes a cleared pending word
        self._tail[:_AREA] = raw
        self._raw = raw
        self._cur = t

    def _rebuild(self, old: F.Tail | None) -> F.Tail:
        """Find the true end of the log by scanning the newest segment (bounded).

        Runs under the append lock after a crash or reboot.  The scan is strict:
        damage with valid frames after it raises CorruptionError rather than
        letting the next frame overwrite acknowledged data.  When bytes follow
        the last valid frame (a torn write), the segment is sealed and a fresh
        one started: its new salt guarantees that no leftover byte can ever
        validate, and nothing another process may have mapped is rewritten.
        """
        segs = list_segments(self.paths)
        if not segs:
            raise CorruptionError(f"{self.paths.wal}: no log segment; the store is damaged "
                                  "(run `mmwal verify`)", path=self.paths.wal, offset=0)
        self._remove_temp_segments()
        newest = segs[-1]
        if old is not None and old.segment == newest:
            # The record was right up to its end; a writer may have added one
            # frame after it (adopted here) before dying.
            start, next_seq = old.end, old.last_seq + 1
            synced = (old.synced_segment, old.synced_end)
        else:
            h = read_segment_header(self.paths.segment(newest))
            start, next_seq = F.SEGMENT_HEADER_SIZE, h.first_seq
            synced = (newest, 0)  # unknown: the next durable writer fsyncs
        cur = LogCursor(self.paths, newest, next_seq, offset=start, mode="strict")
        try:
            for _ in cur.frames():
                pass
        finally:
            cur.close()
        t = F.Tail(newest, cur.offset, cur.next_seq - 1, 0, *synced)
        try:
            size = self._io.stat(self.paths.segment(newest)).st_size
        except OSError as exc:
            raise _io.io_error(exc, "stat", self.paths.segment(newest)) from None
        if size > t.end:
            self._publish(t)
            if t.segment != self._seg_id:
                self._use_segment(t.segment)
            t = self._roll(t)
        return t

    def remove_temp_segments(self) -> None:
        """Delete ``wal/.tmp-*`` left by rolls that died (takes the append lock)."""
        self.lock.acquire_exclusive()
        try:
            self._remove_temp_segments()
        finally:
            self.lock.release()

    def _remove_temp_segments(self) -> None:
        """Delete ``wal/.tmp-*`` left by a roll that died; only under the append lock."""
        io = self._io
        try:
            names = [n for n in io.listdir(self.paths.wal) if n.startswith(".tmp-")]
            for name in names:
                io.unlink(os.path.join(self.paths.wal, name))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _io.io_error(exc, "unlink", self.paths.wal) from None
        if names:
            fsync_dir(self.paths.wal)

    # -------------------------------------------------------------- segment fds
    def _use_segment(self, seg_id: int) -> None:
        io = self._io
        path = self.paths.segment(seg_id)
        try:
            fd = io.open(path, os.O_WRONLY | _O_CLOEXEC)
        except OSError as exc:
            raise _io.io_error(exc, "open", path) from None
        if self._seg_fd >= 0:
            # Kept open until no thread of this process can be syncing it: a
            # syncing thread holds _fd_lock; if it does, close them later.
            self._old_fds.append((self._seg_id, self._seg_fd))
            if len(self._old_fds) > 4 and self._fd_lock.acquire(blocking=False):
                try:
                    while len(self._old_fds) > 4:
                        _sid, old = self._old_fds.pop(0)
                        try:
                            io.close(old)
                        except OSError:
                            pass
                finally:
                    self._fd_lock.release()
        self._seg_id = seg_id
        self._seg_fd = fd
        self._seed = read_segment_header(path).seed

    def fd_for(self, seg_id: int) -> int | None:
        if seg_id == self._seg_id:
            return self._seg_fd
        for sid, fd in self._old_fds:
            if sid == seg_id:
                return fd
        return None

    def _roll(self, t: F.Tail) -> F.Tail:
        """Seal segment t.segment and start the next.  Caller holds the append lock."""
        # The sealed segment's frames must be durable before the next segment
        # exists: N+1 with a continuing first_seq declares N complete, and a
        # torn N followed by N+1 would look like a gap after power loss.
        self._sync_or_poison(t.segment, "while sealing it")
        self._tail[_SET_PENDING] = _ONE
        nxt = t.segment + 1
        create_segment(self.paths, nxt, t.last_seq + 1)
        t = F.Tail(nxt, F.SEGMENT_HEADER_SIZE, t.last_seq, 0, nxt, F.SEGMENT_HEADER_SIZE)
        self._publish(t)
        self._use_segment(nxt)
        return t

    def roll(self) -> tuple[int, int]:
        """Seal the active segment (if it holds frames); return (new segment id, last seq)."""
        self.lock.acquire_exclusive()
        try:
            t = self._read_tail()
            if t.segment != self._seg_id:
                self._use_segment(t.segment)
            if t.end > F.SEGMENT_HEADER_SIZE:
                t = self._roll(t)
            return t.segment, t.last_seq
        finally:
            self.lock.release()

    def tail(self) -> F.Tail:
        """The current trusted tail (takes the append lock briefly)."""
        self.lock.acquire_exclusive()
        try:
            return self._read_tail()
        finally:
            self.lock.release()

    # -------------------------------------------------------------- append
    def append(self, kind: int, count: int, payload: bytes) -> tuple[int, int, int]:
        """Write one frame of ``payload``; return (first seq, segment id, end offset after it)."""
        frame, n = _payload_frame(payload)
        return self.append_frame(kind, count, frame, n)

    def _write(self, data: memoryview, offset: int, seg: int) -> None:
        """pwrite ``data`` at ``offset`` of our segment ``seg``: short writes continued,
        errors raised as StorageIOError.  Caller holds the append lock."""
        try:
            w = self._pwrite(self._seg_fd, data, offset)
        except OSError as exc:
            raise _io.io_error(exc, "write", self.paths.segment(seg)) from None
        if w != len(data):
            # A short write (rare on regular files): continue it, or raise.
            write_all(self._seg_fd, data[w:], offset + w, self.paths.segment(seg))

    def _sync_or_poison(self, seg: int, what: str) -> None:
        """fdatasync our segment ``seg``; a failure poisons this writer (PoisonedError).

        RULES.md 12: after a failed fsync the kernel may have dropped the dirty
        pages; a retry could "succeed" and vouch for frames that are gone.
        ``what`` says what the failure means for the caller's frames.
        """
        try:
            self._io.fdatasync(self._seg_fd)
        except OSError as exc:
            path = self.paths.segment(seg)
            self.poisoned = _io.io_error(exc, "fsync", path)
            raise PoisonedError(
                f"fsync of {path} failed {what} ({os.strerror(exc.errno or 0)}): this Store "
                "refuses further writes; close it and open a new one", err=exc.errno,
                path=path, op="fsync") from None

    def _place(self, size: int) -> tuple[F.Tail, int, int]:
        """Where ``size`` more bytes go: ``(tail record, segment, end)``, rolled if needed.

        Caller holds the append lock.  The segment named by the tail record is
        opened if it is not ours; a full one (holding a frame already) is
        sealed and the next one started.
        """
        t = self._read_tail()
        seg = t.segment
        if seg != self._seg_id:
            self._use_segment(seg)
        end = t.end
        if end + size > self.segment_bytes and end > F.SEGMENT_HEADER_SIZE:
            t = self._roll(t)
            seg, end = t.segment, t.end
        return t, seg, end

    def append_frame(self, kind: int, count: int, frame: memoryview,
                     n: int) -> tuple[int, int, int]:
        """Seal and write a frame built by ``_format.add_frame``/``payload_frame``.

        Returns (first seq, segment id, end offset after it).  The hot path of
        every write: under the lock only the 32 header bytes are filled in, the
        CRC computed over the frame in place and the frame written with one
        pwrite, with no copy of the payload.
        """
        if n > _MAX_PAYLOAD:
            raise InvalidInputError(
                f"this record encodes to {n} bytes, more than one record may hold "
                f"({_MAX_PAYLOAD}); store less content/metadata, or split the batch",
                size=n)
        size = len(frame)
        lock = self.lock
        lock.acquire_exclusive()
        try:
            t, seg, end = self._place(size)
            first = t.last_seq + 1
            # seal_frame, inlined: the header in place, the CRC over the frame.
            _pack_prefix_into(frame, 0, _FRAME_MAGIC, kind, 0, 0, n, count, first)
            _pack_crc_into(frame, 24, _crc32(frame[32 : 32 + n], _crc32(frame[:24], self._seed)),
                           0)
            tail = self._tail
            # Announce the write: a writer killed from here until the record
            # below is published leaves pending=1; the next writer rebuilds.
            tail[_SET_PENDING] = _ONE
            self._write(frame, end, seg)
            end += size
            self._publish(F.Tail(seg, end, first + count - 1, 0, t.synced_segment,
                                 t.synced_end))
            return first, seg, end
        finally:
            lock.release()

    def append_frames(self, kind: int, payloads: list[bytes],
                      ordered: bool = False) -> tuple[int, int, int]:
        """Write one single-count frame per payload, all under one hold of the lock.

        The frames take consecutive seqs and sit back to back in one segment;
        returns (first seq, segment id, end offset after the last).  Each
        frame is a record of its own.  Only the headers and CRCs are computed
        under the lock; the payloads are laid out before it.

        By default the frames go out with one pwrite: a crash can leave any
        prefix of them, and a power loss may keep a later page without an
        earlier one (the out-of-order case of docs/concepts.md, "Known
        limitations", which "os" and "interval" accept anyway).  ``ordered``
        writes and fdatasyncs them one at a time, so whatever survives a power
        loss is a prefix of the frames; the log is then durable up to the end
        and the shared synced mark says so.  A failed fdatasync poisons the
        writer, as in :meth:`_roll`.
        """
        starts: list[int] = []
        size = 0
        for p in payloads:
            n = len(p)
            if n > _MAX_PAYLOAD:
                raise InvalidInputError(
                    f"a record encodes to {n} bytes, more than one record may hold "
                    f"({_MAX_PAYLOAD})", size=n)
            starts.append(size)
            size += F.FRAME_HEADER_SIZE + ((n + 7) & ~7)
        if size > _MAX_PAYLOAD:
            raise InvalidInputError(
                f"these {len(payloads)} records encode to {size} bytes, more than one write "
                f"may hold ({_MAX_PAYLOAD}); split them into smaller calls", size=size)
        buf = bytearray(size)
        for at, p in zip(starts, payloads):
            buf[at + 32 : at + 32 + len(p)] = p
        frame = memoryview(buf)
        lock = self.lock
        lock.acquire_exclusive()
        try:
            t, seg, end = self._place(size)
            first = t.last_seq + 1
            seed = self._seed
            for i, (at, p) in enumerate(zip(starts, payloads)):
                F.seal_frame(frame[at:], kind, first + i, 1, len(p), seed)
            tail = self._tail
            tail[_SET_PENDING] = _ONE  # as append_frame: a kill from here on is seen
            pieces = ([(a, b) for a, b in zip(starts, [*starts[1:], size])] if ordered
                      else [(0, size)])
            for a, b in pieces:
                self._write(frame[a:b], end + a, seg)
                if ordered:
                    self._sync_or_poison(seg, "mid-batch (the records written before "
                                              "it are durable, the rest may not be)")
            end += size
            synced = (seg, end) if ordered else (t.synced_segment, t.synced_end)
            self._publish(F.Tail(seg, end, first + len(payloads) - 1, 0, *synced))
            return first, seg, end
        finally:
            lock.release()

    # -------------------------------------------------------------- durability
    def covered(self, seg_id: int, end: int) -> tuple[bool, int]:
        """Whether the shared synced mark covers (seg_id, end); else the end to sync to."""
        t = F.decode_tail(self._tail[: F.TAIL_SIZE], self.boot)
        if t is None:
            return False, end
        if t.synced_segment > seg_id or (t.synced_segment == seg_id and t.synced_end >= end):
            return True, end
        if t.segment > seg_id:
            return True, end  # a roll fdatasynced seg_id completely before moving on
        return False, max(end, t.end) if t.segment == seg_id else end

    def sync(self, seg_id: int, end: int) -> None:
        """Make the log durable up to (seg_id, end): group commit, outside the lock.

        fdatasync flushes every dirty page of the file, so frames of other
        writers before ``end`` are durable too; afterwards the shared synced mark
        is raised to the end read *before* the fdatasync began (frames written
        during it are not covered).  OSError propagates: the caller poisons.
        """
        ok, target = self.covered(seg_id, end)
        if ok:
            return
        with self._fd_lock:
            # Threads of this process queue here; the first one's fdatasync
            # usually covers the others (checked again before syncing).
            ok, target = self.covered(seg_id, end)
            if ok:
                return
            fd = self.fd_for(seg_id)
            if fd is None:
                # Written by other processes only (sync() of a fresh Store): open it.
                try:
                    fd = self._io.open(self.paths.segment(seg_id), os.O_WRONLY | _O_CLOEXEC)
                except FileNotFoundError:
                    return  # retired by a checkpoint, which made it durable first
                try:
                    self._io.fdatasync(fd)
                finally:
                    self._io.close(fd)
            else:
                self._io.fdatasync(fd)
        # Only the fdatasync above may raise OSError to the caller (which
        # poisons); a lock timeout from here on is a LockTimeout, not a failed
        # fsync: the data is durable, only the shared mark is not raised.
        self.lock.acquire_exclusive()
        try:
            t = F.decode_tail(self._tail[: F.TAIL_SIZE], self.boot)
            if (t is not None and not _PENDING.unpack_from(self._tail, PENDING_OFFSET)[0]
                    and (t.synced_segment, t.synced_end) < (seg_id, target)):
                t.synced_segment, t.synced_end = seg_id, target
                self._publish(t)
        finally:
            self.lock.release()

    def close(self) -> None:
        io = self._io
        for _sid, fd in self._old_fds:
            try:
                io.close(fd)
            except OSError:
                pass
        self._old_fds.clear()
        if self._seg_fd >= 0:
            try:
                io.close(self._seg_fd)
            except OSError:
                pass
            self._seg_fd = -1
        try:
            self._tail.close()
        except (BufferError, ValueError):
            pass
        try:
            io.close(self._tail_fd)
        except OSError:
            pass
