"""Filtered search and find against a Python oracle: checkpoint rows, tail rows, deletions."""

from __future__ import annotations

import random

import numpy as np
import pytest

import mmwal
from mmwal._search import where as W

DIM = 12
SOURCES = ["a.pdf", "b.pdf", "c.pdf", "é.txt"]


def random_meta(rng: random.Random):
    if rng.random() < 0.1:
        return None
    m = {}
    if rng.random() < 0.9:
        m["src"] = rng.choice(SOURCES)
    if rng.random() < 0.8:
        m["page"] = rng.choice([rng.randrange(20), rng.randrange(20) + 0.5, str(rng.randrange(5))])
    if rng.random() < 0.5:
        m["flag"] = rng.random() < 0.5
    if rng.random() < 0.2:
        m["tags"] = ["x", "y"]
    return m


def random_filter(rng: random.Random, depth: int = 0):
    r = rng.random()
    if depth < 2 and r < 0.25:
        op = rng.choice(["$and", "$or"])
        return {op: [random_filter(rng, depth + 1) for _ in range(rng.randrange(2, 4))]}
    key = rng.choice(["src", "page", "flag", "tags", "missing"])
    choice = rng.randrange(8)
    if choice == 0:
        return {key: rng.choice([*SOURCES, 3, True])}
    if choice == 1:
        return {key: {"$ne": rng.choice([*SOURCES, 3, False])}}
    if choice in (2, 3):
        return {key: {rng.choice(["$gt", "$gte", "$lt", "$lte"]): rng.choice([3, 7.5, 10])}}
    if choice == 4:
        return {key: {"$in": rng.sample(SOURCES, 2)}}
    if choice == 5:
        return {key: {"$nin": [1, 2, 3]}}
    if choice == 6:
        return {key: {"$exists": rng.random() < 0.5}}
    return {key: {"$in": [True]}}


def build(path: str, seed: int):
    """A store with checkpointed, replaced, removed and tail documents; its model."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    model: dict[str, tuple[np.ndarray, str, dict | None]] = {}
    with mmwal.Store(path, dim=DIM, durability="os") as st:
        def add(ids):
            vecs = nrng.normal(size=(len(ids), DIM)).astype(np.float32)
            metas = [random_meta(rng) for _ in ids]
            contents = [f"text {i} {rng.choice(['apple', 'pear'])}" for i in ids]
            st.add_many(ids, vecs, contents=contents, metadatas=metas)
            for i, v, c, m in zip(ids, vecs, contents, metas):
                model[i] = (v, c, m)

        add([f"d{i}" for i in range(300)])
        st.checkpoint()
        add([f"d{i}" for i in range(0, 300, 7)])  # replacements in the tail
        for i in range(3, 300, 11):
            st.remove(f"d{i}")
            model.pop(f"d{i}", None)
        add([f"t{i}" for i in range(80)])
    return model


def oracle(model, q, k, metric, where, where_document=None):
    expr = None if where is None else W.parse(where)
    doc = None if where_document is None else W.parse_document(where_document)
    keep = [i for i, (_v, c, m) in model.items()
            if (expr is None or W.matches(expr, m))
            and (doc is None or W.matches_document(doc, c))]
    if not keep:
        return []
    E = np.stack([model[i][0] for i in keep]).astype(np.float64)
    q = np.asarray(q, np.float64)
    if metric == "dot":
        s = E @ q
    elif metric == "cosine":
        s = (E @ q) / (np.linalg.norm(E, axis=1) * np.linalg.norm(q))
    else:
        s = -np.linalg.norm(E - q, axis=1)
    order = np.argsort(-s, kind="stable")[:k]
    return [(keep[j], float(s[j] if metric != "l2" else -s[j])) for j in order]


@pytest.mark.parametrize("seed", [1, 2])
def test_filtered_search_is_the_exact_top_k_of_the_matching_documents(tmp_path, seed):
    path = str(tmp_path / "s")
    model = build(path, seed)
    rng = random.Random(100 + seed)
    with mmwal.Reader(path) as r:
        assert len(r) == len(model)
        for _ in range(60):
            w = random_filter(rng)
            metric = rng.choice(["cosine", "dot", "l2"])
            q = np.random.default_rng(rng.randrange(1 << 30)).normal(size=DIM)
            k = rng.choice([1, 5, 20])
            want = oracle(model, q, k, metric, w)
            for exact in (True, None, False):
                got = r.search(q, k=k, metric=metric, where=w, exact=exact)
                assert [h.id for h in got] == [i for i, _ in want], (w, metric)
                assert np.allclose([h.score for h in got], [s for _, s in want], atol=1e-4)
            expr = W.parse(w)
            matching = {i for i, (_v, _c, m) in model.items() if W.matches(expr, m)}
            found = r.find(w)
            assert set(found) == matching and len(found) == len(matching)
            assert found == [i for i in r.ids if i in matching]  # row order
            assert r.find(w, limit=3) == found[:3]


def test_batch_queries_and_content_filters(tmp_path):
    path = str(tmp_path / "s")
    model = build(path, 3)
    Q = np.random.default_rng(5).normal(size=(4, DIM))
    w = {"$or": [{"src": "a.pdf"}, {"page": {"$lt": 4}}]}
    wd = {"$contains": "apple"}
    with mmwal.Reader(path) as r:
        got = r.search(Q, k=7, where=w, where_document=wd)
        for q, hits in zip(Q, got):
            want = oracle(model, q, 7, "cosine", w, wd)
            assert [h.id for h in hits] == [i for i, _ in want]
            for h in hits:
                assert "apple" in r[h.id].content
        assert set(r.find(where_document={"$not_contains": "apple"})) == {
            i for i, (_v, c, _m) in model.items() if "apple" not in c}


def test_a_filter_nothing_matches_and_an_empty_store(tmp_path):
    path = str(tmp_path / "s")
    build(path, 4)
    with mmwal.Reader(path) as r:
        assert r.search(np.ones(DIM), k=5, where={"src": "nope.pdf"}) == []
        assert r.find({"src": "nope.pdf"}) == []
    empty = str(tmp_path / "e")
    mmwal.Store(empty, dim=DIM).close()
    with mmwal.Reader(empty) as r:
        assert r.search(np.ones(DIM), k=5, where={"src": "a.pdf"}) == []


@pytest.mark.parametrize("bad, part", [
    ({"src": {"$like": "a"}}, '["src"]'),
    ({"page": {"$gt": "3"}}, '["page"]["$gt"]'),
    ({"$and": [{"src": "a.pdf"}]}, '["$and"]'),
    ({"src": ["a.pdf"]}, '["src"]'),
    ("src = a", "where"),
])
def test_malformed_filters_are_typed_errors_naming_the_part(tmp_path, bad, part):
    path = str(tmp_path / "s")
    build(path, 5)
    with mmwal.Reader(path) as r:
        with pytest.raises(mmwal.errors.InvalidInputError) as exc:
            r.search(np.ones(DIM), k=3, where=bad)
        assert part in str(exc.value)
        with pytest.raises(ValueError):
            r.find(bad)
        with pytest.raises(mmwal.errors.InvalidInputError):
            r.search(np.ones(DIM), exact="yes")
        with pytest.raises(mmwal.errors.InvalidInputError):
            r.search(np.ones(DIM), expansion=0)
        with pytest.raises(mmwal.errors.InvalidInputError):
            r.find(None, limit=-1)
