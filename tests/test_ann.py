"""The approximate index per fragment: built, mapped, planned, checked, optional."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mmwal
from mmwal._search import ann

DIM = 16
N = 3000


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(20, DIM)).astype(np.float32)
    return (centers[rng.integers(0, 20, n)]
            + 0.25 * rng.normal(size=(n, DIM))).astype(np.float32)


def build(path: str, **cfg) -> np.ndarray:
    X = clustered(N)
    config = mmwal.Config(ann_min_rows=1000, **cfg)
    with mmwal.Store(path, dim=DIM, durability="os", config=config) as s:
        s.add_many([f"d{i}" for i in range(N)], X,
                   metadatas=[{"g": i % 10, "big": i >= 100} for i in range(N)])
        info = s.checkpoint()
        assert info.fragments == 1
        for i in range(0, N, 31):  # dead rows: a deletion vector on the indexed fragment
            s.remove(f"d{i}")
        s.checkpoint()
    return X


def frag_dir(path: str) -> str:
    return os.path.join(path, "checkpoints", "00000001")


def queries(X: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(7)
    return X[rng.integers(0, N, 20)] + np.float32(0.01)


def ids(hits):
    return [[h.id for h in q] for q in hits]


def recall(got, exact) -> float:
    """Share of the exact top-k ids found, over every query."""
    return float(np.mean([len(set(a) & set(b)) / max(len(b), 1)
                          for a, b in zip(ids(got), ids(exact))]))


def test_index_is_built_listed_and_used(tmp_path):
    path = str(tmp_path / "s")
    X = build(path)
    d = frag_dir(path)
    assert ann.ANN_FILE in os.listdir(d)
    desc = mmwal.Reader(path)
    with desc as r:
        frag = r.stats().fragments[0]
        assert frag["index"]["metric"] == "cosine" and frag["index"]["dtype"] == "f16"
        assert frag["index"]["bytes"] == os.path.getsize(os.path.join(d, ann.ANN_FILE))
        Q = queries(X)
        exact = r.search(Q, k=10, exact=True)
        auto = r.search(Q, k=10)
        assert r.stats().fragments[0]["index"]["mapped"]  # the index was used
        recall_at = recall(auto, exact)
        assert recall_at >= 0.9, recall_at
        # Candidates are re-scored exactly: a hit's score is its exact score.
        for q, hits in zip(Q, auto):
            for h in hits:
                v = r.get(h.id).embedding
                want = float(v @ q / (np.linalg.norm(v) * np.linalg.norm(q)))
                assert h.score == pytest.approx(want, rel=1e-5, abs=1e-6)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        # Removed rows are never returned, whatever the index holds.
        removed = {f"d{i}" for i in range(0, N, 31)}
        assert not removed & {i for q in ids(r.search(X[:40], k=5)) for i in q}
        assert ids(r.search(Q, k=10, exact=False)) == ids(auto)
        # A wider expansion finds (nearly) the exact top k.
        assert recall(r.search(Q, k=10, expansion=2000), exact) >= max(recall_at, 0.98)
    assert mmwal.verify(path).ok


@pytest.mark.parametrize("where", [{"g": 3}, {"g": {"$in": [1, 2, 3, 4, 5, 6, 7]}},
                                   {"big": False}])
def test_filtered_search_through_the_index(tmp_path, where):
    path = str(tmp_path / "s")
    X = build(path)
    Q = queries(X)
    with mmwal.Reader(path) as r:
        allowed = set(r.find(where))
        auto = r.search(Q, k=10, where=where)
        exact = r.search(Q, k=10, where=where, exact=True)
        for a, e in zip(ids(auto), ids(exact)):
            assert set(a) <= allowed  # never a non-matching or dead document
            assert len(a) == min(10, len(allowed))
            assert len(set(a) & set(e)) >= 8
        # exact=True: exactly the top k of the matching documents (a brute-force oracle)
        live = sorted(allowed)
        M = np.stack([r.get(i).embedding for i in live])
        for q, e in zip(Q, ids(exact)):
            s = M @ q / (np.linalg.norm(M, axis=1) * np.linalg.norm(q))
            assert e == [live[i] for i in np.argsort(-s, kind="stable")[:10]]


def test_another_metric_is_searched_exactly(tmp_path):
    path = str(tmp_path / "s")
    X = build(path)  # the index is built for cosine
    Q = queries(X)
    with mmwal.Reader(path) as r:
        for metric in ("dot", "l2"):
            assert r.search(Q, k=7, metric=metric) == r.search(Q, k=7, metric=metric,
                                                                exact=True)
        assert not r.stats().fragments[0]["index"]["mapped"]  # never opened


def test_index_for_the_l2_metric(tmp_path):
    path = str(tmp_path / "s")
    X = build(path, ann_metric="l2", ann_dtype="f32")
    Q = queries(X)
    with mmwal.Reader(path) as r:
        auto = r.search(Q, k=5, metric="l2", expansion=2000)
        exact = r.search(Q, k=5, metric="l2", exact=True)
        # HNSW is approximate even at a wide expansion (its build is threaded,
        # not deterministic): nearly all of the exact top k.
        assert recall(auto, exact) >= 0.95
        # Distances are the exact ones (re-scored from the mapped matrix).
        for q, hits in zip(Q, auto):
            for h in hits:
                v = r.get(h.id).embedding.astype(np.float64)
                assert h.score == pytest.approx(float(np.linalg.norm(v - q)), rel=1e-5)
        assert r.stats().fragments[0]["index"]["mapped"]


def test_a_damaged_index_is_reported_and_never_used(tmp_path):
    path = str(tmp_path / "s")
    X = build(path)
    f = os.path.join(frag_dir(path), ann.ANN_FILE)
    with open(f, "r+b") as fh:  # scribble over the graph
        fh.seek(os.path.getsize(f) // 2)
        fh.write(b"\xff" * 4096)
    Q = queries(X)
    with mmwal.Reader(path) as r:
        assert r.search(Q, k=10) == r.search(Q, k=10, exact=True)  # searched exactly
        idx = r.stats().fragments[0]["index"]
        assert not idx["mapped"] and "CRC-32" in idx["error"]
        assert len(r) == N - len(range(0, N, 31)) and r.get("d5") is not None
    report = mmwal.verify(path)
    assert not report.ok
    assert [p for p in report.problems if p.file == f and "approximate index" in p.what]
    # A truncated index likewise (the descriptor's size no longer matches).
    with open(f, "r+b") as fh:
        fh.truncate(100)
    with mmwal.Reader(path) as r:
        assert r.search(Q, k=3) == r.search(Q, k=3, exact=True)


CHILD = r"""
import json, sys
sys.modules["usearch"] = None  # the ann extra is not installed
sys.modules["usearch.index"] = None
import numpy as np, mmwal
path, = sys.argv[1:]
with mmwal.Reader(path) as r:
    q = np.stack([r.get(i).embedding for i in list(r.ids)[:5]])
    out = {"auto": [[h.id for h in x] for x in r.search(q, k=5)],
           "exact": [[h.id for h in x] for x in r.search(q, k=5, exact=True)],
           "index": r.stats().fragments[0]["index"]}
