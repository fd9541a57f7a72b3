"""Fragments: immutable, memory-mappable directories of rows, and the fold that builds one.

A fragment directory ``checkpoints/<id>/`` (what a whole checkpoint was in
format 1; a version lists several, see ``_version.py``) holds (docs/format.md):

* ``embeddings.npy`` (n, dim) ``<f4``, data 64-byte aligned: any process maps it
  read-only and shares one copy in the page cache;
* ``norms.npy`` (n,) ``<f4``: L2 norm of each row (cosine and l2 search);
* ``ids.bin`` + ``ids_offsets.npy`` (n+1,) ``<u8``: row i's id is
  ``ids.bin[off[i]:off[i+1]]`` in UTF-8;
* ``index.npy`` (capacity,) ``<i8``: an open-addressing hash table id -> row,
  mapped, never rebuilt into a dict (open cost does not grow with n);
* ``docs.lz4`` + ``docs_offsets.npy``: content and metadata as msgpack, in
  lz4 frames (content checksums on) of ``chunk_documents`` rows, so one document
  is read by decompressing one chunk;
* ``DESCRIPTOR``: every file with its size and CRC-32, plus the counts.

A checkpoint folds the sealed log into ONE new fragment of the documents
added or replaced since the previous version (:func:`fold`); older fragments
are never rewritten, their dead rows go to deletion vectors.  A compaction
copies live rows of several fragments into one, streaming them in bounded
chunks with ``pread``/``write`` (not through a writable map, so resident
memory stays bounded) and checking every source file's CRC-32 as it goes
(:func:`_copy_prev`).  Only the ids touched since the previous version are
held in memory, bounded by the checkpoint thresholds.
"""

from __future__ import annotations

import functools
import hashlib
import io as _stdio
import itertools
import math
import mmap
import operator
import os
import secrets
import sys
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import lz4.frame
import numpy as np

from . import _format as F
from . import _io
from ._fsutil import Paths, read_file, write_all
from ._search import ann, colfile
from ._search import where as where_
from ._types import Config
from ._wal import LogCursor, RawFrame
from .errors import CorruptionError, FormatVersionError

if TYPE_CHECKING:
    from ._version import VersionView

