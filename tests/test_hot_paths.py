"""The write hot path builds the same bytes as before, with fewer copies.

``add``/``add_many`` build a frame in place (``_format.add_frame`` +
``seal_frame``) instead of ``pack`` + ``encode_frame``; the on-disk format is
unchanged, so both must give identical bytes.  The bulk checks of
``add_many`` must accept and normalise exactly what the per-document checks
do (the refusals are covered by test_store_input.py and test_fuzz_input.py).
"""

from __future__ import annotations

import os
import sys
import threading
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mmwal
from mmwal import _format as F
from mmwal import _validate as V

DIM = 8


def _old_frame(kind: int, seq: int, ts: float, dim: int, ids: list[str], contents: list[str],
               metas: list[Any], vecs: np.ndarray, seed: int) -> bytes:
    return F.encode_frame(kind, seq, len(ids), F.pack([ts, dim, ids, contents, metas,
                                                       vecs.tobytes()]), seed)


@pytest.mark.parametrize("count,dim", [(1, 1), (1, 63), (1, 64), (3, 21), (1, 16383),
                                       (1, 16384), (2, 8192), (5, 3), (17, 7)])
def test_add_frame_is_byte_for_byte_the_encoded_frame(count: int, dim: int) -> None:
    # Vector blocks on both sides of the bin8/bin16/bin32 header boundaries
    # (256 and 65536 bytes), odd lengths for every padding.
    rng = np.random.default_rng(count * 1000 + dim)
    vecs = rng.standard_normal((count, dim), dtype=np.float32)
    ids = [f"id-{i}" * (i + 1) for i in range(count)]
    contents = ["x" * (i * 5) for i in range(count)]
    metas: list[Any] = [None if i % 2 else {"k": i, "t": ["a", 1.5], "u": "é"}
                        for i in range(count)]
    for seq, seed in ((1, 0), (2**40, 0xDEADBEEF)):
        frame, n = F.add_frame(12.5, dim, ids, contents, metas, vecs)
        F.seal_frame(frame, F.KIND_ADD, seq, count, n, seed)
        want = _old_frame(F.KIND_ADD, seq, 12.5, dim, ids, contents, metas, vecs, seed)
        assert bytes(frame) == want


def test_payload_frame_is_the_encoded_frame() -> None:
    for payload in (F.pack([1.0]), F.pack([2.0, "some-id"]), b"x" * 8, b"y" * 13):
        frame, n = F.payload_frame(payload)
        F.seal_frame(frame, F.KIND_REMOVE, 7, 1, n, 99)
        assert bytes(frame) == F.encode_frame(F.KIND_REMOVE, 7, 1, payload, 99)


def test_a_reused_buffer_leaves_no_stale_bytes_in_a_shorter_frame() -> None:
    # Both above SMALL_VECTORS (the reused buffer), the second shorter, with
    # another padding and non-zero bytes left behind by the first.
    dim = 1024
    big = np.ones((40, dim), dtype=np.float32)
    F.add_frame(1.0, dim, [f"i{k}" for k in range(40)], ["z" * 99] * 40, [None] * 40, big)
    smaller = np.full((17, dim), 2.0, dtype=np.float32)
    assert smaller.nbytes >= F.SMALL_VECTORS
    ids, contents = [f"j{k}" for k in range(17)], ["b" * k for k in range(17)]
    frame, n = F.add_frame(3.0, dim, ids, contents, [None] * 17, smaller)
    F.seal_frame(frame, F.KIND_ADD, 1, 17, n, 5)
    assert bytes(frame) == _old_frame(F.KIND_ADD, 1, 3.0, dim, ids, contents, [None] * 17,
                                      smaller, 5)


def test_log_bytes_of_add_and_add_many_decode_to_what_was_written(tmp_path: Any) -> None:
    path = str(tmp_path / "s")
    vecs = np.arange(3 * DIM, dtype=np.float32).reshape(3, DIM)
    with mmwal.Store(path, dim=DIM, durability="os") as s:
        s.add("one", vecs[0], "c1", {"m": 1})
        s.add_many(["two", "three"], vecs[1:], ["c2", "c3"], [None, {"n": [1, "x"]}])
        s.remove("one")
    ops = list(mmwal.replay(path))
    assert [(o.seq, o.kind, o.id, o.content, o.metadata) for o in ops] == [
        (1, "add", "one", "c1", {"m": 1}), (2, "add", "two", "c2", None),
        (3, "add", "three", "c3", {"n": [1, "x"]}), (4, "remove", "one", None, None)]
    np.testing.assert_array_equal(np.stack([o.embedding for o in ops[:3]]), vecs)


