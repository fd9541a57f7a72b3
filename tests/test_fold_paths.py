"""The checkpoint's fold: one read of the log, its common case and its general case.

The fold reads every frame once.  When the delta holds only adds of distinct
ids (the common case) every document added is kept, in seq order; otherwise
(an id added again, a remove, a clear) the final state of each id decides
which rows are kept.  Both must write the same bytes for the same log, and
the general case must keep exactly the documents a replay keeps.  Also: the
id index built with array operations is the one inserting rows one by one
gives, and the CRC-32 algebra that spares reading vector blocks twice.
"""

from __future__ import annotations

import os
import random
import zlib
from typing import Any

import msgpack
import numpy as np
import pytest
from ckpt_helpers import key_vecs
from helpers import copy_store

import mmwal
import mmwal._io
from mmwal import _checkpoint as C
from mmwal import _format as F
from mmwal._search import where as where_
from mmwal.errors import CorruptionError

DIM = 8
CFG = mmwal.Config(auto_compact=False, ann_min_rows=0, keep_checkpoints=5)


def _meta(i: int) -> dict[str, Any] | None:
    if i % 7 == 0:
        return None
    if i % 11 == 0:
        return {"k": i, "tags": ["a", i % 3], "nested": {"x": i}}
    return {"k": i, "s": f"v{i % 3}"}


def _add(s: mmwal.Store, keys: list[int], version: int = 0) -> None:
    """add_many of documents ``d<key>``; ``version`` changes their vector and content."""
    s.add_many([f"d{k}" for k in keys], key_vecs([k + 1000 * version for k in keys]),
               [f"c{k}.{version}" for k in keys], [_meta(k + version) for k in keys])


def _fragment_bytes(path: str) -> dict[str, Any]:
    """Every file under checkpoints/ (descriptor and version bodies without their clocks)."""
    out: dict[str, Any] = {}
    ck = os.path.join(path, "checkpoints")
    for root, _dirs, files in os.walk(ck):
        for name in files:
            p = os.path.join(root, name)
            with open(p, "rb") as f:
                data = f.read()
            rel = os.path.relpath(p, ck)
            if name == "DESCRIPTOR" or name.endswith(".version"):
                body = msgpack.unpackb(data[20:], raw=False)
                body.pop("created", None)
                out[rel] = body
            else:
                out[rel] = data
    return out


def _state(path: str) -> dict[str, tuple[bytes, str, Any]]:
    with mmwal.Reader(path) as r:
        return {i: (r[i].embedding.tobytes(), r[i].content, r[i].metadata) for i in r.ids}


def _both_paths(tmp_path, monkeypatch, build) -> tuple[str, str]:
    """The same log checkpointed by the common path and by the general path."""
    a = str(tmp_path / "a")
    with mmwal.Store(a, dim=DIM, durability="os", config=CFG) as s:
        build(s)
    b = copy_store(a, str(tmp_path / "b"))
    with mmwal.Store(a, durability="os", config=CFG) as s:
        s.checkpoint()
    with monkeypatch.context() as m:
        calls = []

        def never(keys: list[bytes], hashes: Any) -> bool:
            calls.append(len(keys))
            return False

        m.setattr(C, "_distinct", never)
        with mmwal.Store(b, durability="os", config=CFG) as s:
            s.checkpoint()
    assert calls, "the general path was not taken"
    return a, b


def _batches_and_singles(s: mmwal.Store) -> None:
    _add(s, list(range(0, 300)))
    for k in range(300, 340):
        _add(s, [k])
    _add(s, list(range(340, 1000)))


def _replaces_older(s: mmwal.Store) -> None:
    _add(s, list(range(0, 500)))
    s.checkpoint()
    _add(s, list(range(500, 700)))
    s.checkpoint()
    # the delta: new ids, and ids of both older fragments added again
    _add(s, list(range(700, 900)) + list(range(100, 200)), version=1)
    _add(s, [550, 3, 701 + 1000], version=2)


@pytest.mark.parametrize("build", [_batches_and_singles, _replaces_older])
def test_common_and_general_path_write_the_same_bytes(tmp_path, monkeypatch, build):
    a, b = _both_paths(tmp_path, monkeypatch, build)
    fa, fb = _fragment_bytes(a), _fragment_bytes(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], name
    assert _state(a) == _state(b)
    for p in (a, b):
        report = mmwal.verify(p)
        assert report.ok, report.problems


