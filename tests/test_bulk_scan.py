"""A Reader scans runs of single-document add frames in bulk, with the same results.

The cursor's bulk mode (``LogCursor.frames(bulk)``) hands on consecutive
valid single-document add frames as one run; ``_format.decode_add_run``
decodes the writers' layout of all of them with array operations and every
other payload one by one.  Whatever the log holds, a Reader must end up in
exactly the state (and raise exactly the errors) it reaches frame by frame.
"""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

import mmwal
from mmwal import _format as F
from mmwal import _reader, _wal
from mmwal._fsutil import Paths, list_segments

DIM = 4


def _state(path, monkeypatch, bulk: int, recovery: str = "strict") -> tuple:
    """Everything a Reader shows, opened with bulk mode ``bulk`` (0: frame by frame)."""
    monkeypatch.setattr(_reader, "_BULK", bulk)
    with mmwal.Reader(path, recovery=recovery) as r:
        ids = list(r.ids)
        docs = {}
        for key in ids:
            d = r.get(key)
            docs[key] = (d.id, d.embedding.tolist(), d.content, d.metadata)
        return ids, r.embeddings.tolist(), docs, len(r), r.seq


def _same_either_way(path, monkeypatch, recovery: str = "strict") -> tuple:
    bulk = _state(path, monkeypatch, 4096, recovery)
    assert bulk == _state(path, monkeypatch, 0, recovery)
    return bulk


def _error(path, monkeypatch, bulk: int) -> tuple:
    monkeypatch.setattr(_reader, "_BULK", bulk)
    with pytest.raises(mmwal.CorruptionError) as info:
        mmwal.Reader(path)
    return type(info.value), str(info.value), info.value.path, info.value.offset


class _RawLog:
    """Appends frames of our own making to the newest segment of a store."""

    def __init__(self, path) -> None:
        with mmwal.Store(path, dim=DIM, durability="os") as s:
            s.add("first", np.ones(DIM), "c")
            self.seq = s.seq + 1
        wal = os.path.join(path, "wal")
        self.seg = os.path.join(wal, sorted(p for p in os.listdir(wal) if p.endswith(".seg"))[-1])
        with open(self.seg, "rb") as f:
            self.seed = F.salt_seed(F.decode_segment_header(f.read(64)).salt)
        self.offsets: list[int] = []

    def frame(self, kind: int, count: int, payload: bytes) -> int:
        with open(self.seg, "ab") as f:
            off = f.tell()
            f.write(F.encode_frame(kind, self.seq, count, payload, self.seed))
        self.offsets.append(off)
        self.seq += count
        return off

    def add(self, key, i: int, content: str = "", meta=None) -> int:
        vec = (np.arange(DIM, dtype="<f4") + i).tobytes()
        return self.frame(F.KIND_ADD, 1, F.pack([1.5, DIM, [key], [content], [meta], vec]))

    def singles(self, prefix: str, n: int, start: int = 0) -> None:
        for i in range(start, start + n):
            meta = None if i % 3 else {"i": i, "t": ["x", str(i)]}
            self.add(f"{prefix}{i}", i, f"text {i} é" * (i % 4), meta)


def _other_encodings(key: str, i: int) -> list[bytes]:
    """Valid add payloads no writer emits (each decodes to the same fields)."""
    vec = (np.arange(DIM, dtype="<f4") * 2 + i).tobytes()
    plain = F.pack([2.5, DIM, [key], ["other"], [{"k": i}], vec])
    nv = len(vec)
    return [
        b"\x96\xca" + struct.pack(">f", 2.5) + plain[10:],  # float 32 timestamp
        plain[:10] + b"\xcf" + DIM.to_bytes(8, "big") + plain[11:],  # uint 64 dimension
        plain[: -nv - 2] + b"\xc6" + nv.to_bytes(4, "big") + vec,  # bin 32 header
        b"\xdc\x00\x06" + plain[1:],  # array 16 of 6
    ]


