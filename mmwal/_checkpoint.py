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
from ._wal import LogCursor
from .errors import CorruptionError, FormatVersionError

if TYPE_CHECKING:
    from ._version import VersionView

__all__ = ["CheckpointView", "FoldResult", "fold", "list_checkpoints"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_EMPTY = -1
#: Rows copied per step when streaming the previous checkpoint.
COPY_ROWS = 16384
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
#: Documents a fold hands to the fragment builder at once.
_FOLD_STEP = 4096


def hash_id(b: bytes, key: bytes | None = None) -> int:
    """The 32-bit hash of an id's UTF-8 bytes used by the index.

    CRC-32 without a key; with one (an index built over ids that collide under
    CRC-32), keyed BLAKE2b with a 4-byte digest read little-endian.
    """
    if key is None:
        return zlib.crc32(b)
    return int.from_bytes(hashlib.blake2b(b, digest_size=4, key=key).digest(), "little")


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
        try:
            self.fd = _io.layer.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC,
                                     0o644)
        except OSError as exc:
            raise _io.io_error(exc, "open", path) from None

    def write(self, data: Any) -> None:
        mv = memoryview(data).cast("B")
        write_all(self.fd, mv, self.size, self.path)
        self.crc = zlib.crc32(mv, self.crc)
        self.size += len(mv)

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
        self.pending: list[list[Any]] = []
        self.max_chunk = 0

    def add(self, ids: list[bytes], vecs: np.ndarray, docs: list[list[Any]]) -> None:
        """Append rows: UTF-8 ids, a (k, dim) float32 block, [content, metadata] pairs."""
        if not ids:
            return
        s = self.streams
        vecs = np.ascontiguousarray(vecs, dtype="<f4")
        s["embeddings.npy"].write(vecs)
        s["norms.npy"].write(np.linalg.norm(vecs, axis=1).astype("<f4"))
        lens = np.fromiter((len(b) for b in ids), dtype="<u8", count=len(ids))
        s["ids_offsets.npy"].write(np.cumsum(lens, dtype="<u8") + np.uint64(self.id_pos))
        joined = b"".join(ids)
        s["ids.bin"].write(joined)
        self.id_pos += len(joined)
        self.rows += len(ids)
        self.columns.add(list(map(_second, docs)))
        self.pending.extend(docs)
        while len(self.pending) >= self.chunk_docs:
            self._flush_chunk(self.pending[: self.chunk_docs])
            del self.pending[: self.chunk_docs]

    def _flush_chunk(self, docs: list[Any]) -> None:
        raw = F.pack(docs)
        self.max_chunk = max(self.max_chunk, len(raw))
        comp = lz4.frame.compress(raw, compression_level=self.level, content_checksum=True,
                                  store_size=True)
        s = self.streams
        s["docs.lz4"].write(comp)
        s["docs_offsets.npy"].write(np.array([s["docs.lz4"].size], dtype="<u8"))

    def finish(self, ckpt_id: int, seq: int) -> dict[str, Any]:
        if self.pending:
            self._flush_chunk(self.pending)
            self.pending = []
        if self.rows != self.n:
            raise AssertionError(f"checkpoint build wrote {self.rows} rows, planned {self.n}")
        files = {name: st.finish() for name, st in self.streams.items()}
        ix = build_index(self.dir, self.n)
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