def _model_apply(model: dict[str, Any], op: tuple[Any, ...]) -> None:
    if op[0] == "add":
        for k, v in zip(op[1], op[2]):
            model[f"d{k}"] = (key_vecs([k + 1000 * v])[0].tobytes(), f"c{k}.{v}", _meta(k + v))
    elif op[0] == "remove":
        model.pop(f"d{op[1]}", None)
    else:
        model.clear()


def _run(s: mmwal.Store, model: dict[str, Any], ops: list[tuple[Any, ...]]) -> None:
    for op in ops:
        if op[0] == "add":
            keys, versions = op[1], op[2]
            s.add_many([f"d{k}" for k in keys], key_vecs([k + 1000 * v for k, v in zip(keys, versions)]),
                       [f"c{k}.{v}" for k, v in zip(keys, versions)],
                       [_meta(k + v) for k, v in zip(keys, versions)])
        elif op[0] == "remove":
            s.remove(f"d{op[1]}")
        else:
            s.clear()
        _model_apply(model, op)


def _add_op(keys: list[int], version: int) -> tuple[Any, ...]:
    return ("add", keys, [version] * len(keys))


DELTAS = {
    # an id twice in one record: the last occurrence wins
    "repeat_in_record": [("add", [1, 2, 3, 2, 1] + list(range(10, 80)),
                          [0, 0, 0, 1, 2] + [0] * 70)],
    # ids added again by a later record, batched and single
    "repeat_across_records": [_add_op(list(range(0, 200)), 0), _add_op(list(range(150, 260)), 1),
                              _add_op([5], 2), _add_op(list(range(0, 100, 3)), 3)],
    "removes": [_add_op(list(range(0, 200)), 0), ("remove", 7), ("remove", 10_000),
                _add_op([7], 1), ("remove", 8), _add_op(list(range(300, 400)), 0)],
    "clear": [_add_op(list(range(0, 200)), 0), ("clear",), _add_op(list(range(100, 300)), 1),
              ("remove", 150)],
    "everything_removed": [_add_op(list(range(0, 70)), 0)] + [("remove", k) for k in range(70)],
}


@pytest.mark.parametrize("name", sorted(DELTAS))
@pytest.mark.parametrize("older", [False, True])
def test_fold_keeps_what_a_replay_keeps(tmp_path, name, older):
    path = str(tmp_path / "s")
    model: dict[str, Any] = {}
    with mmwal.Store(path, dim=DIM, durability="os", config=CFG) as s:
        if older:  # fragments whose ids the delta replaces and removes
            _run(s, model, [_add_op(list(range(0, 120)), 5)])
            s.checkpoint()
            _run(s, model, [_add_op(list(range(120, 240)), 6)])
            s.checkpoint()
        _run(s, model, DELTAS[name])
        s.checkpoint()
    assert _state(path) == model
    report = mmwal.verify(path)
    assert report.ok, report.problems


def _raw_add(s: mmwal.Store, keys: list[int], metas: list[Any]) -> None:
    """An add record as the log holds it, with metadata no writer of this version accepts."""
    payload = F.pack([1.0, DIM, [f"d{k}" for k in keys], [""] * len(keys), metas,
                      key_vecs(keys).tobytes()])
    s._log.append(F.KIND_ADD, len(keys), payload)


def _nested(depth: int) -> Any:
    m: Any = 1
    for _ in range(depth):
        m = [m]
    return {"deep": m}


@pytest.mark.parametrize("bad", ["bytes_key", "too_deep", "bytes_key_nested"])
@pytest.mark.parametrize("replaced", [False, True])
def test_metadata_the_reader_refuses_is_refused_by_the_fold(tmp_path, bad, replaced):
    path = str(tmp_path / "s")
    metas: list[Any] = [{"k": i} for i in range(100)]
    metas[37] = {"bytes_key": {b"k": 1}, "too_deep": _nested(F.MAX_METADATA_DEPTH + 2),
                 "bytes_key_nested": {"a": [{b"k": 1}]}}[bad]
    with mmwal.Store(path, dim=DIM, durability="os", config=CFG) as s:
        _add(s, list(range(200, 300)))
        _raw_add(s, list(range(100)), metas)
        if replaced:  # the record's rows are not all kept: the general path
            _add(s, [3])
        before = os.listdir(os.path.join(path, "checkpoints"))
        with pytest.raises(CorruptionError, match="malformed"):
            s.checkpoint()
        assert os.listdir(os.path.join(path, "checkpoints")) == before


