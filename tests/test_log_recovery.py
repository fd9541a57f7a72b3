"""Recovery of a damaged log: torn tails, junk, truncation, byte flips, damage matrix.

All damage is done to COPIES of a store built once per module.  The oracle is
exact: replay yields precisely the records of the whole frames before the
damage (a torn, unacknowledged tail) or raises CorruptionError (damage with
committed data after it) - never another exception, never other data; verify
never raises and is ok exactly when replay succeeded; after a torn tail a new
Store appends with the next seq and replay shows prefix + new records.

The ``tail`` file is a hint trusted when its checksum and boot id are valid:
left intact it says where the log ends, so cutting into committed frames is
corruption; zeroed (reboot, never-written record) or stale with the pending
word set (a writer killed mid-write) it is rebuilt from the log.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from helpers import (
    DIM,
    check_contiguous,
    copy_store,
    doc_content,
    doc_id,
    doc_meta,
    expected_add,
    frame_spans,
    overwrite,
    read_bytes,
    read_log,
    segment_files,
    set_tail,
    vec,
    vecs,
)

import mmwal
from mmwal import _format as F


def _build(path, segment_bytes=64 << 20, n_rounds=1):
    """A store whose frames mix every kind; returns the full replay as tuples."""
    cfg = mmwal.Config(segment_bytes=segment_bytes)
    with mmwal.Store(path, dim=DIM, durability="os", config=cfg) as s:
        for r in range(n_rounds):
            k = 100 * r
            s.add(doc_id(k + 1), vec(k + 1), content=doc_content(k + 1), metadata=doc_meta(k + 1))
            keys = [k + 2, k + 3, k + 4]
            s.add_many([doc_id(x) for x in keys], vecs(k + 2, 3), [doc_content(x) for x in keys],
                       [doc_meta(x) for x in keys])
            s.remove(doc_id(k + 2))
            s.add(doc_id(k + 5), vec(k + 5), content=doc_content(k + 5))
            if r % 2 == 0:
                s.clear()
            s.add_many([doc_id(k + 6), doc_id(k + 7)], vecs(k + 6, 2),
                       metadatas=[doc_meta(k + 6), None])
            s.add(doc_id(k + 8), vec(k + 8), content=doc_content(k + 8), metadata=doc_meta(k + 8))
    return read_log(path)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One segment, seven frames: (path, full log, frame spans)."""
    path = str(tmp_path_factory.mktemp("base") / "store")
    log = _build(path)
    (seg,) = segment_files(path)
    spans = frame_spans(seg)
    assert len(spans) == 7 and sum(s[4] for s in spans) == len(log) == 10
    return path, log, spans


@pytest.fixture(scope="module")
def multi(tmp_path_factory):
    """Several segments of 4 KiB: (path, full log)."""
    path = str(tmp_path_factory.mktemp("multi") / "store")
    log = _build(path, segment_bytes=4096, n_rounds=12)
    assert len(segment_files(path)) >= 4
    return path, log


def prefix_records(spans, n_frames):
    return sum(s[4] for s in spans[:n_frames])


def outcome(path, **kw):
    """('ok', ops) or ('corrupt', error); any other exception propagates (a failure)."""
    try:
        return "ok", read_log(path, **kw)
    except mmwal.CorruptionError as exc:
        return "corrupt", exc


def check_append_after(path, prefix):
    """A new Store continues the recovered prefix; replay and verify agree."""
    with mmwal.Store(path, durability="os") as s:
        key = 9000 + len(prefix)
        seq = s.add(doc_id(key), vec(key), content=doc_content(key), metadata=doc_meta(key))
        seqs = s.add_many([doc_id(key + 1), doc_id(key + 2)], vecs(key + 1, 2))
    assert seq == len(prefix) + 1 and list(seqs) == [seq + 1, seq + 2]
    log = read_log(path)
    assert log[: len(prefix)] == prefix
    assert log[len(prefix)] == expected_add(seq, key)
    assert [o[2] for o in log[len(prefix) + 1 :]] == [doc_id(key + 1), doc_id(key + 2)]
    check_contiguous(log)
    report = mmwal.verify(path)
    assert report.ok, report.problems
    assert report.records == len(log) == len(prefix) + 3


# ====================================================================== torn tail
@pytest.mark.parametrize("tail", ["zeroed", "stale", "deleted"])
def test_cut_at_every_offset_of_the_last_frames(base, tmp_path, tail):
    path, log, spans = base
    seg_name = os.path.relpath(segment_files(path)[0], path)
    start = spans[-2][0]
    end = spans[-1][2]
    for cut in range(start, end):
        work = copy_store(path, str(tmp_path / "w"))
        os.truncate(os.path.join(work, seg_name), cut)
        whole = [s for s in spans if s[1] <= cut]  # the padding may be missing
        n = prefix_records(spans, len(whole))
        set_tail(work, tail, end=whole[-1][2], last_seq=n)
        assert outcome(work) == ("ok", log[:n]), f"cut at {cut}"
        report = mmwal.verify(work)
        assert report.ok, (cut, report.problems)
        assert report.records == n and report.last_seq == n
        # Appending after a torn write seals the segment (fdatasync, new segment):
        # ~10 ms each, so every 4th cut plus every frame boundary and its neighbours.
        edges = {x + d for sp in spans[-2:] for x in sp[:3] for d in (-1, 0, 1)}
        if cut % 4 == 0 or cut in edges:
            check_append_after(work, log[:n])


