"""``columns.bin``: a fragment's metadata columns, written once, mapped by readers.

A checkpoint or compaction writes the scalar top-level metadata of every row
of a new fragment as the :data:`~mmwal._search.where.Columns` layout
(``where.py``), so a filter over the fragment is a vectorised numpy
expression over mapped arrays and never decompresses a document.  Layout
(docs/format.md, "Metadata columns"):

* a 24-byte header (``<8sIIQ``): magic ``MMWALCOL``, u32 format (1), u32
  length of the index, u64 rows;
* a msgpack index: ``{key: {kind: {part: [offset, dtype, count]}}}`` where
  ``kind`` is ``int``/``float``/``bool`` (parts ``values``, ``present``),
  ``str`` (parts ``codes``, ``dict_offsets`` (``<u8``, d+1) and ``dict_blob``
  (``|u1``, the sorted distinct strings' UTF-8 bytes, concatenated)) or
  ``other`` (part ``present``);
* the arrays, each starting at a 64-byte aligned offset.

The file is listed in the DESCRIPTOR with its size and CRC-32; a reader
checks the CRC-32 once before it maps the file (columns are small: about
nine bytes per row and key) and validates every offset, dtype and count
against the file's size, so a damaged file is a CorruptionError, never an
allocation or a read out of bounds.
"""

from __future__ import annotations

import bisect
import os
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from .. import _io
from ..errors import CorruptionError
from . import where as where_

__all__ = ["COLUMNS_FILE", "load", "write"]

COLUMNS_FILE = "columns.bin"
MAGIC = b"MMWALCOL"
FORMAT = 1
HEADER = struct.Struct("<8sIIQ")  # magic, format, index length, rows
_ALIGN = 64
_DTYPES = {"<i8": np.int64, "<f8": np.float64, "|b1": np.bool_, "<i4": np.int32,
           "<u8": np.uint64, "|u1": np.uint8}
#: kind -> its parts and each part's dtype
_KIND_PARTS = {"int": {"values": "<i8", "present": "|b1"},
               "float": {"values": "<f8", "present": "|b1"},
               "bool": {"values": "|b1", "present": "|b1"},
               "str": {"codes": "<i4", "dict_offsets": "<u8", "dict_blob": "|u1"},
               "other": {"present": "|b1"}}


def write(path: str, columns: where_.Columns, n: int) -> list[int]:
    """Write ``columns`` (``n`` rows) to ``path`` and fsync it; its [size, CRC-32]."""
    arrays: list[np.ndarray] = []
    index: dict[str, dict[str, dict[str, list[Any]]]] = {}
    for key, kc in columns.items():
        kinds: dict[str, dict[str, list[Any]]] = {}
        for kind, v in kc.items():
            val: Any = v
            parts: dict[str, np.ndarray]
            if kind == "str":
                codes, dictionary = val
                enc = [s.encode("utf-8", "surrogatepass") for s in dictionary]
                offs = np.zeros(len(enc) + 1, dtype="<u8")
                np.cumsum([len(b) for b in enc], out=offs[1:])
                parts = {"codes": np.asarray(codes, "<i4"), "dict_offsets": offs,
                         "dict_blob": np.frombuffer(b"".join(enc), dtype="|u1")}
            elif kind == "other":
                parts = {"present": np.asarray(val, "|b1")}
            else:
                values, present = val
                dt = {"int": "<i8", "float": "<f8", "bool": "|b1"}[kind]
                parts = {"values": np.asarray(values, dt), "present": np.asarray(present, "|b1")}
            kinds[kind] = {name: [len(arrays) + i, a.dtype.str, len(a)]
                           for i, (name, a) in enumerate(parts.items())}
            arrays.extend(parts.values())
        index[key] = kinds
    # Offsets depend on the index's size, which depends on the offsets (msgpack
    # ints grow with their value): iterate to the fixed point, where the index
    # packed with these offsets ends before the first array.
    offsets = [0] * len(arrays)
    for _ in range(16):
        blob = msgpack.packb(_with_offsets(index, offsets), use_bin_type=True)
        pos = _up(HEADER.size + len(blob))
        new = []
        for a in arrays:
            new.append(pos)
            pos = _up(pos + a.nbytes)
        if new == offsets:
            break
        offsets = new
    else:  # offsets only grow, and by fewer bytes each round: never reached
        raise AssertionError("columns.bin offsets did not settle")
    io = _io.layer
    fd = io.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    crc = 0
    size = 0
    try:
        from .._fsutil import write_all

        def put(data: bytes) -> None:
            nonlocal crc, size
            write_all(fd, data, size, path)
            crc = zlib.crc32(data, crc)
            size += len(data)

        put(HEADER.pack(MAGIC, FORMAT, len(blob), n) + blob)
        for off, a in zip(offsets, arrays):
            put(bytes(off - size))
            put(a.tobytes())
        io.fsync(fd)
    finally:
        io.close(fd)
    return [size, crc]


def _up(x: int) -> int:
    return (x + _ALIGN - 1) // _ALIGN * _ALIGN