def test_flat_metadata_is_reported_by_the_columns():
    b = where_.ColumnBuilder()
    assert b.add([{"a": 1, "b": "x"}, None, {"a": 2.5}]) is True
    assert b.add([{"a": [1]}, {"a": 1}]) is False
    assert b.add([{"a": {"b": 1}}, None]) is False
    assert b.add([{b"k": 1}, None]) is False
    assert b.add([{"a": None, "b": b"x"}]) is True
    assert b.n == 10


# ------------------------------------------------------------------ the id index
def _reference_table(h: np.ndarray, cap: int, parts: int, budget: int) -> tuple[Any, int]:
    """The index as docs/format.md describes it: rows inserted one by one, in row order."""
    slots = cap // parts
    shift = 32 - (parts.bit_length() - 1)
    mask = slots - 1
    left = budget
    out = []
    if parts > 1 and np.bincount(h.astype(np.int64) >> shift, minlength=parts).max() > slots:
        return None, budget + 1  # (a part with more rows than slots: probing never ends)
    if len(h) > cap:
        return None, budget + 1
    for p in range(parts):
        tl = [C._EMPTY] * slots
        for row, hv in enumerate(h.tolist()):
            if parts > 1 and hv >> shift != p:
                continue
            slot = hv & mask
            while tl[slot] != C._EMPTY:
                left -= 1
                if left < 0:
                    return None, budget + 1
                slot = (slot + 1) & mask
            tl[slot] = row
        out.append(np.array(tl, dtype="<i8"))
    return np.concatenate(out), budget - left


class _Sink:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, data: Any, crc: int | None = None) -> None:
        self.chunks.append(bytes(memoryview(data).cast("B")))


def _table(h: np.ndarray, cap: int, parts: int, budget: int) -> tuple[Any, int]:
    sink = _Sink()
    probes = C._fill_index(sink, h, cap, parts, budget)  # type: ignore[arg-type]
    if probes > budget:
        assert not sink.chunks  # abandoned before anything was written
        return None, probes
    raw = b"".join(sink.chunks)
    header = C.npy_header("<i8", (cap,))
    assert raw[: len(header)] == header
    return np.frombuffer(raw[len(header):], dtype="<i8"), probes


def _hashes(kind: str, n: int, rng: random.Random) -> np.ndarray:
    if kind == "random":
        return np.array([rng.getrandbits(32) for _ in range(n)], dtype=np.uint32)
    if kind == "ids":
        return np.array([zlib.crc32(f"doc-{i}".encode()) for i in range(n)], dtype=np.uint32)
    if kind == "clustered":  # few home slots: long clusters, carries, wrap-around
        return np.array([(rng.choice([0, 1, 5, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000])
                          + rng.randrange(3)) & 0xFFFFFFFF for _ in range(n)], dtype=np.uint32)
    if kind == "consecutive":  # every row alone at its home, in one long run
        return np.arange(1000, 1000 + n, dtype=np.uint32)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["random", "ids", "clustered", "consecutive"])
@pytest.mark.parametrize("n", [1, 7, 100, 3000])
@pytest.mark.parametrize("parts", [1, 4])
def test_index_is_the_one_sequential_insertion_gives(kind, n, parts):
    rng = random.Random(n * 31 + parts)
    h = _hashes(kind, n, rng)
    cap = max(8, 1 << (2 * n - 1).bit_length())
    if parts > cap // 2:
        pytest.skip("fewer than two slots per part")
    for budget in (C.PROBE_BUDGET * n + 64, 10**12, 5):
        want, want_probes = _reference_table(h, cap, parts, budget)
        got, probes = _table(h, cap, parts, budget)
        assert probes == want_probes
        if want is None:
            assert got is None
        else:
            assert np.array_equal(got, want)