@pytest.mark.parametrize("tail", ["kept", "zeroed"])
@pytest.mark.parametrize("junk", ["zeros", "random", "short-random", "ones", "frame-copy",
                                  "other-salt-frame", "huge-length-header"])
def test_junk_after_the_last_frame(base, tmp_path, tail, junk):
    path, log, spans = base
    work = copy_store(path, str(tmp_path / "w"))
    (seg,) = segment_files(work)
    rng = random.Random(junk)
    last_frame = read_bytes(seg)[spans[-1][0] : spans[-1][2]]
    salt_seed = F.salt_seed(12345)
    data = {
        "zeros": bytes(300),
        "random": rng.randbytes(300),
        "short-random": rng.randbytes(5),
        "ones": b"\xff" * 64,
        "frame-copy": last_frame,  # a stale duplicate: wrong seq here
        "other-salt-frame": F.encode_frame(F.KIND_CLEAR, len(log) + 1, 1,
                                           F.pack([1.0]), salt_seed),
        "huge-length-header": F.FRAME_PREFIX.pack(F.FRAME_MAGIC, 1, 0, 0, 0xFFFFFFF0, 1,
                                                  len(log) + 1) + bytes(8),
    }[junk]
    with open(seg, "ab") as f:
        f.write(data)
    set_tail(work, tail)
    assert outcome(work) == ("ok", log)
    report = mmwal.verify(work)
    assert report.ok, report.problems
    assert report.records == len(log)
    check_append_after(work, log)


def test_intact_tail_record_makes_a_cut_frame_corruption(base, tmp_path):
    """The tail record of this boot says the log ends later: cutting committed data is loud."""
    path, log, spans = base
    start, payload_end = spans[-1][0], spans[-1][1]
    seg_name = os.path.relpath(segment_files(path)[0], path)
    for cut in range(start + 1, payload_end):
        work = copy_store(path, str(tmp_path / "w"))
        seg = os.path.join(work, seg_name)
        os.truncate(seg, cut)
        kind, err = outcome(work)
        assert kind == "corrupt", f"cut at {cut} not reported"
        assert err.path == seg and err.offset == start
        assert seg in str(err) and str(start) in str(err)
        report = mmwal.verify(work)
        assert not report.ok
        assert any(p.file == seg and p.offset == start for p in report.problems)
        # The explicit salvage mode stops before the damage instead.
        n = prefix_records(spans, len(spans) - 1)
        assert read_log(work, mode="point-in-time") == log[:n]


def test_intact_tail_record_makes_a_cut_at_a_frame_boundary_corruption(base, tmp_path):
    """A whole frame cut off: the file ends cleanly, but the tail record knows better."""
    path, log, spans = base
    work = copy_store(path, str(tmp_path / "w"))
    (seg,) = segment_files(work)
    for k in (len(spans) - 1, len(spans) - 3):
        copy_store(path, work)
        os.truncate(seg, spans[k][0])
        with pytest.raises(mmwal.CorruptionError) as ei:
            read_log(work)
        assert ei.value.path == seg
        assert not mmwal.verify(work).ok
        assert read_log(work, mode="point-in-time") == log[: prefix_records(spans, k)]


# ====================================================================== byte flips
def _flip_expectation(spans, off, tail):
    """('ok', n records) or ('corrupt', None) for a flipped byte at ``off`` of the segment."""
    if off < F.SEGMENT_HEADER_SIZE:
        return "corrupt", None
    for k, (start, payload_end, padded_end, _seq, _count) in enumerate(spans):
        if start <= off < padded_end:
            if off >= payload_end:
                return "ok", prefix_records(spans, len(spans))  # padding: outside the CRC
            if k < len(spans) - 1 or tail == "kept":
                return "corrupt", None
            return "ok", prefix_records(spans, k)
    raise AssertionError(off)


@pytest.mark.parametrize("tail", ["kept", "deleted"])
def test_flip_every_byte_of_the_segment(base, tmp_path, tail):
    path, log, spans = base
    work = copy_store(path, str(tmp_path / "w"))
    (seg,) = segment_files(work)
    original = read_bytes(seg)
    tail_file = os.path.join(work, "tail")
    tail_bytes = read_bytes(tail_file)
    assert len(original) == spans[-1][2]
    for off in range(len(original)):
        mask = 1 << (off % 8) if off % 3 else 0xFF
        damaged = bytearray(original)
        damaged[off] ^= mask
        overwrite(seg, damaged)  # a fresh copy of the segment, one byte flipped
        if tail == "kept":
            overwrite(tail_file, tail_bytes)
        elif os.path.exists(tail_file):
            os.unlink(tail_file)
        kind, got = outcome(work)
        want, n = _flip_expectation(spans, off, tail)
        assert kind == want, f"flip {mask:#x} at offset {off}: {kind}"
        if kind == "ok":
            assert got == log[:n], f"flip at {off}: wrong data"
        else:
            assert got.path == seg
        report = mmwal.verify(work)
        assert report.ok == (kind == "ok"), (off, report.problems)