def _with_offsets(index: dict[str, Any], offsets: list[int]) -> dict[str, Any]:
    return {key: {kind: {name: [offsets[e[0]], e[1], e[2]] for name, e in parts.items()}
                  for kind, parts in kinds.items()} for key, kinds in index.items()}


class _Dictionary(Sequence[str]):
    """The sorted distinct strings of a str column, read from the mapped blob on access."""

    def __init__(self, offsets: np.ndarray, blob: Any, path: str) -> None:
        self._off = offsets
        self._blob = blob
        self._path = path

    def __len__(self) -> int:
        return len(self._off) - 1

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        a, b = int(self._off[i]), int(self._off[i + 1])
        if not 0 <= a <= b <= len(self._blob):
            raise CorruptionError(f"{self._path}: string {i} of a dictionary spans {a}..{b}; "
                                  "run `mmwal verify`", path=self._path, offset=0)
        try:
            return bytes(self._blob[a:b]).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            raise CorruptionError(f"{self._path}: string {i} of a dictionary is not UTF-8; "
                                  "run `mmwal verify`", path=self._path, offset=0) from None

    def index_of(self, s: str) -> int:
        i = bisect.bisect_left(self, s)
        return i if i < len(self) and self[i] == s else -1


def load(path: str, file_meta: list[int], n: int) -> dict[str, where_.KeyColumns]:
    """Map ``path`` (checked against its descriptor [size, CRC-32]) as :data:`Columns`."""
    io = _io.layer

    def bad(what: str, offset: int = 0) -> CorruptionError:
        return CorruptionError(f"{path}: offset {offset}: {what}; run `mmwal verify`",
                               path=path, offset=offset)

    try:
        fd = io.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise bad("missing; the descriptor lists it") from None
    except OSError as exc:
        raise _io.io_error(exc, "open", path) from None
    try:
        size = io.fstat(fd).st_size
        if size != file_meta[0] or size < HEADER.size:
            raise bad(f"{size} bytes, the descriptor says {file_meta[0]}")
        mm = io.mmap(fd, size)
    except OSError as exc:
        raise _io.io_error(exc, "mmap", path) from None
    finally:
        io.close(fd)
    if zlib.crc32(mm) != file_meta[1]:
        raise bad("checksum mismatch with the descriptor")
    magic, fmt, ilen, rows = HEADER.unpack_from(mm, 0)
    if magic != MAGIC or fmt != FORMAT or rows != n or HEADER.size + ilen > size:
        raise bad("not a columns file of this fragment")
    try:
        index = msgpack.unpackb(mm[HEADER.size:HEADER.size + ilen], raw=False,
                                strict_map_key=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise bad(f"index does not decode ({exc})", HEADER.size) from None
    if not isinstance(index, dict):
        raise bad("index is not a map", HEADER.size)

    def arr(e: Any, want_len: int | None, dtype: str) -> np.ndarray:
        if (not isinstance(e, list) or len(e) != 3 or type(e[0]) is not int
                or e[1] != dtype or type(e[2]) is not int or e[2] < 0):
            raise bad(f"array entry {e!r:.60} is not valid", HEADER.size)
        off, dt, count = e
        nbytes = count * np.dtype(_DTYPES[dt]).itemsize
        if off % _ALIGN or off < HEADER.size + ilen or off + nbytes > size:
            raise bad(f"array at {off} of {nbytes} bytes runs outside the file", HEADER.size)
        if want_len is not None and count != want_len:
            raise bad(f"array of {count} rows, the fragment has {want_len}", HEADER.size)
        out: np.ndarray = np.frombuffer(mm, dtype=_DTYPES[dt], count=count, offset=off)
        return out

    cols: dict[str, where_.KeyColumns] = {}
    for key, kinds in index.items():
        if type(key) is not str or not isinstance(kinds, dict):
            raise bad(f"key {key!r:.40} is not valid", HEADER.size)
        kc: where_.KeyColumns = {}
        for kind, parts in kinds.items():
            names = _KIND_PARTS.get(kind)
            if names is None or not isinstance(parts, dict) or set(parts) != set(names):
                raise bad(f"column {key!r:.40}/{kind!r:.20} is not valid", HEADER.size)
            dts = names
            if kind == "str":
                codes = arr(parts["codes"], n, dts["codes"])
                offs = arr(parts["dict_offsets"], None, dts["dict_offsets"])
                blob = arr(parts["dict_blob"], None, dts["dict_blob"])
                if not len(offs) or (len(codes) and int(codes.max(initial=-1)) >= len(offs) - 1):
                    raise bad(f"str column {key!r:.40} codes run past its dictionary",
                              HEADER.size)
                kc["str"] = (codes, _Dictionary(offs, blob, path))
            elif kind == "other":
                kc["other"] = arr(parts["present"], n, dts["present"])
            else:
                kc[kind] = (arr(parts["values"], n, dts["values"]),  # type: ignore[literal-required]
                            arr(parts["present"], n, dts["present"]))
        cols[key] = kc
    return cols