def build_index(dirpath: str, n: int) -> IndexBuild:
    """Write ``index.npy``: one partition at a time, each in bounded memory.

    Ends for any ids, in at most ``(1 + KEYED_ATTEMPTS)`` passes of at most
    ``PROBE_BUDGET * n + 64`` probes each: CRC-32 first (what every reader
    knows), then, if the ids collide under it (crafted: CRC-32 is linear), a
    keyed hash with a fresh random key, which the ids cannot have been built
    against.  Ordinary ids never leave CRC-32, so their index is unchanged.
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
            probes = _fill_index(st, dirpath, n, cap, parts, key, budget)
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


def _fill_index(st: _Stream, dirpath: str, n: int, cap: int, parts: int, key: bytes | None,
                budget: int) -> int:
    """Write the table with ``key``; the probes spent (> budget: abandoned midway)."""
    slots = cap // parts
    shift = 32 - (parts.bit_length() - 1)
    mask = slots - 1
    hf: Callable[[bytes], int] = zlib.crc32 if key is None else (lambda b: hash_id(b, key))
    left = budget
    st.write(npy_header("<i8", (cap,)))
    for p in range(parts):
        tl = [_EMPTY] * slots  # Python list: faster per-slot access than numpy
        for start, ids in _iter_ids(dirpath, n):
            for j, b in enumerate(ids):
                h = hf(b)
                if parts > 1 and h >> shift != p:
                    continue
                slot = h & mask
                while tl[slot] != _EMPTY:
                    # Counting here bounds a full partition too: it used to spin forever.
                    left -= 1
                    if left < 0:
                        return budget + 1
                    slot = (slot + 1) & mask
                tl[slot] = start + j
        st.write(np.array(tl, dtype="<i8"))
    return budget - left


# ============================================================================ folding
def _delta_frames(paths: Paths, start_seg: int, end_seg: int, first_seq: int,
                  mode: str) -> Iterator[Any]:
    """Valid frames of segments [start_seg, end_seg): the sealed log since the checkpoint."""
    cur = LogCursor(paths, start_seg, first_seq, mode=mode, stop_segment=end_seg)
    try:
        yield from cur.frames()
    finally:
        cur.close()


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

    ``frames`` (a callable returning a fresh iterable of frames, called once per
    pass) replaces reading segments [start_seg, end_seg), and ``seq_as`` is the
    seq the fragment is recorded at when it is not ``last_seq``: both are
    for ``mmwal repair``, which folds the frames it salvaged and publishes them
    at the highest seq ever used, so that no seq is handed out twice.
    """
    def source() -> Iterable[Any]:
        if frames is not None:
            return frames()
        # Always strict, whatever Config.recovery says: a checkpoint retires the
        # segments it folds, so a salvage mode here would discard acknowledged
        # records for good, silently.  Salvage is `mmwal repair`, which reports.
        return _delta_frames(paths, start_seg, end_seg, first_seq, "strict")

    # Pass 1: the final state of every id touched since prev (bounded by the delta):
    # id -> the seq of its last write, negated for a remove.  Only ids are decoded.
    touched: dict[str, int] = {}
    cleared = False
    seq = first_seq - 1
    for frame in source():
        if frame.first_seq > last_seq:
            break
        if frames is None and frame.first_seq != seq + 1:
            raise CorruptionError(
                f"{frame.path}: offset {frame.offset}: frame starts at seq {frame.first_seq}, "
                f"expected {seq + 1}; the checkpoint does not drop records: run `mmwal verify` "
                "and see `mmwal repair`", path=frame.path, offset=frame.offset)
        if frame.kind == F.KIND_ADD:
            ids = F.decode_add_ids(frame.count, frame.payload, dim, frame.path, frame.offset)
            first = frame.first_seq
            if touched.keys().isdisjoint(ids) and len(set(ids)) == len(ids):  # all new
                touched.update(zip(ids, range(first, first + len(ids))))
            else:
                pop = touched.pop
                for i, id_ in enumerate(ids, first):
                    pop(id_, None)  # re-insert: dict order = order of last write
                    touched[id_] = i
        elif frame.kind == F.KIND_REMOVE:
            body = F.decode_payload(frame.kind, frame.count, frame.payload, dim, frame.path,
                                    frame.offset)
            touched.pop(body[1], None)
            touched[body[1]] = -frame.first_seq
        else:
            F.decode_payload(frame.kind, frame.count, frame.payload, dim, frame.path,
                             frame.offset)
            touched.clear()
            cleared = True
        seq = frame.first_seq + frame.count - 1
    if seq != last_seq:
        raise CorruptionError(
            f"{paths.wal}: the sealed log ends at seq {seq}, the checkpoint needs {last_seq}; "
            "nothing was published: run `mmwal verify` and see `mmwal repair`",
            path=paths.wal, offset=0)
    dead = np.empty(0, dtype=np.int64)
    if prev is not None and not cleared and prev.count:
        try:
            rows = prev.lookup_many([k.encode("utf-8") for k in touched])
        except CorruptionError as exc:
            for part in prev.parts:
                check_files(part.view)  # name the damaged file when its checksum can
            raise exc from None
        dead = np.unique(rows[rows >= 0])
    n = sum(1 for t in touched.values() if t > 0)
    if not n:
        return FoldResult(None, dead, cleared)
    b = _Builder(tmpdir, n, dim, config.chunk_documents, config.metadata_compression_level,
                 config)
    try:
        # Pass 2: the live delta documents, in the seq order of their last write,
        # handed to the builder a few thousand at a time (single-document records
        # one by one cost a round of file writes and array work each).
        keys: list[bytes] = []
        blocks: list[np.ndarray] = []
        docs: list[list[Any]] = []

        def hand_over() -> None:
            if keys:
                b.add(keys[:], blocks[0] if len(blocks) == 1 else np.concatenate(blocks),
                      docs[:])
                keys.clear()
                blocks.clear()
                docs.clear()

        for frame in source():
            if frame.first_seq > last_seq:
                break
            if frame.kind != F.KIND_ADD:
                continue
            body = F.decode_payload(frame.kind, frame.count, frame.payload, dim, frame.path,
                                    frame.offset)
            first = frame.first_seq
            ids = body.ids
            seqs = list(map(touched.get, ids))
            if seqs == list(range(first, first + len(ids))):  # every document kept
                keys.extend(map(str.encode, ids))
                blocks.append(body.embeddings)
                docs.extend(map(list, zip(body.contents, body.metadatas)))
            else:
                pick = [j for j, s in enumerate(seqs) if s == first + j]
                if pick:
                    keys.extend(ids[i].encode("utf-8") for i in pick)
                    blocks.append(body.embeddings[pick])
                    docs.extend([body.contents[i], body.metadatas[i]] for i in pick)
            if len(keys) >= _FOLD_STEP:
                hand_over()
        hand_over()
        return FoldResult(b.finish(frag_id, last_seq if seq_as is None else seq_as), dead,
                          cleared)
    except BaseException:
        b.abort()
        raise


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


