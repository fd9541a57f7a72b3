"""mmwal.chroma against chromadb 1.5.9: one scripted sequence run on both, compared.

Also: four processes adding through their own clients with a checkpointer
running (the failure issue 17 measured in Chroma), the import-chroma round
trip, and the semantics mmwal.chroma chose where Chroma is silent or differs
(docs/integrations.md, "Migrating from Chroma").
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import sys
import time

import numpy as np
import pytest

# child-process bodies live there: spawned children then import no chromadb
from chroma_helpers import N_PROC, PER_PROC, _checkpointer, _creator, _holder, _vec_of, _writer

import mmwal.chroma as mc
from mmwal import cli

chromadb = pytest.importorskip("chromadb")
from chromadb.config import Settings  # noqa: E402

DIM = 8


def _vec(rnd: random.Random) -> list[float]:
    return [round(rnd.uniform(-1, 1), 3) for _ in range(DIM)]


def _meta(i: int, rnd: random.Random):
    if i % 7 == 3:
        return None
    m = {"page": i % 5, "src": f"f{i % 3}.pdf", "score": round(i * 0.25, 2),
         "ok": i % 2 == 0}
    if i % 4 == 0:
        m["tags"] = ["a", "b"] if i % 8 == 0 else ["c"]
    return m


def _doc(i: int):
    return None if i % 9 == 4 else f"document {i} about {'cats' if i % 3 else 'dogs'}"


def script(client, space: str) -> list:
    """One sequence of operations; returns every result, in order."""
    rnd = random.Random(1234)
    col = client.create_collection(f"conf-{space}", metadata={"hnsw:space": space, "x": 1},
                                   embedding_function=None)
    out: list = [("meta", col.name, col.metadata)]
    vecs = [_vec(rnd) for _ in range(60)]
    vecs[10] = list(vecs[5])  # exact ties: the order of equal distances is compared too
    vecs[20] = list(vecs[5])
    ids = [f"id-{i}" for i in range(60)]
    col.add(ids=ids[:40], embeddings=vecs[:40], documents=[_doc(i) for i in range(40)],
            metadatas=[_meta(i, rnd) for i in range(40)])
    # add of existing ids (ignored by Chroma 1.5.9) mixed with new ones
    col.add(ids=ids[35:45], embeddings=[_vec(rnd) for _ in range(10)],
            documents=[f"new {i}" for i in range(10)])
    out.append(("count", col.count()))
    # upsert: existing (fields replaced, metadata merged, None removes a key) and new
    col.upsert(ids=[ids[1], ids[2], ids[50]], embeddings=[vecs[50], vecs[51], vecs[52]],
               metadatas=[{"page": 99, "src": None}, {"extra": "yes"}, {"page": 7}],
               documents=["upserted one", None, "brand new"])
    # update: existing ids and a missing one (ignored)
    col.update(ids=[ids[3], ids[4], "missing"], embeddings=[vecs[53], vecs[54], vecs[55]],
               metadatas=[{"page": 1}, None, {"page": 2}],
               documents=["updated three", "updated four", "ghost"])
    col.update(ids=[ids[6]], metadatas=[{"page": None, "src": None, "score": None,
                                         "ok": None}])
    col.delete(ids=[ids[7], ids[8], "missing-too"])
    col.delete(where={"page": 4})
    col.delete(where_document={"$contains": "new 8"})
    inc = ["documents", "metadatas", "embeddings", "uris"]
    out.append(("get-all", col.get(include=inc)))
    out.append(("get-ids", col.get(ids=[ids[30], ids[1], ids[9], "nope"])))
    out.append(("get-where", col.get(where={"$and": [{"page": {"$gte": 1}},
                                                     {"src": {"$in": ["f0.pdf", "f1.pdf"]}}]},
                                     limit=5, offset=2)))
    out.append(("get-limit", col.get(limit=7, offset=3, include=["metadatas"])))
    out.append(("get-doc", col.get(where_document={"$contains": "dogs"})))
    out.append(("get-doc-not", col.get(where_document={"$not_contains": "cats"},
                                       where={"ok": True})))
    out.append(("get-ne", col.get(where={"page": {"$ne": 2}}, include=[])))
    out.append(("peek", col.peek(4)))
    qs = [vecs[5], _vec(rnd), _vec(rnd)]
    out.append(("query", col.query(query_embeddings=qs, n_results=6,
                                   include=["documents", "metadatas", "distances",
                                            "embeddings"])))
    out.append(("query-all", col.query(query_embeddings=[vecs[5]], n_results=100)))
    out.append(("query-where", col.query(query_embeddings=qs, n_results=50,
                                         where={"page": {"$lt": 3}})))
    # n_results=6 does not cut through the three tied records: at a cut, which of
    # several exactly tied records Chroma returns depends on its heap, not on order
    out.append(("query-where-doc", col.query(query_embeddings=qs, n_results=6,
                                             where_document={"$contains": "cats"},
                                             where={"src": {"$ne": "f1.pdf"}})))
    out.append(("query-ids", col.query(query_embeddings=qs[:1], n_results=3,
                                       ids=[ids[12], ids[13], ids[15], ids[16]])))
    out.append(("query-none", col.query(query_embeddings=qs[:1], where={"page": 12345})))
    out.append(("count", col.count()))
    col.modify(name=f"renamed-{space}", metadata={"y": 2})
    out.append(("modified", client.get_collection(f"renamed-{space}").metadata))
    return out


def _same(a, b, where=""):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, a.keys(), b.keys())
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, (where, a.shape, b.shape)
        np.testing.assert_allclose(a, b, atol=1e-4, err_msg=where)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), (where, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(a, bool):
        assert isinstance(b, (int, float)) and abs(a - b) <= 1e-4, (where, a, b)
    else:
        assert a == b and type(a) is type(b), (where, a, b)


@pytest.mark.parametrize("space", ["l2", "cosine", "ip"])
def test_conformance_with_chromadb(tmp_path, space):
    ref = chromadb.PersistentClient(str(tmp_path / "chroma"),
                                    settings=Settings(anonymized_telemetry=False))
    ours = mc.PersistentClient(tmp_path / "mmwal", durability="os")
    expected = script(ref, space)
    got = script(ours, space)
    assert len(expected) == len(got)
    for e, g in zip(expected, got):
        assert e[0] == g[0]
        _same(e, g, e[0])
    # distances really are Chroma's for this space, not just equal by luck
    q = [x for x in expected if x[0] == "query"][0][1]
    assert q["distances"][0][0] <= q["distances"][0][-1]


def test_errors_match_chromadb_kinds(tmp_path):
    ref = chromadb.PersistentClient(str(tmp_path / "chroma"),
                                    settings=Settings(anonymized_telemetry=False))
    ours = mc.PersistentClient(tmp_path / "mmwal", durability="os")
    cases = [
        ("wrong dim", lambda c: c.add(ids=["z"], embeddings=[[1.0, 2.0, 3.0]])),
        ("dup ids", lambda c: c.add(ids=["z", "z"], embeddings=[[1.0, 2.0]] * 2)),
        ("empty ids", lambda c: c.get(ids=[])),
        ("delete nothing", lambda c: c.delete()),
        ("empty metadata", lambda c: c.add(ids=["z"], embeddings=[[1.0, 2.0]], metadatas=[{}])),
        ("nested metadata", lambda c: c.add(ids=["z"], embeddings=[[1.0, 2.0]],
                                            metadatas=[{"a": {"b": 1}}])),
        ("mixed list", lambda c: c.add(ids=["z"], embeddings=[[1.0, 2.0]],
                                       metadatas=[{"a": [1, "x"]}])),
        ("nan vector", lambda c: c.add(ids=["z"], embeddings=[[float("nan"), 1.0]])),
        ("n_results 0", lambda c: c.query(query_embeddings=[[1.0, 2.0]], n_results=0)),
        ("bad include", lambda c: c.get(include=["distances"])),
        ("bad where", lambda c: c.get(where={"a": 1, "b": 2})),
    ]
    cols = []
    for client in (ref, ours):
        col = client.create_collection("errs", embedding_function=None)
        col.add(ids=["a"], embeddings=[[0.5, 0.5]])
        cols.append(col)
    for label, f in cases:
        for col in cols:
            with pytest.raises((ValueError, TypeError, chromadb.errors.ChromaError)):
                f(col)
        with pytest.raises(mc.InvalidArgumentError):  # ours: typed, also a ValueError
            f(cols[1])
        assert cols[0].count() == cols[1].count() == 1, label
    with pytest.raises(mc.InvalidDimensionError, match="dimension 2, got 3"):
        cols[1].query(query_embeddings=[[1.0, 2.0, 3.0]])
    for client, exc in ((ref, chromadb.errors.NotFoundError), (ours, mc.NotFoundError)):
        with pytest.raises(exc):
            client.get_collection("nope")
        with pytest.raises(exc):
            client.delete_collection("nope")
        with pytest.raises(Exception):
            client.create_collection("errs")
    with pytest.raises(mc.UniqueConstraintError):
        ours.create_collection("errs")


# ---------------------------------------------------------------- mmwal.chroma alone
def test_names_validated_and_never_escape(tmp_path):
    client = mc.PersistentClient(tmp_path / "db", durability="os")
    for bad in ["ab", "../../etc", "a/b/c", "-abc", "abc-", "a..b", "1.2.3.4", "x" * 513,
                "ab c", "", 5, ".hidden"]:
        with pytest.raises(mc.InvalidArgumentError):
            client.create_collection(bad)
    col = client.create_collection("a" * 512)
    col.add(ids=["x"], embeddings=[[1.0]])
    # directories are named by collection id: nothing outside path/collections
    assert sorted(os.listdir(tmp_path)) == ["db"]
    assert os.listdir(tmp_path / "db" / "collections") == [col.id]
    assert client.count_collections() == 1 and client.heartbeat() > 0


def test_embedding_function_protocol_and_missing_one(tmp_path):
    class Fake:
        calls = 0

        def __call__(self, input):  # Chroma's protocol: __call__(input: list[str])
            Fake.calls += 1
            return [[float(len(t)), 1.0] for t in input]

    client = mc.PersistentClient(tmp_path, durability="os")
    col = client.create_collection("texts")
    with pytest.raises(mc.MissingEmbeddingFunctionError, match="embedding_function"):
        col.add(ids=["a"], documents=["hello"])
    with pytest.raises(mc.MissingEmbeddingFunctionError):
        col.query(query_texts=["hello"])
    assert col.count() == 0
    col = client.get_collection("texts", embedding_function=Fake())
    col.add(ids=["a", "b"], documents=["hi", "hello there"])
    r = col.query(query_texts=["hello there"], n_results=1, include=["embeddings",
                                                                       "distances"])
    assert r["ids"] == [["b"]] and r["distances"] == [[0.0]]
    assert r["embeddings"][0].tolist() == [[11.0, 1.0]]
    col.update(ids=["a"], documents=["a longer text"])  # re-embedded, as in Chroma
    assert col.get(ids=["a"], include=["embeddings"])["embeddings"].tolist() == [[13.0, 1.0]]
    assert Fake.calls == 3


def test_get_returns_numpy_and_chroma_shapes(tmp_path):
    client = mc.PersistentClient(tmp_path, durability="os")
    col = client.get_or_create_collection("shapes")
    empty = col.get(include=["embeddings"])
    assert empty["ids"] == [] and empty["embeddings"].shape == (0,)
    col.add(ids="one", embeddings=[1.0, 2.0], uris="file://x")  # one record, Chroma-style
    r = col.get(include=["embeddings", "uris"])
    assert isinstance(r["embeddings"], np.ndarray) and r["embeddings"].dtype == np.float64
    assert r["uris"] == ["file://x"] and r["documents"] is None
    assert col.query(query_embeddings=[1.0, 2.0])["ids"] == [["one"]]
    assert client.get_or_create_collection("shapes", metadata={"z": 1}).metadata is None


def test_other_clients_see_writes_and_deletes(tmp_path):
    a = mc.PersistentClient(tmp_path, durability="os")
    b = mc.PersistentClient(tmp_path, durability="os")
    ca = a.create_collection("shared")
    cb = b.get_collection("shared")
    assert cb.count() == 0
    ca.add(ids=["x"], embeddings=[[1.0, 0.0]])
    assert cb.count() == 1 and cb.get()["ids"] == ["x"]
    ca.modify(name="shared2")
    assert cb.get()["ids"] == ["x"] and cb.name == "shared2"
    b.delete_collection("shared2")
    with pytest.raises(mc.NotFoundError):
        ca.add(ids=["y"], embeddings=[[1.0, 0.0]])
    with pytest.raises(mc.NotFoundError):
        ca.count()
    # the same name again is a new, empty collection: the stale handle never reaches it
    cn = a.create_collection("shared2")
    with pytest.raises(mc.NotFoundError):
        ca.get()
    assert cn.count() == 0 and cn.id != ca.id
    assert os.listdir(tmp_path / "collections") == [cn.id]


# ---------------------------------------------------------------- four processes
def test_four_processes_with_checkpointer(tmp_path):
    path = str(tmp_path / "db")
    col = mc.PersistentClient(path).get_or_create_collection(
        "docs", metadata={"hnsw:space": "cosine"})
    ctx = mp.get_context("spawn")
    stop, done = ctx.Event(), ctx.Queue()
    ck = ctx.Process(target=_checkpointer, args=(col.store_path, stop, done))
    ck.start()
    ws = [ctx.Process(target=_writer, args=(path, w)) for w in range(N_PROC)]
    try:
        for p in ws:
            p.start()
        for p in ws:
            p.join(120)
            assert p.exitcode == 0
    finally:
        stop.set()
        ck.join(60)
        for p in [*ws, ck]:
            if p.is_alive():
                p.kill()
                p.join()
    assert ck.exitcode == 0 and done.get(timeout=5) >= 1
    fresh = mc.PersistentClient(path)
    assert [c.name for c in fresh.list_collections()] == ["docs"]
    col = fresh.get_collection("docs")
    total = N_PROC * PER_PROC
    assert col.count() == total
    got = col.get(include=["embeddings", "documents", "metadatas"])
    expected = {f"w{w}-{i}": w * 10_000 + i for w in range(N_PROC) for i in range(PER_PROC)}
    assert sorted(got["ids"]) == sorted(expected)
    for x, e, d, m in zip(got["ids"], got["embeddings"], got["documents"], got["metadatas"]):
        np.testing.assert_array_equal(e.astype(np.float32), _vec_of(expected[x]))
        assert d == f"doc {x}" and m == {"w": int(x[1]), "i": int(x.split("-")[1])}
    # each writer's batches appear in its own order (first-insertion order)
    for w in range(N_PROC):
        mine = [x for x in got["ids"] if x.startswith(f"w{w}-")]
        assert mine == [f"w{w}-{i}" for i in range(PER_PROC)]
    r = col.query(query_embeddings=[_vec_of(3)], n_results=total)
    assert len(r["ids"][0]) == total and len(set(r["ids"][0])) == total
    assert r["ids"][0][0] == "w0-3" and r["distances"][0][0] == pytest.approx(0, abs=1e-5)


def test_concurrent_get_or_create_makes_one_collection(tmp_path):
    path = str(tmp_path / "db")
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(N_PROC), ctx.Queue()
    ps = [ctx.Process(target=_creator, args=(path, barrier, out)) for _ in range(N_PROC)]
    for p in ps:
        p.start()
    try:
        results = [out.get(timeout=120) for _ in ps]
        for p in ps:
            p.join(30)
            assert p.exitcode == 0
    finally:
        for p in ps:
            if p.is_alive():
                p.kill()
                p.join()
    assert all(r == results[0] for r in results)  # every process got the same ids
    client = mc.PersistentClient(path)
    assert client.count_collections() == 8
    for col in client.list_collections():
        assert col.count() == N_PROC  # one record from each process in each
    assert sorted(os.listdir(os.path.join(path, "collections"))) == sorted(results[0].values())


# ---------------------------------------------------------------- delete vs. another process
def test_delete_while_another_process_has_it_open(tmp_path):
    path = str(tmp_path / "db")
    client = mc.PersistentClient(path, durability="os")
    client.create_collection("victim")
    ctx = mp.get_context("spawn")
    ready, go, result = ctx.Event(), ctx.Event(), ctx.Queue()
    p = ctx.Process(target=_holder, args=(path, ready, go, result))
    p.start()
    try:
        assert ready.wait(60)
        client.delete_collection("victim")
        go.set()
        assert result.get(timeout=60) == "NotFoundError"
        p.join(30)
        assert p.exitcode == 0
    finally:
        if p.is_alive():
            p.kill()
            p.join()
    assert client.list_collections() == []
    assert os.listdir(os.path.join(path, "collections")) == []


# ---------------------------------------------------------------- import-chroma
def _chroma_source(path) -> dict:
    src = chromadb.PersistentClient(str(path), settings=Settings(anonymized_telemetry=False))
    rnd = random.Random(7)
    a = src.create_collection("alpha", metadata={"hnsw:space": "cosine", "owner": "me"},
                              embedding_function=None)
    a.add(ids=[f"a{i}" for i in range(130)], embeddings=[_vec(rnd) for _ in range(130)],
          documents=[_doc(i) for i in range(130)],
          metadatas=[_meta(i, rnd) for i in range(130)])
    b = src.create_collection("beta", embedding_function=None)
    b.add(ids=["b1", "b2"], embeddings=[[1.0] * DIM, [2.0] * DIM], uris=["u1", None])
    inc = ["embeddings", "documents", "metadatas", "uris"]
    out = {c: src.get_collection(c).get(include=inc) for c in ("alpha", "beta")}
    # Chroma 1.5.9 returns {} (not None) as the metadata of a record added with a
    # uri and no metadata (it keeps the uri in the metadata); mmwal returns None.
    assert out["beta"]["metadatas"] == [{}, None]
    out["beta"]["metadatas"] = [None, None]
    return out


def test_import_chroma_round_trip(tmp_path, capsys):
    expected = _chroma_source(tmp_path / "chroma")
    rc = cli.main(["import-chroma", str(tmp_path / "chroma"), str(tmp_path / "mm")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "alpha" in out and "130" in out
    client = mc.PersistentClient(tmp_path / "mm")
    assert sorted(c.name for c in client.list_collections()) == ["alpha", "beta"]
    alpha = client.get_collection("alpha")
    assert alpha.metadata == {"hnsw:space": "cosine", "owner": "me"} and alpha.space == "cosine"
    for name, exp in expected.items():
        got = client.get_collection(name).get(include=["embeddings", "documents",
                                                       "metadatas", "uris"])
        _same(exp, got, name)


def test_import_chroma_count_mismatch_and_missing_chromadb(tmp_path, capsys, monkeypatch):
    _chroma_source(tmp_path / "chroma")
    monkeypatch.setattr(mc.Collection, "count", lambda self: 0)
    rc = cli.main(["import-chroma", str(tmp_path / "chroma"), str(tmp_path / "mm")])
    assert rc == 1 and "differ" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "chromadb", None)
    rc = cli.main(["import-chroma", str(tmp_path / "chroma"), str(tmp_path / "mm2")])
    assert rc == 2 and "pip install chromadb" in capsys.readouterr().err


def test_documented_differences(tmp_path):
    """Each row of the differences table in docs/integrations.md that mmwal decides."""
    col = mc.PersistentClient(tmp_path, durability="os").create_collection("diffs")
    col.add(ids=["a", "b", "c", "d"], embeddings=[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0],
                                                   [0.0, 1.0]], documents=["", None, "x", "y"])
    for bad in ({"n": float("nan")}, {"n": float("inf")}, {"n": 2**70}, {"\x00chroma": 1},
                {"\x00a": 1}):
        with pytest.raises(mc.InvalidArgumentError):
            col.add(ids=["z"], embeddings=[[1.0, 1.0]], metadatas=[bad])
    # query(ids=) naming a missing id: ignored (Chroma 1.5.9: InternalError)
    r = col.query(query_embeddings=[[0.0, 1.0]], ids=["a", "gone"], n_results=5)
    assert r["ids"] == [["a"]]
    # exact ties straddling the cut: the earliest inserted are returned
    assert col.query(query_embeddings=[[0.0, 1.0]], n_results=2)["ids"] == [["b", "c"]]
    # "" and None documents stay apart; the reserved key never shows
    got = col.get(include=["documents", "metadatas", "uris"])
    assert got["documents"] == ["", None, "x", "y"]
    assert got["metadatas"] == [None] * 4 and got["uris"] == [None] * 4
    assert col.get(where_document={"$not_contains": "x"})["ids"] == ["a", "b", "d"]


def test_write_waiting_for_the_lock_sees_the_deletion(tmp_path):
    """A write that passed its first check and then waited on the collection's write
    lock while the collection was deleted raises NotFoundError; it never reports
    success for a record written into the deleted store."""
    import threading

    from mmwal._lock import FileLock

    a = mc.PersistentClient(tmp_path, durability="os")
    b = mc.PersistentClient(tmp_path, durability="os")
    col = a.create_collection("doomed")
    col.add(ids=["x"], embeddings=[[1.0, 0.0]])
    held = FileLock(os.path.join(tmp_path, "collections", col.id, "write.lock"), 30)
    held.acquire_exclusive_slow()  # another process in the middle of a write
    outcome: list = []

    def write():
        try:
            col.add(ids=["y"], embeddings=[[0.0, 1.0]])
            outcome.append("added")
        except mc.NotFoundError:
            outcome.append("NotFoundError")

    t = threading.Thread(target=write)
    t.start()
    time.sleep(0.3)  # let the write pass its first check and block on the lock
    d = threading.Thread(target=b.delete_collection, args=("doomed",))
    d.start()
    while b.count_collections():  # the registry entry goes first
        time.sleep(0.01)
    held.release_slow()
    held.close()
    t.join(30)
    d.join(30)
    assert outcome == ["NotFoundError"]
    assert os.listdir(tmp_path / "collections") == []
