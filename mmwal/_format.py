"""Pure byte codec of the log, the manifest and the tail record.

No I/O, no locks: every function takes and returns bytes (or buffers), so the
format can be tested byte for byte.  ``docs/format.md`` is the normative
description of everything here; change both together.

All integers are little-endian.  Every decoder bounds lengths before it
allocates and raises :class:`~mmwal.errors.CorruptionError` (never
``KeyError``/``struct.error``/``UnicodeError``) on bad bytes.
"""

from __future__ import annotations

import functools
import itertools
import math
import mmap
import operator
import struct
import threading
import zlib
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from .errors import CorruptionError, FormatVersionError

FORMAT_VERSION = 1

# ---------------------------------------------------------------- segment header
SEGMENT_MAGIC = b"MMWALSEG"
SEGMENT_HEADER = struct.Struct("<8sIIQQQd12sI")  # 64 bytes
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size
assert SEGMENT_HEADER_SIZE == 64

# ---------------------------------------------------------------- frame
FRAME_MAGIC = 0x5246574D  # the bytes b"MWFR" read as a little-endian u32
# magic, kind, flags, reserved, payload length, count, first seq | crc, reserved
FRAME_PREFIX = struct.Struct("<IBBHIIQ")  # the 24 bytes the CRC covers
FRAME_HEADER = struct.Struct("<IBBHIIQII")  # 32 bytes
FRAME_HEADER_SIZE = FRAME_HEADER.size
assert FRAME_HEADER_SIZE == 32 and FRAME_PREFIX.size == 24
FRAME_ALIGN = 8
#: Largest payload a frame may carry; checked before anything is allocated.
MAX_PAYLOAD = 1 << 30
#: Largest id, in UTF-8 bytes.
MAX_ID_BYTES = 4096
#: Largest vector dimension: one vector must fit in one frame.
MAX_DIM = MAX_PAYLOAD // 4
#: Deepest nesting of containers inside a metadata map (the map itself is level
#: 0).  ONE limit for both sides: writers refuse deeper metadata before anything
#: is written (``_validate.normalize_metadata``) and readers treat a CRC-valid
#: record that exceeds it as corruption (:func:`metadata_problem`), so whatever
#: a writer accepts every reader decodes (msgpack's own decoder stops at 1024).
MAX_METADATA_DEPTH = 64
#: Metadata ints are msgpack ints: from -2**63 to 2**64 - 1.
METADATA_INT_MIN = -(1 << 63)
METADATA_INT_MAX = (1 << 64) - 1
#: Largest Euclidean norm of a stored (or query) vector.  Within it every term
#: of the float32 search arithmetic stays finite: |v|**2 <= 2**124, and the l2
#: expansion |v|**2 - 2 v.q + |q|**2 <= 2**126 < float32 max (about 2**128).
MAX_VECTOR_NORM = 2.0**62

KIND_ADD = 1
KIND_REMOVE = 2
KIND_CLEAR = 3
KIND_NAMES = {KIND_ADD: "add", KIND_REMOVE: "remove", KIND_CLEAR: "clear"}

# ---------------------------------------------------------------- manifest
MANIFEST_MAGIC = b"MMWALMAN"
MANIFEST_HEADER = struct.Struct("<8sIII")  # magic, version, body length, crc
MAX_MANIFEST_BODY = 1 << 20

# ---------------------------------------------------------------- tail record
TAIL_MAGIC = b"MMWALTL1"
TAIL = struct.Struct("<8s16sQQQQQQI")  # magic, boot id, seg, end, last seq, pending,
TAIL_SIZE = TAIL.size  # synced seg, synced end, crc
TAIL_FILE_SIZE = 4096
#: The pending word: non-zero while a writer is between announcing a write and
#: publishing the new record.  Outside the checksum, written on its own.
PENDING_OFFSET = 80
TAIL_AREA = PENDING_OFFSET + 8  # record, 4 zero bytes, pending word

_unpack_frame_header = FRAME_HEADER.unpack_from
_pack_prefix = FRAME_PREFIX.pack
_PADS = tuple(b"\0" * i for i in range(FRAME_ALIGN))
_crc32 = zlib.crc32


# ---------------------------------------------------------------- CRC-32 algebra
# zlib's crc32_combine (not exposed by Python before 3.14), for the CRC of a
# concatenation from the CRCs of its parts: CRC-32 is affine in its initial
# value, ``crc32(b, c) = crc32_combine(c, crc32(b), len(b))``.
_CRC_POLY = 0xEDB88320  # reflected CRC-32 polynomial


def _multmodp(a: int, b: int) -> int:
    """``a * b`` modulo the CRC-32 polynomial (reflected bit order, as zlib)."""
    m = 1 << 31
    p = 0
    while a:
        if a & m:
            p ^= b
            a ^= m
        m >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1
    return p


def _x2n_table() -> list[int]:
    t = [1 << 30]  # x^1
    for _ in range(31):
        t.append(_multmodp(t[-1], t[-1]))
    return t


_X2N = _x2n_table()  # _X2N[k] = x^(2^k) modulo the polynomial


@functools.lru_cache(maxsize=256)
def _x8n(n: int) -> int:
    """``x^(8 n)`` modulo the polynomial: appending ``n`` bytes to a CRC's message."""
    p = 1 << 31  # x^0
    k = 3
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """``zlib.crc32(a + b)`` from ``crc1 = zlib.crc32(a)``, ``crc2 = zlib.crc32(b)``, ``len(b)``.

    More generally ``zlib.crc32(b, c) == crc32_combine(c, zlib.crc32(b), len(b))``
    for any initial value ``c``.
    """
    return _multmodp(_x8n(len2), crc1) ^ crc2


def salt_seed(salt: int) -> int:
    """The CRC seed of a segment: CRC-32 of its 8-byte little-endian salt."""
    return _crc32(salt.to_bytes(8, "little"))


