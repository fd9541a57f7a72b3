"""Checkpoints: contents, files, retention, thresholds, orphans, damage, size, retirement."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from ckpt_helpers import (
    DIM,
    checkpoint_dirs,
    content_of,
    key_vec,
    key_vecs,
    leftovers,
    manifest,
    meta_of,
    snapshot,
)

import mmwal
from mmwal import _checkpoint
from mmwal._checkpoint import FILES
from mmwal._fsutil import Paths, list_segments
from mmwal._version import VersionView


def add(store: mmwal.Store, key: int, name: str | None = None) -> int:
    return store.add(name or f"k{key}", key_vec(key), content=content_of(key),
                     metadata=meta_of(key))


def view(path: str) -> VersionView:
    m = manifest(path)
    return VersionView(Paths(path), m, m["dim"])


def view_state(v: VersionView) -> list[tuple[str, bytes, str, object]]:
    """The live rows of a version, in row order."""
    out = []
    dead = v.dead
    for row in range(v.count):
        if dead is not None and dead[row]:
            continue
        c, m = v.doc(row)
        out.append((v.id_at(row), np.asarray(v.vector(row)).tobytes(), c, m))
    return out


def want(name: str, key: int) -> tuple[str, bytes, str, object]:
    return (name, key_vec(key).tobytes(), content_of(key), meta_of(key))


# ---------------------------------------------------------------------- contents
def test_checkpoint_contents_and_row_order(store_path):
    cfg = mmwal.Config(auto_compact=False)
    with mmwal.Store(store_path, dim=DIM, durability="os", config=cfg) as s:
        for k, name in enumerate("abcd"):
            add(s, k, name)
        info = s.checkpoint()
        assert (info.id, info.seq, info.documents) == (1, 4, 4)
        assert view_state(view(store_path)) == [want(n, k) for k, n in enumerate("abcd")]

        add(s, 10, "e")
        add(s, 11, "b")        # replaces a checkpoint row
        s.remove("c")          # removes a checkpoint row
        add(s, 12, "f")
        add(s, 13, "a")        # replaces a checkpoint row
        s.remove("nothing")    # absent: not an error, no effect
        s.add_many(["g", "h", "g"], key_vecs([14, 15, 16]),
                   contents=[content_of(k) for k in (14, 15, 16)],
                   metadatas=[meta_of(k) for k in (14, 15, 16)])  # "g": last one wins
        add(s, 17, "tmp")
        s.remove("tmp")        # added and removed within the delta: absent
        add(s, 18, "e")        # replaced again within the delta: moves to its last write
        info = s.checkpoint()
        assert (info.id, info.seq, info.documents) == (2, 16, 7)
        assert (info.fragments, info.fragments_written, info.rows_copied) == (2, 1, 6)
        # surviving previous rows in their order, then delta docs in last-write order
        expect = [want("d", 3), want("b", 11), want("f", 12), want("a", 13),
                  want("h", 15), want("g", 16)]
        expect.append(want("e", 18))  # "e" was last written at seq 16, after g/h
        got = view_state(view(store_path))
        assert got == expect
        # The older fragment is not rewritten: a deletion vector marks a, b, c dead.
        ckdir = os.path.join(store_path, "checkpoints")
        assert sorted(os.listdir(ckdir)) == ["00000001", "00000001-00000002.deleted",
                                             "00000001.version", "00000002",
                                             "00000002.version"]
        old = np.load(os.path.join(ckdir, "00000001", "embeddings.npy"), mmap_mode="r")
        assert old.shape == (4, DIM)
        emb = np.load(os.path.join(ckdir, "00000002", "embeddings.npy"), mmap_mode="r")
        assert np.array_equal(emb, np.stack([np.frombuffer(e[1], "<f4") for e in expect[1:]]))
        with mmwal.Reader(store_path) as r:
            assert list(r.ids) == [e[0] for e in expect]
            assert not isinstance(r.embeddings, np.memmap)  # two fragments: a copy
            assert np.array_equal(r.embeddings,
                                  np.stack([np.frombuffer(e[1], "<f4") for e in expect]))
        # A full compaction: one fragment holding exactly the live rows, mapped.
        c = s.compact()
        assert (c.fragments_before, c.fragments, c.rows_copied, c.rows_dropped) == (2, 1, 7, 3)
        assert view_state(view(store_path)) == expect
        with mmwal.Reader(store_path) as r:
            assert list(r.ids) == [e[0] for e in expect]
            assert isinstance(r.embeddings, np.memmap)

        s.clear()
        add(s, 20, "z")
        info = s.checkpoint()
        assert (info.seq, info.documents, info.fragments) == (18, 1, 1)
        assert view_state(view(store_path)) == [want("z", 20)]

        s.clear()
        info = s.checkpoint()
        assert (info.seq, info.documents, info.fragments) == (19, 0, 0)
        assert view(store_path).count == 0
        with mmwal.Reader(store_path) as r:
            assert len(r) == 0 and r.embeddings.shape == (0, DIM)
            assert r.search(key_vec(1), k=3) == []
            assert r.get("z") is None
        assert mmwal.verify(store_path).ok


def test_checkpoint_of_a_log_with_clear_then_readds(store_path):
    """A clear in the middle of the delta drops every previous row, later adds survive."""
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        s.add_many([f"p{i}" for i in range(50)], key_vecs(range(50)))
        s.checkpoint()
        s.add_many([f"q{i}" for i in range(5)], key_vecs(range(100, 105)))
        s.clear()
        s.add_many([f"p{i}" for i in range(3)], key_vecs(range(200, 203)))
        s.remove("p1")
        s.checkpoint()
        v = view(store_path)
        assert [v.id_at(i) for i in range(v.count)] == ["p0", "p2"]
        assert np.array_equal(v.embeddings, key_vecs([200, 202]))
        assert v.lookup(b"p1") == -1 and v.lookup(b"q0") == -1 and v.lookup(b"p2") == 1
    assert mmwal.verify(store_path).ok


# ---------------------------------------------------------------------- files
def test_checkpoint_files_are_mappable_npy(store_path):
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        s.add_many([f"d{i}" for i in range(300)], key_vecs(range(300)))
        info = s.checkpoint()
    d = os.path.join(store_path, "checkpoints", f"{info.id:08d}")
    assert sorted(os.listdir(d)) == sorted([*FILES, "DESCRIPTOR", "columns.bin"])
    emb = np.load(os.path.join(d, "embeddings.npy"), mmap_mode="r", allow_pickle=False)
    assert isinstance(emb, np.memmap)
    assert emb.dtype.str == "<f4" and emb.shape == (300, DIM) and emb.flags.c_contiguous
    assert emb.offset % 64 == 0
    assert np.array_equal(emb, key_vecs(range(300)))
    norms = np.load(os.path.join(d, "norms.npy"), mmap_mode="r")
    assert norms.dtype.str == "<f4" and norms.offset % 64 == 0
    assert np.allclose(norms, np.linalg.norm(key_vecs(range(300)), axis=1), rtol=1e-6)
    offs = np.load(os.path.join(d, "ids_offsets.npy"), mmap_mode="r")
    with open(os.path.join(d, "ids.bin"), "rb") as f:
        blob = f.read()
    assert [blob[offs[i]:offs[i + 1]].decode() for i in range(300)] == \
        [f"d{i}" for i in range(300)]
    for name in ("index.npy", "docs_offsets.npy"):
        arr = np.load(os.path.join(d, name), mmap_mode="r")
        assert arr.offset % 64 == 0


# ---------------------------------------------------------------------- retention
@pytest.mark.parametrize("keep", [0, 1, 2, 3, 6])
def test_keep_checkpoints(store_path, keep):
    """keep_checkpoints counts versions; a fragment goes when no kept version lists it."""
    cfg = mmwal.Config(keep_checkpoints=keep, auto_compact=False)
    with mmwal.Store(store_path, dim=DIM, durability="os", config=cfg) as s:
        for round_ in range(1, 5):
            add(s, round_)
            assert s.checkpoint().id == round_
            kept = max(keep, 1)
            versions = [f"{c:08d}.version" for c in range(max(1, round_ - kept + 1), round_ + 1)]
            # every version lists every fragment written so far (nothing died)
            frags = [f"{c:08d}" for c in range(1, round_ + 1)]
            assert checkpoint_dirs(store_path) == sorted(frags + versions)
            assert leftovers(store_path, keep) == []
        # Replacing k1 and k2 kills the only rows of fragments 1 and 2: the new
        # version no longer lists them, and once no kept version does, they go.
        add(s, 11, "k1")
        add(s, 12, "k2")
        v5 = s.checkpoint()
        assert v5.fragments == 3  # fragments 3, 4 and the new 5
        assert leftovers(store_path, keep) == []
        names = checkpoint_dirs(store_path)
        assert ("00000001" in names) == (keep >= 2)
        with mmwal.Reader(store_path) as r:
            assert sorted(r.ids) == [f"k{i}" for i in range(1, 5)]
            assert np.array_equal(r.get("k1").embedding, key_vec(11))


def test_checkpoint_with_nothing_new_creates_nothing(store_path):
    cfg = mmwal.Config(auto_compact=False)
    with mmwal.Store(store_path, dim=DIM, durability="os", config=cfg) as s:
        # an empty store: nothing to fold
        s.stats()  # the first lock holder publishes the shared tail hint
        before = snapshot(store_path)
        assert s.checkpoint() == mmwal.CheckpointInfo(0, 0, 0)  # no fragment, no bytes
        assert snapshot(store_path) == before
        for k in range(5):
            add(s, k)
        first = s.checkpoint()
        assert (first.id, first.seq, first.documents, first.fragments) == (1, 5, 5, 1)
        before = snapshot(store_path)
        again = s.checkpoint()
        assert (again.id, again.seq, again.documents, again.fragments) == (1, 5, 5, 1)
        assert again.fragments_written == again.bytes_written == 0
        assert snapshot(store_path) == before
        assert s.stats().checkpoint_id == 1
        # and the next real one still works and numbers on
        s.remove("k0")
        info = s.checkpoint()
        assert (info.id, info.seq, info.documents) == (2, 6, 4)


# ---------------------------------------------------------------------- thresholds
def test_needs_checkpoint_from_record_threshold(store_path):
    cfg = mmwal.Config(checkpoint_threshold=5)
    with mmwal.Store(store_path, dim=DIM, durability="os", config=cfg) as s:
        assert not s.needs_checkpoint()
        for k in range(4):
            add(s, k)
            assert not s.needs_checkpoint()
        s.remove("k0")  # every record counts
        assert s.needs_checkpoint()
        s.checkpoint()
        assert not s.needs_checkpoint()
        s.add_many([f"b{i}" for i in range(5)], key_vecs(range(5)))  # one record, five seqs
        assert s.needs_checkpoint()
        # another process's view agrees: the thresholds come from the store, not this object
        with mmwal.Store(store_path, config=cfg) as other:
            assert other.needs_checkpoint()
            other.checkpoint()
        assert not s.needs_checkpoint()


def test_needs_checkpoint_from_wal_bytes(store_path):
    cfg = mmwal.Config(checkpoint_threshold=10**9, max_wal_bytes=20_000, segment_bytes=8192)
    big = "x" * 1500
    with mmwal.Store(store_path, dim=DIM, durability="os", config=cfg) as s:
        assert not s.needs_checkpoint()
        n = 0
        while s.stats().log_bytes_since_checkpoint < 20_000:
            assert not s.needs_checkpoint()
            s.add(f"d{n}", key_vec(n), content=big)
            n += 1
        assert n > 5 and s.stats().log_segments > 1  # the bytes span several segments
        assert s.needs_checkpoint()
        s.checkpoint()
        assert s.stats().log_bytes_since_checkpoint < 20_000
        assert not s.needs_checkpoint()


def test_auto_checkpoint(store_path):
    cfg = mmwal.Config(checkpoint_threshold=10, auto_checkpoint=True, keep_checkpoints=1)
    with mmwal.Store(store_path, dim=DIM, durability="os", config=cfg) as s:
        for k in range(9):
            add(s, k)
        assert s.stats().checkpoint_id == 0
        add(s, 9)  # the 10th record crosses the threshold
        st = s.stats()
        assert (st.checkpoint_id, st.checkpoint_seq, st.checkpoint_documents) == (1, 10, 10)
        s.add_many([f"b{i}" for i in range(9)], key_vecs(range(9)))
        assert s.stats().checkpoint_id == 1
        s.remove("k0")  # seq 20: any kind of write triggers it
        st = s.stats()
        assert (st.checkpoint_id, st.checkpoint_seq, st.checkpoint_documents) == (2, 20, 18)
    with mmwal.Store(store_path, dim=DIM, durability="fsync", config=cfg) as s:
        for k in range(10):
            add(s, 100 + k)
        assert s.stats().checkpoint_id == 3
    with mmwal.Reader(store_path) as r:
        assert len(r) == 28 and "k0" not in r and "k100" in r
    assert mmwal.verify(store_path).ok


# ---------------------------------------------------------------------- orphans
def test_orphans_removed_by_next_checkpoint(store_path):
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        add(s, 1)
        s.checkpoint()
        ck = os.path.join(store_path, "checkpoints")
        tmp = os.path.join(ck, ".tmp-00000002-deadbeef")
        os.mkdir(tmp)
        with open(os.path.join(tmp, "embeddings.npy"), "wb") as f:
            f.write(b"half a file")
        unref = os.path.join(ck, "00000007")
        shutil.copytree(os.path.join(ck, "00000001"), unref)
        # A version that was never published (a crash before the MANIFEST), with
        # its fragment and a deletion vector of fragment 1.
        shutil.copytree(os.path.join(ck, "00000001"), os.path.join(ck, "00000008"))
        shutil.copy(os.path.join(ck, "00000001.version"), os.path.join(ck, "00000008.version"))
        with open(os.path.join(ck, "00000001-00000008.deleted"), "wb") as f:
            f.write(b"an unfinished deletion vector")
        report = mmwal.verify(store_path)
        assert report.ok, report.problems
        assert any("never published" in n for n in report.notes)
        assert any("listed by no version" in n for n in report.notes)
        assert any("temporary" in n for n in report.notes)
        with mmwal.Reader(store_path) as r:  # readers ignore the orphans
            assert r.checkpoint_id == 1 and list(r.ids) == ["k1"]
        add(s, 2)
        info = s.checkpoint()
        assert info.id == 2  # numbered after the published one, not after the orphans
        assert checkpoint_dirs(store_path) == ["00000001", "00000001.version", "00000002",
                                               "00000002.version"]
        assert leftovers(store_path, 2) == []
    report = mmwal.verify(store_path)
    assert report.ok, report.problems
    assert not [n for n in report.notes if "published" in n or "temporary" in n
                or "no version" in n], report.notes


# ---------------------------------------------------------------------- damage
def _small_store(path: str, n: int = 40, chunk: int = 8) -> None:
    cfg = mmwal.Config(chunk_documents=chunk)
    with mmwal.Store(path, dim=DIM, durability="os", config=cfg) as s:
        s.add_many([f"d{k}" for k in range(n)], key_vecs(range(n)),
                   contents=[content_of(k) for k in range(n)],
                   metadatas=[meta_of(k) for k in range(n)])
        s.checkpoint()


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


@pytest.mark.parametrize("name", ["embeddings.npy", "ids.bin", "index.npy", "docs.lz4",
                                  "DESCRIPTOR", "norms.npy", "ids_offsets.npy",
                                  "docs_offsets.npy"])
def test_verify_reports_damaged_checkpoint_file(tmp_path, name):
    path = str(tmp_path / "s")
    _small_store(path)
    assert mmwal.verify(path).ok
    f = os.path.join(path, "checkpoints", "00000001", name)
    size = os.path.getsize(f)
    # a byte past any .npy header; for index.npy one of its (mostly empty) slots
    _flip(f, size - 3 if name.endswith(".npy") else size // 2)
    report = mmwal.verify(path)
    assert not report.ok
    assert any(name in p.file or name in p.what for p in report.problems), report.problems


def _reader_battery(path: str) -> None:
    """Every read a user can make; each either works or raises CorruptionError."""
    ops = [
        lambda r: len(r),
        lambda r: list(r.ids),
        lambda r: np.asarray(r.embeddings).sum(),
        lambda r: r.search(key_vec(3), k=5),
        lambda r: r.search(key_vec(3), k=50, metric="l2"),
        lambda r: r.refresh(),
    ] + [lambda r, k=k: (r.get(f"d{k}"), f"d{k}" in r) for k in range(40)]
    try:
        r = mmwal.Reader(path)
    except mmwal.CorruptionError:
        return
    with r:
        for op in ops:
            try:
                op(r)
            except mmwal.CorruptionError:
                pass


def test_damaged_docs_chunk_raises_corruption_error(tmp_path):
    """Flip each byte of one docs chunk: reading its documents raises CorruptionError.

    The only exception is a flip that decompresses to the very same bytes (an
    LZ4 match offset that points at an identical earlier run): then the exact
    documents come back.  Never another exception, never different data.
    """
    path = str(tmp_path / "s")
    _small_store(path, n=16, chunk=8)
    d = os.path.join(path, "checkpoints", "00000001")
    offs = np.load(os.path.join(d, "docs_offsets.npy"))
    a, b = int(offs[0]), int(offs[1])  # chunk 0 = rows 0..7
    docs = os.path.join(d, "docs.lz4")
    raised = 0
    for off in range(a, b):
        _flip(docs, off)
        try:
            with mmwal.Reader(path) as r:
                try:
                    got = [r[f"d{k}"] for k in range(8)]
                except mmwal.CorruptionError as exc:
                    raised += 1
                    assert exc.path.endswith("docs.lz4")
                    for k in range(8):  # every document of the chunk, every way in
                        with pytest.raises(mmwal.CorruptionError):
                            r.get(f"d{k}")
                        with pytest.raises(mmwal.CorruptionError):
                            r[f"d{k}"]
                else:
                    assert [(x.content, x.metadata) for x in got] == \
                        [(content_of(k), meta_of(k)) for k in range(8)]
                # the other chunk is intact and still readable
                assert r["d9"].content == content_of(9)
                assert np.array_equal(r.embeddings[3], key_vec(3))
            assert not mmwal.verify(path).ok
        finally:
            _flip(docs, off)
    assert raised >= 0.9 * (b - a)
    assert mmwal.verify(path).ok


@pytest.mark.parametrize("name", [*FILES, "DESCRIPTOR"])
def test_reader_on_damaged_checkpoint_raises_only_corruption_error(tmp_path, name):
    path = str(tmp_path / "s")
    _small_store(path)
    f = os.path.join(path, "checkpoints", "00000001", name)
    size = os.path.getsize(f)
    step = max(1, size // 60)
    for off in range(0, size, step):
        _flip(f, off)
        try:
            _reader_battery(path)
        finally:
            _flip(f, off)
    for cut in (0, size // 2, size - 1):  # truncated files too
        shutil.copy(f, f + ".bak")
        try:
            with open(f, "r+b") as fh:
                fh.truncate(cut)
            with pytest.raises(mmwal.CorruptionError):
                mmwal.Reader(path).close()
            assert not mmwal.verify(path).ok
        finally:
            os.replace(f + ".bak", f)


# ---------------------------------------------------------------------- size
def test_large_checkpoint_round_trips(store_path):
    n, dim = 50_000, 8
    cfg = mmwal.Config(keep_checkpoints=1)
    with mmwal.Store(store_path, dim=dim, durability="os", config=cfg) as s:
        for start in range(0, n, 12_500):
            keys = range(start, start + 12_500)
            s.add_many([f"doc-{k}" for k in keys], key_vecs(keys, dim),
                       contents=[f"c{k}" for k in keys],
                       metadatas=[{"k": k} if k % 3 else None for k in keys])
        first = s.checkpoint()
        assert (first.id, first.seq, first.documents) == (1, n, n)
        assert (first.fragments, first.rows_copied) == (1, n)
        # a second fold writes the replacements and a deletion vector; its
        # automatic compaction (12% dead < 20%: none) leaves fragment 1 alone
        s.add_many([f"doc-{k}" for k in range(0, n, 10)], key_vecs(range(n, n + n // 10), dim))
        for k in range(5, n, 50):
            s.remove(f"doc-{k}")
        info = s.checkpoint()
    removed = set(range(5, n, 50))
    replaced = {k: n + k // 10 for k in range(0, n, 10)}
    live = [k for k in range(n) if k not in removed]
    assert info.documents == len(live)
    assert (info.fragments, info.fragments_written, info.rows_copied) == (2, 1, n // 10)
    with mmwal.Reader(store_path) as r:
        assert len(r) == len(live)
        ids = list(r.ids)
        kept = [k for k in live if k not in replaced]
        assert ids == [f"doc-{k}" for k in kept] + [f"doc-{k}" for k in range(0, n, 10)]
        emb = r.embeddings  # two fragments, one with deletions: a copy
        assert not isinstance(emb, np.memmap)
        frags = r.fragments  # the zero-copy parts
        assert [len(f.ids) for f in frags] == [n, n // 10]
        assert all(isinstance(f.embeddings, np.memmap) for f in frags)
        assert int(frags[0].live.sum()) == len(kept) and frags[1].live.all()
        assert np.array_equal(frags[0].embeddings[frags[0].live], key_vecs(kept, dim))
        assert np.array_equal(emb[: len(kept)], key_vecs(kept, dim))
        assert np.array_equal(emb[len(kept):], key_vecs([replaced[k] for k in range(0, n, 10)],
                                                        dim))
        rng = np.random.default_rng(1)
        for k in rng.choice(n, 300, replace=False).tolist():
            doc = r.get(f"doc-{k}")
            if k in removed:
                assert doc is None
                continue
            assert doc is not None
            if k in replaced:  # re-added without content or metadata
                assert (doc.content, doc.metadata) == ("", None)
                assert np.array_equal(doc.embedding, key_vec(replaced[k], dim))
            else:
                assert doc.content == f"c{k}"
                assert doc.metadata == ({"k": k} if k % 3 else None)
                assert np.array_equal(doc.embedding, key_vec(k, dim))
    assert mmwal.verify(store_path).ok


def test_partitioned_index(store_path, monkeypatch):
    """Stores large enough for several index partitions (forced small here) look up right."""
    monkeypatch.setattr(_checkpoint, "PARTITION_SLOTS", 256)
    n = 3000
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        s.add_many([f"p{k}" for k in range(n)], key_vecs(range(n)))
        s.checkpoint()
        s.add_many([f"p{k}" for k in range(0, n, 7)], key_vecs(range(n, n + len(range(0, n, 7)))))
        s.checkpoint()
    v = view(store_path)
    big = v.parts[0].view  # the first fragment, all 3000 rows (some dead now)
    assert big.partitions > 1
    for row in range(big.count):
        assert big.lookup(big.id_bytes(row)) == row
    dead = v.dead
    assert dead is not None and int(dead.sum()) == len(range(0, n, 7))
    for row in range(v.count):  # the version resolves every live id to its live row
        if not dead[row]:
            assert v.lookup(v.id_at(row).encode()) == row
    assert v.lookup(b"p-missing") == -1
    with mmwal.Reader(store_path) as r:
        assert all(f"p{k}" in r for k in range(n))
        assert np.array_equal(r["p7"].embedding, key_vec(n + 1))
    assert mmwal.verify(store_path).ok


# ---------------------------------------------------------------------- retirement
def test_segments_before_replay_start_are_deleted(store_path):
    cfg = mmwal.Config(segment_bytes=4096)
    with mmwal.Store(store_path, dim=DIM, durability="os", config=cfg) as s:
        for k in range(200):
            s.add(f"d{k}", key_vec(k), content="c" * 100)
        paths = Paths(store_path)
        assert len(list_segments(paths)) > 4
        info = s.checkpoint()
        m = manifest(store_path)
        segs = list_segments(paths)
        assert segs == [m["replay_segment"]]  # everything folded in is gone
        for k in range(200, 260):
            s.add(f"d{k}", key_vec(k), content="c" * 100)
        assert len(list_segments(paths)) > 1
        s.checkpoint()
        m = manifest(store_path)
        assert list_segments(paths) == [m["replay_segment"]]
        assert m["checkpoint_seq"] == 260 and info.seq == 200
        # the log now starts after the checkpoint: replay yields nothing older
        assert [op.seq for op in mmwal.replay(store_path)] == []
        s.add("after", key_vec(999))
        assert [op.seq for op in mmwal.replay(store_path)] == [261]
    with mmwal.Reader(store_path) as r:
        assert len(r) == 261 and r.seq == 261
    report = mmwal.verify(store_path)
    assert report.ok, report.problems