def _mixed_log(path) -> _RawLog:
    log = _RawLog(path)
    log.singles("a", 40)
    log.add("é-ü", 1, "non-ASCII id")
    log.add("日本語", 2)
    log.add("s" * 40, 3)  # str8 id
    log.add("L" * 300, 4)  # str16 id: left to the one-by-one decode
    for j, payload in enumerate(_other_encodings("o", 0)):
        log.singles(f"b{j}-", 5)
        log.frame(F.KIND_ADD, 1, _other_encodings(f"o{j}", j)[j])
    log.singles("a", 20, 100)
    log.add("a5", 55, "replaced")  # replaces a record of the same run
    log.add("a5", 56, "replaced again")
    vecs = (np.arange(3 * DIM, dtype="<f4")).tobytes()
    log.frame(F.KIND_ADD, 3, F.pack([1.0, DIM, ["t0", "t1", "a7"], ["", "", "b"],
                                     [None, None, {"b": 1}], vecs]))
    big = [f"big{i}" for i in range(70)]
    log.frame(F.KIND_ADD, 70, F.pack([1.0, DIM, big, [""] * 70, [None] * 70,
                                      np.ones((70, DIM), "<f4").tobytes()]))
    log.singles("c", 30)
    log.frame(F.KIND_REMOVE, 1, F.pack([1.0, "a3"]))
    log.frame(F.KIND_REMOVE, 1, F.pack([1.0, "big5"]))
    log.singles("c", 20, 30)
    log.add("big6", 7, "replaces a batch row")
    log.frame(F.KIND_REMOVE, 1, F.pack([1.0, "c10"]))
    log.singles("d", 25)
    return log


def test_mixed_log_gives_the_same_state(tmp_path, monkeypatch):
    _mixed_log(tmp_path)
    ids, _emb, docs, n, seq = _same_either_way(tmp_path, monkeypatch)
    assert n == len(ids) and "a3" not in docs and "big5" not in docs and "c10" not in docs
    assert docs["a5"][2] == "replaced again" and docs["big6"][2] == "replaces a batch row"
    assert docs["L" * 300][2] == "" and docs["o3"][3] == {"k": 3}


@pytest.mark.parametrize("bulk_min", [1, 2, 16, 1000])
def test_every_run_length_gives_the_same_state(tmp_path, monkeypatch, bulk_min):
    _mixed_log(tmp_path)
    monkeypatch.setattr(_wal, "BULK_MIN", bulk_min)
    _same_either_way(tmp_path, monkeypatch)


def test_clear_in_the_middle_of_the_singles(tmp_path, monkeypatch):
    log = _RawLog(tmp_path)
    log.singles("a", 30)
    log.frame(F.KIND_CLEAR, 1, F.pack([1.0]))
    log.singles("a", 30, 20)
    ids = _same_either_way(tmp_path, monkeypatch)[0]
    assert ids == [f"a{i}" for i in range(20, 50)]


def test_cursor_bulk_mode_yields_the_same_frames(tmp_path):
    log = _mixed_log(tmp_path)
    paths = Paths(str(tmp_path))
    seg = list_segments(paths)[0]
    plain = [(f.kind, f.first_seq, f.count, bytes(f.payload), f.offset)
             for f in _wal.LogCursor(paths, seg, 1).frames()]
    got, runs = [], 0
    for item in _wal.LogCursor(paths, seg, 1).frames(64):
        if isinstance(item, _wal.RawRun):
            runs += 1
            assert len(item.offsets) <= 64
            for i, (o, n) in enumerate(zip(item.offsets, item.lengths)):
                got.append((1, item.first_seq + i, 1, bytes(item.buf[o + 32 : o + 32 + n]), o))
        else:
            got.append((item.kind, item.first_seq, item.count, bytes(item.payload), item.offset))
    assert got == plain and runs >= 3
    assert [f[4] for f in plain][1:] == log.offsets


def test_consecutive_runs_follow_each_other(tmp_path):
    # A stretch of single-document frames longer than one run comes as whole
    # runs back to back: the frame after a full run starts the next run
    # instead of going through the per-frame path alone (which handed the
    # Reader a one-record batch between every two runs).
    offsets = _store_singles(tmp_path, 100)
    paths = Paths(str(tmp_path))
    items = list(_wal.LogCursor(paths, list_segments(paths)[0], 1).frames(16))
    runs = [x for x in items if isinstance(x, _wal.RawRun)]
    assert items[: len(runs)] == runs  # (the last 4 are fewer than BULK_MIN: frames)
    assert [len(x.offsets) for x in runs] == [16] * 6
    assert [x.first_seq for x in runs] == list(range(1, 97, 16))
    assert [o for x in runs for o in x.offsets] + [x.offset for x in items[6:]] == offsets


