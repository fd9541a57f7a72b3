"""The pure codec (mmwal._format), byte for byte: no files, no locks.

The expected bytes are rebuilt here with ``struct``/``zlib`` from the layout,
independently of the encoders, so a change of the on-disk format fails here.
Format matrix after LevelDB's ``log_test.cc``: empty log, exact frame, truncated
header, length past EOF, bad CRC, wrong seq, zeros, wrong salt.
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmwal
from mmwal import _format as F
from mmwal.errors import CorruptionError, FormatVersionError, MmwalError

SALT = 0x0123456789ABCDEF
SEED = zlib.crc32(SALT.to_bytes(8, "little"))


def ref_frame(kind, first_seq, count, payload, seed=SEED, *, flags=0, res=0, res2=0,
              magic=0x5246574D, length=None):
    """A frame built from the layout: 24-byte prefix, CRC, 4 reserved, payload, pad to 8."""
    n = len(payload) if length is None else length
    prefix = struct.pack("<IBBHIIQ", magic, kind, flags, res, n, count, first_seq)
    crc = zlib.crc32(payload, zlib.crc32(prefix, seed))
    pad = b"\0" * (-len(payload) % 8)
    return prefix + struct.pack("<II", crc, res2) + payload + pad


def seg_header(first_seq=1, seg_id=1, salt=SALT):
    return F.encode_segment_header(F.SegmentHeader(seg_id, salt, first_seq, 1700000000.5))


def add_payload(ids, dim=4, ts=1.25, contents=None, metas=None):
    n = len(ids)
    emb = np.arange(n * dim, dtype="<f4").tobytes()
    return msgpack.packb([ts, dim, ids, contents or [""] * n, metas or [None] * n, emb],
                         use_bin_type=True)


# ====================================================================== segment header
def test_segment_header_layout_and_roundtrip():
    raw = seg_header(first_seq=42, seg_id=7)
    assert len(raw) == F.SEGMENT_HEADER_SIZE == 64
    magic, version, size, seg_id, salt, first, created, res, crc = struct.unpack(
        "<8sIIQQQd12sI", raw)
    assert (magic, version, size, seg_id, salt, first) == (b"MMWALSEG", 1, 64, 7, SALT, 42)
    assert created == 1700000000.5 and res == bytes(12)
    assert crc == zlib.crc32(raw[:60])
    h = F.decode_segment_header(raw)
    assert h == F.SegmentHeader(7, SALT, 42, 1700000000.5)
    assert h.seed == SEED == F.salt_seed(SALT)


@pytest.mark.parametrize("cut", range(64))
def test_segment_header_truncated(cut):
    with pytest.raises(CorruptionError) as ei:
        F.decode_segment_header(seg_header()[:cut], "seg")
    assert ei.value.path == "seg" and "truncated" in str(ei.value)


def test_segment_header_every_byte_flip_detected():
    raw = seg_header()
    for i in range(64):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(raw)
            bad[i] ^= mask
            with pytest.raises(CorruptionError):
                F.decode_segment_header(bytes(bad), "seg")


def test_segment_header_newer_version_and_bad_fields():
    raw = bytearray(seg_header())
    raw[8:12] = struct.pack("<I", 2)
    raw[60:64] = struct.pack("<I", zlib.crc32(bytes(raw[:60])))
    with pytest.raises(FormatVersionError) as ei:
        F.decode_segment_header(bytes(raw), "seg")
    assert ei.value.version == 2 and "upgrade" in str(ei.value)
    assert isinstance(ei.value, MmwalError)
    # first_seq 0 with a valid checksum: fields out of range.
    raw = bytearray(seg_header())
    raw[32:40] = bytes(8)
    raw[60:64] = struct.pack("<I", zlib.crc32(bytes(raw[:60])))
    with pytest.raises(CorruptionError):
        F.decode_segment_header(bytes(raw), "seg")


# ====================================================================== frames
def test_frame_bytes_match_the_layout():
    for n in range(17):
        payload = bytes(range(n))
        frame = F.encode_frame(F.KIND_ADD, 9, 1, payload, SEED)
        assert frame == ref_frame(F.KIND_ADD, 9, 1, payload)
        assert len(frame) % 8 == 0 and len(frame) == 32 + F.padded(n)


def test_check_frame_empty_log():
    buf = seg_header()
    assert F.check_frame(buf, 64, len(buf), SEED, 1)[0] == F.FRAME_END


def test_check_frame_exact_frames_back_to_back():
    p1 = add_payload(["a", "b"])
    p2 = msgpack.packb([2.5, "a"])
    f1 = F.encode_frame(F.KIND_ADD, 1, 2, p1, SEED)
    f2 = F.encode_frame(F.KIND_REMOVE, 3, 1, p2, SEED)
    buf = seg_header() + f1 + f2
    st1 = F.check_frame(buf, 64, len(buf), SEED, 1)
    assert st1 == (F.FRAME_OK, F.KIND_ADD, 2, len(p1), 64 + len(f1), "")
    st2 = F.check_frame(buf, st1[4], len(buf), SEED, 3)
    assert st2 == (F.FRAME_OK, F.KIND_REMOVE, 1, len(p2), len(buf), "")
    assert bytes(buf[64 + 32 : 64 + 32 + len(p1)]) == p1
    assert F.check_frame(buf, len(buf), len(buf), SEED, 4)[0] == F.FRAME_END
    # memoryview and bytearray buffers behave the same (the cursor passes a view of a map).
    assert F.check_frame(memoryview(bytearray(buf)), 64, len(buf), SEED, 1) == st1


def test_check_frame_truncated_header_is_end():
    frame = F.encode_frame(F.KIND_CLEAR, 1, 1, msgpack.packb([1.0]), SEED)
    buf = seg_header() + frame
    for cut in range(64, 64 + 32):
        assert F.check_frame(buf[:cut], 64, cut, SEED, 1)[0] == F.FRAME_END


def test_check_frame_length_past_eof_is_bad_and_padding_is_optional():
    payload = add_payload(["x"])
    assert len(payload) % 8  # so that the frame has padding
    frame = F.encode_frame(F.KIND_ADD, 1, 1, payload, SEED)
    buf = seg_header() + frame
    payload_end = 64 + 32 + len(payload)
    for cut in range(64 + 32, payload_end):
        assert F.check_frame(buf[:cut], 64, cut, SEED, 1)[0] == F.FRAME_BAD
    # The zero padding is outside the CRC: a frame whose payload is complete is whole.
    for cut in range(payload_end, len(buf) + 1):
        status, _k, _c, n, nxt, _w = F.check_frame(buf[:cut], 64, cut, SEED, 1)
        assert (status, n, nxt) == (F.FRAME_OK, len(payload), len(buf))


def test_check_frame_every_flip_of_header_and_payload_is_bad():
    payload = add_payload(["a", "b", "c"])
    frame = F.encode_frame(F.KIND_ADD, 5, 3, payload, SEED)
    buf = bytearray(seg_header() + frame)
    for i in range(64, 64 + 32 + len(payload)):
        for mask in (0x01, 0x10, 0xFF):
            buf[i] ^= mask
            status = F.check_frame(bytes(buf), 64, len(buf), SEED, 5)[0]
            buf[i] ^= mask
            assert status == F.FRAME_BAD, f"flip {mask:#x} at {i} not detected"


def test_check_frame_wrong_seq_wrong_salt_zeros():
    payload = msgpack.packb([1.0, "gone"])
    buf = seg_header() + F.encode_frame(F.KIND_REMOVE, 7, 1, payload, SEED)
    assert F.check_frame(buf, 64, len(buf), SEED, 7)[0] == F.FRAME_OK
    st_ = F.check_frame(buf, 64, len(buf), SEED, 8)
    assert st_[0] == F.FRAME_BAD and "sequence" in st_[5]
    # A frame left by another segment (another salt) never validates here.
    other = zlib.crc32((SALT ^ 1).to_bytes(8, "little"))
    assert F.check_frame(buf, 64, len(buf), other, 7)[0] == F.FRAME_BAD
    zeros = seg_header() + bytes(256)
    for off in range(64, 64 + 256, 8):
        assert F.check_frame(zeros, off, len(zeros), SEED, 1)[0] == F.FRAME_END


@pytest.mark.parametrize("fields", [
    {"kind": 0}, {"kind": 4}, {"kind": 255}, {"flags": 1}, {"res": 1}, {"res2": 1},
    {"count": 0}, {"kind": F.KIND_REMOVE, "count": 2}, {"kind": F.KIND_CLEAR, "count": 2},
    {"count": 10_000},  # more documents than payload bytes
])
def test_check_frame_impossible_fields_with_valid_crc_are_bad(fields):
    args = {"kind": F.KIND_ADD, "count": 1, **fields}
    kind, count = args.pop("kind"), args.pop("count")
    frame = ref_frame(kind, 1, count, b"\x91\xcb" + bytes(8) + b"pad", **args)
    buf = seg_header() + frame
    assert F.check_frame(buf, 64, len(buf), SEED, 1)[0] == F.FRAME_BAD


def test_check_frame_huge_length_is_bad_without_allocating():
    for n in (F.MAX_PAYLOAD + 1, 0xFFFFFFFF):
        frame = ref_frame(F.KIND_ADD, 1, 1, b"", length=n)
        buf = seg_header() + frame
        tracemalloc.start()
        try:
            # Even a (lying) huge limit must not make it allocate or read n bytes.
            status = F.check_frame(buf, 64, 1 << 40, SEED, 1)[0]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert status == F.FRAME_BAD
        assert peak < 1 << 20


# ====================================================================== payloads
def test_decode_payload_roundtrip():
    p = add_payload(["a", "b"], contents=["x", ""], metas=[{"k": [1, None]}, None])
    b = F.decode_payload(F.KIND_ADD, 2, memoryview(p), 4, "seg", 96)
    assert b.ids == ["a", "b"] and b.contents == ["x", ""]
    assert b.metadatas == [{"k": [1, None]}, None] and b.timestamp == 1.25
    assert b.embeddings.dtype == np.dtype("<f4") and b.embeddings.shape == (2, 4)
    assert np.array_equal(b.embeddings, np.arange(8, dtype="<f4").reshape(2, 4))
    assert F.decode_payload(F.KIND_REMOVE, 1, msgpack.packb([2.0, "a"]), 4, "s", 0) == (2.0, "a")
    assert F.decode_payload(F.KIND_CLEAR, 1, msgpack.packb([3.0]), 4, "s", 0) == (3.0,)


GOOD_ADD = add_payload(["a"])
MALFORMED = [
    (F.KIND_ADD, b""),
    (F.KIND_ADD, b"\xc1"),  # a byte msgpack never uses
    (F.KIND_ADD, GOOD_ADD[:-3]),  # torn
    (F.KIND_ADD, GOOD_ADD + b"\x00"),  # extra data
    (F.KIND_ADD, b"\x91" * 100_000 + b"\xc0"),  # nested too deep
    (F.KIND_ADD, b"\xdd\xff\xff\xff\xff"),  # array32 claiming 4 G items
    (F.KIND_ADD, b"\xc6\xff\xff\xff\xff"),  # bin32 claiming 4 GiB
    (F.KIND_ADD, msgpack.packb([1.0, msgpack.ExtType(5, b"x")])),
    (F.KIND_ADD, b"\x91\xa2\xff\xfe"),  # invalid UTF-8
    (F.KIND_ADD, msgpack.packb({1: 2})),  # int map key
    (F.KIND_ADD, msgpack.packb({"a": 1})),  # not an array
    (F.KIND_ADD, msgpack.packb([1, 4, ["a"], [""], [None], bytes(16)])),  # int timestamp
    (F.KIND_ADD, msgpack.packb([1.0, 4, ["a"], [""], [None]])),  # 5 fields
    (F.KIND_ADD, add_payload(["a"], dim=3)),  # other dimension
    (F.KIND_ADD, msgpack.packb([1.0, 4, ["a"], [""], [None], bytes(15)])),  # short block
    (F.KIND_ADD, msgpack.packb([1.0, 4, ["a"], [""], [None], "x" * 16])),  # str, not bin
    (F.KIND_ADD, msgpack.packb([1.0, 4, "a", [""], [None], bytes(16)])),
    (F.KIND_ADD, msgpack.packb([1.0, 4, [1], [""], [None], bytes(16)])),  # int id
    (F.KIND_ADD, msgpack.packb([1.0, 4, ["a"], [b"x"], [None], bytes(16)])),  # bytes content
    (F.KIND_ADD, msgpack.packb([1.0, 4, ["a"], [""], [[1]], bytes(16)])),  # list metadata
    (F.KIND_ADD, add_payload(["a", "b"])),  # count 1, two documents
    (F.KIND_REMOVE, msgpack.packb([1.0, 5])),
    (F.KIND_REMOVE, msgpack.packb([1.0])),
    (F.KIND_REMOVE, msgpack.packb([1.0, "a", "b"])),
    (F.KIND_CLEAR, msgpack.packb([1.0, None])),
    (F.KIND_CLEAR, msgpack.packb([])),
    (F.KIND_CLEAR, msgpack.packb(None)),
]


@pytest.mark.parametrize(("kind", "payload"), MALFORMED)
def test_decode_payload_malformed_is_corruption_only(kind, payload):
    with pytest.raises(CorruptionError) as ei:
        F.decode_payload(kind, 1, payload, 4, "seg-path", 1234)
    assert ei.value.path == "seg-path" and ei.value.offset == 1234
    assert "seg-path" in str(ei.value) and "1234" in str(ei.value)


# ====================================================================== manifest
BODY = {"format": 1, "dim": 384, "created": 1.5, "checkpoint": 0, "checkpoint_seq": 0,
        "replay_segment": 1, "checkpoint_documents": 0}


def test_manifest_layout_and_roundtrip():
    raw = F.encode_manifest(BODY)
    magic, version, n, crc = struct.unpack_from("<8sIII", raw)
    assert (magic, version, n) == (b"MMWALMAN", F.MANIFEST_VERSION, len(raw) - 20)
    data = raw[20:]
    assert msgpack.unpackb(data) == BODY
    assert crc == zlib.crc32(data, zlib.crc32(struct.pack("<8sIII", magic, version, n, 0)))
    assert F.decode_manifest(raw) == BODY


def test_manifest_damage_is_corruption():
    raw = F.encode_manifest(BODY)
    for cut in range(len(raw)):
        with pytest.raises(CorruptionError):
            F.decode_manifest(raw[:cut], "M")
    with pytest.raises(CorruptionError):
        F.decode_manifest(raw + b"\0", "M")
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        # The version word (bytes 8-11) is read before the checksum: a flip there
        # may read as "written by a newer format" instead; any other flip is corruption.
        expected = (CorruptionError, FormatVersionError) if 8 <= i < 12 else CorruptionError
        with pytest.raises(expected):
            F.decode_manifest(bytes(bad), "M")
    with pytest.raises(CorruptionError) as ei:
        F.decode_manifest(b"NOTAMANI" + raw[8:], "M")
    assert "magic" in str(ei.value) and ei.value.offset == 0


def test_manifest_huge_length_field_is_corruption_without_allocating():
    raw = bytearray(F.encode_manifest(BODY))
    for n in (F.MAX_MANIFEST_BODY + 1, 0xFFFFFFFF):
        raw[12:16] = struct.pack("<I", n)
        tracemalloc.start()
        try:
            with pytest.raises(CorruptionError):
                F.decode_manifest(bytes(raw), "M")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20


def test_manifest_newer_version(monkeypatch):
    raw = F.encode_manifest(BODY, version=F.MANIFEST_VERSION + 1)
    with pytest.raises(FormatVersionError) as ei:
        F.decode_manifest(raw, "M")
    assert ei.value.version == F.MANIFEST_VERSION + 1 and "upgrade" in str(ei.value)
    # Format 1 (one checkpoint) and 2 (versions of fragments) both read.
    for v in (1, F.MANIFEST_VERSION):
        assert F.decode_manifest(F.encode_manifest(BODY, version=v), "M") == BODY


@pytest.mark.parametrize("body", [
    [1, 2], {k: v for k, v in BODY.items() if k != "dim"}, {**BODY, "dim": "384"},
    {**BODY, "dim": 0}, {**BODY, "created": 1}, {**BODY, "checkpoint_seq": -1},
])
def test_manifest_bad_body_with_valid_crc(body):
    with pytest.raises(CorruptionError):
        F.decode_manifest(F.encode_manifest(body), "M")


# ====================================================================== tail record
def test_tail_record_roundtrip_and_rejections():
    boot = bytes(range(16))
    t = F.Tail(3, 4096, 77, 0, 2, 1024)
    raw = F.encode_tail(boot, t)
    assert len(raw) == F.TAIL_AREA and raw[F.PENDING_OFFSET :] == bytes(8)
    assert F.decode_tail(raw, boot) == t
    assert F.decode_tail(raw, bytes(16)) is None  # another boot: untrusted
    for i in range(F.TAIL_SIZE):
        bad = bytearray(raw)
        bad[i] ^= 0x04
        assert F.decode_tail(bytes(bad), boot) is None
    assert F.decode_tail(bytes(F.TAIL_AREA), boot) is None


# ====================================================================== fuzz
FUZZ = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
_frame_for_fuzz = F.encode_frame(F.KIND_ADD, 1, 2, add_payload(["p", "q"]), SEED)


@FUZZ
@given(data=st.binary(max_size=300), off=st.integers(0, 64), seed=st.integers(0, 2**32 - 1),
       seq=st.integers(1, 2**40))
def test_fuzz_check_frame_random_bytes(data, off, seed, seq):
    status, _k, _c, n, nxt, _w = F.check_frame(data, off, len(data), seed, seq)
    assert status in (F.FRAME_OK, F.FRAME_END, F.FRAME_BAD)
    if status == F.FRAME_OK:
        assert off + 32 + n <= len(data) and nxt % 8 == off % 8


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(_frame_for_fuzz) - 1),
                                st.integers(1, 255)), min_size=1, max_size=4))
def test_fuzz_damaged_frame_never_validates_with_other_bytes(edits):
    buf = bytearray(_frame_for_fuzz)
    for i, x in edits:
        buf[i] ^= x
    status, kind, count, n, _nxt, _w = F.check_frame(bytes(buf), 0, len(buf), SEED, 1)
    if status == F.FRAME_OK:  # only possible if every edit hit the padding
        assert bytes(buf[: 32 + n]) == _frame_for_fuzz[: 32 + n]
        b = F.decode_payload(kind, count, bytes(buf[32 : 32 + n]), 4, "s", 0)
        assert b.ids == ["p", "q"]


@FUZZ
@given(data=st.binary(max_size=200))
def test_fuzz_decoders_raise_only_mmwal_errors(data):
    for fn in (lambda: F.decode_segment_header(data, "s"),
               lambda: F.decode_manifest(data, "m"),
               lambda: F.decode_manifest(F.encode_manifest(BODY)[:20] + data, "m")):
        try:
            fn()
        except MmwalError:
            pass
    for kind in (F.KIND_ADD, F.KIND_REMOVE, F.KIND_CLEAR):
        for count in (1, 3):
            try:
                F.decode_payload(kind, count, data, 4, "p", 0)
            except CorruptionError:
                pass


@FUZZ
@given(obj=st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers(-2**63, 2**64 - 1)
    | st.text(max_size=5) | st.binary(max_size=5),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=3), c, max_size=4),
    max_leaves=12))
def test_fuzz_decode_payload_structured_garbage(obj):
    raw = msgpack.packb(obj, use_bin_type=True)
    for kind in (F.KIND_ADD, F.KIND_REMOVE, F.KIND_CLEAR):
        try:
            F.decode_payload(kind, 1, raw, 4, "p", 0)
        except CorruptionError:
            pass


def test_public_errors_hierarchy():
    assert issubclass(mmwal.CorruptionError, mmwal.MmwalError)
    assert issubclass(mmwal.CorruptionError, ValueError)
    assert issubclass(mmwal.LockTimeout, TimeoutError)
