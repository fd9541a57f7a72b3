"""mmwal.ray on a local Ray: the datasink (one store, 4 shards) and the datasource."""

from __future__ import annotations

import gc
import json
import warnings

import numpy as np
import pyarrow as pa  # noqa: E402 - the test extra installs both: never skipped
import pytest
import ray  # noqa: E402

import mmwal
from mmwal._scale.sharded import shard_of

DIM = 16
N = 20_000
# Ray Data warns about its own deprecated settings from inside its internals
# (DataContext attributes it sets itself); none of it comes from mmwal.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::FutureWarning")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()
    # Ray leaves pipes of its own helper processes to the garbage collector;
    # collected later, their ResourceWarning would surface in whatever test runs
    # next in this worker.  Collect them here, where they belong.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _table(n, start=0):
    rng = np.random.default_rng(start)
    emb = rng.standard_normal((n, DIM)).astype(np.float32)
    ids = [f"doc-{i}" for i in range(start, start + n)]
    values = pa.array(emb.reshape(-1), pa.float32())
    return pa.table({
        "id": ids,
        "embedding": pa.FixedSizeListArray.from_arrays(values, DIM),
        "content": [f"text {i}" for i in range(start, start + n)],
        "metadata": [json.dumps({"i": i, "tag": "abc"[i % 3]}) for i in range(start, start + n)],
    }), emb


def test_write_sharded_read_back_and_search(local_ray, tmp_path):
    from mmwal.ray import read_mmwal, write_mmwal

    table, emb = _table(N)
    ds = ray.data.from_arrow(table).repartition(8)
    sharded = tmp_path / "sharded"
    info = write_mmwal(ds, sharded, shards=4, batch_size=1000, durability="os")
    assert info.rows == N and len(info.checkpoints) == 4
    one = tmp_path / "one"
    info1 = write_mmwal(ray.data.from_arrow(table).repartition(4), one, durability="os")
    assert info1.rows == N and info1.checkpoints[0].documents == N

    # every shard holds exactly the ids the hash sends to it
    for s, p in enumerate(info.paths):
        with mmwal.Reader(p) as r:
            assert all(shard_of(i, 4) == s for i in r.ids)

    # read back: every row, once, with its content, metadata and embedding
    back = read_mmwal(sharded).to_arrow_refs()
    got = pa.concat_tables(ray.get(back)).sort_by("id")
    assert got.num_rows == N
    want = table.sort_by("id")
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    assert got.column("content").to_pylist() == want.column("content").to_pylist()
    assert [json.loads(m) for m in got.column("metadata").to_pylist()] == [
        json.loads(m) for m in want.column("metadata").to_pylist()]
    g = np.stack(got.column("embedding").to_numpy(zero_copy_only=False))
    w = np.stack(want.column("embedding").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(g, w)

    # sharded search equals the search over the one store holding everything
    q = np.random.default_rng(5).standard_normal((4, DIM)).astype(np.float32)
    with mmwal.Reader(one) as r1, mmwal.ShardedReader(info.paths) as sr:
        assert len(sr) == len(r1) == N
        for metric in ("cosine", "l2"):
            for a, b in zip(sr.search(q, k=10, metric=metric), r1.search(q, k=10, metric=metric)):
                assert [h.id for h in a] == [h.id for h in b]
                np.testing.assert_allclose([h.score for h in a], [h.score for h in b],
                                           rtol=1e-5)
        assert sr.get("doc-123") == r1.get("doc-123")


def test_read_skips_dead_rows_and_reads_published(local_ray, tmp_path):
    from mmwal.ray import read_mmwal

    table, _ = _table(500)
    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os") as s:
        s.add_arrow(table)
        s.checkpoint()
        for i in range(0, 500, 5):
            s.remove(f"doc-{i}")
        s.checkpoint()
    url = f"file://{tmp_path}/pub"
    mmwal.publish(path, url)
    for src, kw in ((path, {}), (url, {"cache_dir": str(tmp_path / "cache")})):
        got = read_mmwal(src, columns=["id", "embedding"], **kw).to_pandas()
        assert sorted(got["id"]) == sorted(f"doc-{i}" for i in range(500) if i % 5)
        assert list(got.columns) == ["id", "embedding"]


def test_missing_store_is_typed(local_ray, tmp_path):
    from mmwal.ray import read_mmwal

    with pytest.raises(mmwal.errors.StoreNotFoundError):
        read_mmwal(str(tmp_path / "nothing"))


def test_from_items_tensor_column_and_inferred_dim(local_ray, tmp_path):
    from mmwal.ray import write_mmwal

    rng = np.random.default_rng(1)
    items = [{"id": f"x{i}", "embedding": rng.standard_normal(DIM).astype(np.float32),
              "metadata": {"i": i}} for i in range(300)]
    info = write_mmwal(ray.data.from_items(items), tmp_path / "s", durability="os")
    assert info.rows == 300
    with mmwal.Reader(tmp_path / "s") as r:
        assert r.dim == DIM and len(r) == 300
        d = r.get("x7")
        np.testing.assert_array_equal(d.embedding, items[7]["embedding"])
        assert d.metadata == {"i": 7}


def test_missing_ray_names_the_extra(monkeypatch):
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, "mmwal.ray", raising=False)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(mmwal.errors.MissingDependencyError, match=r"pip install 'mmwal\[ray\]'"):
        importlib.import_module("mmwal.ray")


def test_sharded_search_actors_equal_threads(local_ray, tmp_path):
    from mmwal._scale.sharded import shard_paths
    from mmwal.ray import ShardedSearch

    table, _ = _table(4000)
    paths = shard_paths(str(tmp_path / "sh"), 4)
    ids = table.column("id").to_pylist()
    where = np.array([shard_of(i, 4) for i in ids])
    for s, p in enumerate(paths):
        with mmwal.Store(p, dim=DIM, durability="os") as st:
            st.add_arrow(table.take(pa.array(np.flatnonzero(where == s))))
            st.checkpoint()
    url = f"file://{tmp_path}/pub/shard-003"
    mmwal.publish(paths[3], url)
    targets = [*paths[:3], url]  # a published shard too
    q = np.random.default_rng(4).standard_normal((3, DIM)).astype(np.float32)
    with mmwal.ShardedReader(paths) as sr, ShardedSearch(
            targets, cache_dir=str(tmp_path / "cache")) as ss:
        assert len(ss) == len(sr) == 4000
        for a, b in zip(ss.search(q, k=8, where={"tag": "a"}), sr.search(q, k=8, where={"tag": "a"})):
            assert a == b
        assert ss.search(q[0], k=5, metric="l2") == sr.search(q[0], k=5, metric="l2")
        assert ss.get("doc-42") == sr.get("doc-42") and "doc-42" in ss and "zz" not in ss
        assert ss.refresh() == 0
    with pytest.raises(mmwal.errors.ClosedError):
        len(ss)