def test_store_written_log_over_a_checkpoint(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    with mmwal.Store(tmp_path, dim=DIM, durability="os") as s:
        s.add_many([f"k{i}" for i in range(200)], rng.random((200, DIM)))
        s.checkpoint()
        for i in range(150):  # replaces half of the checkpoint's ids, then new ones
            s.add(f"k{i * 2}", rng.random(DIM), f"c{i}", {"i": i} if i % 2 else None)
        s.remove("k1")
        s.remove("k4")  # a tail row
        for i in range(40):
            s.add(f"n{i}", rng.random(DIM))
    _same_either_way(tmp_path, monkeypatch)


def test_refresh_over_new_singles(tmp_path, monkeypatch):
    with mmwal.Store(tmp_path, dim=DIM, durability="os") as s:
        for i in range(50):
            s.add(f"a{i}", np.full(DIM, i))
        monkeypatch.setattr(_reader, "_BULK", 4096)
        with mmwal.Reader(tmp_path) as r:
            for i in range(50, 120):
                s.add(f"a{i % 60}", np.full(DIM, i), f"x{i}")
            r.refresh()
            got = (list(r.ids), r.embeddings.tolist(), [r.get(k).content for k in r.ids])
    monkeypatch.setattr(_reader, "_BULK", 0)
    with mmwal.Reader(tmp_path) as r:
        assert got == (list(r.ids), r.embeddings.tolist(), [r.get(k).content for k in r.ids])


def _store_singles(path, n: int) -> list[int]:
    """A store of ``n`` single-document records; the offsets of their frames."""
    with mmwal.Store(path, dim=DIM, durability="os") as s:
        for i in range(n):
            s.add(f"a{i}", np.full(DIM, i), f"content {i}")
    paths = Paths(str(path))
    return [f.offset for f in _wal.LogCursor(paths, list_segments(paths)[0], 1).frames()]


def _segment(path) -> str:
    wal = os.path.join(path, "wal")
    return os.path.join(wal, sorted(p for p in os.listdir(wal) if p.endswith(".seg"))[-1])


def test_damaged_frame_in_the_middle_of_a_run(tmp_path, monkeypatch):
    offsets = _store_singles(tmp_path, 60)
    seg = _segment(tmp_path)
    with open(seg, "r+b") as f:
        f.seek(offsets[30] + 40)
        b = f.read(1)
        f.seek(offsets[30] + 40)
        f.write(bytes([b[0] ^ 0x55]))
    err = _error(tmp_path, monkeypatch, 4096)
    assert err == _error(tmp_path, monkeypatch, 0) and err[3] == offsets[30]
    for recovery in ("point-in-time", "skip-bad"):
        st = _same_either_way(tmp_path, monkeypatch, recovery)
        assert ("a30" in st[2]) is False and ("a31" in st[2]) is (recovery == "skip-bad")


def test_torn_tail_at_the_end_of_a_run(tmp_path, monkeypatch):
    offsets = _store_singles(tmp_path, 60)
    seg = _segment(tmp_path)
    with open(seg, "r+b") as f:
        f.truncate(offsets[-1] + 40)
    os.unlink(os.path.join(tmp_path, "tail"))  # the writers' hint would call it damage
    ids = _same_either_way(tmp_path, monkeypatch)[0]
    assert ids == [f"a{i}" for i in range(59)]


def _bad_id_payload(i: int, raw_id: bytes) -> bytes:
    """A canonical single-document add payload whose id is ``raw_id`` (any bytes)."""
    vec = (np.arange(DIM, dtype="<f4") + i).tobytes()
    placeholder = "q" * len(raw_id)
    payload = F.pack([1.5, DIM, [placeholder], ["c"], [None], vec])
    at = payload.index(placeholder.encode())
    return payload[:at] + raw_id + payload[at + len(raw_id):]


@pytest.mark.parametrize("raw_id", [b"\xff\xfe", b"ok\xc3", b"\xed\xa0\x80", b""])
def test_bad_id_in_the_middle_of_a_run(tmp_path, monkeypatch, raw_id):
    log = _RawLog(tmp_path)
    log.singles("a", 30)
    bad = log.frame(F.KIND_ADD, 1, _bad_id_payload(0, raw_id))
    log.singles("b", 30)
    err = _error(tmp_path, monkeypatch, 4096)
    assert err == _error(tmp_path, monkeypatch, 0)
    assert err[3] == bad and f"offset {bad}" in err[1]


def test_decode_add_run_stops_at_the_bad_frame(tmp_path):
    log = _RawLog(tmp_path)
    log.singles("a", 20)
    log.add("é", 7)
    log.frame(F.KIND_ADD, 1, _other_encodings("o", 1)[0])
    bad = log.frame(F.KIND_ADD, 1, _bad_id_payload(0, b"\xff"))
    log.singles("b", 20)
    paths = Paths(str(tmp_path))
    runs = [x for x in _wal.LogCursor(paths, list_segments(paths)[0], 1).frames(4096)
            if isinstance(x, _wal.RawRun)]
    assert len(runs) == 1
    run = runs[0]
    ids, vecs, docs, err = F.decode_add_run(run.buf, run.offsets, run.lengths, DIM, run.path)
    assert err is not None and err.offset == bad and err.path == run.path
    k = run.offsets.index(bad)  # "first", a0..a19, "é", "o"
    assert len(ids) == len(docs) == len(vecs) == k == 23
    assert ids[-2:] == ["é", "o"] and ids[0] == "first"
    for i, o in enumerate(run.offsets[:k]):
        one = F.decode_add_ids_vectors(1, run.buf[o + 32 : o + 32 + run.lengths[i]], DIM,
                                       run.path, o)
        assert (one[1], one[2], one[3]) == ([ids[i]], vecs[i].tobytes(), docs[i])


def _outcome(path, monkeypatch, bulk: int, recovery: str) -> tuple:
    """The state a Reader opens to, or the error it raises."""
    try:
        return _state(path, monkeypatch, bulk, recovery)
    except mmwal.CorruptionError as exc:
        return type(exc), str(exc), exc.path, exc.offset


@pytest.mark.parametrize("recovery", ["strict", "point-in-time", "skip-bad"])
@pytest.mark.parametrize("shift", [-1, 1, 5])
def test_sequence_out_of_order_in_the_middle_of_a_run(tmp_path, monkeypatch, recovery, shift):
    log = _RawLog(tmp_path)
    log.singles("a", 30)
    log.seq += shift  # a CRC-valid frame carrying the wrong seq, valid ones after it
    log.singles("b", 30)
    got = _outcome(tmp_path, monkeypatch, 4096, recovery)
    assert got == _outcome(tmp_path, monkeypatch, 0, recovery)
    if recovery == "point-in-time":
        assert got[0] == ["first"] + [f"a{i}" for i in range(30)]


def test_runs_across_segment_rolls(tmp_path, monkeypatch):
    # Segments of 4 KB hold ~40 records each: every run ends at a roll.
    cfg = mmwal.Config(segment_bytes=4096)
    with mmwal.Store(tmp_path, dim=DIM, durability="os", config=cfg) as s:
        for i in range(300):
            s.add(f"a{i % 250}", np.full(DIM, i), f"c{i}", {"i": i} if i % 7 else None)
            if i % 97 == 0:
                s.remove(f"a{i // 2}")
    assert len(list_segments(Paths(str(tmp_path)))) > 5
    monkeypatch.setattr(_wal, "BULK_MIN", 4)
    _same_either_way(tmp_path, monkeypatch)


# ---------------------------------------------------------------- replay(fields=ids, vectors)
def _replayed(path, monkeypatch, bulk: int, fields=("id", "embedding"), after_seq: int = 0,
              recovery: str = "strict") -> list:
    """The ids-and-vectors replay, with its bulk scan on (``bulk``) or off (0)."""
    from mmwal import _replay

    monkeypatch.setattr(_replay, "_BULK", bulk)
    return [(op.seq, op.kind, op.id, None if op.embedding is None else op.embedding.tolist(),
             op.content, op.metadata, op.timestamp)
            for op in mmwal.replay(path, after_seq, fields=fields, mode=recovery)]


@pytest.mark.parametrize("fields", [("id", "embedding"), ("id",), ("embedding",), ("seq",)])
def test_replay_of_ids_and_vectors_is_the_same_with_the_bulk_scan(tmp_path, monkeypatch,
                                                                    fields):
    _mixed_log(tmp_path)
    got = _replayed(tmp_path, monkeypatch, 1024, fields)
    assert got == _replayed(tmp_path, monkeypatch, 0, fields)
    assert len(got) > 200 and all(op[4] is None and op[5] is None for op in got)
    # Resumed inside a run, and past everything.
    for after in (3, 17, got[-1][0]):
        assert _replayed(tmp_path, monkeypatch, 1024, fields, after) == \
            _replayed(tmp_path, monkeypatch, 0, fields, after)


def test_replay_bulk_scan_stops_where_frame_by_frame_does(tmp_path, monkeypatch):
    log = _RawLog(tmp_path)
    log.singles("a", 30)
    bad = log.frame(F.KIND_ADD, 1, _bad_id_payload(0, b"\xff\xfe"))
    log.singles("b", 30)
    seen = {}
    for bulk in (1024, 0):
        from mmwal import _replay

        monkeypatch.setattr(_replay, "_BULK", bulk)
        ops = []
        with pytest.raises(mmwal.CorruptionError) as info:
            for op in mmwal.replay(tmp_path, fields=("id", "embedding")):
                ops.append(op.id)
        seen[bulk] = (ops, info.value.offset)
    assert seen[1024] == seen[0] and seen[0][1] == bad and seen[0][0][-1] == "a29"


@pytest.mark.parametrize("recovery", ["point-in-time", "skip-bad"])
def test_replay_bulk_scan_over_a_damaged_frame(tmp_path, monkeypatch, recovery):
    offsets = _store_singles(tmp_path, 60)
    with open(_segment(tmp_path), "r+b") as f:
        f.seek(offsets[30] + 40)
        b = f.read(1)
        f.seek(offsets[30] + 40)
        f.write(bytes([b[0] ^ 0x55]))
    got = _replayed(tmp_path, monkeypatch, 1024, recovery=recovery)
    assert got == _replayed(tmp_path, monkeypatch, 0, recovery=recovery)
    assert ("a30" in [op[2] for op in got]) is False


def test_version_rows_replaced_by_the_tail_in_many_runs(tmp_path, monkeypatch):
    # The version rows that new ids of the tail replace are looked up in
    # batches that span runs (and split by _LOOKUP_IDS), yet every snapshot
    # counts each of them dead once it holds the record that replaced it.
    from mmwal import _snapshot

    monkeypatch.setattr(_reader, "_BULK", 32)
    monkeypatch.setattr(_snapshot, "_LOOKUP_IDS", 50)
    with mmwal.Store(tmp_path, dim=DIM, durability="os") as s:
        s.add_many([f"k{i}" for i in range(300)], np.zeros((300, DIM)))
        s.checkpoint()
        for i in range(0, 300, 2):  # 150 single-document replacements
            s.add(f"k{i}", np.full(DIM, i))
        with mmwal.Reader(tmp_path) as r:
            assert len(r) == 300 and r.get("k2").embedding.tolist() == [2.0] * DIM
            snap = r.snapshot()
            for i in range(1, 81, 2):
                s.add(f"k{i}", np.full(DIM, i))
            s.add("new", np.ones(DIM))
            r.refresh()
            assert len(snap) == 300 and len(r) == 301
            assert sorted(r.ids) == sorted([f"k{i}" for i in range(300)] + ["new"])
            assert r.get("k3").embedding.tolist() == [3.0] * DIM
            assert snap.get("k3").embedding.tolist() == [0.0] * DIM
            assert r.embeddings.shape == (301, DIM) and snap.embeddings.shape == (300, DIM)
            got = r.search(np.full(DIM, 3.0), k=301, metric="l2")
            assert len(got) == 301 and len({h.id for h in got}) == 301