with mmwal.Store(path, config=mmwal.Config(ann_min_rows=10)) as s:
    s.add("new", q[0])
    s.checkpoint()
    out["compact"] = s.compact().fragments
print(json.dumps(out))
"""


def test_a_store_with_index_files_works_without_the_ann_extra(tmp_path):
    path = str(tmp_path / "s")
    build(path)
    p = subprocess.run([sys.executable, "-c", CHILD, path], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["auto"] == out["exact"]
    assert out["index"] is not None and not out["index"]["mapped"]
    assert out["compact"] == 1
    # The compaction without usearch wrote a fragment without an index; all still exact.
    with mmwal.Reader(path) as r:
        assert r.stats().fragments[0]["index"] is None
    assert mmwal.verify(path).ok


def test_small_fragments_and_ann_min_rows_zero_build_no_index(tmp_path):
    path = str(tmp_path / "s")
    X = clustered(500)
    with mmwal.Store(path, dim=DIM, durability="os",
                     config=mmwal.Config(ann_min_rows=0)) as s:
        s.add_many([f"d{i}" for i in range(500)], X)
        s.checkpoint()
    assert ann.ANN_FILE not in os.listdir(frag_dir(path))
    with mmwal.Store(path, config=mmwal.Config(ann_min_rows=400)) as s:
        s.add_many([f"e{i}" for i in range(100)], X[:100])
        assert s.checkpoint().fragments == 2  # the new fragment: 100 rows, no index
        s.compact()  # one fragment of 600 rows: indexed
    with mmwal.Reader(path) as r:
        assert [f["index"] is not None for f in r.stats().fragments] == [True]
        auto, exact = r.search(X[:3], k=4, expansion=1000), r.search(X[:3], k=4, exact=True)
        assert recall(auto, exact) >= 0.9


@pytest.mark.parametrize(("field", "value"), [
    ("ann_min_rows", -1), ("ann_min_rows", 1.5), ("ann_metric", "cos"), ("ann_dtype", "f8"),
    ("ann_connectivity", 1), ("ann_expansion_add", 0), ("ann_expansion_search", True)])
def test_ann_config_is_checked(field, value):
    with pytest.raises(mmwal.errors.InvalidInputError, match=field):
        mmwal.Config(**{field: value})


def test_single_queries_through_the_index(tmp_path):
    """One query (1-D, or a batch of one) through an indexed fragment, as the demo does."""
    path = str(tmp_path / "s")
    X = build(path)
    with mmwal.Reader(path) as r:
        one = r.search(X[5], k=3)
        assert len(one) == 3 and one[0].id == "d5"  # the query is d5's own vector
        assert r.search(X[5:6], k=3)[0] == one
        assert r.search(X[5], k=3, where={"g": {"$in": [5, 6, 7, 8]}})[0].id == "d5"
        assert r.stats().fragments[0]["index"]["mapped"]


def test_inspect_shows_each_fragments_index_and_columns(tmp_path, capsys):
    from mmwal import cli

    path = str(tmp_path / "s")
    build(path)
    with mmwal.Store(path, config=mmwal.Config(ann_min_rows=1000)) as s:
        s.add("small", np.ones(DIM, np.float32), metadata={"g": 1})
        s.checkpoint()  # a fragment of one row: no index
    assert cli.main(["inspect", path, "--json"]) == 0
    frags = json.loads(capsys.readouterr().out)["checkpoint"]["fragments"]
    assert [f["index"] is not None for f in frags] == [True, False]
    assert frags[0]["index"]["metric"] == "cosine" and frags[0]["index"]["bytes"] > 0
    assert all(f["columns"] for f in frags)
    assert cli.main(["inspect", path]) == 0
    assert "index cosine/f16" in capsys.readouterr().out
