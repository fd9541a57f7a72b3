"""Decoder fuzzing (Hypothesis): frames, segment headers, MANIFEST, DESCRIPTOR, payloads,
metadata chunks, version files and deletion vectors.

Every decoder fed arbitrary bytes - random, valid-then-mutated, and validly
checksummed containers around arbitrary msgpack (so the body checks run, not
only the CRC) - either returns a well-formed value or raises an MmwalError:
never another exception, never a huge allocation (tracemalloc peak under
64 MiB per example), never a hang (the per-test timeout).
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import lz4.frame
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmwal import _format as F
from mmwal import _version as V
from mmwal._checkpoint import decode_chunk
from mmwal.errors import CorruptionError, FormatVersionError, MmwalError

MEMORY_CAP = 64 << 20

FUZZ = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
#: Byte-level decoders are cheap: more examples.
FUZZ_BYTES = settings(FUZZ, max_examples=150)


def bounded(fn, *args):
    """Call ``fn``: MmwalError or a value, within the memory cap."""
    tracemalloc.start()
    try:
        try:
            return fn(*args)
        except MmwalError as exc:
            return exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MEMORY_CAP, f"{fn.__name__} allocated {peak} bytes"


# ---------------------------------------------------------------- value strategies
def nested(levels: int, kind: str):
    """A value with ``levels`` containers nested (around the shared metadata limit)."""
    v: object = 1
    for _ in range(levels):
        v = {"k": v} if kind == "map" else [v]
    return v


around_the_limit = st.builds(nested, st.integers(F.MAX_METADATA_DEPTH - 2,
                                                 F.MAX_METADATA_DEPTH + 2),
                             st.sampled_from(["map", "array"]))
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=40)
    | around_the_limit,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=5)
    | st.dictionaries(st.binary(max_size=3), kids, max_size=2),  # bytes keys: never written
    max_leaves=20)


@st.composite
def mutated(draw, original: bytes):
    """``original`` with a few bytes flipped, cut, or extended."""
    buf = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "cut", "extend", "zero"]))
        if action == "cut" or not buf:
            del buf[draw(st.integers(0, len(buf))):]
        elif action == "extend":
            buf += draw(st.binary(min_size=1, max_size=64))
        else:
            i = draw(st.integers(0, len(buf) - 1))
            if action == "flip":
                buf[i] ^= 1 << draw(st.integers(0, 7))
            elif action == "set":
                buf[i] = draw(st.integers(0, 255))
            else:
                j = min(len(buf), i + draw(st.integers(1, 16)))
                buf[i:j] = bytes(j - i)
    return bytes(buf)


# ---------------------------------------------------------------- frames
SEED = F.salt_seed(0x1234_5678_9ABC_DEF0)


def valid_frame(payload: bytes, first_seq: int = 7, kind: int = F.KIND_ADD, count: int = 1):
    return F.encode_frame(kind, first_seq, count, payload, SEED)


def check_frame_result(buf: bytes, off: int, expect: int) -> None:
    res = bounded(F.check_frame, buf, off, len(buf), SEED, expect)
    assert not isinstance(res, BaseException), res  # a pure checker: it never raises
    status, kind, count, n, nxt, why = res
    assert status in (F.FRAME_OK, F.FRAME_END, F.FRAME_BAD)
    if status == F.FRAME_OK:
        assert kind in F.KIND_NAMES and count >= 1
        assert off + F.FRAME_HEADER_SIZE + n <= len(buf) and nxt % F.FRAME_ALIGN == 0
    else:
        assert isinstance(why, str) and why


@FUZZ_BYTES
@given(st.binary(max_size=2048), st.integers(0, 64), st.integers(0, 2**64 - 1))
def test_check_frame_random_bytes(buf, off8, expect):
    check_frame_result(buf, min(off8 * 8, len(buf)), expect)


@FUZZ
@given(st.data(), st.binary(max_size=600))
def test_check_frame_mutated(data, payload):
    frame = valid_frame(payload)
    buf = data.draw(mutated(frame))
    check_frame_result(buf, 0, 7)
    # A header that claims a huge payload never allocates it.
    big = F.FRAME_PREFIX.pack(F.FRAME_MAGIC, 1, 0, 0, 0xFFFFFFFF, 1, 7) + bytes(8) + buf
    check_frame_result(big, 0, 7)


# ---------------------------------------------------------------- segment header
def check_header(buf: bytes) -> None:
    res = bounded(F.decode_segment_header, buf, "seg")
    assert isinstance(res, (F.SegmentHeader, MmwalError)), res
    if isinstance(res, F.SegmentHeader):
        assert res.first_seq >= 1


@FUZZ_BYTES
@given(st.binary(max_size=200))
def test_segment_header_random(buf):
    check_header(buf)


@FUZZ
@given(st.data(), st.integers(0, 2**64 - 1), st.integers(1, 2**63), st.integers(0, 2**64 - 1))
def test_segment_header_mutated(data, seg, first, salt):
    good = F.encode_segment_header(F.SegmentHeader(seg, salt, first, 1.5e9))
    check_header(good)
    check_header(data.draw(mutated(good)))


# ---------------------------------------------------------------- manifest / descriptor
def check_manifest(buf: bytes, descriptor: bool) -> None:
    if descriptor:
        res = bounded(F.decode_manifest, buf, "DESCRIPTOR", F.DESCRIPTOR_MAGIC,
                      F.DESCRIPTOR_FIELDS)
        fields = F.DESCRIPTOR_FIELDS
    else:
        res = bounded(F.decode_manifest, buf, "MANIFEST")
        fields = F.MANIFEST_FIELDS
    assert isinstance(res, (dict, MmwalError)), res
    if isinstance(res, dict):
        for key, typ in fields.items():
            assert type(res[key]) is typ
            if typ is int:
                assert res[key] >= 0


VID = 40
VDIM = 8
#: Field values around every rule an entry must keep (and wrong types).
entry_ints = st.sampled_from([0, 1, 2, 7, 8, 9, VID - 1, VID, VID + 1, V.MAX_ID, V.MAX_ID + 1,
                              -1, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1,
                              V.deletion_size(8), V.deletion_size(9)])
entry_value = entry_ints | st.integers(-(2**63), 2**64 - 1) | msgpack_values


def body_strategy(fields):
    typed = {int: st.integers(-5, 2**63 - 1), float: st.floats(), dict: st.dictionaries(
        st.text(max_size=16), msgpack_values, max_size=4),
        list: st.lists(st.lists(entry_value, max_size=7) | msgpack_values, max_size=4)}
    return st.fixed_dictionaries(
        {}, optional={k: typed[t] | msgpack_values for k, t in fields.items()}
    ).flatmap(lambda d: st.dictionaries(st.text(max_size=10), msgpack_values, max_size=3)
              .map(lambda extra: {**extra, **d}))


def encode_or_none(body, magic):
    try:
        return F.encode_manifest(body, magic)
    except (TypeError, ValueError, OverflowError):
        return None


@pytest.mark.parametrize("descriptor", [False, True])
@FUZZ
@given(data=st.data())
def test_manifest_checksummed_arbitrary_bodies(descriptor, data):
    fields = F.DESCRIPTOR_FIELDS if descriptor else F.MANIFEST_FIELDS
    magic = F.DESCRIPTOR_MAGIC if descriptor else F.MANIFEST_MAGIC
    body = data.draw(body_strategy(fields) | msgpack_values)
    buf = encode_or_none(body, magic)
    if buf is None:
        return
    check_manifest(buf, descriptor)
    check_manifest(data.draw(mutated(buf)), descriptor)


@pytest.mark.parametrize("descriptor", [False, True])
@FUZZ
@given(buf=st.binary(max_size=300))
def test_manifest_random_bytes(descriptor, buf):
    check_manifest(buf, descriptor)
    # A valid header in front of junk, with a length that says "huge".
    magic = F.DESCRIPTOR_MAGIC if descriptor else F.MANIFEST_MAGIC
    check_manifest(F.MANIFEST_HEADER.pack(magic, F.FORMAT_VERSION, 0xFFFFFFFF, 0) + buf,
                   descriptor)


# ---------------------------------------------------------------- frame payloads
@st.composite
def near_add_payload(draw):
    count = draw(st.integers(1, 4))
    dim = draw(st.integers(1, 8))
    obj = [draw(st.floats()), dim,
           [draw(st.text(max_size=6)) for _ in range(count)],
           [draw(st.text(max_size=6)) for _ in range(count)],
           [draw(st.none() | st.dictionaries(st.text(max_size=4), msgpack_values, max_size=2)
                 | st.dictionaries(st.text(max_size=4), around_the_limit, max_size=1))
            for _ in range(count)],
           bytes(4 * dim * count)]
    # Perturb one field (or none).
    i = draw(st.integers(0, len(obj)))
    if i < len(obj):
        obj[i] = draw(msgpack_values)
    return count, dim, obj


def within_limits(m, depth=0):
    """Str keys at every level, at most MAX_METADATA_DEPTH containers below the map."""
    if isinstance(m, (dict, list)):
        if depth > F.MAX_METADATA_DEPTH:
            return False
        if isinstance(m, dict) and not all(type(k) is str for k in m):
            return False
        return all(within_limits(v, depth + 1) for v in (m.values() if isinstance(m, dict)
                                                          else m))
    return True


def check_payload(kind, count, payload, dim):
    res = bounded(F.decode_payload, kind, count, payload, dim, "seg", 64)
    if isinstance(res, MmwalError):
        return
    if kind == F.KIND_ADD:
        assert isinstance(res, F.AddBatch)
        assert res.embeddings.shape == (count, dim) and res.embeddings.dtype == np.float32
        assert len(res.ids) == len(res.contents) == len(res.metadatas) == count
        assert all(type(x) is str for x in res.ids)
        # The limits writers keep hold for whatever a decoder lets through.
        assert all(0 < len(x.encode()) <= F.MAX_ID_BYTES for x in res.ids)
        assert all(within_limits(m) for m in res.metadatas)
    elif kind == F.KIND_REMOVE:
        assert isinstance(res, tuple) and len(res) == 2 and type(res[1]) is str
        assert 0 < len(res[1].encode()) <= F.MAX_ID_BYTES
    else:
        assert isinstance(res, tuple) and len(res) == 1


@FUZZ
@given(st.sampled_from(sorted(F.KIND_NAMES)), st.integers(1, 5), msgpack_values,
       st.integers(1, 16))
def test_payload_arbitrary_msgpack(kind, count, obj, dim):
    check_payload(kind, count, F.pack(obj), dim)


@FUZZ
@given(near_add_payload())
def test_payload_near_valid_add(case):
    count, dim, obj = case
    try:
        payload = F.pack(obj)
    except (TypeError, ValueError, OverflowError):
        return
    check_payload(F.KIND_ADD, count, payload, dim)


@FUZZ
@given(st.sampled_from(sorted(F.KIND_NAMES)), st.integers(1, 5), st.binary(max_size=400))
def test_payload_random_bytes(kind, count, buf):
    check_payload(kind, count, buf, 4)
    # msgpack headers that announce enormous containers allocate nothing big.
    for head in (b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
                 b"\xdb\xff\xff\xff\xff"):
        check_payload(kind, count, head + buf, 4)


# ---------------------------------------------------------------- metadata chunks
def check_chunk(data: bytes, rows: int, limit: int = 1 << 16) -> None:
    res = bounded(decode_chunk, data, limit, rows, "docs.lz4", 0)
    if isinstance(res, MmwalError):
        return
    assert isinstance(res, list) and len(res) == rows
    for pair in res:
        assert type(pair[0]) is str and (pair[1] is None or type(pair[1]) is dict)
    assert all(within_limits(pair[1]) for pair in res)


def compress(obj) -> bytes | None:
    try:
        raw = F.pack(obj)
    except (TypeError, ValueError, OverflowError):
        return None
    return lz4.frame.compress(raw, content_checksum=True, store_size=True)


@FUZZ
@given(st.data(), st.integers(1, 4))
def test_chunk_valid_and_mutated(data, rows):
    pairs = [[data.draw(st.text(max_size=30)),
              data.draw(st.none() | st.dictionaries(st.text(max_size=5), msgpack_values,
                                                    max_size=3))]
             for _ in range(rows)]
    good = compress(pairs)
    if good is None:
        return
    res = bounded(decode_chunk, good, 1 << 16, rows, "docs.lz4", 0)
    # Compared as msgpack bytes: NaN != NaN.
    assert isinstance(res, MmwalError) or F.pack(res) == F.pack(pairs)
    check_chunk(data.draw(mutated(good)), rows)
    check_chunk(good, rows + 1)


@FUZZ
@given(msgpack_values, st.integers(1, 4))
def test_chunk_arbitrary_content(obj, rows):
    data = compress(obj)
    if data is not None:
        check_chunk(data, rows)


@FUZZ_BYTES
@given(st.binary(max_size=400), st.integers(1, 4))
def test_chunk_random_bytes(buf, rows):
    check_chunk(buf, rows)
    check_chunk(lz4.frame.compress(buf), rows)


def test_chunk_that_inflates_far_beyond_its_limit_is_refused():
    bomb = lz4.frame.compress(bytes(200 << 20), content_checksum=True, store_size=True)
    assert len(bomb) < 2 << 20
    res = bounded(decode_chunk, bomb, 1 << 16, 1, "docs.lz4", 0)
    assert isinstance(res, MmwalError)


# ---------------------------------------------------------------- versions, deletion vectors
def strict(fn, *args):
    """Call ``fn``: a value, CorruptionError or FormatVersionError - nothing else - within
    the memory cap (KeyError, struct.error, ValueError, MemoryError... fail the test)."""
    tracemalloc.start()
    try:
        try:
            return fn(*args)
        except (CorruptionError, FormatVersionError) as exc:
            return exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < MEMORY_CAP, f"{fn.__name__} allocated {peak} bytes"


@st.composite
def valid_entries(draw):
    """Entries a writer could produce for version VID."""
    out = []
    fids = draw(st.lists(st.integers(1, VID), unique=True, max_size=5) | st.lists(
        st.integers(1, VID - 1), unique=True, min_size=1, max_size=3))
    for fid in fids:
        rows = draw(st.integers(0, 300) | st.integers(1, 20))
        dead = draw(st.integers(0, rows) | st.just(min(rows, 1)))
        if dead and fid < VID:
            dv = draw(st.integers(fid + 1, VID))
            out.append([fid, rows, dead, dv, V.deletion_size(rows),
                        draw(st.integers(0, 0xFFFFFFFF))])
        else:
            out.append([fid, rows, 0, 0, 0, 0])
    return out


@st.composite
def version_bodies(draw):
    entries = draw(valid_entries())
    wild = draw(st.booleans())
    if entries and not wild:
        # One field of one entry nudged across its rule, everything else valid.
        e = draw(st.sampled_from(entries))
        k = draw(st.integers(0, 5))
        near = [e[k] + 1, e[k] - 1, 0, e[0], VID, VID + 1, V.deletion_size(e[1]),
                V.deletion_size(e[1] + 8)]
        e[k] = draw(st.sampled_from(near))
    for _ in range(draw(st.integers(0, 2)) if wild else 0):  # break anything, anyhow
        if entries and draw(st.booleans()):
            e = draw(st.sampled_from(entries))
            e[draw(st.integers(0, len(e) - 1))] = draw(entry_value)
        else:
            entries.append(draw(st.lists(entry_value, min_size=5, max_size=7)))
    live = 0
    for e in entries:
        try:
            live += e[1] - e[2]
        except (TypeError, IndexError, KeyError):
            pass
    body = {"id": VID, "seq": draw(st.integers(0, 2**63 - 1)), "dim": VDIM,
            "documents": live if not wild or draw(st.integers(0, 9)) else draw(entry_ints),
            "created": 1.5, "fragments": entries}
    if wild and not draw(st.integers(0, 4)):  # a wrong id, dim, missing or extra field
        k = draw(st.sampled_from(sorted(V.VERSION_FIELDS)))
        if draw(st.booleans()):
            del body[k]
        else:
            body[k] = draw(entry_value)
    return body


def check_version(buf: bytes) -> None:
    res = strict(V.decode_version, buf, "00000040.version", VID, VDIM)
    assert isinstance(res, (V.Version, MmwalError)), res
    if isinstance(res, V.Version):
        assert res.id == VID and not res.legacy
        assert res.documents == sum(e.rows - e.dead for e in res.entries)
        assert len({e.fid for e in res.entries}) == len(res.entries)
        for e in res.entries:
            assert all(type(x) is int for x in e.encode())
            assert 1 <= e.fid <= VID and 0 <= e.dead <= e.rows
            if e.dv:
                assert e.fid < e.dv <= VID and e.dead
                assert e.dv_size == V.deletion_size(e.rows) and 0 <= e.dv_crc <= 0xFFFFFFFF
            else:
                assert e.dead == e.dv_size == e.dv_crc == 0


@FUZZ_BYTES
@given(data=st.data())
def test_version_checksummed_bodies(data):
    """Validly checksummed version files around near-valid and arbitrary bodies."""
    body = data.draw(version_bodies() | body_strategy(V.VERSION_FIELDS) | msgpack_values)
    buf = encode_or_none(body, V.VERSION_MAGIC)
    if buf is None:
        return
    check_version(buf)
    check_version(data.draw(mutated(buf)))


@FUZZ_BYTES
@given(buf=st.binary(max_size=300))
def test_version_random_bytes(buf):
    check_version(buf)
    # A valid header in front of junk, with a length that says "huge".
    check_version(F.MANIFEST_HEADER.pack(V.VERSION_MAGIC, 1, 0xFFFFFFFF, 0) + buf)
    check_version(F.MANIFEST_HEADER.pack(V.VERSION_MAGIC, 2, len(buf), 0) + buf)


def test_version_from_a_newer_format_is_refused_as_such():
    buf = F.encode_manifest({"id": VID, "seq": 1, "dim": VDIM, "documents": 0, "created": 1.0,
                             "fragments": []}, V.VERSION_MAGIC, V.VERSION_FORMAT + 1)
    assert isinstance(strict(V.decode_version, buf, "v", VID, VDIM), FormatVersionError)


@st.composite
def deletion_cases(draw):
    """(entry, the valid file for it, its mask)."""
    rows = draw(st.integers(0, 200))
    mask = np.array(draw(st.lists(st.booleans(), min_size=rows, max_size=rows)), bool)
    if rows and not mask.any():
        mask[draw(st.integers(0, rows - 1))] = True
    fid = draw(st.integers(1, 1000))
    vid = draw(st.integers(fid + 1, V.MAX_ID))
    raw = V.encode_deletions(fid, vid, mask)
    entry = V.Entry(fid, rows, int(mask.sum()), vid, len(raw), zlib.crc32(raw))
    return entry, raw, mask


def check_deletions(raw: bytes, entry: V.Entry, original: bytes, mask: np.ndarray) -> None:
    res = strict(V.decode_deletions, raw, "f.deleted", entry)
    if isinstance(res, MmwalError):
        assert raw != original, f"the valid vector was refused: {res}"
        assert isinstance(res, CorruptionError)
        return
    # Accepted: exactly the bytes written (the size and both CRCs pin them).
    assert raw == original
    assert res.dtype == bool and res.shape == (entry.rows,) and np.array_equal(res, mask)


@FUZZ_BYTES
@given(deletion_cases(), st.data())
def test_deletions_valid_and_mutated(case, data):
    entry, raw, mask = case
    check_deletions(raw, entry, raw, mask)
    check_deletions(data.draw(mutated(raw)), entry, raw, mask)


@FUZZ_BYTES
@given(deletion_cases(), st.binary(max_size=120), st.integers(0, 2**64 - 1))
def test_deletions_random_bytes_and_lying_headers(case, junk, rows):
    entry, raw, mask = case
    check_deletions(junk, entry, raw, mask)
    # A header that claims ``rows`` (up to 2**64 - 1) rows, on a file of another size:
    # nothing is allocated from the claim (and a version entry that claims them too).
    hdr = V.DELETION_HEADER.pack(V.DELETION_MAGIC, V.DELETION_FORMAT, entry.fid, entry.dv,
                                 rows, entry.dead, 0)
    check_deletions(hdr + junk, entry, raw, mask)
    liar = V.Entry(entry.fid, rows, min(entry.dead, rows), entry.dv, V.deletion_size(rows),
                   entry.dv_crc)
    res = strict(V.decode_deletions, hdr + junk, "f.deleted", liar)
    assert isinstance(res, CorruptionError) or len(hdr + junk) == V.deletion_size(rows)


# ---------------------------------------------------------------- lazy decode of add payloads
def check_lazy_add(count: int, payload: bytes, dim: int) -> None:
    """ids + vectors now, documents later: together exactly what the full decode does."""
    full = bounded(F.decode_payload, F.KIND_ADD, count, payload, dim, "seg", 64)
    only_ids = bounded(F.decode_add_ids, count, payload, dim, "seg", 64)
    if not isinstance(full, MmwalError):  # (ids alone may pass where the rest is bad)
        assert only_ids == full.ids
    part = bounded(F.decode_add_ids_vectors, count, payload, dim, "seg", 64)
    if not isinstance(part, MmwalError):
        assert part[1] == only_ids
    if not isinstance(part, MmwalError):
        ts, ids, emb, docs = part
        rest = bounded(F.decode_docs, docs, count, "seg", 64)
        part = rest if isinstance(rest, MmwalError) else (ts, ids, emb, *rest)
    if isinstance(full, MmwalError):
        assert isinstance(part, MmwalError), "the lazy decode accepted what the full one refuses"
        return
    assert not isinstance(part, MmwalError), f"the lazy decode refused a valid payload: {part}"
    ts, ids, emb, contents, metas = part
    # Compared as msgpack bytes: a NaN (timestamp or metadata) is equal to itself there.
    assert F.pack([ts, ids, contents, metas]) == F.pack([full.timestamp, full.ids,
                                                         full.contents, full.metadatas])
    assert emb == full.embeddings.tobytes()


@FUZZ
@given(near_add_payload())
def test_lazy_add_near_valid(case):
    count, dim, obj = case
    try:
        payload = F.pack(obj)
    except (TypeError, ValueError, OverflowError):
        return
    check_lazy_add(count, payload, dim)
    # Every cut and every single-byte change of it, too.
    for cut in (1, 7, len(payload) // 2):
        check_lazy_add(count, payload[:-cut], dim)


@FUZZ
@given(st.integers(1, 3), st.integers(1, 70), st.data())
def test_lazy_add_mutated_writer_payloads(count, dim, data):
    ids = [data.draw(st.text(min_size=0, max_size=40)) for _ in range(count)]
    contents = [data.draw(st.text(max_size=5)) for _ in range(count)]
    metas = [data.draw(st.none() | st.dictionaries(st.text(max_size=3), msgpack_values,
                                                   max_size=2)) for _ in range(count)]
    vecs = np.arange(count * dim, dtype=np.float32).reshape(count, dim)
    try:
        frame, n = F.add_frame(1.5, dim, ids, contents, metas, vecs)
    except (TypeError, ValueError, OverflowError):
        return
    payload = bytes(frame[F.FRAME_HEADER_SIZE : F.FRAME_HEADER_SIZE + n])
    check_lazy_add(count, payload, dim)
    check_lazy_add(count, payload, dim + 1)
    check_lazy_add(count + 1, payload, dim)
    i = data.draw(st.integers(0, len(payload) - 1))
    b = data.draw(st.integers(0, 255))
    check_lazy_add(count, payload[:i] + bytes([b]) + payload[i + 1 :], dim)


@pytest.mark.parametrize("dim", [1, 127, 128, 255, 256, 65535, 65536])
def test_lazy_add_other_encodings_of_the_same_fields(dim):
    # Not what mmwal's writers emit, but valid payloads: longer int, float and
    # bin headers, an array 16 header.  The lazy decode must take the slow path.
    vec = np.ones((1, dim), np.float32).tobytes()
    plain = F.pack([2.5, dim, ["a"], ["c"], [{"k": 1}], vec])
    check_lazy_add(1, plain, dim)
    assert F.decode_add_ids_vectors(1, plain, dim, "seg", 64)[:3] == (2.5, ["a"], vec)
    nv = len(vec)
    variants = [
        b"\x96\xca" + struct.pack(">f", 2.5) + plain[10:],  # float 32 timestamp
        plain[:10] + b"\xcf" + dim.to_bytes(8, "big") + plain[10 + len(F.pack(dim)):],
        plain[:-nv - len(F._bin_header(nv))] + b"\xc6" + nv.to_bytes(4, "big") + vec,
        b"\xdc\x00\x06" + plain[1:],  # array 16 of 6
    ]
    for v in variants:
        check_lazy_add(1, v, dim)
        assert F.decode_add_ids_vectors(1, v, dim, "seg", 64)[1:3] == (["a"], vec)


def test_a_vector_block_larger_than_four_gib_is_corruption_for_every_decoder():
    # count * dim * 4 >= 2**32: no bin header can announce it; every decoder must say
    # CorruptionError (the shortcut used to raise OverflowError building that header).
    payload = F.pack([1.0, 1 << 28, ["a"] * 4, ["c"] * 4, [None] * 4, b"x"])
    with pytest.raises(MmwalError):
        F.decode_add_ids_vectors(4, payload, 1 << 28, "seg", 64)
    # The ids alone are sound: a checkpoint's first pass reads them, its second refuses.
    assert F.decode_add_ids(4, payload, 1 << 28, "seg", 64) == ["a"] * 4
    check_lazy_add(4, payload, 1 << 28)