@pytest.mark.parametrize("seed", range(300))
def test_dense_small_tables_are_the_ones_sequential_insertion_gives(seed):
    # Up to one row fewer than slots, homes drawn from a few slots or from all,
    # so that groups of rows run on, meet at a slot, and wrap around the part:
    # the rows that are not alone are placed a round of groups at a time.
    rng = random.Random(seed)
    cap = rng.choice([8, 16, 32, 64])
    n = rng.randrange(1, cap)
    homes = rng.sample(range(cap), rng.randrange(1, cap + 1))
    h = np.array([rng.choice(homes) | (rng.getrandbits(8) << 16) for _ in range(n)],
                 dtype=np.uint32)
    want, want_probes = _reference_table(h, cap, 1, 10**9)
    got, probes = _table(h, cap, 1, 10**9)
    assert probes == want_probes
    assert np.array_equal(got, want)


def test_index_of_a_full_or_overfull_part():
    # every row in part 0 of 2 (top bit clear): 8 slots there
    cap, parts = 16, 2
    full = np.array([3, 3, 1, 0, 7, 6, 6, 2], dtype=np.uint32)
    want, want_probes = _reference_table(full, cap, parts, 10**6)
    got, probes = _table(full, cap, parts, 10**6)
    assert probes == want_probes and np.array_equal(got, want)
    over = np.concatenate([full, np.array([4], dtype=np.uint32)])
    assert _table(over, cap, parts, 10**6)[1] == 10**6 + 1


def test_index_over_many_partitions_in_a_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "PARTITION_SLOTS", 64)
    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os", config=CFG) as s:
        _add(s, list(range(0, 500)))
        s.checkpoint()
        with mmwal.Reader(path) as r:
            assert r.get("d499").content == "c499.0"
            assert r.get("d500") is None
    report = mmwal.verify(path)
    assert report.ok, report.problems


# ------------------------------------------------------------------ CRC-32 algebra
def test_crc32_combine_matches_zlib():
    rng = random.Random(5)
    for la, lb in [(0, 0), (0, 5), (5, 0), (1, 1), (17, 1000), (1000, 1 << 16), (3, 123457)]:
        a = rng.randbytes(la)
        b = rng.randbytes(lb)
        assert F.crc32_combine(zlib.crc32(a), zlib.crc32(b), lb) == zlib.crc32(a + b)
        for init in (0, 1, 0xFFFFFFFF, rng.getrandbits(32)):
            assert F.crc32_combine(init, zlib.crc32(b), lb) == zlib.crc32(b, init)


def test_vector_blocks_are_recorded_with_their_crc(tmp_path):
    # Blocks written straight from the log get a CRC-32 derived from the frame's:
    # the descriptor must hold the CRC-32 of the file's bytes.
    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os", config=CFG) as s:
        _add(s, list(range(0, 300)))
        _add(s, [300])
        _add(s, list(range(301, 500)))
        s.checkpoint()
    ck = os.path.join(path, "checkpoints")
    frag = max(x for x in os.listdir(ck) if x.isdigit())
    with open(os.path.join(ck, frag, "DESCRIPTOR"), "rb") as f:
        body = msgpack.unpackb(f.read()[20:], raw=False)
    for name, (size, crc) in body["files"].items():
        with open(os.path.join(ck, frag, name), "rb") as f:
            data = f.read()
        assert (len(data), zlib.crc32(data)) == (size, crc), name


def test_the_cursor_keeps_the_crc_before_each_vector_block(tmp_path):
    # With LogCursor.split set, the check of an add frame keeps the CRC-32 of
    # what precedes its vector block, so the fold derives the block's CRC-32
    # without reading the documents a second time; frames of other kinds, and
    # a tail of another length, are not answered.
    from mmwal._fsutil import Paths
    from mmwal._wal import LogCursor

    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os", config=CFG) as s:
        _add(s, list(range(0, 70)))
        s.remove_many(["d3"])
        _add(s, [300])
    cur = LogCursor(Paths(path), 1, 1, mode="strict")
    cur.split = 4 * DIM
    seen = []
    try:
        for frame in cur.frames():
            nv = frame.count * 4 * DIM
            got = cur.split_crc(frame, nv)
            if frame.kind != F.KIND_ADD:
                assert got is None
                continue
            head = cur.frame_crc(frame)
            assert head is not None
            assert got == zlib.crc32(frame.payload[: len(frame.payload) - nv], head[0])
            assert cur.split_crc(frame, nv + 4) is None
            seen.append(frame.count)
    finally:
        cur.close()
    assert seen == [70, 1]


