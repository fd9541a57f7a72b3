"""Decoder fuzzing (Hypothesis): frames, segment headers, MANIFEST, DESCRIPTOR, payloads,
metadata chunks.

Every decoder fed arbitrary bytes - random, valid-then-mutated, and validly
checksummed containers around arbitrary msgpack (so the body checks run, not
only the CRC) - either returns a well-formed value or raises an MmwalError:
never another exception, never a huge allocation (tracemalloc peak under
64 MiB per example), never a hang (the per-test timeout).
"""

from __future__ import annotations

import tracemalloc

import lz4.frame
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmwal import _format as F
from mmwal._checkpoint import decode_chunk
from mmwal.errors import MmwalError

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


def body_strategy(fields):
    typed = {int: st.integers(-5, 2**63 - 1), float: st.floats(), dict: st.dictionaries(
        st.text(max_size=16), msgpack_values, max_size=4)}
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