def padded(n: int) -> int:
    """``n`` rounded up to the frame alignment."""
    return (n + FRAME_ALIGN - 1) & ~(FRAME_ALIGN - 1)


# ================================================================ segment header
@dataclass(frozen=True)
class SegmentHeader:
    segment_id: int
    salt: int
    first_seq: int
    created: float

    @property
    def seed(self) -> int:
        return salt_seed(self.salt)


def encode_segment_header(h: SegmentHeader) -> bytes:
    body = SEGMENT_HEADER.pack(
        SEGMENT_MAGIC, FORMAT_VERSION, SEGMENT_HEADER_SIZE, h.segment_id, h.salt, h.first_seq,
        h.created, b"\0" * 12, 0,
    )
    crc = _crc32(body[:-4])
    return body[:-4] + crc.to_bytes(4, "little")


def decode_segment_header(buf: bytes | memoryview, path: str = "<segment>") -> SegmentHeader:
    """Decode and check a segment header; raise CorruptionError/FormatVersionError."""
    if len(buf) < SEGMENT_HEADER_SIZE:
        raise CorruptionError(
            f"{path}: segment header truncated at offset {len(buf)}: expected "
            f"{SEGMENT_HEADER_SIZE} bytes; the file was cut short",
            path=path, offset=len(buf),
        )
    fields = SEGMENT_HEADER.unpack_from(buf, 0)
    magic, version, size, seg_id, salt, first_seq, created, _res, crc = fields
    if magic != SEGMENT_MAGIC:
        raise CorruptionError(
            f"{path}: offset 0: expected segment magic {SEGMENT_MAGIC!r}, got {bytes(magic)!r}; "
            "this is not an mmwal log segment", path=path, offset=0,
        )
    if _crc32(bytes(buf[: SEGMENT_HEADER_SIZE - 4])) != crc:
        raise CorruptionError(
            f"{path}: offset 0: segment header checksum mismatch; run `mmwal verify`",
            path=path, offset=0,
        )
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{path}: written by format version {version}, this mmwal reads up to "
            f"{FORMAT_VERSION}; upgrade mmwal", path=path, version=version,
        )
    if size != SEGMENT_HEADER_SIZE or first_seq < 1 or not math.isfinite(created):
        raise CorruptionError(
            f"{path}: offset 0: segment header fields out of range (size {size}, "
            f"first seq {first_seq})", path=path, offset=0,
        )
    return SegmentHeader(seg_id, salt, first_seq, created)


# ================================================================ frames
def encode_frame(kind: int, first_seq: int, count: int, payload: bytes, seed: int) -> bytes:
    """Build one complete frame (header, payload, zero padding) ready for one write."""
    n = len(payload)
    prefix = _pack_prefix(FRAME_MAGIC, kind, 0, 0, n, count, first_seq)
    crc = _crc32(payload, _crc32(prefix, seed))
    return b"".join((prefix, crc.to_bytes(4, "little"), b"\0\0\0\0", payload, _PADS[-n & 7]))


_pack_prefix_into = FRAME_PREFIX.pack_into
#: The CRC and the reserved zero word of a frame header (offset 24).
CRC_WORDS = struct.Struct("<II")
_pack_crc_into = CRC_WORDS.pack_into
_frames = threading.local()
#: Frames up to this size are built in one per-thread buffer that is reused.
REUSED_FRAME_BUFFER = 1 << 22


def _frame_buffer(size: int) -> bytearray:
    """A buffer of at least ``size`` bytes to build a frame in (reused per thread)."""
    buf: bytearray | None = getattr(_frames, "buf", None)
    if buf is not None and len(buf) >= size:
        return buf
    if size > REUSED_FRAME_BUFFER:
        return bytearray(size)  # a one-off: a huge batch does not pin its memory
    # Grown by doubling (fewer reallocations), never kept above the cap.
    buf = bytearray(max(size, min(2 * len(buf) if buf is not None else 0, REUSED_FRAME_BUFFER)))
    _frames.buf = buf
    return buf


#: Below this many bytes of vectors a frame is built from one ``pack`` of the
#: whole payload: at ~1.5 KB the interpreter's steps cost more than the copies.
SMALL_VECTORS = 1 << 16
_ZERO_HEADER = bytes(FRAME_HEADER_SIZE)


def add_frame(timestamp: float, dim: int, ids: list[str], contents: list[str],
              metadatas: list[Any], vectors: np.ndarray) -> tuple[memoryview, int]:
    """An add frame ready for :func:`seal_frame`: ``(frame, payload length)``.

    The payload is byte for byte ``pack([timestamp, dim, ids, contents,
    metadatas, vectors.tobytes()])``.  The 32 header bytes are left for
    :func:`seal_frame` (the first seq is known only under the append lock);
    the padding is zero.  ``vectors`` must be C-contiguous little-endian
    float32.  Raises what :func:`pack` raises.

    A batch's vector block is copied once, from the array into the frame: one
    ``pack`` of the five small fields (a 5-array whose header byte becomes the
    6-array's), the ``bin`` header of the block, then the vectors, in a
    per-thread buffer that is reused (the frame is valid until the thread's
    next call).  Below :data:`SMALL_VECTORS` bytes one ``pack`` call encodes
    the whole payload into a fresh frame: fewer interpreter steps, and the
    extra copies of a few KB cost less than them.
    """
    nv = vectors.nbytes
    if nv < SMALL_VECTORS:
        payload = pack([timestamp, dim, ids, contents, metadatas, vectors.data])
        n = len(payload)
        frame = bytearray(_ZERO_HEADER)
        frame += payload
        frame += _PADS[-n & 7]
        return memoryview(frame), n
    head = pack([timestamp, dim, ids, contents, metadatas])
    bin_header = (b"\xc5" + nv.to_bytes(2, "big") if nv < 0x10000
                  else b"\xc6" + nv.to_bytes(4, "big"))
    h = len(head)
    b = h + len(bin_header)
    n = b + nv
    size = FRAME_HEADER_SIZE + ((n + 7) & ~7)
    buf = _frame_buffer(size)
    p = FRAME_HEADER_SIZE
    buf[p : p + h] = head
    buf[p] = 0x96  # fixarray 6 (pack gave fixarray 5, 0x95: the same bytes otherwise)
    buf[p + h : p + b] = bin_header
    mv = memoryview(buf)
    mv[p + b : p + n] = vectors.data.cast("B")
    buf[p + n : size] = _PADS[size - p - n]
    return mv[:size], n