# ------------------------------------------------------------------ writeback hints
class _Hints(mmwal._io.OSLayer):
    def __init__(self) -> None:
        super().__init__()
        self.hints: list[tuple[int, int]] = []

    def start_writeback(self, fd: int, offset: int, nbytes: int) -> None:
        self.hints.append((offset, nbytes))
        super().start_writeback(fd, offset, nbytes)


def test_files_being_built_get_writeback_hints(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "WRITEBACK_BYTES", 4096)
    layer = _Hints()
    old = mmwal._io.set_layer(layer)
    try:
        path = str(tmp_path / "s")
        with mmwal.Store(path, dim=DIM, durability="os", config=CFG) as s:
            _add(s, list(range(0, 600)))
            s.checkpoint()
    finally:
        mmwal._io.set_layer(old)
    assert layer.hints and all(n >= 4096 for _, n in layer.hints)
    report = mmwal.verify(path)
    assert report.ok, report.problems


def test_unaligned_blocks_copied_or_not_write_the_same_bytes(tmp_path, monkeypatch):
    # A large record's vector block is a view of the log at any offset; up to
    # C._ALIGN_BYTES it is copied to aligned memory before its norms are
    # summed.  Copied or not, the fragment is byte for byte the same.
    a = str(tmp_path / "a")
    with mmwal.Store(a, dim=DIM, durability="os", config=CFG) as s:
        _batches_and_singles(s)
        _add(s, list(range(1000, 1100)), version=3)
    b = copy_store(a, str(tmp_path / "b"))
    copied: list[int] = []
    real = C._Builder._aligned

    def counted(self: Any, v: np.ndarray) -> np.ndarray:
        copied.append(len(v))
        return real(self, v)

    with monkeypatch.context() as m:
        m.setattr(C._Builder, "_aligned", counted)
        with mmwal.Store(a, durability="os", config=CFG) as s:
            s.checkpoint()
    assert copied, "no block was copied"
    with monkeypatch.context() as m:
        m.setattr(C, "_ALIGN_BYTES", 0)  # never copied
        with mmwal.Store(b, durability="os", config=CFG) as s:
            s.checkpoint()
    assert _fragment_bytes(a) == _fragment_bytes(b)


def test_a_writeback_hint_changes_no_byte(tmp_path):
    p = tmp_path / "f"
    data = os.urandom(1 << 16)
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, data)
        mmwal._io.layer.start_writeback(fd, 0, len(data))
        mmwal._io.layer.start_writeback(fd, 1 << 20, 10)  # past the end: nothing
    finally:
        os.close(fd)
    assert p.read_bytes() == data