def test_flip_every_byte_of_the_manifest(base, tmp_path):
    path, _log, _spans = base
    work = copy_store(path, str(tmp_path / "w"))
    manifest = os.path.join(work, "MANIFEST")
    original = read_bytes(manifest)
    for off in range(len(original)):
        damaged = bytearray(original)
        damaged[off] ^= 0x01 if off % 2 else 0xFF
        overwrite(manifest, damaged)
        with pytest.raises(mmwal.MmwalError) as ei:
            read_log(work)
        assert isinstance(ei.value, (mmwal.CorruptionError, mmwal.errors.FormatVersionError))
        report = mmwal.verify(work)
        assert not report.ok and any(p.file == manifest for p in report.problems)
        with pytest.raises(mmwal.MmwalError):
            mmwal.Store(work)


def test_flip_every_byte_of_the_tail_record(base, tmp_path):
    """The tail record is a checksummed hint: any damage makes writers rebuild it."""
    path, log, _spans = base
    for off in range(F.TAIL_AREA):
        work = copy_store(path, str(tmp_path / "w"))
        with open(os.path.join(work, "tail"), "r+b") as f:
            b = bytearray(f.read(F.TAIL_AREA))
            b[off] ^= 0x10
            f.seek(0)
            f.write(b)
        assert outcome(work) == ("ok", log)
        assert mmwal.verify(work).ok
        if off % 4 == 0:
            check_append_after(work, log)


# ====================================================================== damage matrix
@pytest.mark.parametrize("tail", ["kept", "zeroed"])
@pytest.mark.parametrize("which", ["first", "middle", "last"])
@pytest.mark.parametrize("how", ["truncate", "junk", "zeros"])
def test_damage_matrix(multi, tmp_path, how, which, tail):
    """{truncate, junk, zeros} x offset {0, 30, 60, 90 %} x segment (RocksDB db_wal_test)."""
    path, log = multi
    segs = segment_files(path)
    idx = {"first": 0, "middle": len(segs) // 2, "last": len(segs) - 1}[which]
    # Records before each segment, and the frames of the damaged one.
    before = 0
    for s in segs[:idx]:
        before += sum(sp[4] for sp in frame_spans(s))
    for pct in (0, 30, 60, 90):
        work = copy_store(path, str(tmp_path / "w"))
        seg = segment_files(work)[idx]
        spans = frame_spans(seg)
        size = os.path.getsize(seg)
        at = size * pct // 100
        rng = random.Random(f"{how}{which}{pct}")
        if how == "truncate":
            os.truncate(seg, at)
            hit_end = size
        else:
            hit_end = min(size, at + 48)
            with open(seg, "r+b") as f:
                f.seek(at)
                f.write(rng.randbytes(hit_end - at) if how == "junk" else bytes(hit_end - at))
        set_tail(work, tail)
        # The oracle.
        damaged = [k for k, sp in enumerate(spans) if sp[0] < hit_end and sp[1] > at]
        if at < F.SEGMENT_HEADER_SIZE:
            want = ("corrupt", None)
        elif not damaged:
            want = ("ok", len(log))
        else:
            k = damaged[0]
            intact_after = any(sp[0] >= hit_end for sp in spans) and how != "truncate"
            if idx < len(segs) - 1 or intact_after or tail == "kept":
                want = ("corrupt", None)
            else:
                want = ("ok", before + prefix_records(spans, k))
        kind, got = outcome(work)
        assert kind == want[0], (how, which, pct, tail, kind)
        if kind == "ok":
            assert got == log[: want[1]]
        report = mmwal.verify(work)
        assert report.ok == (kind == "ok"), report.problems
        if kind == "ok" and tail == "zeroed":
            check_append_after(work, log[: want[1]])


def test_torn_tail_of_a_sealed_segment_is_harmless(multi, tmp_path):
    """Garbage after the last frame of segment N, N+1 continuing: not corruption."""
    path, log = multi
    work = copy_store(path, str(tmp_path / "w"))
    first = segment_files(work)[0]
    with open(first, "ab") as f:
        f.write(random.Random(3).randbytes(200))
    assert outcome(work) == ("ok", log)
    report = mmwal.verify(work)
    assert report.ok and report.records == len(log)
    assert report.notes  # the torn tail is noted, not a problem


def test_replay_is_idempotent(base):
    path, log, _spans = base
    for _ in range(3):
        assert read_log(path) == log
    # Embeddings are read-only views of the log (never writable into the segment).
    op = next(iter(mmwal.replay(path)))
    assert not op.embedding.flags.writeable
    assert np.array_equal(op.embedding, vec(1))