def payload_frame(payload: bytes) -> tuple[memoryview, int]:
    """Any payload in a frame ready for :func:`seal_frame`: ``(frame, payload length)``."""
    n = len(payload)
    size = FRAME_HEADER_SIZE + ((n + 7) & ~7)
    buf = bytearray(size)
    buf[FRAME_HEADER_SIZE : FRAME_HEADER_SIZE + n] = payload
    return memoryview(buf), n


def seal_frame(frame: memoryview, kind: int, first_seq: int, count: int, n: int,
               seed: int) -> None:
    """Write the header of ``frame`` (payload of ``n`` bytes at offset 32) in place.

    The result equals :func:`encode_frame` of the same payload.
    """
    _pack_prefix_into(frame, 0, FRAME_MAGIC, kind, 0, 0, n, count, first_seq)
    crc = _crc32(frame[FRAME_HEADER_SIZE : FRAME_HEADER_SIZE + n], _crc32(frame[:24], seed))
    _pack_crc_into(frame, 24, crc, 0)


# Outcome of looking at one position of a segment.
FRAME_OK = 0
FRAME_END = 1  # nothing (or zeros, or a partial header) here: end of the log for now
FRAME_BAD = 2  # something is here but it is not a valid continuing frame


def check_frame(
    buf: Any, off: int, limit: int, seed: int, expect_seq: int
) -> tuple[int, int, int, int, int, str]:
    """Validate the frame at ``off`` of ``buf`` (valid bytes end at ``limit``).

    Returns ``(status, kind, count, payload_len, next_off, why)``.  ``status`` is
    :data:`FRAME_OK` for a valid frame carrying ``expect_seq`` first,
    :data:`FRAME_END` when the bytes there are all zero or too short to hold a
    header, :data:`FRAME_BAD` otherwise, with ``why`` saying what was wrong.
    The payload is ``buf[off + 32 : off + 32 + payload_len]``.
    """
    if off + FRAME_HEADER_SIZE > limit:
        return FRAME_END, 0, 0, 0, off, "partial frame header"
    magic, kind, flags, res, n, count, first_seq, crc, res2 = _unpack_frame_header(buf, off)
    if magic != FRAME_MAGIC:
        if magic == 0 and first_seq == 0 and crc == 0 and n == 0:
            return FRAME_END, 0, 0, 0, off, "zeros"
        why = f"expected frame magic 0x{FRAME_MAGIC:08x}, got 0x{magic:08x}"
        return FRAME_BAD, 0, 0, 0, off, why
    if kind not in KIND_NAMES or flags or res or res2:
        return FRAME_BAD, 0, 0, 0, off, f"unknown frame kind {kind} or flags {flags}"
    if n > MAX_PAYLOAD:
        return FRAME_BAD, 0, 0, 0, off, f"payload length {n} exceeds the maximum {MAX_PAYLOAD}"
    end = off + FRAME_HEADER_SIZE + n
    if end > limit:
        return FRAME_BAD, 0, 0, 0, off, f"payload length {n} runs past the end of the file"
    if count < 1 or count > max(n, 1) or (kind != KIND_ADD and count != 1):
        return FRAME_BAD, 0, 0, 0, off, f"record count {count} impossible for kind {kind}"
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    if _crc32(mv[off + FRAME_HEADER_SIZE : end], _crc32(mv[off : off + 24], seed)) != crc:
        return FRAME_BAD, 0, 0, 0, off, "checksum mismatch"
    if first_seq != expect_seq:
        return FRAME_BAD, 0, 0, 0, off, f"sequence {first_seq} where {expect_seq} was expected"
    return FRAME_OK, kind, count, n, padded(end), ""


# ---------------------------------------------------------------- payloads
# add:    [timestamp: float, dim: int, ids: [str], contents: [str], metadatas: [map|nil],
#          embeddings: bin (count*dim little-endian float32)]
# remove: [timestamp: float, id: str]
# clear:  [timestamp: float]


def _default(obj: Any) -> Any:
    raise TypeError(f"cannot store a value of type {type(obj).__name__} in metadata")


_local = threading.local()


def pack(obj: Any) -> bytes:
    """msgpack-encode ``obj`` (no custom types; raises TypeError/ValueError/OverflowError)."""
    # A Packer is not thread-safe and costs a little to build: one per thread.
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(default=_default, use_bin_type=True)
    try:
        return packer.pack(obj)  # type: ignore[no-any-return]
    except BaseException:
        packer.reset()  # a failed pack may leave partial bytes in the buffer
        raise


_MSGPACK_ERRORS = (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
                   msgpack.StackError, msgpack.OutOfData, UnicodeDecodeError, OverflowError)


def _not_msgpack(path: str, offset: int, exc: BaseException) -> CorruptionError:
    return CorruptionError(f"{path}: offset {offset}: frame payload is not valid msgpack ({exc})",
                           path=path, offset=offset)


def _unpacker(size: int) -> Any:
    """A streaming decoder with the rules of :func:`_unpack`, for at most ``size`` bytes."""
    return msgpack.Unpacker(raw=False, strict_map_key=True, use_list=True, ext_hook=_no_ext,
                            max_buffer_size=size)