# ------------------------------------------------------------------ many segments
_MANY_SEGMENTS = r"""
import resource, sys
import numpy as np
import mmwal
path, dim = sys.argv[1], int(sys.argv[2])
cfg = mmwal.Config(segment_bytes=4096, auto_checkpoint=False, auto_compact=False)
with mmwal.Store(path, dim=dim, durability="os", config=cfg) as s:
    for k in range(2500):  # about 90 segments of a few dozen records each
        s.add(f"d{k}", np.full(dim, k, "f4"), "x" * 40)
# Fewer descriptors than the delta has segments: a fold that kept every
# segment mapped (each mapping holds a descriptor) would run out of them.
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
with mmwal.Store(path, config=cfg) as s:
    s.checkpoint()
with mmwal.Reader(path) as r:
    assert len(r) == 2500 and r.get("d7").content == "x" * 40
print("ok")
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="RLIMIT_NOFILE test: Linux")
def test_a_fold_over_many_segments_holds_few_descriptors(tmp_path):
    # The fold keeps views of the mapped log until it writes them; every
    # mapping holds a descriptor (CPython dups it), so a delta of many segments
    # must not keep them all mapped at once: with the usual limit of 1024
    # descriptors a checkpoint of a long log failed (EMFILE, reported as a
    # corrupt log: "segment N exists but does not continue the sequence").
    import subprocess
    import sys

    path = str(tmp_path / "s")
    got = subprocess.run([sys.executable, "-c", _MANY_SEGMENTS, path, str(DIM)],
                         capture_output=True, text=True, timeout=300)
    assert got.returncode == 0 and got.stdout.strip() == "ok", got.stderr[-2000:]
    report = mmwal.verify(path)
    assert report.ok, report.problems


def _across_segments(s: mmwal.Store) -> None:
    _add(s, list(range(0, 100)))  # large records: their CRC-32 derived, read again or not
    for k in range(100, 160):
        _add(s, [k])
    s.remove_many(["d3", "d120", "absent"])
    _add(s, list(range(150, 230)), version=1)  # replaces single and batched documents
    _add(s, [5, 6, 7], version=2)
    for k in range(230, 260):
        _add(s, [k])


@pytest.mark.parametrize("held", [0, 1, 3])
def test_records_read_again_write_the_same_bytes(tmp_path, monkeypatch, held):
    # Past C._HELD_SEGMENTS segments the add records keep no view of the log and
    # are read again when written: the fragment must be byte for byte the same.
    cfg = mmwal.Config(auto_compact=False, ann_min_rows=0, keep_checkpoints=5,
                       segment_bytes=4096, auto_checkpoint=False)
    a = str(tmp_path / "a")
    with mmwal.Store(a, dim=DIM, durability="os", config=cfg) as s:
        _across_segments(s)
    assert len(os.listdir(os.path.join(a, "wal"))) > 4  # more than held
    b = copy_store(a, str(tmp_path / "b"))
    with mmwal.Store(a, durability="os", config=cfg) as s:
        s.checkpoint()
    reads: list[int] = []
    real = C._Reread.read

    def counted(self: Any, rec: Any, dim: int) -> Any:
        reads.append(rec.first)
        return real(self, rec, dim)

    with monkeypatch.context() as m:
        m.setattr(C, "_HELD_SEGMENTS", held)
        m.setattr(C._Reread, "read", counted)
        with mmwal.Store(b, durability="os", config=cfg) as s:
            s.checkpoint()
    assert reads
    fa, fb = _fragment_bytes(a), _fragment_bytes(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], name
    assert _state(a) == _state(b)
    report = mmwal.verify(b)
    assert report.ok, report.problems


def test_a_record_that_reads_differently_the_second_time_is_corruption(tmp_path, monkeypatch):
    cfg = mmwal.Config(auto_compact=False, ann_min_rows=0, segment_bytes=4096,
                       auto_checkpoint=False)
    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os", config=cfg) as s:
        _across_segments(s)
    real = C._Reread.read

    def changed(self: Any, rec: Any, dim: int) -> Any:  # as if the bytes had changed
        return real(self, rec._replace(keys=[b"x" + k for k in rec.keys]), dim)

    monkeypatch.setattr(C, "_HELD_SEGMENTS", 1)
    monkeypatch.setattr(C._Reread, "read", changed)
    with mmwal.Store(path, durability="os", config=cfg) as s:
        with pytest.raises(CorruptionError, match="not what the first read"):
            s.checkpoint()
        assert s.stats().checkpoint_seq == 0
    assert not [x for x in os.listdir(os.path.join(path, "checkpoints")) if x.startswith(".tmp")]


def test_unaligned_wide_blocks_copied_or_not_write_the_same_bytes(tmp_path, monkeypatch):
    # Rows wider than numpy's buffer (np.getbufsize() floats) are summed in
    # pieces when their block is unaligned: their norms may then differ in the
    # last bit from those of an aligned copy.  The copy must not change what
    # the fold writes, for any width.
    dim = np.getbufsize() + 808
    rng = np.random.default_rng(5)
    a = str(tmp_path / "a")
    with mmwal.Store(a, dim=dim, durability="os", config=CFG) as s:
        for pad in range(4):  # ids of 4 lengths: vector blocks at every offset mod 4
            ids = [f"w{pad}-" + "x" * pad + str(i) for i in range(70)]
            s.add_many(ids, rng.standard_normal((70, dim)).astype(np.float32))
    b = copy_store(a, str(tmp_path / "b"))
    with mmwal.Store(a, durability="os", config=CFG) as s:
        s.checkpoint()
    with monkeypatch.context() as m:
        m.setattr(C, "_ALIGN_BYTES", 0)  # never copied
        with mmwal.Store(b, durability="os", config=CFG) as s:
            s.checkpoint()
    assert _fragment_bytes(a) == _fragment_bytes(b)