@pytest.mark.parametrize("meta", [
    {"a": 1, "b": "x", "c": 1.5, "d": None, "e": True, "f": b"\x00", "g": [1, [2, {"h": 3}]]},
    {"a": (1, 2)}, {"é": 1}, {"a": "é"}, {"a": np.float64(1.5)}, {"a": [np.str_("s")]},
    {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": {"j": [1]}}}}}}}}}}, {},
])
def test_the_fast_metadata_check_returns_what_the_full_check_returns(meta: Any) -> None:
    full = V._dict(meta, "metadata", 0)
    got = V.normalize_metadata(meta)
    assert got == full and type(got) is dict
    assert [type(v) for v in got.values()] == [type(v) for v in full.values()]


@pytest.mark.parametrize("bad", [
    {"a": float("nan")}, {"a": float("inf")}, {"a": -float("inf")}, {"a": 2**64},
    {"a": -(2**63) - 1}, {"a": [float("nan")]}, {"a": {"b": [2**70]}}, {1: "x"},
    {"a": "\ud800"}, {"\ud800": 1}, {"a": object()}, {"a": {1: 2}},
])
def test_the_fast_metadata_check_lets_no_bad_value_through(bad: Any) -> None:
    assert not V._plain(bad, 0)
    with pytest.raises(mmwal.errors.InvalidInputError):
        V.normalize_metadata(bad)


def test_bulk_id_check_refuses_what_the_single_check_refuses() -> None:
    for bad, where in ((["a", ""], "ids[1]"), (["a", "x" * 4097], "ids[1]"),
                       (["\ud800"], "ids[0]"), (["a", 3], "ids[1]")):
        with pytest.raises(mmwal.errors.InvalidInputError, match=rf"^{where.replace('[', '.')}"):
            V.as_ids(bad)
    assert V.as_ids(["a", "x" * 4096, "é" * 2048]) == ["a", "x" * 4096, "é" * 2048]
    got = V.as_ids(np.array(["a", "b"]))
    assert got == ["a", "b"] and all(type(x) is str for x in got)


def test_add_many_copies_the_vectors_at_most_once(tmp_path: Any) -> None:
    # Before: tobytes(), the packer's buffer, its bytes and the joined frame
    # (four copies of the vector block).  Now: one, into the frame buffer.
    n, dim = 1000, 96
    vecs = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
    ids = [f"doc-{i}" for i in range(n)]
    metas = [{"page": i, "tags": ["a", "b"]} for i in range(n)]
    with mmwal.Store(str(tmp_path / "s"), dim=dim, durability="os") as s:
        s.add_many(ids, vecs, None, metas)  # warm-up: the thread's frame buffer
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            s.add_many(ids, vecs, None, metas)
            peak = tracemalloc.get_traced_memory()[1] - start
        finally:
            tracemalloc.stop()
    assert peak < vecs.nbytes // 2, f"{peak} bytes allocated for {vecs.nbytes} of vectors"


def test_threads_build_frames_in_their_own_buffers(tmp_path: Any) -> None:
    # add: small frames; add_many of 4 x 4096 float32 (64 KiB): the per-thread
    # reused buffer.  Every document must come back with its own bytes.
    path = str(tmp_path / "s")
    per, nthreads, dim = 500, 4, 4096
    with mmwal.Store(path, dim=dim, durability="os") as s:
        def work(t: int) -> None:
            for k in range(0, per, 5):
                v = np.full((5, dim), t * 1000 + k, dtype=np.float32) + np.arange(5, dtype=np.float32)[:, None]
                s.add(f"t{t}-{k}", v[0], f"c{t}-{k}" * (k % 7), {"t": t, "k": k})
                s.add_many([f"t{t}-{k + j}" for j in range(1, 5)], v[1:],
                           [f"c{t}-{k + j}" * ((k + j) % 7) for j in range(1, 5)],
                           [{"t": t, "k": k + j} for j in range(1, 5)])
        threads = [threading.Thread(target=work, args=(t,)) for t in range(nthreads)]
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # switch threads often: inside building a frame too
        try:
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        finally:
            sys.setswitchinterval(interval)
    seen = 0
    for op in mmwal.replay(path):
        t, k = (int(x) for x in op.id[1:].split("-"))
        assert op.content == f"c{t}-{k}" * (k % 7) and op.metadata == {"t": t, "k": k}
        assert (op.embedding == t * 1000 + k).all()  # k: base + row
        seen += 1
    assert seen == per * nthreads
    assert os.path.isdir(path)


# The reader's batch check of metadata (the limits writers keep: str keys at
# every level, at most MAX_METADATA_DEPTH levels) must find a problem exactly
# when one map of the batch has one - its shortcuts only clear common shapes.
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False),
                  st.text(max_size=3), st.binary(max_size=3))
_key = st.one_of(st.text(max_size=3), st.binary(max_size=2))  # bytes keys: refused
_value = st.recursive(_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(_key, inner, max_size=3)), max_leaves=8)
_meta = st.one_of(st.none(), st.dictionaries(_key, _value, max_size=4))


def _deep(levels: int) -> dict[str, Any]:
    v: Any = 1
    for i in range(levels):
        v = [v] if i % 2 else {"k": v}
    return {"top": v}


@settings(max_examples=400, deadline=None)
@given(st.lists(_meta, max_size=6), st.sampled_from([None, 63, 64, 65, 66]))
def test_the_batch_metadata_check_agrees_with_the_per_map_walk(metas: list[Any],
                                                               deep: int | None) -> None:
    if deep is not None:
        metas = [*metas, _deep(deep)]
    want = next((w for w in (F.metadata_problem(m) for m in metas if m is not None) if w), "")
    assert F.metas_problem(metas) == want
    # The common shapes the shortcuts clear, with one bad map put anywhere.
    plain = [{"source": "a", "page": 3, "tags": ["x", "y"]}, None, {}]
    assert F.metas_problem(plain + metas) == want
