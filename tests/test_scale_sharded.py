"""ShardedReader: fan-out search equals one store holding everything; routing by id hash."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import mmwal
from mmwal._scale.sharded import shard_of, shard_paths

DIM = 16
N = 3000


def _docs(start, n):
    rng = np.random.default_rng(start)
    ids = [f"doc-{i}" for i in range(start, start + n)]
    return (ids, rng.standard_normal((n, DIM)).astype(np.float32),
            [{"i": i, "tag": "abc"[i % 3]} for i in range(start, start + n)])


def _write(one, shards, start, n, *, checkpoint=True):
    ids, emb, metas = _docs(start, n)
    one.add_many(ids, emb, metadatas=metas)
    k = len(shards)
    for s, store in enumerate(shards):
        rows = [j for j, i in enumerate(ids) if shard_of(i, k) == s]
        store.add_many([ids[j] for j in rows], emb[rows], metadatas=[metas[j] for j in rows])
    if checkpoint:
        for st in (one, *shards):
            st.checkpoint()


@pytest.fixture
def sharded(tmp_path):
    one_path = str(tmp_path / "one")
    paths = shard_paths(str(tmp_path / "sharded"), 4)
    one = mmwal.Store(one_path, dim=DIM, durability="os")
    shards = [mmwal.Store(p, dim=DIM, durability="os") for p in paths]
    _write(one, shards, 0, N)
    yield one_path, paths, one, shards
    for st in (one, *shards):
        st.close()


def _same(a, b):
    assert [h.id for h in a] == [h.id for h in b]
    np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-5, atol=1e-6)


def test_shard_of_is_crc32_of_utf8():
    assert shard_of("doc-1", 4) == zlib.crc32(b"doc-1") % 4
    assert shard_of("é", 7) == zlib.crc32("é".encode()) % 7


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_search_equals_one_store(sharded, metric):
    one_path, paths, _, _ = sharded
    q = np.random.default_rng(99).standard_normal((5, DIM)).astype(np.float32)
    with mmwal.Reader(one_path) as one, mmwal.ShardedReader(paths) as sr:
        assert len(sr) == len(one) == N
        got, want = sr.search(q, k=10, metric=metric), one.search(q, k=10, metric=metric)
        assert len(got) == 5
        for a, b in zip(got, want):
            _same(a, b)
        _same(sr.search(q[0], k=7, metric=metric, where={"tag": "b"}),
              one.search(q[0], k=7, metric=metric, where={"tag": "b"}))
        _same(sr.search(q[1], k=N + 5, metric=metric), one.search(q[1], k=N + 5, metric=metric))


def test_get_and_contains_route_to_one_shard(sharded):
    _, paths, _, _ = sharded
    with mmwal.ShardedReader(paths) as sr:
        for i in (0, 17, 2999):
            doc = sr.get(f"doc-{i}")
            assert doc is not None and doc.metadata["i"] == i
            assert f"doc-{i}" in sr
            assert sr[f"doc-{i}"] == doc
            # only the routed shard holds it
            holders = [r for r in sr.readers if f"doc-{i}" in r]
            assert holders == [sr.readers[shard_of(f"doc-{i}", 4)]]
        assert sr.get("nope") is None and "nope" not in sr and 5 not in sr
        assert sorted(sr.find({"tag": "a"})) == sorted(
            f"doc-{i}" for i in range(N) if i % 3 == 0)


def test_refresh_sees_new_writes_on_every_shard(sharded):
    one_path, paths, one, shards = sharded
    with mmwal.ShardedReader(paths) as sr:
        _write(one, shards, 10_000, 200, checkpoint=False)
        shards[2].remove(next(i for i in (f"doc-{j}" for j in range(N)) if shard_of(i, 4) == 2))
        one.remove(next(i for i in (f"doc-{j}" for j in range(N)) if shard_of(i, 4) == 2))
        assert sr.refresh() == 201
        assert len(sr) == N + 199
        q = np.ones(DIM, np.float32)
        with mmwal.Reader(one_path) as r1:
            _same(sr.search(q, k=20), r1.search(q, k=20))


def test_published_shards(sharded, tmp_path):
    one_path, paths, _, _ = sharded
    urls = []
    for i, p in enumerate(paths):
        url = f"file://{tmp_path}/pub/shard-{i:03d}"
        mmwal.publish(p, url)
        urls.append(url)
    q = np.random.default_rng(3).standard_normal(DIM).astype(np.float32)
    with mmwal.Reader(one_path) as one, mmwal.ShardedReader(
            urls, cache_dir=tmp_path / "cache") as sr:
        _same(sr.search(q, k=10), one.search(q, k=10))
        assert sr.get("doc-5") == one.get("doc-5")


def test_closed_and_bad_input(sharded):
    _, paths, _, _ = sharded
    sr = mmwal.ShardedReader(paths)
    with pytest.raises(mmwal.errors.InvalidInputError, match="metric"):
        sr.search(np.ones(DIM), metric="hamming")
    sr.close()
    sr.close()
    with pytest.raises(mmwal.errors.ClosedError):
        len(sr)
    with pytest.raises(mmwal.errors.InvalidInputError, match="list"):
        mmwal.ShardedReader(paths[0])
    with pytest.raises(mmwal.errors.InvalidInputError, match="at least one"):
        mmwal.ShardedReader([])