__all__ = ["CheckpointView", "FoldResult", "fold", "list_checkpoints"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_EMPTY = -1
#: Rows copied per step when streaming the previous checkpoint.
COPY_ROWS = 16384
#: Bytes a file being built grows by between two hints to start its writeback.
WRITEBACK_BYTES = 8 << 20
#: Largest index partition (slots); bounds the memory of the index build.
PARTITION_SLOTS = 1 << 20
#: Probes past occupied slots the index build may spend per row before it gives
#: up on a hash.  Linear probing at load <= 1/2 needs about 1.5 per row with
#: well-spread hashes; ids crafted to collide under CRC-32 need up to n per row
#: (quadratic), and more of them than a partition has slots never end.
PROBE_BUDGET = 8
#: Random keys tried, one after another, once CRC-32 exceeded its budget.
KEYED_ATTEMPTS = 3
HASH_CRC32 = "crc32"
HASH_KEYED = "blake2b-32"

FILES = ("embeddings.npy", "norms.npy", "ids.bin", "ids_offsets.npy", "index.npy",
         "docs.lz4", "docs_offsets.npy")


_second = operator.itemgetter(1)
#: Vector blocks of at least this many rows are written as they are (one write
#: each, straight from the mapped log); smaller ones are joined first.
_BLOCK_ROWS = 64
#: Unaligned vector blocks up to this size are copied to aligned memory before
#: their norms are computed (faster than numpy's buffered pass over them).
_ALIGN_BYTES = 4 << 20
#: Documents a fold hands to the fragment builder at once.
_FOLD_STEP = 4096
#: Log segments whose add records a fold keeps as views of their mappings
#: (every mapping holds a file descriptor and a memory map): the add records of
#: later segments are read again, one segment at a time, when they are written.
_HELD_SEGMENTS = 32


def hash_id(b: bytes, key: bytes | None = None) -> int:
    """The 32-bit hash of an id's UTF-8 bytes used by the index.

    CRC-32 without a key; with one (an index built over ids that collide under
    CRC-32), keyed BLAKE2b with a 4-byte digest read little-endian.
    """
    if key is None:
        return zlib.crc32(b)
    return int.from_bytes(hashlib.blake2b(b, digest_size=4, key=key).digest(), "little")


def row_norms(block: np.ndarray) -> np.ndarray:
    """Euclidean norms of float32 rows.

    Summed in float32 (what a checkpoint's norms are; within the writers'
    norm limit, 2**62, a square cannot overflow), and again in float64 when
    a row's sum did overflow (a vector written before that limit existed).
    """
    sq: np.ndarray = np.einsum("ij,ij->i", block, block)
    if not np.isfinite(sq).all():
        sq = np.einsum("ij,ij->i", block, block, dtype=np.float64)
    out: np.ndarray = np.sqrt(sq).astype(np.float32, copy=False)
    return out


@functools.lru_cache(maxsize=256)
def npy_header(dtype: str, shape: tuple[int, ...]) -> bytes:
    """The exact ``.npy`` v1.0 header numpy writes (data 64-byte aligned)."""
    buf = _stdio.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def list_checkpoints(paths: Paths) -> list[int]:
    try:
        names = _io.layer.listdir(paths.checkpoints)
    except FileNotFoundError:
        return []
    except OSError as exc:  # e.g. checkpoints/ is not a directory: typed, like list_segments
        raise _io.io_error(exc, "listdir", paths.checkpoints) from None
    return sorted(int(n) for n in names if len(n) == 8 and n.isdigit())


# ============================================================================ reading
class CheckpointView:
    """One checkpoint, mapped read-only.  Open cost is independent of its size."""

    def __init__(self, paths: Paths, ckpt_id: int, dim: int) -> None:
        self.id = ckpt_id
        self.dir = paths.checkpoint(ckpt_id)
        dpath = os.path.join(self.dir, "DESCRIPTOR")
        try:
            raw = read_file(dpath, F.MAX_MANIFEST_BODY + 64)
        except FileNotFoundError:
            raise CorruptionError(
                f"{dpath}: missing; the manifest names checkpoint {ckpt_id}, whose directory "
                "is incomplete (run `mmwal verify`)", path=dpath, offset=0) from None
        except OSError as exc:
            raise _io.io_error(exc, "read", dpath) from None
        d = F.decode_manifest(raw, dpath, F.DESCRIPTOR_MAGIC, F.DESCRIPTOR_FIELDS)
        self.descriptor = d
        n = self.count = d["count"]
        self.seq: int = d["seq"]
        self.chunk_docs: int = d["chunk_documents"]
        self.max_chunk: int = d["max_chunk_bytes"]
        self.capacity: int = d["index_capacity"]
        self.partitions: int = d["index_partitions"]
        if d["dim"] != dim or d["id"] != ckpt_id or self.chunk_docs < 1:
            raise CorruptionError(f"{dpath}: describes checkpoint {d['id']} of dim {d['dim']}, "
                                  f"expected {ckpt_id} of dim {dim}", path=dpath,
                                  offset=F.MANIFEST_HEADER.size)
        cap, parts = self.capacity, self.partitions
        if (n and (cap < n or cap & (cap - 1) or parts < 1 or parts & (parts - 1)
                   or cap % parts or cap > 1 << 32)):
            raise CorruptionError(f"{dpath}: index geometry {cap}/{parts} impossible for "
                                  f"{n} rows", path=dpath,
                                  offset=F.MANIFEST_HEADER.size)
        self.part_slots = cap // parts if n else 1
        self._shift = 32 - (parts.bit_length() - 1)
        self._hash_key = _descriptor_hash_key(d, dpath)
        files = d["files"]
        self._sizes: dict[str, int] = {}
        for name in FILES:
            meta = files.get(name)
            if (not isinstance(meta, list) or len(meta) != 2
                    or not all(type(x) is int for x in meta)):
                raise CorruptionError(f"{dpath}: no valid entry for {name}", path=dpath,
                                      offset=F.MANIFEST_HEADER.size)
            self._sizes[name] = meta[0]  # checked as each file is opened (_open_file)
        self.nchunks = d["chunks"]
        if self.nchunks != (n + self.chunk_docs - 1) // self.chunk_docs:
            raise CorruptionError(f"{dpath}: {self.nchunks} chunks for {n} rows", path=dpath,
                                  offset=F.MANIFEST_HEADER.size)
        self.embeddings = self._npy("embeddings.npy", "<f4", (n, dim))
        self.norms = self._npy("norms.npy", "<f4", (n,))
        self.id_offsets = self._npy("ids_offsets.npy", "<u8", (n + 1,))
        self.index = self._npy("index.npy", "<i8", (cap if n else 0,))
        self.doc_offsets = self._npy("docs_offsets.npy", "<u8", (self.nchunks + 1,))
        self.ids_bin = self._map("ids.bin")
        # Item access for the lookups: a memoryview of the mapped little-endian
        # words reads an int in ~50 ns where numpy's memmap __getitem__ takes
        # ~700 ns (a Reader opening over a long tail looks up every new id).
        self._ix: Any = self.index
        self._offs: Any = self.id_offsets
        if sys.byteorder == "little":
            ix: Any = np.ascontiguousarray(self.index)
            offs: Any = np.ascontiguousarray(self.id_offsets)
            self._ix = memoryview(ix).cast("B").cast("q")
            self._offs = memoryview(offs).cast("B").cast("Q")
        self.docs = self._map("docs.lz4")
        self._chunk_cache: dict[int, list[Any]] = {}
        # Metadata columns for filters: columns.bin mapped, or built from the
        # documents (fragments written before it existed), on first filtered
        # search (_snapshot.checkpoint_columns); an error mapping the file.
        self.where_columns: Any = None
        self.columns_error: str | None = None
        # The mapped approximate index, when the fragment has one (opened on first use).
        self.ann = ann.open_index(self)

    def _open(self, path: str) -> int:
        """Open a file of this checkpoint; a missing one is a CorruptionError.

        A checkpoint retired by a newer one while it is being opened looks
        like this too: the caller re-reads the MANIFEST before reporting it.
        """
        try:
            return _io.layer.open(path, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            raise CorruptionError(f"{path}: missing from checkpoint {self.id}", path=path,
                                  offset=0) from None
        except OSError as exc:
            raise _io.io_error(exc, "open", path) from None

    def _open_file(self, name: str) -> tuple[int, str, int]:
        """Open file ``name`` of this checkpoint: ``(fd, path, size)``, its size checked.

        One open and one fstat per file: the size must be what the descriptor
        says (a missing file or another size is a CorruptionError).
        """
        path = os.path.join(self.dir, name)
        fd = self._open(path)
        try:
            size = _io.layer.fstat(fd).st_size
        except OSError as exc:
            _io.layer.close(fd)
            raise _io.io_error(exc, "stat", path) from None
        want = self._sizes[name]
        if size != want:
            _io.layer.close(fd)
            raise CorruptionError(
                f"{path}: {size} bytes, the descriptor says {want}; the checkpoint is "
                "damaged (run `mmwal verify`)", path=path, offset=min(size, want))
        return fd, path, size

    def _npy(self, name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        header = npy_header(dtype, shape)
        fd, path, size = self._open_file(name)
        try:
            want = len(header) + math.prod(shape) * np.dtype(dtype).itemsize
            if size != want:
                raise CorruptionError(f"{path}: {size} bytes, expected {want} for "
                                      f"{dtype}{list(shape)}", path=path, offset=0)
            got = _io.layer.pread(fd, len(header), 0)
            if got != header:
                raise CorruptionError(f"{path}: offset 0: .npy header is not the expected "
                                      f"{dtype}{list(shape)} header", path=path, offset=0)
            if want == len(header):
                arr = np.empty(shape, dtype=dtype)
            else:
                # Map the whole file and view past the header (64-byte aligned):
                # the same np.memmap np.load(mmap_mode="r") gives, built on our
                # own (fault-injectable) mapping.
                mm = _io.layer.mmap(fd, want)
                arr = np.ndarray.__new__(np.memmap, shape, dtype=np.dtype(dtype), buffer=mm,
                                         offset=len(header), order="C")
                arr._mmap = mm
                arr.filename = path
                arr.offset = len(header)
                arr.mode = "r"
        except OSError as exc:
            raise _io.io_error(exc, "mmap", path) from None
        finally:
            _io.layer.close(fd)
        arr.flags.writeable = False
        return arr

    def _map(self, name: str) -> Any:
        fd, path, size = self._open_file(name)
        try:
            if size == 0:
                return b""
            return _io.layer.mmap(fd, size)
        except OSError as exc:
            raise _io.io_error(exc, "mmap", path) from None
        finally:
            _io.layer.close(fd)

    # ------------------------------------------------------------------ lookups
    def _corrupt(self, name: str, what: str, offset: int = 0) -> CorruptionError:
        path = os.path.join(self.dir, name)
        return CorruptionError(f"{path}: offset {offset}: {what}; run `mmwal verify`",
                               path=path, offset=offset)

    def id_bytes(self, row: int) -> bytes:
        off = self._offs
        a, b = int(off[row]), int(off[row + 1])
        if not a <= b <= len(self.ids_bin) or b - a > F.MAX_ID_BYTES:
            raise self._corrupt("ids_offsets.npy", f"id {row} spans {a}..{b}", 128 + 8 * row)
        return bytes(self.ids_bin[a:b])

    def id_at(self, row: int) -> str:
        try:
            return self.id_bytes(row).decode("utf-8")
        except UnicodeDecodeError:
            raise self._corrupt("ids.bin", f"id of row {row} is not UTF-8") from None

    def lookup(self, key: bytes) -> int:
        """The row of the id with UTF-8 bytes ``key``, or -1."""
        n = self.count
        if not n:
            return -1
        h = hash_id(key, self._hash_key)
        slots = self.part_slots
        base = (h >> self._shift) * slots if self.partitions > 1 else 0
        mask = slots - 1
        slot = h & mask
        index = self._ix
        for _ in range(slots):
            row = int(index[base + slot])
            if row == _EMPTY:
                return -1
            if not 0 <= row < n:
                raise self._corrupt("index.npy", f"slot {base + slot} holds row {row}",
                                    128 + 8 * (base + slot))
            if self.id_bytes(row) == key:
                return row
            slot = (slot + 1) & mask
        return -1

    def lookup_many(self, keys: list[bytes]) -> np.ndarray:
        """:meth:`lookup` of many ids at once: their rows (int64), -1 where absent.

        Hashes, slot positions and index reads run as array operations, one
        probe step for all keys at a time; only the ids found in a slot are
        compared, and they are compared as array steps too (:meth:`_same_ids`).
        An id that is not stored usually ends at its first probe (an empty
        slot), so new ids cost almost nothing.
        """
        k = len(keys)
        out = np.full(k, -1, dtype=np.int64)
        n = self.count
        if not n or not k:
            return out
        key = self._hash_key
        h = np.fromiter(map(zlib.crc32, keys) if key is None
                        else (hash_id(b, key) for b in keys), dtype=np.int64, count=k)
        slots = self.part_slots
        mask = slots - 1
        base = (h >> self._shift) * slots if self.partitions > 1 else np.zeros(k, np.int64)
        slot = h & mask
        index = np.asarray(self.index)
        todo = np.arange(k)
        kcat: np.ndarray | None = None  # the keys' bytes, joined (when a slot is held)
        klen = kstart = todo
        for _ in range(slots):
            at = base[todo] + slot[todo]
            rows = index[at]
            held = rows != _EMPTY
            todo, rows, at = todo[held], rows[held], at[held]
            if not len(todo):
                break
            bad = (rows < 0) | (rows >= n)
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                raise self._corrupt("index.npy", f"slot {int(at[j])} holds row {int(rows[j])}",
                                    128 + 8 * int(at[j]))
            if kcat is None:
                klen = np.fromiter(map(len, keys), np.int64, count=k)
                kstart = np.cumsum(klen) - klen
                kcat = np.frombuffer(b"".join(keys), np.uint8)
            same = self._same_ids(rows, kcat, kstart[todo], klen[todo])
            out[todo[same]] = rows[same]
            todo = todo[~same]
            if not len(todo):
                break
            slot[todo] = (slot[todo] + 1) & mask
        return out

    def _same_ids(self, rows: np.ndarray, kcat: np.ndarray, kstart: np.ndarray,
                  klen: np.ndarray) -> np.ndarray:
        """Whether the id of row ``rows[j]`` is the key ``kcat[kstart[j]:][:klen[j]]``, each j.

        :meth:`id_bytes` ``== key`` for many rows at once: the rows' spans in
        ``ids.bin`` are read and checked as arrays, and the bytes of every
        pair of equal length compared in one pass.
        """
        offs = np.asarray(self.id_offsets)
        a, b = offs[rows], offs[rows + 1]
        bad = (a > b) | (b > len(self.ids_bin)) | (b - a > F.MAX_ID_BYTES)
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            row = int(rows[j])
            raise self._corrupt("ids_offsets.npy", f"id {row} spans {int(a[j])}..{int(b[j])}",
                                128 + 8 * row)
        a = a.astype(np.int64)
        ln = b.astype(np.int64) - a
        same: np.ndarray = ln == klen
        c = np.flatnonzero(same & (ln > 0))
        if len(c):
            lens = ln[c]
            ends = np.cumsum(lens)
            first = ends - lens
            within = np.arange(int(ends[-1])) - np.repeat(first, lens)
            stored = np.frombuffer(self.ids_bin, np.uint8)
            eq = stored[np.repeat(a[c], lens) + within] == kcat[np.repeat(kstart[c], lens)
                                                                 + within]
            same[c] = np.logical_and.reduceat(eq, first)
        return same

    def id_block(self, start: int, k: int) -> list[bytes]:
        """The UTF-8 ids of rows ``start .. start+k-1``: one slice of ``ids.bin``."""
        offs = np.asarray(self.id_offsets[start : start + k + 1]).astype(np.int64)
        lens = np.diff(offs)
        if (len(offs) != k + 1 or offs[0] < 0 or offs[-1] > len(self.ids_bin)
                or (k and (lens.min() < 0 or lens.max() > F.MAX_ID_BYTES))):
            raise self._corrupt("ids_offsets.npy", f"ids of rows {start}..{start + k - 1} "
                                "have impossible offsets", 128 + 8 * start)
        base = int(offs[0])
        blob = bytes(self.ids_bin[base : int(offs[-1])])
        rel = (offs - base).tolist()
        return [blob[rel[i] : rel[i + 1]] for i in range(k)]

    def doc_block(self, start: int, k: int) -> list[list[Any]]:
        """[content, metadata] of rows ``start .. start+k-1``, one chunk decode each."""
        out: list[list[Any]] = []
        c = self.chunk_docs
        row = start
        end = start + k
        while row < end:
            chunk = self.chunk(row // c)
            first = row % c
            take = min(end - row, len(chunk) - first)
            out.extend(chunk[first : first + take])
            row += take
        return out

    def chunk(self, k: int) -> list[Any]:
        """The decoded [content, metadata] pairs of chunk ``k`` (cached, small LRU)."""
        cache = self._chunk_cache
        got = cache.get(k)
        if got is not None:
            return got
        a, b = int(self.doc_offsets[k]), int(self.doc_offsets[k + 1])
        if not a <= b <= len(self.docs):
            raise self._corrupt("docs_offsets.npy", f"chunk {k} spans {a}..{b}", 128 + 8 * k)
        rows = min(self.chunk_docs, self.count - k * self.chunk_docs)
        got = decode_chunk(bytes(self.docs[a:b]), self.max_chunk, rows,
                           os.path.join(self.dir, "docs.lz4"), a)
        if len(cache) >= 8:
            # Threads share this view (every snapshot of the checkpoint does):
            # two may evict at once, so neither may rely on the other's key.
            try:
                cache.pop(next(iter(cache)), None)
            except (StopIteration, RuntimeError):
                pass
        cache[k] = got
        return got

    def doc(self, row: int) -> tuple[str, dict[str, Any] | None]:
        content, meta = self.chunk(row // self.chunk_docs)[row % self.chunk_docs]
        return content, meta


def _descriptor_hash_key(d: dict[str, Any], dpath: str) -> bytes | None:
    """The index key of a descriptor: None for CRC-32 (every version-1 descriptor)."""
    name = d.get("hash", HASH_CRC32)
    if name == HASH_CRC32:
        return None
    if name != HASH_KEYED:
        raise FormatVersionError(f"{dpath}: index hash {name!r} is unknown to this mmwal; "
                                 "upgrade mmwal to open it", path=dpath, hash=name)
    key = d.get("hash_key")
    if type(key) is not bytes or not 1 <= len(key) <= 64:
        raise CorruptionError(f"{dpath}: index hash {name!r} without a valid 'hash_key'",
                              path=dpath, offset=F.MANIFEST_HEADER.size)
    return key


def decode_chunk(data: bytes, limit: int, rows: int, path: str, offset: int) -> list[Any]:
    """Decompress and decode one docs chunk, allocating at most ``limit`` bytes."""
    try:
        d = lz4.frame.LZ4FrameDecompressor()
        raw = d.decompress(data, max_length=limit + 1)
        if not d.eof or len(raw) > limit or d.unused_data:
            raise ValueError("chunk larger than recorded, truncated or followed by junk")
    except (RuntimeError, ValueError, OSError) as exc:
        raise CorruptionError(f"{path}: offset {offset}: docs chunk does not decompress "
                              f"({exc}); run `mmwal verify`", path=path, offset=offset) from None
    obj = F._unpack(raw, path, offset)
    if not isinstance(obj, list) or len(obj) != rows or not all(
        isinstance(x, list) and len(x) == 2 and type(x[0]) is str
        and (x[1] is None or type(x[1]) is dict) for x in obj
    ):
        raise CorruptionError(f"{path}: offset {offset}: docs chunk does not hold {rows} "
                              "[content, metadata] pairs", path=path, offset=offset)
    # The limits writers keep (str keys, nesting), checked as for log records.
    why = F.metas_problem([x[1] for x in obj])
    if why:
        raise CorruptionError(f"{path}: offset {offset}: docs chunk holds {why}", path=path,
                              offset=offset)
    return obj


# ============================================================================ building
class _Stream:
    """A file written sequentially, with its running size and CRC-32."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.size = 0
        self.crc = 0
        self.flushed = 0  # bytes before this offset were handed to start_writeback
        try:
            self.fd = _io.layer.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC,
                                     0o644)
        except OSError as exc:
            raise _io.io_error(exc, "open", path) from None

    def write(self, data: Any, crc: int | None = None) -> None:
        """Append ``data``; ``crc``, when given, is ``zlib.crc32(data)`` known already."""
        mv = memoryview(data).cast("B")
        write_all(self.fd, mv, self.size, self.path)
        n = len(mv)
        self.crc = zlib.crc32(mv, self.crc) if crc is None else F.crc32_combine(self.crc, crc, n)
        self.size += n
        if self.size - self.flushed >= WRITEBACK_BYTES:
            # Start writing back what is written so far: the fsync at the end
            # then has little left to wait for.
            _io.layer.start_writeback(self.fd, self.flushed, self.size - self.flushed)
            self.flushed = self.size

    def finish(self) -> list[int]:
        try:
            _io.layer.fsync(self.fd)
        except OSError as exc:
            raise _io.io_error(exc, "fsync", self.path) from None
        finally:
            _io.layer.close(self.fd)
            self.fd = -1
        return [self.size, self.crc]

    def abort(self) -> None:
        if self.fd >= 0:
            try:
                _io.layer.close(self.fd)
            except OSError:
                pass
            self.fd = -1

    def rewind(self) -> None:
        """Write again from offset 0 (the file is private to the build: unpublished)."""
        self.size = 0
        self.crc = 0
        self.flushed = 0


class _Builder:
    """Streams rows into the files of a new checkpoint in ``tmpdir``."""

    def __init__(self, tmpdir: str, n: int, dim: int, chunk_docs: int, level: int,
                 config: Config | None = None) -> None:
        self.config = config  # for the ANN index (Config.ann_*); None: no index
        self.dir = tmpdir
        self.n, self.dim, self.chunk_docs, self.level = n, dim, chunk_docs, level
        self.streams: dict[str, _Stream] = {}
        for name in ("embeddings.npy", "norms.npy", "ids.bin", "ids_offsets.npy", "docs.lz4",
                     "docs_offsets.npy"):
            self.streams[name] = _Stream(os.path.join(tmpdir, name))
        self.nchunks = (n + chunk_docs - 1) // chunk_docs
        s = self.streams
        s["embeddings.npy"].write(npy_header("<f4", (n, dim)))
        s["norms.npy"].write(npy_header("<f4", (n,)))
        s["ids_offsets.npy"].write(npy_header("<u8", (n + 1,)))
        s["docs_offsets.npy"].write(npy_header("<u8", (self.nchunks + 1,)))
        s["ids_offsets.npy"].write(np.zeros(1, "<u8"))
        s["docs_offsets.npy"].write(np.zeros(1, "<u8"))
        self.rows = 0
        self.id_pos = 0
        self.columns = where_.ColumnBuilder()  # the metadata columns (columns.bin)
        self.pending: list[Any] = []
        self.max_chunk = 0
        self.hashes: list[np.ndarray] = []  # CRC-32 of the ids added, per add call
        self._align_buf: np.ndarray | None = None  # (_aligned)

    def add(self, ids: list[bytes], vecs: np.ndarray, docs: list[list[Any]]) -> None:
        """Append rows: UTF-8 ids, a (k, dim) float32 block, [content, metadata] pairs
        (decoded: every metadata a dict or None)."""
        if not ids:
            return
        self._add_vectors([vecs])
        self._add_ids(ids)
        self.columns.add_plain(list(map(_second, docs)))
        self._add_docs(docs)

    def add_columns(self, metas: list[Any]) -> bool:
        """The metadata columns of rows :meth:`add_blocks` adds (the same rows, in order;
        decoded: every metadata a dict or None).

        Returns True when the metadata turned out flat on the way (nil or maps
        of str keys without arrays or maps as values: nothing for
        ``F.metas_problem`` to refuse), False when that is not known.
        """
        return self.columns.add_plain(metas)

    def add_blocks(self, ids: list[bytes], blocks: list[np.ndarray], contents: list[str],
                   metas: list[Any], crcs: list[int | None] | None = None,
                   hashes: list[np.ndarray] | None = None) -> None:
        """Append rows: UTF-8 ids, their vectors as (k_i, dim) float32 blocks, in order
        (views of the mapped log are written as they are, never copied), and their
        contents and metadatas; their metadata columns go through :meth:`add_columns`.
        ``crcs[i]``, when not None, is the CRC-32 of block i's bytes, and
        ``hashes`` the CRC-32 of the ids (uint32 arrays, in order): known already."""
        if not ids:
            return
        self._add_vectors(blocks, crcs)
        self._add_ids(ids, hashes)
        self._add_docs(zip(contents, metas))  # (a pair packs as the same msgpack array)

    def _add_vectors(self, blocks: list[np.ndarray], crcs: list[int | None] | None = None,
                     ) -> None:
        """Write vector blocks and their norms: large blocks one by one, small ones joined."""
        emb = self.streams["embeddings.npy"]
        norms: list[np.ndarray] = []
        small: list[np.ndarray] = []

        def put(v: np.ndarray, crc: int | None = None) -> None:
            if v.dtype != np.dtype("<f4") or not v.flags.c_contiguous:
                v = np.ascontiguousarray(v, dtype="<f4")
                crc = None
            elif (not v.flags.aligned and v.nbytes <= _ALIGN_BYTES
                  and v.shape[-1] <= np.getbufsize()):
                # A view of the log at any offset: numpy sums an unaligned block
                # through small buffered copies; one copy to aligned memory costs
                # less (the same bytes, the same norms).  Not for rows wider than
                # numpy's buffer: summed in pieces unaligned, their norms may
                # differ in the last bit from the aligned ones.
                v = self._aligned(v)
            emb.write(v, crc)
            norms.append(row_norms(v))  # as the Reader's tail computes them

        for i, v in enumerate(blocks):
            if len(v) >= _BLOCK_ROWS:
                if small:
                    put(small[0] if len(small) == 1 else np.concatenate(small))
                    small.clear()
                put(v, None if crcs is None else crcs[i])
            else:
                small.append(v)
        if small:
            put(small[0] if len(small) == 1 else np.concatenate(small))
        self.streams["norms.npy"].write(norms[0] if len(norms) == 1 else np.concatenate(norms))

    def _aligned(self, v: np.ndarray) -> np.ndarray:
        """``v`` (C-contiguous float32, at most :data:`_ALIGN_BYTES`) copied to aligned
        memory the builder reuses: valid until the next call."""
        if self._align_buf is None:
            self._align_buf = np.empty(_ALIGN_BYTES // 4, dtype="<f4")
        out: np.ndarray = self._align_buf[: v.size].reshape(v.shape)
        np.copyto(out, v)
        return out

    def _add_ids(self, ids: list[bytes], hashes: list[np.ndarray] | None = None) -> None:
        k = len(ids)
        lens = np.fromiter(map(len, ids), dtype="<u8", count=k)
        self.streams["ids_offsets.npy"].write(np.cumsum(lens, dtype="<u8")
                                              + np.uint64(self.id_pos))
        joined = b"".join(ids)
        self.streams["ids.bin"].write(joined)
        # The CRC-32 of every id, for the index (build_index).
        if hashes is None:
            self.hashes.append(np.fromiter(map(zlib.crc32, ids), dtype=np.uint32, count=k))
        else:
            self.hashes.extend(hashes)
        self.id_pos += len(joined)
        self.rows += k

    def _add_docs(self, docs: Iterable[Any]) -> None:
        self.pending.extend(docs)
        c = self.chunk_docs
        if len(self.pending) >= c:
            pending = self.pending
            full = len(pending) - len(pending) % c
            self._flush_chunks([pending[i : i + c] for i in range(0, full, c)])
            del pending[:full]

    def _flush_chunks(self, chunks: list[list[Any]]) -> None:
        """Write full chunks of documents: each packed and compressed, all in one write
        (and their end offsets in one)."""
        comps = []
        for docs in chunks:
            raw = F.pack(docs)
            self.max_chunk = max(self.max_chunk, len(raw))
            comps.append(lz4.frame.compress(raw, compression_level=self.level,
                                            content_checksum=True, store_size=True))
        s = self.streams
        lz = s["docs.lz4"]
        ends = np.cumsum(np.fromiter(map(len, comps), dtype="<u8", count=len(comps)),
                         dtype="<u8") + np.uint64(lz.size)
        lz.write(comps[0] if len(comps) == 1 else b"".join(comps))
        s["docs_offsets.npy"].write(ends)

    def finish(self, ckpt_id: int, seq: int) -> dict[str, Any]:
        if self.pending:
            self._flush_chunks([self.pending])
            self.pending = []
        if self.rows != self.n:
            raise AssertionError(f"checkpoint build wrote {self.rows} rows, planned {self.n}")
        files = {name: st.finish() for name, st in self.streams.items()}
        crc = np.concatenate(self.hashes) if self.hashes else np.empty(0, np.uint32)
        self.hashes = []
        ix = build_index(self.dir, self.n, crc)
        files["index.npy"] = ix.meta
        files[colfile.COLUMNS_FILE] = colfile.write(
            os.path.join(self.dir, colfile.COLUMNS_FILE), self.columns.finish(), self.n)
        self.columns = where_.ColumnBuilder()
        ann_meta = None
        cfg = self.config
        if cfg is not None and cfg.ann_min_rows and self.n >= cfg.ann_min_rows and ann.available():
            emb = np.load(os.path.join(self.dir, "embeddings.npy"), mmap_mode="r")
            ann_meta, files[ann.ANN_FILE] = ann.build(self.dir, emb, cfg)
            del emb
        # A keyed index is version 2: a version-1 reader, which would look ids
        # up with CRC-32 and silently miss them, refuses it (FormatVersionError).
        version = F.FORMAT_VERSION if ix.key is None else F.DESCRIPTOR_KEYED_VERSION
        body = {
            "format": version, "id": ckpt_id, "seq": seq, "dim": self.dim,
            "count": self.n, "created": time.time(), "chunk_documents": self.chunk_docs,
            "chunks": self.nchunks, "max_chunk_bytes": self.max_chunk,
            "index_capacity": ix.capacity, "index_partitions": ix.partitions,
            "hash": HASH_CRC32 if ix.key is None else HASH_KEYED,
            "files": files,
        }
        if ix.key is not None:
            body["hash_key"] = ix.key
        if ann_meta is not None:
            body["ann"] = ann_meta
        body["columns"] = {"file": colfile.COLUMNS_FILE}
        dpath = os.path.join(self.dir, "DESCRIPTOR")
        st = _Stream(dpath)
        st.write(F.encode_manifest(body, F.DESCRIPTOR_MAGIC, version))
        st.finish()
        return body

    def abort(self) -> None:
        for st in self.streams.values():
            st.abort()


def index_geometry(n: int) -> tuple[int, int]:
    """(capacity, partitions) of the id index for ``n`` rows: load factor <= 1/2."""
    cap = 8
    while cap < 2 * n:
        cap <<= 1
    parts = max(1, cap // PARTITION_SLOTS)
    return cap, parts


def _iter_ids(dirpath: str, n: int) -> Iterator[tuple[int, list[bytes]]]:
    """(first row, ids) in chunks, read back from a checkpoint being built."""
    with open(os.path.join(dirpath, "ids_offsets.npy"), "rb") as fo, \
            open(os.path.join(dirpath, "ids.bin"), "rb") as fb:
        hdr = len(npy_header("<u8", (n + 1,)))
        for start in range(0, n, COPY_ROWS):
            k = min(COPY_ROWS, n - start)
            fo.seek(hdr + 8 * start)
            offs = np.frombuffer(fo.read(8 * (k + 1)), dtype="<u8")
            base = int(offs[0])
            fb.seek(base)
            blob = fb.read(int(offs[-1]) - base)
            rel = (offs - base).tolist()
            yield start, [blob[rel[i]:rel[i + 1]] for i in range(k)]


class IndexBuild(NamedTuple):
    """What :func:`build_index` wrote: geometry, file entry, hash key, probes spent."""

    capacity: int
    partitions: int
    meta: list[int]
    key: bytes | None  # None: CRC-32
    probes: int  # occupied slots passed, over every attempt


def build_index(dirpath: str, n: int, crc: np.ndarray | None = None) -> IndexBuild:
    """Write ``index.npy``: one partition at a time.

    Ends for any ids, in at most ``(1 + KEYED_ATTEMPTS)`` attempts of at most
    ``PROBE_BUDGET * n + 64`` probes each: CRC-32 first (what every reader
    knows), then, if the ids collide under it (crafted: CRC-32 is linear), a
    keyed hash with a fresh random key, which the ids cannot have been built
    against.  Ordinary ids never leave CRC-32, so their index is unchanged.
    ``crc``: the CRC-32 of every id in row order, when the caller has them
    (else, as for a keyed hash, the ids are read back from ``dirpath``).
    """
    path = os.path.join(dirpath, "index.npy")
    st = _Stream(path)
    try:
        if n == 0:
            st.write(npy_header("<i8", (0,)))
            return IndexBuild(0, 1, st.finish(), None, 0)
        cap, parts = index_geometry(n)
        budget = PROBE_BUDGET * n + 64
        spent = 0
        keys = [None] + [secrets.token_bytes(16) for _ in range(KEYED_ATTEMPTS)]
        for key in keys:
            h = crc if key is None and crc is not None and len(crc) == n else \
                _id_hashes(dirpath, n, key)
            probes = _fill_index(st, h, cap, parts, budget)
            spent += min(probes, budget + 1)
            if probes <= budget:
                return IndexBuild(cap, parts, st.finish(), key, spent)
            st.rewind()
        # Only identical ids collide under every key: the ids are not unique.
        raise CorruptionError(
            f"{path}: the id index of {n} rows did not fit in {budget} probes with CRC-32 "
            f"nor with {KEYED_ATTEMPTS} random keys: the ids being checkpointed are not "
            "unique; run `mmwal verify`", path=path, offset=0)
    except BaseException:
        st.abort()
        raise


def _id_hashes(dirpath: str, n: int, key: bytes | None) -> np.ndarray:
    """:func:`hash_id` of every id of the fragment being built, in row order (uint32)."""
    out = np.empty(n, dtype=np.uint32)
    hf: Callable[[bytes], int] = zlib.crc32 if key is None else (lambda b: hash_id(b, key))
    for start, ids in _iter_ids(dirpath, n):
        out[start : start + len(ids)] = np.fromiter(map(hf, ids), dtype=np.uint32,
                                                    count=len(ids))
    return out


def _fill_index(st: _Stream, h: np.ndarray, cap: int, parts: int, budget: int) -> int:
    """Write the table of the hashes ``h`` (row order); the probes spent (> budget: not written).

    The table is exactly the one inserting the rows in row order with linear
    probing gives (docs/format.md, "Index"), built with array operations:
    which slots end up occupied, and how many probes pass each slot (the
    carry), do not depend on the order of insertion, so they are computed
    first (:func:`_carry`), and with them the total of probes, checked
    against ``budget`` before anything is placed.  A row alone at its home
    slot with nothing carried into it sits there whatever the order and is
    never passed by another row's probes; only the other rows are placed one
    by one, in row order.
    """
    slots = cap // parts
    mask = slots - 1
    hv = h.astype(np.int64)
    if parts > 1:
        part = hv >> (32 - (parts.bit_length() - 1))
        order = np.argsort(part, kind="stable")  # grouped by part, row order within
        bounds = np.searchsorted(part[order], np.arange(parts + 1)).tolist()
    else:
        order = None
        bounds = [0, len(hv)]

    def part_rows(p: int) -> tuple[np.ndarray, np.ndarray]:
        rows = (np.arange(len(hv), dtype=np.int64) if order is None
                else order[bounds[p] : bounds[p + 1]])
        return rows, hv[rows] & mask

    # Every part's probes first: an index over the budget is abandoned unwritten.
    total = 0
    carried: tuple[np.ndarray, np.ndarray] | None = None  # of the only part
    for p in range(parts):
        rows, home = part_rows(p)
        if len(rows) >= slots:  # no empty slot left: never fits, or only by luck
            if len(rows) > slots:
                return budget + 1
            got = _place_in_order(rows, home, slots, budget - total)
            if got is None:
                return budget + 1
            total += got[1]
        else:
            c = _carry(home, slots)
            total += int(c[1].sum())
            if parts == 1:
                carried = c
        if total > budget:
            return budget + 1
    st.write(npy_header("<i8", (cap,)))
    for p in range(parts):
        rows, home = part_rows(p)
        if len(rows) >= slots:
            got = _place_in_order(rows, home, slots, budget)
            assert got is not None  # (it fitted above)
            table = got[0]
        else:
            counts, carry = carried if carried is not None else _carry(home, slots)
            # alone: the only row at its home slot, and no probe carried into it
            # (none passes the slot before).
            alone = (counts[home] == 1) & (carry[(home - 1) & mask] == 0)
            table = np.full(slots, _EMPTY, dtype="<i8")
            table[home[alone]] = rows[alone]
            rest = ~alone
            if rest.any():
                _place_groups(table, rows[rest], home[rest], carry, slots)
        st.write(table)
    return total


def _carry(home: np.ndarray, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows per home slot, probes that pass each slot) of linear probing in one part.

    The probes passing slot ``s`` are the rows whose home is at or before
    ``s`` and that end after it: ``w[s] = max(0, w[s-1] + count[s] - 1)``
    around the part.  Fewer rows than slots: some slot stays empty, where
    ``w`` is 0, so the recurrence started at 0 and run twice around the part
    is exact on the second round (Lindley's recurrence, as a cumulative sum).
    """
    counts = np.bincount(home, minlength=slots)
    # (int32: |partial sums| <= 2 * slots + rows, both below 2**31 here)
    x = np.empty(2 * slots, dtype=np.int32)
    x[:slots] = counts
    x[slots:] = counts
    x -= 1
    cs = np.cumsum(x, out=x)
    w = cs[slots:]
    low = np.minimum.accumulate(cs)[slots:]
    np.minimum(low, 0, out=low)
    w -= low
    return counts, w


def _place_groups(table: np.ndarray, rows: np.ndarray, home: np.ndarray, carry: np.ndarray,
                  slots: int) -> None:
    """Place ``rows`` (ascending) in ``table`` as inserting them one by one in row order
    with linear probing does, in a part with fewer rows than slots.

    ``carry`` is :func:`_carry`'s for every row of the part; ``rows`` are the
    ones not alone (:func:`_fill_index`), whose probes never enter the slot
    of an alone row.  A row's probes stay within its group: the rows whose
    homes run on, in home order, while probes pass from each home into the
    next (``carry`` of the slot before it is not 0, around the part).  Rows
    of different groups never meet, so each round places the next row, in
    row order, of every group at once, its probe steps as array steps.
    """
    mask = slots - 1
    n = len(rows)
    by_home = np.argsort(home, kind="stable")
    hs = home[by_home]
    new = np.empty(n, dtype=np.bool_)  # a group starts here (in home order)
    new[0] = True
    np.logical_and(hs[1:] != hs[:-1], carry[hs[1:] - 1] == 0, out=new[1:])
    group_sorted = np.cumsum(new) - 1
    if carry[(hs[0] - 1) & mask] > 0:  # the first group goes on from the last (around)
        group_sorted[group_sorted == 0] = group_sorted[-1]
    group = np.empty(n, dtype=np.int64)
    group[by_home] = group_sorted
    order = np.argsort(group, kind="stable")  # by group, rows ascending within one
    g = group[order]
    starts = np.flatnonzero(np.concatenate(([True], g[1:] != g[:-1])))
    sizes = np.diff(np.append(starts, n))
    taken = np.zeros(slots, dtype=np.bool_)
    for k in range(int(sizes.max())):
        at = order[starts[sizes > k] + k]  # the k-th row of every group that has one
        pos = home[at]
        while len(at):
            busy = taken[pos]
            free = pos[~busy]
            taken[free] = True
            table[free] = rows[at[~busy]]
            at = at[busy]
            pos = (pos[busy] + 1) & mask


def _place_in_order(rows: np.ndarray, home: np.ndarray, slots: int, budget: int,
                    ) -> tuple[np.ndarray, int] | None:
    """Insert ``rows`` (ascending) at ``home`` by linear probing, one by one.

    Returns (the part's table, the probes that passed an occupied slot), or
    None once they exceed ``budget``.
    """
    mask = slots - 1
    taken: dict[int, int] = {}
    left = budget
    for r, h in zip(rows.tolist(), home.tolist()):
        slot = h
        while slot in taken:
            left -= 1
            if left < 0:
                return None
            slot = (slot + 1) & mask
        taken[slot] = r
    table = np.full(slots, _EMPTY, dtype="<i8")
    if taken:
        table[np.fromiter(taken, dtype=np.int64, count=len(taken))] = np.fromiter(
            taken.values(), dtype=np.int64, count=len(taken))
    return table, budget - left


# ============================================================================ folding
class FoldResult(NamedTuple):
    """What :func:`fold` found and wrote: the new fragment, the rows that died, a clear."""

    body: dict[str, Any] | None  # the new fragment's descriptor; None: no live new rows
    dead: np.ndarray  # global rows of ``prev`` that the folded records killed (sorted)
    cleared: bool  # a clear among the records: every row of ``prev`` is dead


def fold(paths: Paths, dim: int, prev: VersionView | None, start_seg: int, end_seg: int,
         first_seq: int, last_seq: int, tmpdir: str, frag_id: int, config: Config,
         *, frames: Callable[[], Iterable[Any]] | None = None, seq_as: int | None = None,
         ) -> FoldResult:
    """Fold the log after ``prev`` up to ``last_seq``: a new fragment and the rows that die.

    The new fragment (built in ``tmpdir``) holds only the documents added or
    replaced since ``prev`` and still live, in the order of their last write;
    the rows of ``prev`` that a later record replaced or removed are returned,
    never rewritten.  The cost follows the records folded, not the store.

    ``frames`` (a callable returning an iterable of frames, called once)
    replaces reading segments [start_seg, end_seg), and ``seq_as`` is the
    seq the fragment is recorded at when it is not ``last_seq``: both are
    for ``mmwal repair``, which folds the frames it salvaged and publishes them
    at the highest seq ever used, so that no seq is handed out twice.
    """
    seq = last_seq if seq_as is None else seq_as
    if frames is not None:
        return _fold(paths, dim, prev, first_seq, last_seq, tmpdir, frag_id, config,
                     frames(), None, True, seq)
    # Always strict, whatever Config.recovery says: a checkpoint retires the
    # segments it folds, so a salvage mode here would discard acknowledged
    # records for good, silently.  Salvage is `mmwal repair`, which reports.
    def cursor(seg_id: int, next_seq: int, offset: int | None = None) -> LogCursor:
        c = LogCursor(paths, seg_id, next_seq, mode="strict", offset=offset,
                      stop_segment=end_seg)
        c.split = 4 * dim  # (the vector blocks' CRC-32: _block_crc)
        return c

    cur = cursor(start_seg, first_seq)
    try:
        return _fold(paths, dim, prev, first_seq, last_seq, tmpdir, frag_id, config,
                     cur.frames(), cur, False, seq, cursor)
    finally:
        cur.close()


def _fold(paths: Paths, dim: int, prev: VersionView | None, first_seq: int, last_seq: int,
          tmpdir: str, frag_id: int, config: Config, source: Iterable[Any],
          cur: LogCursor | None, salvaged: bool, seq_as: int,
          reread: Callable[[int, int, int], LogCursor] | None = None) -> FoldResult:
    """:func:`fold` of the frames of ``source`` (read from ``cur`` unless ``salvaged``).

    ``reread(segment id, seq, offset)`` opens a cursor on the same log at a
    frame already read: for the add records of the segments after the first
    :data:`_HELD_SEGMENTS`, which are not kept as views (None: all are).
    """
    # The one read of the log: every frame CRC-checked (by the cursor), its
    # fixed fields and ids decoded and checked once.  An add record is kept as
    # views of the mapped log (its vector block and its encoded documents;
    # the mappings stay alive while viewed), so nothing is read, CRC-checked
    # or decoded twice, and only the ids are held in memory.  Each mapping
    # holds a file descriptor: past _HELD_SEGMENTS segments the records keep
    # no view and are read again (and checked again) when written.
    adds: list[_Add] = []
    held: set[str] = set()  # segments whose mappings records keep
    spill = False  # from here on, records keep no view (read again)
    # In seq order: add records, (seq, id) of removes, None for a clear: what
    # the final state of each id is computed from unless ``simple``.
    ops: list[_Add | tuple[int, bytes] | None] = []
    # The common case: only adds, every id once (checked below).  Every
    # document added is then live at the end, in seq order.
    simple = True
    added = 0
    cleared = False
    seq = first_seq - 1
    for frame in source:
        if frame.first_seq > last_seq:
            break
        if not salvaged and frame.first_seq != seq + 1:
            raise CorruptionError(
                f"{frame.path}: offset {frame.offset}: frame starts at seq {frame.first_seq}, "
                f"expected {seq + 1}; the checkpoint does not drop records: run `mmwal verify` "
                "and see `mmwal repair`", path=frame.path, offset=frame.offset)
        if frame.kind == F.KIND_ADD:
            _ts, ids, vectors, docs = F.add_parts(frame.count, frame.payload, dim, frame.path,
                                                  frame.offset)
            crc = None
            big = frame.count >= _BLOCK_ROWS  # (its block is written as it is)
            seg_id = -1
            if cur is not None and not spill and frame.path not in held:
                if len(held) < _HELD_SEGMENTS:
                    held.add(frame.path)
                else:
                    spill = True
            if spill:
                assert cur is not None
                seg_id = cur.seg_id  # (the segment of the frame it yielded last)
                vectors = docs = None  # read again when written
            elif big and cur is not None:
                crc = _block_crc(cur, frame, vectors)
            rkeys = list(map(str.encode, ids))  # (decoded from UTF-8: no lone surrogates)
            rec = _Add(frame.first_seq, rkeys,
                       np.fromiter(map(zlib.crc32, rkeys), dtype=np.uint32, count=len(rkeys))
                       if big else None,  # (small records: hashed by the builder, in bulk)
                       vectors, docs, frame.path, frame.offset, crc, seg_id)
            adds.append(rec)
            ops.append(rec)
            added += len(rkeys)
        elif frame.kind == F.KIND_REMOVE:
            body = F.decode_payload(frame.kind, frame.count, frame.payload, dim, frame.path,
                                    frame.offset)
            ops.append((frame.first_seq, body[1].encode("utf-8")))
            simple = False
        else:
            F.decode_payload(frame.kind, frame.count, frame.payload, dim, frame.path,
                             frame.offset)
            ops.append(None)
            cleared = True
            simple = False
        seq = frame.first_seq + frame.count - 1
    if seq != last_seq:
        raise CorruptionError(
            f"{paths.wal}: the sealed log ends at seq {seq}, the checkpoint needs {last_seq}; "
            "nothing was published: run `mmwal verify` and see `mmwal repair`",
            path=paths.wal, offset=0)
    touched: dict[bytes, int] | None = None
    all_keys: list[bytes] | None = None
    if simple:
        all_keys = list(itertools.chain.from_iterable(rec.keys for rec in adds))
        simple = _distinct(all_keys, [rec.hashes for rec in adds])
    if simple:
        n = added
    else:
        all_keys = None
        touched = _final_state(ops)
        n = sum(1 for t in touched.values() if t > 0)
    del ops
    dead = np.empty(0, dtype=np.int64)
    if prev is not None and not cleared and prev.count:
        try:
            rows = prev.lookup_many(all_keys if all_keys is not None else list(touched or ()))
        except CorruptionError as exc:
            for part in prev.parts:
                check_files(part.view)  # name the damaged file when its checksum can
            raise exc from None
        dead = np.unique(rows[rows >= 0])
    del all_keys
    if not n:
        return FoldResult(None, dead, cleared)
    b = _Builder(tmpdir, n, dim, config.chunk_documents, config.metadata_compression_level,
                 config)
    again: _Reread | None = None  # the second read of the records kept without views
    try:
        # The live delta documents, in the seq order of their last write: the
        # documents of every add record decoded and checked (as the log reader
        # checks them), handed to the builder a few thousand at a time
        # (single-document records one by one cost a round of file writes and
        # array work each), the vector blocks as views of the log.
        keys: list[bytes] = []
        hashes: list[np.ndarray] | None = []  # None: some records' are not known
        blocks: list[np.ndarray] = []
        crcs: list[int | None] = []
        contents: list[str] = []
        metas: list[Any] = []
        columns: list[Any] = []  # metadata of kept rows whose columns are not added yet

        def add_columns() -> None:
            nonlocal columns
            if columns:
                b.add_columns(columns)
                columns = []

        def hand_over() -> None:
            nonlocal keys, hashes, blocks, crcs, contents, metas
            add_columns()
            if keys:
                b.add_blocks(keys, blocks, contents, metas, crcs, hashes)
                keys, hashes, blocks, crcs, contents, metas = [], [], [], [], [], []

        for kept in adds:
            rec = kept
            if rec.seg >= 0:  # not kept as views: read it again
                if again is None:
                    assert reread is not None
                    again = _Reread(reread(rec.seg, rec.first, rec.offset))
                if again.moves_to(rec):
                    hand_over()  # the views of the segment before go out first
                rec = again.read(rec, dim)
            first = rec.first
            count = len(rec.keys)
            big = rec.hashes is not None
            # A large record's metadata is checked (F.metas_problem) below: the
            # metadata columns prove most metadata flat on their way.
            c, m = F.decode_docs(rec.docs, count, rec.path, rec.offset, check_metadata=not big)
            vecs = np.frombuffer(rec.vectors, dtype="<f4").reshape(count, dim)
            pick = None
            if touched is not None:
                seqs = list(map(touched.get, rec.keys))
                if seqs != list(range(first, first + count)):
                    pick = [j for j, s in enumerate(seqs) if s == first + j]
            if pick is None and rec.hashes is not None:  # a large record, all of it kept
                hand_over()  # (the rows before these first)
                if not b.add_columns(m):
                    _check_metas(m, rec)
                b.add_blocks(rec.keys, [vecs], c, m, [rec.crc], [rec.hashes])
                continue
            # Small records (and what is kept of large ones) go in batches.
            if big:
                _check_metas(m, rec)
            rkeys, rhashes, crc = rec.keys, rec.hashes, rec.crc
            if pick is not None:  # only the rows whose write is the id's last
                rkeys = [rkeys[i] for i in pick]
                rhashes = None if rhashes is None else rhashes[pick]
                vecs, crc = vecs[pick], None
                c = [c[i] for i in pick]
                m = [m[i] for i in pick]
            if rkeys:
                columns.extend(m)
                keys.extend(rkeys)
                if hashes is not None and rhashes is not None:
                    hashes.append(rhashes)
                else:
                    hashes = None
                blocks.append(vecs)
                crcs.append(crc)
                contents.extend(c)
                metas.extend(m)
            if len(keys) >= _FOLD_STEP:
                hand_over()
        hand_over()
        del adds
        if again is not None:
            again.close()
            again = None
        return FoldResult(b.finish(frag_id, seq_as), dead, cleared)
    except BaseException:
        b.abort()
        raise
    finally:
        if again is not None:
            again.close()


class _Add(NamedTuple):
    """An add record of the log being folded: its ids, vector block and encoded documents."""

    first: int  # seq of its first document
    keys: list[bytes]  # the ids, UTF-8
    hashes: np.ndarray | None  # their CRC-32 (uint32), for the index (None: not yet)
    vectors: Any  # count * dim little-endian float32 (a view of the mapped log, or bytes)
    docs: Any  # the encoded contents and metadatas, checked by F.decode_docs when used
    path: str
    offset: int
    crc: int | None  # zlib.crc32 of ``vectors``, when known without reading them
    seg: int  # the id of the segment it is in, when it is read again (else -1)


def _block_crc(cur: LogCursor, frame: Any, vectors: Any) -> int | None:
    """The CRC-32 of the vector block ``vectors`` of the add frame ``cur`` yielded last.

    The vector block ends the payload, whose CRC-32 the cursor checked: the
    block's own CRC-32 follows from that of the bytes before it, so the
    fragment file that receives the block is not read a second time for its
    checksum.  None when it cannot be derived (not a view of the payload).
    """
    if not isinstance(vectors, memoryview):
        return None
    got = cur.frame_crc(frame)
    if got is None:
        return None
    payload = frame.payload
    nv = len(vectors)
    pre = cur.split_crc(frame, nv)  # (the cursor's check computed it: LogCursor.split)
    if pre is None:
        pre = zlib.crc32(payload[: len(payload) - nv], got[0])
    return F.crc32_combine(pre, 0, nv) ^ got[1]


class _Reread:
    """The second read of the add records a fold did not keep as views, in seq order."""

    def __init__(self, cur: LogCursor) -> None:
        self.cur = cur
        self.frames: Iterator[RawFrame] = cur.frames()
        self.path = ""  # the segment of the record read last

    def moves_to(self, rec: _Add) -> bool:
        """Whether ``rec`` is in another segment than the record read before it."""
        return rec.path != self.path

    def read(self, rec: _Add, dim: int) -> _Add:
        """``rec`` with its views, from the frame read again (CRC-checked by the cursor)."""
        self.path = rec.path
        for frame in self.frames:
            if frame.first_seq < rec.first:
                continue  # a remove or a clear (the records before were kept as views)
            if (frame.first_seq != rec.first or frame.kind != F.KIND_ADD
                    or frame.path != rec.path or frame.offset != rec.offset):
                break
            _ts, ids, vectors, docs = F.add_parts(frame.count, frame.payload, dim, frame.path,
                                                  frame.offset)
            if list(map(str.encode, ids)) != rec.keys:
                break
            crc = _block_crc(self.cur, frame, vectors) if rec.hashes is not None else None
            return rec._replace(vectors=vectors, docs=docs, crc=crc)
        raise CorruptionError(
            f"{rec.path}: offset {rec.offset}: the add record of seq {rec.first} is not what "
            "the first read of the log found; nothing was published: run `mmwal verify`",
            path=rec.path, offset=rec.offset)

    def close(self) -> None:
        self.frames = iter(())  # (the suspended scan and its view of the mapping go)
        self.cur.close()


def _check_metas(metas: list[Any], rec: _Add) -> None:
    """Raise what the log reader raises for the metadata of ``rec`` if it refuses them."""
    why = F.metas_problem(metas)
    if why:
        raise F.metadata_error(why, rec.path, rec.offset)


def _distinct(keys: list[bytes], hashes: list[np.ndarray | None]) -> bool:
    """Whether ``keys`` are all different; ``hashes`` are their CRC-32, in the same order
    (per record; a set of the keys decides if a record has none).

    Keys with different hashes differ: only those that share a hash with
    another are compared (a handful, for distinct ids).
    """
    if len(keys) < 2:
        return True
    known = [h for h in hashes if h is not None]
    if len(known) != len(hashes):
        return len(set(keys)) == len(keys)
    h: np.ndarray = np.concatenate(known)
    s = np.sort(h)
    same = s[1:] == s[:-1]
    if not same.any():
        return True
    cand = np.flatnonzero(np.isin(h, s[1:][same])).tolist()
    return len({keys[i] for i in cand}) == len(cand)


def _final_state(ops: list[_Add | tuple[int, bytes] | None]) -> dict[bytes, int]:
    """Every id touched by ``ops`` -> the seq of its last write, negated for a remove.

    The dict's order is the order of the last writes; a clear forgets every id
    before it.
    """
    touched: dict[bytes, int] = {}
    for op in ops:
        if isinstance(op, _Add):
            ids = op.keys
            first = op.first
            if touched.keys().isdisjoint(ids) and len(set(ids)) == len(ids):  # all new
                touched.update(zip(ids, range(first, first + len(ids))))
            else:
                pop = touched.pop
                for i, id_ in enumerate(ids, first):
                    pop(id_, None)  # re-insert: dict order = order of last write
                    touched[id_] = i
        elif op is not None:
            rseq, rid = op
            touched.pop(rid, None)
            touched[rid] = -rseq
        else:
            touched.clear()
    return touched


class _FileCheck:
    """The CRC-32 of one file of the previous checkpoint, computed as the copy reads it.

    The copy streams the previous checkpoint a block of rows at a time; each
    file is followed to the point those rows need (``upto``), or fed the very
    bytes the copy read (``feed``), so the whole file is checked once, in
    bounded memory, and :meth:`finish` compares it with the descriptor before
    anything is published.  Without this a flipped bit would be copied into
    the new checkpoint under a fresh, valid checksum (laundered).
    """

    BLOCK = 1 << 20

    def __init__(self, prev: CheckpointView, name: str) -> None:
        self.name = name
        self.path = os.path.join(prev.dir, name)
        self.size, self.want = prev.descriptor["files"][name]
        self.pos = 0
        self.crc = 0
        try:
            self.fd = _io.layer.open(self.path, os.O_RDONLY | _O_CLOEXEC)
        except OSError as exc:
            raise _io.io_error(exc, "open", self.path) from None

    def feed(self, data: bytes) -> None:
        self.crc = zlib.crc32(data, self.crc)
        self.pos += len(data)

    def upto(self, end: int) -> None:
        end = min(max(end, self.pos), self.size)
        while self.pos < end:
            n = min(self.BLOCK, end - self.pos)
            try:
                block = _io.layer.pread(self.fd, n, self.pos)
            except OSError as exc:
                raise _io.io_error(exc, "read", self.path) from None
            if not block:
                break  # shorter than the descriptor says: finish() reports it
            self.feed(block)

    def finish(self) -> None:
        self.upto(self.size)
        if self.pos != self.size or self.crc != self.want:
            raise CorruptionError(
                f"{self.path}: CRC-32 {self.crc:#010x} over {self.pos} bytes, the descriptor "
                f"says {self.want:#010x} over {self.size}: the previous checkpoint is damaged "
                "and nothing was published (run `mmwal verify`; restore the checkpoint from a "
                "backup)", path=self.path, offset=0)

    def close(self) -> None:
        if self.fd >= 0:
            _io.layer.close(self.fd)
            self.fd = -1


def check_files(prev: CheckpointView) -> None:
    """Raise CorruptionError for the first file of ``prev`` whose CRC-32 is not recorded one."""
    for name in FILES:
        chk = _FileCheck(prev, name)
        try:
            chk.finish()
        finally:
            chk.close()


def _copy_prev(prev: CheckpointView, dropped: np.ndarray, b: _Builder) -> None:
    """Stream the previous checkpoint's surviving rows into ``b`` in bounded chunks.

    Every file of ``prev`` is checked against its descriptor CRC-32 as the
    rows stream (:class:`_FileCheck`); a mismatch raises CorruptionError
    before the new checkpoint is finished, so damage is never re-published.
    """
    checks = {name: _FileCheck(prev, name) for name in FILES}
    try:
        try:
            _copy_rows(prev, dropped, b, checks)
            for chk in checks.values():
                chk.finish()
        except CorruptionError as exc:
            # Damage that made a block undecodable: name the file whose checksum
            # says so (e.g. docs_offsets.npy rather than the docs.lz4 it misled).
            for name in FILES:
                chk = checks[name]
                if chk.pos != chk.size or chk.crc != chk.want:
                    try:
                        chk.finish()
                    except CorruptionError as named:
                        raise named from exc
            raise
    finally:
        for chk in checks.values():
            chk.close()


def _copy_rows(prev: CheckpointView, dropped: np.ndarray, b: _Builder,
               checks: dict[str, _FileCheck]) -> None:
    emb = checks["embeddings.npy"]
    n = prev.count
    hdr = len(npy_header("<f4", (n, b.dim)))
    emb.upto(hdr)
    row_bytes = 4 * b.dim
    c = prev.chunk_docs
    for start in range(0, n, COPY_ROWS):
        k = min(COPY_ROWS, n - start)
        try:
            raw = _io.layer.pread(emb.fd, k * row_bytes, hdr + start * row_bytes)
        except OSError as exc:
            raise _io.io_error(exc, "read", emb.path) from None
        if len(raw) != k * row_bytes:
            raise CorruptionError(f"{emb.path}: short read at row {start}", path=emb.path,
                                  offset=hdr + start * row_bytes)
        emb.feed(raw)  # exactly the bytes copied
        vecs = np.frombuffer(raw, dtype="<f4").reshape(k, b.dim)
        lo, hi = np.searchsorted(dropped, [start, start + k])
        keep = np.ones(k, dtype=bool)
        keep[dropped[lo:hi] - start] = False
        all_ids = prev.id_block(start, k)
        all_docs = prev.doc_block(start, k)
        # Follow the other files as far as these rows reach into them.
        end = start + k
        last_chunk = (end - 1) // c
        checks["ids_offsets.npy"].upto(128 + 8 * (end + 1))
        checks["ids.bin"].upto(int(prev.id_offsets[end]))
        checks["docs_offsets.npy"].upto(128 + 8 * (last_chunk + 2))
        checks["docs.lz4"].upto(int(prev.doc_offsets[last_chunk + 1]))
        checks["norms.npy"].upto(128 + 4 * end)
        idx = checks["index.npy"]
        idx.upto(idx.size * end // n)
        if hi > lo:
            sel = np.flatnonzero(keep).tolist()
            ids = [all_ids[i] for i in sel]
            docs = [all_docs[i] for i in sel]
            vecs = vecs[keep]
        else:
            ids, docs = all_ids, all_docs
        # Damaged rows may hold junk whose norm overflows: no warning for that,
        # the checksum check below refuses the whole checkpoint anyway.
        with np.errstate(over="ignore", invalid="ignore"):
            b.add(ids, vecs, docs)
        # Keep resident memory flat: these mapped pages are not needed again.
        _dontneed(prev.id_offsets, prev.ids_bin, prev.docs)


def _dontneed(*arrays: Any) -> None:
    """Drop our page-table entries of mapped files (the page cache keeps the data)."""
    for arr in arrays:
        base = arr
        while base is not None and not isinstance(base, mmap.mmap):
            base = getattr(base, "base", None)
        if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            try:
                base.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):
                pass


# ============================================================================ files
def remove_entry(p: str) -> None:
    """Remove a file, or a directory and what it holds; gone already is fine."""
    if os.path.isdir(p) and not os.path.islink(p):
        _rmtree(p)  # (its errors are typed already)
        return
    try:
        _io.layer.unlink(p)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _io.io_error(exc, "unlink", p) from None


def _rmtree(path: str) -> None:
    io = _io.layer
    try:
        names = io.listdir(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _io.io_error(exc, "listdir", path) from None
    for name in names:
        remove_entry(os.path.join(path, name))
    try:
        io.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _io.io_error(exc, "rmdir", path) from None