def _unpack(payload: Any, path: str, offset: int) -> Any:
    try:
        return msgpack.unpackb(
            payload, raw=False, strict_map_key=True, use_list=True,
            ext_hook=_no_ext,
        )
    except _MSGPACK_ERRORS as exc:
        raise _not_msgpack(path, offset, exc) from None


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"unexpected msgpack extension type {code}")


_CONTAINER = (dict, list)
_CONTAINER_TYPES = frozenset(_CONTAINER)
_STR_ONLY = frozenset((str,))
_chain = itertools.chain.from_iterable
_compress = itertools.compress
_repeat = itertools.repeat
_is = operator.is_


def metadata_problem(m: dict[str, Any]) -> str:
    """What makes a decoded metadata map one no writer produces ("" when none).

    The reader's half of the shared limits: str keys at every level and at most
    :data:`MAX_METADATA_DEPTH` levels of containers.  (Value types are not
    checked here: msgpack decodes only nil, bool, int, float, str, bin, array
    and map - extension types are refused by the decoder - plus its Timestamp,
    which writers refuse.)
    """
    # The common case, a flat map with str keys, in two C-level loops.
    if _STR_ONLY.issuperset(map(type, m)) and _CONTAINER_TYPES.isdisjoint(map(type, m.values())):
        return ""
    stack: list[tuple[Any, int]] = [(m, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        v, depth = pop()
        if type(v) is dict:
            for k in v:
                if type(k) is not str:
                    return f"a metadata key is {type(k).__name__}, not str"
            items: Any = v.values()
        else:
            items = v
        for x in items:
            if type(x) in _CONTAINER:
                if depth >= MAX_METADATA_DEPTH:
                    return f"metadata nested deeper than {MAX_METADATA_DEPTH} levels"
                push((x, depth + 1))
    return ""


def id_problem(key: str) -> str:
    """Why ``key`` (a str) is not a valid id ("" when it is): the writer's and reader's rule."""
    n = len(key)
    if not n:
        return "an id is empty"
    if n > MAX_ID_BYTES // 4 and len(key.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        return f"an id is longer than {MAX_ID_BYTES} UTF-8 bytes"
    return ""


def _ids_problem(ids: list[str]) -> str:
    if len(ids) == 1:
        return id_problem(ids[0])
    lens = list(map(len, ids))
    if min(lens) and max(lens) <= MAX_ID_BYTES // 4:
        return ""
    for key in ids:
        why = id_problem(key)
        if why:
            return why
    return ""


def metas_problem(metas: list[Any]) -> str:
    """The first :func:`metadata_problem` of a list of metadata (None entries allowed).

    The common shapes of a batch - flat maps, and maps whose values include
    arrays of scalars (tags) - are cleared by a few C-level passes over the
    whole batch; anything else (a nested map, an array of arrays, a key that
    is not str) takes the per-map walk, which says what is wrong.
    """
    if len(metas) == 1:  # one document: the walk costs less than building a batch
        return metadata_problem(metas[0]) if metas[0] else ""
    maps = list(filter(None, metas))  # None and {} have nothing to check
    if not maps:
        return ""
    if _STR_ONLY.issuperset(map(type, _chain(maps))):
        vals = list(_chain(map(dict.values, maps)))
        kinds = set(map(type, vals))
        if kinds.isdisjoint(_CONTAINER_TYPES):
            return ""
        if dict not in kinds:  # arrays at level 1: fine when they hold no container
            arrays = _compress(vals, map(_is, map(type, vals), _repeat(list)))
            if _CONTAINER_TYPES.isdisjoint(map(type, _chain(arrays))):
                return ""
    for m in maps:
        if m is not None:
            why = metadata_problem(m)
            if why:
                return why
    return ""


@dataclass(frozen=True)
class AddBatch:
    """The decoded payload of an add frame."""

    timestamp: float
    ids: list[str]
    contents: list[str]
    metadatas: list[dict[str, Any] | None]
    embeddings: np.ndarray  # (count, dim) float32, read-only view of the payload bytes


def _malformed(kind: int, path: str, offset: int, what: str) -> CorruptionError:
    return CorruptionError(
        f"{path}: offset {offset}: {KIND_NAMES.get(kind, kind)} frame payload malformed: {what}",
        path=path, offset=offset)


_DICT_OR_NONE = frozenset((dict, type(None)))


def _all_str(xs: list[Any]) -> bool:
    """Whether every element of ``xs`` is exactly a str (one C-level pass)."""
    return _STR_ONLY.issuperset(map(type, xs))


def _all_dict_or_none(xs: list[Any]) -> bool:
    """Whether every element of ``xs`` is exactly a dict or None (one C-level pass)."""
    return _DICT_OR_NONE.issuperset(map(type, xs))


def _is_doc_fields(ids: list[Any], contents: list[Any], metas: list[Any]) -> bool:
    return _all_str(ids) and _all_str(contents) and _all_dict_or_none(metas)


def decode_add(count: int, payload: Any, dim: int, path: str, offset: int,
               check_metadata: bool = True,
               ) -> tuple[float, list[str], list[str], list[Any], bytes]:
    """Decode an add payload to (timestamp, ids, contents, metadatas, embedding bytes).

    The embedding bytes are ``count * dim`` little-endian float32, row-major:
    callers that need arrays make them with one ``np.frombuffer`` (or lazily).
    ``check_metadata=False`` skips the walk of the metadata against the
    writer's limits: for callers that drop the metadata unread.
    """
    obj = _unpack(payload, path, offset)
    if type(obj) is not list or len(obj) != 6:
        raise _malformed(KIND_ADD, path, offset, "expected an array of 6 fields")
    ts, fdim, ids, contents, metas, emb = obj
    if type(ts) is not float or fdim != dim:
        raise _malformed(KIND_ADD, path, offset, f"timestamp {ts!r} or dimension {fdim!r} "
                         f"wrong (the store has {dim})")
    if not (type(ids) is list and type(contents) is list and type(metas) is list
            and len(ids) == len(contents) == len(metas) == count):
        raise _malformed(KIND_ADD, path, offset, f"ids/contents/metadatas must be arrays of "
                         f"the record count {count}")
    if type(emb) is not bytes or len(emb) != count * dim * 4:
        raise _malformed(KIND_ADD, path, offset, f"embedding block must be {count * dim * 4} "
                         "bytes")
    if count == 1:
        m = metas[0]
        ok = type(ids[0]) is str and type(contents[0]) is str and (m is None or type(m) is dict)
    else:
        ok = _is_doc_fields(ids, contents, metas)
    if not ok:
        raise _malformed(KIND_ADD, path, offset, "a document has fields of the wrong type")
    why = _ids_problem(ids) or (metas_problem(metas) if check_metadata else None)
    if why:
        raise _malformed(KIND_ADD, path, offset, why)
    return ts, ids, contents, metas, emb


def decode_add_ids(count: int, payload: Any, dim: int, path: str, offset: int) -> list[str]:
    """The ids of a CRC-valid add payload, without decoding its contents, metadata or vectors.

    The fields before the ids (timestamp, dimension) and the ids themselves
    are checked as :func:`decode_add` checks them; the rest is left undecoded
    (for a caller that needs only the ids; :func:`add_parts` also returns
    the vector block and the encoded documents, for :func:`decode_docs`).
    """
    mv = payload if isinstance(payload, memoryview) else memoryview(payload)
    lay = _add_layout(mv, count, dim)
    if lay is not None:  # the encoding writers emit: the ids alone are decoded
        return _ids_in_layout(mv, count, lay[1], lay[2], path, offset)[0]
    try:
        u = _unpacker(max(len(payload), 1))
        u.feed(payload)
        n = u.read_array_header()
        ts = u.unpack()
        fdim = u.unpack()
        ids = u.unpack()
    except _MSGPACK_ERRORS as exc:
        raise _not_msgpack(path, offset, exc) from None
    if n != 6:
        raise _malformed(KIND_ADD, path, offset, "expected an array of 6 fields")
    if type(ts) is not float or fdim != dim:
        raise _malformed(KIND_ADD, path, offset, f"timestamp {ts!r} or dimension {fdim!r} "
                         f"wrong (the store has {dim})")
    if type(ids) is not list or len(ids) != count or not _all_str(ids):
        raise _malformed(KIND_ADD, path, offset, f"ids must be an array of {count} strings")
    why = _ids_problem(ids)
    if why:
        raise _malformed(KIND_ADD, path, offset, why)
    return ids


_F64 = struct.Struct(">d").unpack_from
_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from


def _bin_header(nv: int) -> bytes:
    """The shortest msgpack ``bin`` header of ``nv`` bytes (what every writer emits)."""
    if nv < 0x100:
        return bytes((0xC4, nv))
    if nv < 0x10000:
        return b"\xc5" + nv.to_bytes(2, "big")
    return b"\xc6" + nv.to_bytes(4, "big")


@functools.lru_cache(maxsize=64)
def _layout_marks(count: int, dim: int) -> tuple[bytes, bytes, int]:
    """What a writer puts around the fields of an add payload of this shape.

    ``(the dimension as the shortest uint, the vector block's bin header,
    the vector block's length)``.
    """
    return pack(dim), _bin_header(count * dim * 4), count * dim * 4


def _add_layout(mv: memoryview, count: int, dim: int) -> tuple[float, int, int] | None:
    """``(timestamp, start of ids, start of the vector block's header)`` of an add payload.

    Only the encoding writers emit is recognised: a fixarray of 6, the
    timestamp as float 64, the dimension as the shortest uint, the vector
    block as the shortest ``bin`` ending the payload.  None for anything else
    (the caller then decodes the whole payload, which decides).  The bin
    header found at the end is sound: the longer headers of the same length
    have zero bytes where the shorter one has its type byte.
    """
    n = len(mv)
    if count * dim * 4 + 2 > n:
        return None  # no room for the vector block (the full decode says what is wrong)
    dim_b, head, nv = _layout_marks(count, dim)
    p = 10 + len(dim_b)
    b0 = n - nv - len(head)
    if (b0 <= p or mv[0] != 0x96 or mv[1] != 0xCB or mv[10:p] != dim_b
            or mv[b0 : b0 + len(head)] != head):
        return None
    return _F64(mv, 2)[0], p, b0


def _one_id(mv: memoryview, p: int, end: int) -> tuple[str, int] | None:
    """The single id of a one-document payload at ``p`` (a fixarray of one str), and its end."""
    if mv[p] != 0x91:
        return None
    h = mv[p + 1]
    if 0xA0 <= h <= 0xBF:
        a, ln = p + 2, h & 0x1F
    elif h == 0xD9:
        a, ln = p + 3, mv[p + 2]
    elif h == 0xDA:
        a, ln = p + 4, _U16(mv, p + 2)[0]
    else:
        return None
    if a + ln > end or not 0 < ln <= MAX_ID_BYTES:
        return None  # (an empty or too long id: the full decode says so)
    try:
        return str(mv[a : a + ln], "utf-8"), a + ln
    except UnicodeDecodeError:
        return None  # the full decode says what is wrong


def _ids_in_layout(mv: memoryview, count: int, p: int, b0: int, path: str, offset: int,
                   ) -> tuple[list[str], int]:
    """The checked ids of an add payload whose layout :func:`_add_layout` found, and their end."""
    one = _one_id(mv, p, b0) if count == 1 else None
    if one is not None:  # its length in bytes was checked: within the id limits
        return [one[0]], one[1]
    try:
        # The ids come first: a prefix that usually holds them all, then (if
        # it did not) the whole region before the vector block, never the block.
        for stop in (min(b0, p + 16 + 64 * count), b0):
            u = _unpacker(stop - p)
            u.feed(mv[p:stop])
            try:
                ids = u.unpack()
                break
            except msgpack.OutOfData:
                if stop == b0:
                    raise
        end = p + u.tell()
    except _MSGPACK_ERRORS as exc:
        raise _not_msgpack(path, offset, exc) from None
    if type(ids) is not list or len(ids) != count or not _all_str(ids):
        raise _malformed(KIND_ADD, path, offset, f"ids/contents/metadatas must be arrays of "
                         f"the record count {count}")
    why = _ids_problem(ids)
    if why:
        raise _malformed(KIND_ADD, path, offset, why)
    return ids, end


def decode_add_ids_vectors(count: int, payload: Any, dim: int, path: str, offset: int,
                           copy: bool = True) -> tuple[float, list[str], Any, bytes]:
    """An add payload's timestamp, ids and vectors, with its documents left encoded.

    Returns ``(timestamp, ids, vector bytes, docs)``: ``docs`` is the raw
    msgpack of the contents array followed by the metadatas array, for
    :func:`decode_docs` when (and if) they are wanted - so a reader that needs
    ids and vectors does no per-document work for contents and metadata.
    The fields returned are checked as :func:`decode_add` checks them; the
    documents are checked by :func:`decode_docs`.  ``copy=False`` returns
    the vector block as a view of ``payload`` when it can (valid as long as
    the payload's buffer is), for a caller that copies it at once.  Together the two accept
    exactly the payloads :func:`decode_add` accepts, with the same values.
    """
    ts, ids, vectors, docs = add_parts(count, payload, dim, path, offset)
    if isinstance(vectors, memoryview):
        return ts, ids, bytes(vectors) if copy else vectors, bytes(docs)
    return ts, ids, vectors, docs


def add_parts(count: int, payload: Any, dim: int, path: str, offset: int,
              ) -> tuple[float, list[str], Any, Any]:
    """:func:`decode_add_ids_vectors` without any copy: views of ``payload`` where it can.

    Returns ``(timestamp, ids, vector bytes, docs)``.  In the layout writers
    emit, the vector block and the encoded documents are memoryviews of
    ``payload`` (valid as long as its buffer is; nothing is copied); in any
    other encoding the payload is decoded in full and both are bytes (the
    documents re-encoded).  The same checks as :func:`decode_add_ids_vectors`;
    the documents are checked by :func:`decode_docs`.
    """
    mv = payload if isinstance(payload, memoryview) else memoryview(payload)
    lay = _add_layout(mv, count, dim)
    if lay is not None:
        ts, p, b0 = lay
        ids, c0 = _ids_in_layout(mv, count, p, b0, path, offset)
        return ts, ids, mv[len(mv) - count * dim * 4 :], mv[c0:b0]
    # Another encoding of the same fields: decode it all, hand the documents on re-encoded.
    ts, ids, contents, metas, emb = decode_add(count, payload, dim, path, offset, False)
    return ts, ids, emb, pack(contents) + pack(metas)


def _run_source(buf: memoryview) -> Any:
    """Something whose slices are bytes at the offsets of ``buf`` (the mapping itself if it can)."""
    obj = buf.obj
    if isinstance(obj, (bytes, mmap.mmap)) and len(obj) == buf.nbytes:
        return obj
    return buf.tobytes()


def decode_add_run(buf: memoryview, offsets: list[int], lengths: list[int], dim: int,
                   path: str, out: np.ndarray | None = None,
                   ) -> tuple[list[str], np.ndarray, list[bytes], CorruptionError | None]:
    """What :func:`decode_add_ids_vectors` gives for each frame of a run, in bulk.

    ``buf`` holds single-document add frames (CRC-valid) at ``offsets``, their
    payloads of ``lengths`` bytes 32 bytes further.  Returns ``(ids, vectors,
    docs, error)``: for the first ``k`` frames of the run, their ids, their
    vectors as one ``(k, dim)`` float32 array and their encoded documents;
    ``error`` is None when ``k`` is the whole run, else the CorruptionError
    the frame after them raises (frames before a bad one are decoded, as one
    by one).  The layout writers emit (:func:`_add_layout`, an id as fixstr
    or str8) is checked for every payload at once with array operations over
    ``buf``; the vectors of those payloads are gathered with one fancy index
    and ASCII ids are decoded with one decode.  Every other payload (another
    encoding, an id in UTF-8 that is not ASCII, bad bytes) goes through
    :func:`decode_add_ids_vectors`, so the results are the same.  ``out``, a
    C-contiguous ``(len(offsets), dim)`` float32 array, receives the vectors
    (the array returned is then its first ``k`` rows).
    """
    k = len(offsets)
    dim_b, head, nv = _layout_marks(1, dim)
    lh = len(head)
    p = 10 + len(dim_b)
    u8 = np.frombuffer(buf, np.uint8)
    starts = np.array(offsets, np.int64) + FRAME_HEADER_SIZE
    b0 = np.array(lengths, np.int64) - (nv + lh)  # where the vector block's header is
    c = np.flatnonzero(b0 > p)  # room for the fixed fields: every index below is in the payload
    pc = starts[c]
    bc = b0[c]
    m = (u8[pc] == 0x96) & (u8[pc + 1] == 0xCB) & (u8[pc + p] == 0x91)
    for j, byte in enumerate(dim_b):
        m &= u8[pc + (10 + j)] == byte
    hb = pc + bc
    for j, byte in enumerate(head):
        m &= u8[hb + j] == byte
    h = u8[pc + (p + 1)].astype(np.int64)
    fix = (h >= 0xA0) & (h <= 0xBF)
    ln = np.where(fix, h & 0x1F, u8[pc + (p + 2)])
    a = np.where(fix, p + 2, p + 3)
    m &= (fix | (h == 0xD9)) & (ln > 0) & (a + ln <= bc)
    fast = c[m]  # frames of the run in the writers' layout
    a_abs = (pc + a)[m]
    ln = ln[m]
    e_abs = a_abs + ln  # end of the id: the documents follow, up to the vector block
    d_abs = hb[m]
    src = _run_source(buf)
    ids_f: list[str | None]
    total = int(ln.sum())
    idx = np.repeat(a_abs - (np.cumsum(ln) - ln), ln) + np.arange(total)
    idb = u8[idx]
    if not len(idb) or int(idb.max()) < 0x80:  # all ASCII: one decode, then slices
        s = idb.tobytes().decode("ascii")
        ends = np.cumsum(ln).tolist()
        ids_f = [s[x:y] for x, y in zip([0, *ends[:-1]], ends)]
    else:
        ids_f = []
        for x, y in zip(a_abs.tolist(), e_abs.tolist()):
            try:
                ids_f.append(str(src[x:y], "utf-8"))
            except UnicodeDecodeError:
                ids_f.append(None)  # decoded below one by one: it says what is wrong
    docs_f = [src[x:y] for x, y in zip(e_abs.tolist(), d_abs.tolist())]
    if out is None:
        out = np.empty((k, dim), np.float32)
    rows = out.view(np.uint8)
    if len(fast):
        # Row r of ``win`` is the nv bytes from r on: one fancy index copies
        # every vector block out of the mapping.
        win = np.lib.stride_tricks.as_strided(u8, shape=(len(u8) - nv + 1, nv),
                                              strides=(1, 1), writeable=False)
        if len(fast) == k:
            rows[...] = win[d_abs + lh]  # (np.take would copy all of ``win`` first)
            if None not in ids_f:
                return ids_f, out, docs_f, None  # type: ignore[return-value]
        else:
            rows[fast] = win[d_abs + lh]
    is_fast = dict(zip(fast.tolist(), range(len(fast))))
    ids: list[str] = []
    docs: list[bytes] = []
    for i in range(k):
        j = is_fast.get(i, -1)
        if j >= 0 and ids_f[j] is not None:
            ids.append(ids_f[j])  # type: ignore[arg-type]
            docs.append(docs_f[j])
            continue
        o = offsets[i]
        q = o + FRAME_HEADER_SIZE
        try:
            _ts, rid, emb, d = decode_add_ids_vectors(1, buf[q : q + lengths[i]], dim, path, o)
        except CorruptionError as exc:
            return ids, out[:i], docs, exc
        ids.extend(rid)
        docs.append(d)
        rows[i] = np.frombuffer(emb, np.uint8)
    return ids, out, docs, None


def decode_docs(docs: Any, count: int, path: str, offset: int, check_metadata: bool = True,
                ) -> tuple[list[str], list[dict[str, Any] | None]]:
    """The contents and metadatas that :func:`decode_add_ids_vectors` left encoded, checked.

    ``check_metadata=False`` leaves out :func:`metas_problem`, for a caller
    that runs it itself (or proves its answer another way) before it uses
    the metadata.
    """
    try:
        # The two arrays as the elements of one (a fixarray of 2 before them):
        # one call decodes both, and refuses trailing bytes (ExtraData).
        both = msgpack.unpackb(b"\x92" + docs, raw=False, strict_map_key=True, use_list=True,
                               ext_hook=_no_ext)
        contents, metas = both
    except _MSGPACK_ERRORS as exc:
        raise _not_msgpack(path, offset, exc) from None
    if count == 1:  # one document: plain tests cost less than building sets
        ok = (type(contents) is list and type(metas) is list
              and len(contents) == len(metas) == 1 and type(contents[0]) is str
              and (metas[0] is None or type(metas[0]) is dict))
    else:
        ok = (type(contents) is list and type(metas) is list
              and len(contents) == len(metas) == count
              and _all_str(contents) and _all_dict_or_none(metas))
    if not ok:
        raise _malformed(KIND_ADD, path, offset, f"ids/contents/metadatas must be arrays of "
                         f"the record count {count} of the right types")
    why = metas_problem(metas) if check_metadata else ""
    if why:
        raise _malformed(KIND_ADD, path, offset, why)
    return contents, metas


def metadata_error(why: str, path: str, offset: int) -> CorruptionError:
    """The error of an add record whose metadata :func:`metas_problem` refuses (``why``)."""
    return _malformed(KIND_ADD, path, offset, why)


def decode_payload(kind: int, count: int, payload: Any, dim: int, path: str, offset: int,
                   check_metadata: bool = True) -> Any:
    """Decode a CRC-valid payload; returns AddBatch, (ts, id) or (ts,)."""
    if kind == KIND_ADD:
        ts, ids, contents, metas, emb = decode_add(count, payload, dim, path, offset,
                                                   check_metadata)
        vecs = np.frombuffer(emb, dtype="<f4").reshape(count, dim)
        return AddBatch(ts, ids, contents, metas, vecs)
    obj = _unpack(payload, path, offset)
    if type(obj) is not list or not obj or type(obj[0]) is not float:
        raise _malformed(kind, path, offset, "expected an array starting with a float timestamp")
    ts = obj[0]
    if kind == KIND_REMOVE:
        if len(obj) != 2 or type(obj[1]) is not str or id_problem(obj[1]):
            raise _malformed(kind, path, offset, "expected [timestamp, id] with a valid id")
        return (ts, obj[1])
    if len(obj) != 1:
        raise _malformed(kind, path, offset, "expected [timestamp]")
    return (ts,)


# ================================================================ manifest
DESCRIPTOR_MAGIC = b"MMWALCKD"


#: The version of a DESCRIPTOR whose index uses a keyed hash (docs/format.md, "Index").
#: Only such descriptors carry it, so version-1 readers refuse exactly those.
DESCRIPTOR_KEYED_VERSION = 2


#: The newest version of each manifest-like file this mmwal reads (docs/format.md):
#: MANIFEST 2 names a version of fragments (1 named one checkpoint); VERSION and
#: deletion-vector files are new in it.
MANIFEST_VERSION = 2
NEWEST_VERSION = {MANIFEST_MAGIC: MANIFEST_VERSION, DESCRIPTOR_MAGIC: DESCRIPTOR_KEYED_VERSION,
                  b"MMWALVER": 1}


def encode_manifest(body: dict[str, Any], magic: bytes = MANIFEST_MAGIC,
                    version: int | None = None) -> bytes:
    """A MANIFEST (or, with ``DESCRIPTOR_MAGIC``, a checkpoint DESCRIPTOR).

    ``version`` defaults to the newest this mmwal writes for ``magic``.
    """
    if version is None:
        version = MANIFEST_VERSION if magic == MANIFEST_MAGIC else FORMAT_VERSION
    data = pack(body)
    hdr = MANIFEST_HEADER.pack(magic, version, len(data), 0)
    crc = _crc32(data, _crc32(hdr))
    return MANIFEST_HEADER.pack(magic, version, len(data), crc) + data


MANIFEST_FIELDS: dict[str, type] = {
    "dim": int,
    "created": float,
    "checkpoint": int,
    "checkpoint_seq": int,
    "replay_segment": int,
}


def decode_manifest(buf: bytes, path: str = "MANIFEST", magic_expected: bytes = MANIFEST_MAGIC,
                    fields: dict[str, type] | None = None) -> dict[str, Any]:
    """Decode and check a manifest (or descriptor); raise CorruptionError/FormatVersionError."""
    fields = MANIFEST_FIELDS if fields is None else fields
    if len(buf) < MANIFEST_HEADER.size:
        raise CorruptionError(f"{path}: truncated at offset {len(buf)}: expected a "
                              f"{MANIFEST_HEADER.size}-byte header", path=path, offset=len(buf))
    magic, version, n, crc = MANIFEST_HEADER.unpack_from(buf, 0)
    if magic != magic_expected:
        raise CorruptionError(f"{path}: offset 0: expected magic {magic_expected!r}, "
                              f"got {bytes(magic)!r}", path=path, offset=0)
    if n > MAX_MANIFEST_BODY or MANIFEST_HEADER.size + n != len(buf):
        raise CorruptionError(f"{path}: offset 12: body length {n} does not match the file "
                              f"size {len(buf)}", path=path, offset=12)
    data = buf[MANIFEST_HEADER.size :]
    hdr = MANIFEST_HEADER.pack(magic, version, n, 0)
    if _crc32(data, _crc32(hdr)) != crc:
        raise CorruptionError(f"{path}: offset 0: manifest checksum mismatch", path=path, offset=0)
    # The version is checked after the length and CRC (as for segment headers):
    # checked first, a flipped bit in the version word of a damaged MANIFEST or
    # DESCRIPTOR was reported as "written by a newer format, upgrade mmwal"
    # (FormatVersionError) instead of CorruptionError.
    newest = (DESCRIPTOR_KEYED_VERSION if magic_expected == DESCRIPTOR_MAGIC
              else MANIFEST_VERSION if magic_expected == MANIFEST_MAGIC
              else NEWEST_VERSION.get(bytes(magic_expected), FORMAT_VERSION))
    if version > newest:
        raise FormatVersionError(
            f"{path}: store written by format version {version}, this mmwal reads up to "
            f"{newest}; upgrade mmwal to open it", path=path, version=version)
    body_at = MANIFEST_HEADER.size  # where the msgpack body starts (errors point there)
    body = _unpack(data, path, body_at)
    if not isinstance(body, dict):
        raise CorruptionError(f"{path}: offset {body_at}: body is not a map", path=path,
                              offset=body_at)
    for key, typ in fields.items():
        if type(body.get(key)) is not typ:
            raise CorruptionError(f"{path}: offset {body_at}: field {key!r} missing or not "
                                  f"{typ.__name__}", path=path, offset=body_at)
        if typ is int and body[key] < 0:
            raise CorruptionError(f"{path}: offset {body_at}: field {key!r} is negative",
                                  path=path, offset=body_at)
    if not 1 <= body.get("dim", 1) <= MAX_DIM:
        raise CorruptionError(f"{path}: offset {body_at}: dimension {body['dim']} out of range",
                              path=path, offset=body_at)
    return body


DESCRIPTOR_FIELDS: dict[str, type] = {
    "id": int,
    "seq": int,
    "dim": int,
    "count": int,
    "created": float,
    "chunk_documents": int,
    "chunks": int,
    "max_chunk_bytes": int,
    "index_capacity": int,
    "index_partitions": int,
    "files": dict,
}


# ================================================================ tail record
@dataclass(slots=True)
class Tail:
    """The shared tail hint (see docs/format.md): trusted only when valid for this boot."""

    segment: int
    end: int
    last_seq: int
    pending: int
    synced_segment: int
    synced_end: int


_TAIL_BODY = struct.Struct("<8s16sQQQQQQ")
_TAIL_PAD = bytes(TAIL_AREA - TAIL_SIZE)


def encode_tail(boot: bytes, t: Tail) -> bytes:
    """The record plus zero padding and a clear pending word (``TAIL_AREA`` bytes)."""
    body = _TAIL_BODY.pack(TAIL_MAGIC, boot, t.segment, t.end, t.last_seq, t.pending,
                           t.synced_segment, t.synced_end)
    return body + _crc32(body).to_bytes(4, "little") + _TAIL_PAD


def decode_tail(buf: Any, boot: bytes) -> Tail | None:
    """The tail record in ``buf``, or None when it is absent, torn or from another boot."""
    magic, b, seg, end, last, pending, sseg, send, crc = TAIL.unpack_from(buf, 0)
    if magic != TAIL_MAGIC or b != boot or _crc32(buf[: TAIL_SIZE - 4]) != crc:
        return None
    return Tail(seg, end, last, pending, sseg, send)
