"""A Reader as query workers use it: shared by threads, inherited across fork, refreshed
in the background, with ``snapshot()`` views that never change under the caller."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import threading
import time

import helpers
import numpy as np
import pytest

import mmwal
from mmwal import _io

DIM = 8
WRITERS = 2
PER_WRITER = 600


def doc_vec(w: int, i: int, version: int) -> np.ndarray:
    return helpers.vec(1_000_003 * w + 1009 * i + version + 1, DIM)


def parse(id_: str) -> tuple[int, int]:
    w, i = id_[1:].split("-")
    return int(w), int(i)


def writer_proc(path: str, w: int) -> None:
    """Adds w{w}-{i} in order; every 7th call replaces an earlier id with a new version;
    writer 0 also checkpoints now and then (the Readers switch versions under load)."""
    try:
        rng = random.Random(w)
        versions: dict[int, int] = {}
        with mmwal.Store(path, durability="os") as st:
            for i in range(PER_WRITER):
                if i % 7 == 6:
                    j = rng.randrange(i)
                    v = versions[j] = versions.get(j, 0) + 1
                    st.add(f"w{w}-{j}", doc_vec(w, j, v), content=f"v{v}")
                if i % 5 == 4:
                    ids = [f"w{w}-{i}"]
                    st.add_many(ids, doc_vec(w, i, 0)[None, :], contents=["v0"])
                else:
                    st.add(f"w{w}-{i}", doc_vec(w, i, 0), content="v0")
                if w == 0 and i % 150 == 149:
                    st.checkpoint()
    finally:
        os._exit(0)


def check_snapshot(snap: mmwal.Snapshot, rng: random.Random) -> None:
    """Everything one snapshot says agrees with itself and with the writers' rules."""
    ids = list(snap.ids)
    emb = snap.embeddings
    assert len(snap) == len(ids) == emb.shape[0]
    assert len(set(ids)) == len(ids)
    seen: dict[int, set[int]] = {}
    for id_ in ids:
        if id_.startswith("w"):
            w, i = parse(id_)
            seen.setdefault(w, set()).add(i)
    for w, got in seen.items():  # each writer's documents: a prefix of its calls
        assert got == set(range(len(got))), f"writer {w}: not a prefix"
    for row in rng.sample(range(len(ids)), min(8, len(ids))):
        id_ = ids[row]
        doc = snap.get(id_)
        assert doc is not None and id_ in snap
        if id_.startswith("w"):
            w, i = parse(id_)
            want = doc_vec(w, i, int(doc.content[1:]))
        else:
            want = helpers.vec(int(id_[4:]), DIM)
        assert np.array_equal(doc.embedding, want)
        assert np.array_equal(emb[row], want), "row i of embeddings is not ids[i]"
        # k=10: candidates come from float32 scores (near-duplicates may swap),
        # the winners' distances are then exact, so the exact match ranks first.
        hit = snap.search(emb[row], k=10, metric="l2")[0]
        assert hit.score == 0.0 and np.array_equal(snap[hit.id].embedding, want)


def test_threads_search_and_read_while_another_refreshes(tmp_path):
    # 8 threads read and search a shared Reader (and its snapshots) while one
    # thread refreshes it against 2 writer processes and their checkpoints.
    # Before snapshots, a search racing a refresh raised ValueError (operands
    # could not be broadcast) and ids/embeddings taken together disagreed.
    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os") as st:
        st.add_many([f"base{k}" for k in range(300)], helpers.vecs(0, 300, DIM))
        st.checkpoint()
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=writer_proc, args=(path, w)) for w in range(WRITERS)]
    errors: list[str] = []
    checks = [0] * 8
    stop = threading.Event()
    with mmwal.Reader(path) as r, helpers.reaped(*procs):
        for p in procs:
            p.start()

        def reader_thread(t: int) -> None:
            rng = random.Random(t)
            try:
                while not stop.is_set():
                    check_snapshot(r.snapshot(), rng)
                    # Direct calls (each on the snapshot current at its start).
                    n = len(r)
                    assert n >= 300
                    q = rng.choice(["base1", "base2"])
                    assert r.search(helpers.vec(int(q[4:]), DIM), k=3)[0].id == q
                    assert r.get(q) is not None and q in r
                    checks[t] += 1
            except Exception as exc:  # reported below, with the thread
                errors.append(f"thread {t}: {type(exc).__name__}: {exc}")
                stop.set()

        threads = [threading.Thread(target=reader_thread, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        try:
            while any(p.is_alive() for p in procs) and not stop.is_set():
                r.refresh()
            r.refresh()
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not errors, errors[:3]
        assert all(c > 0 for c in checks)
        for p in procs:
            assert p.exitcode == 0
        final = r.snapshot()
        check_snapshot(final, random.Random(9))
        assert len(final) == 300 + WRITERS * PER_WRITER


def _fork_child(r: mmwal.Reader, path: str, out: str, checked, go) -> None:
    res: dict = {}
    try:
        res["len"] = len(r)
        res["hit"] = r.search(helpers.vec(3, DIM), k=1)[0].id
        # The parent holds the shared append lock through its descriptor.  A
        # child still on the parent's open file description could take it
        # exclusively (a conversion of the same lock); its own cannot.
        res["exclusive_while_parent_holds_shared"] = r._lock.try_exclusive()
        checked.set()
        assert go.wait(60)  # the parent has released its shared lock
        with mmwal.Store(path, durability="os") as st:
            st.add("from-child", helpers.vec(99, DIM))
        res["refreshed"] = r.refresh()
        res["sees_child_doc"] = "from-child" in r
        r.close()
    except Exception as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"
    with open(out, "w") as f:
        json.dump(res, f)
    os._exit(0)


def test_reader_opened_before_fork_works_in_children_and_never_shares_the_lock(tmp_path):
    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os") as st:
        st.add_many([f"base{k}" for k in range(20)], helpers.vecs(0, 20, DIM))
        st.checkpoint()
        st.add("tail", helpers.vec(50, DIM))
    r = mmwal.Reader(path)
    assert len(r) == 21
    r._lock.acquire_shared()  # held by the parent while the children look
    ctx = mp.get_context("fork")
    outs = [str(tmp_path / f"child{k}.json") for k in range(2)]
    checked = [ctx.Event() for _ in outs]
    go = ctx.Event()
    procs = [ctx.Process(target=_fork_child, args=(r, path, o, c, go))
             for o, c in zip(outs, checked)]
    held = True
    try:
        with helpers.reaped(*procs):
            for p in procs:
                p.start()
            for c in checked:
                assert c.wait(120)
            r._lock.release_slow()
            held = False
            go.set()
            for p in procs:
                p.join(120)
                assert p.exitcode == 0
    finally:
        if held:
            r._lock.release_slow()
    results = [json.loads(helpers.read_bytes(o)) for o in outs]
    for res in results:
        assert "error" not in res, res
        assert res["len"] >= 21 and res["hit"] == "base3"
        assert res["exclusive_while_parent_holds_shared"] is False
        assert res["refreshed"] >= 1 and res["sees_child_doc"] is True
    # The parent's Reader is untouched by the children's use and close.
    assert len(r) == 21
    assert r.refresh() == 2 and "from-child" in r and len(r) == 22  # one add per child
    assert r._lock.try_exclusive() is True
    r._lock.release_slow()
    r.close()


def test_refresh_every_keeps_a_reader_current_and_reports_lag(tmp_path):
    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os") as st:
        st.add("a", helpers.vec(1, DIM))
        with mmwal.Reader(path, refresh_every=0.02) as r:
            assert r.stats().seq == 1 and r.stats().lag == 0
            seen: list[int] = []
            r.on_refresh = lambda reader, advanced: seen.append(advanced)
            for k in range(2, 40):
                st.add(f"d{k}", helpers.vec(k, DIM))
            target = st.seq
            deadline = time.monotonic() + 60
            while r.seq < target and time.monotonic() < deadline:  # never calls refresh()
                time.sleep(0.01)
            assert r.seq == target and len(r) == 39
            stats = r.stats()
            assert stats.lag == 0 and stats.newest_seq == target
            assert stats.refreshes >= 1 and stats.refresh_every == 0.02
            assert stats.refresh_errors == 0 and sum(seen) == target - 1
            assert stats.as_dict()["documents"] == 39
        assert not r._thread.is_alive()  # close() stops the thread


def test_refresh_every_survives_a_failing_refresh(tmp_path, monkeypatch):
    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os") as st:
        st.add("a", helpers.vec(1, DIM))
    real = mmwal.Reader._refresh_state
    failures = [2]

    def flaky(self):
        if failures[0]:
            failures[0] -= 1
            raise mmwal.MmwalError("injected refresh failure")
        return real(self)

    monkeypatch.setattr(mmwal.Reader, "_refresh_state", flaky)
    with mmwal.Reader(path, refresh_every=0.02) as r:
        with mmwal.Store(path, durability="os") as st:
            st.add("b", helpers.vec(2, DIM))
        deadline = time.monotonic() + 60
        while "b" not in r and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = r.stats()
        assert "b" in r and stats.refresh_errors == 2
        assert "injected refresh failure" in stats.last_refresh_error


def test_snapshot_is_immutable_across_refresh_replace_remove_clear_and_checkpoint(tmp_path):
    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os") as st, mmwal.Reader(path) as r:
        st.add_many(["a", "b", "c"], helpers.vecs(0, 3, DIM))
        st.checkpoint()
        st.add("d", helpers.vec(3, DIM))
        r.refresh()
        snap = r.snapshot()
        ids0, emb0 = list(snap.ids), snap.embeddings.copy()
        view = r.ids  # an IdView taken with the embeddings of the same state
        emb_view = r.embeddings
        st.add("a", helpers.vec(10, DIM))  # replace a checkpoint row
        st.add("d", helpers.vec(11, DIM))  # replace a tail row
        st.remove("b")
        r.refresh()
        st.add_many([f"n{k}" for k in range(200)], helpers.vecs(100, 200, DIM))  # grow arrays
        r.refresh()
        assert list(snap.ids) == ids0 == ["a", "b", "c", "d"] and snap.seq == 4
        assert np.array_equal(snap.embeddings, emb0) and len(snap) == 4
        assert np.array_equal(snap["a"].embedding, helpers.vec(0, DIM))
        assert np.array_equal(snap["d"].embedding, helpers.vec(3, DIM))
        assert "b" in snap and "n5" not in snap
        assert list(view) == ids0 and np.array_equal(emb_view, emb0)
        assert view[3] == "d" and np.array_equal(emb_view[3], helpers.vec(3, DIM))
        assert r.get("b") is None and np.array_equal(r["d"].embedding, helpers.vec(11, DIM))
        assert list(r.ids)[:2] == ["c", "a"] and len(r) == 203
        st.clear()
        st.add("z", helpers.vec(5, DIM))
        r.refresh()
        assert list(r.ids) == ["z"] and len(snap) == 4 and snap.get("c") is not None
        st.checkpoint()
        r.refresh()
        assert list(r.ids) == ["z"] and list(snap.ids) == ids0
        assert np.array_equal(snap.search(helpers.vec(1, DIM), k=1, metric="l2")[0].id, "b")


def test_a_failed_refresh_leaves_the_snapshot_and_the_next_refresh_starts_clean(tmp_path):
    # A refresh that fails part way (here: a read error while it maps a newer
    # checkpoint) must not leave half-applied state behind.
    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os") as st, mmwal.Reader(path) as r:
        st.add_many(["a", "b"], helpers.vecs(0, 2, DIM))
        r.refresh()
        st.checkpoint()
        st.add("c", helpers.vec(2, DIM))

        class Failing(_io.OSLayer):
            def __init__(self):
                super().__init__()
                real = self.open

                def opener(p, flags, *mode):
                    if p.endswith("embeddings.npy"):
                        raise OSError(5, "injected EIO")
                    return real(p, flags, *mode)

                self.open = opener

        old = _io.set_layer(Failing())
        try:
            with pytest.raises(mmwal.MmwalError):
                r.refresh()
        finally:
            _io.set_layer(old)
        assert list(r.ids) == ["a", "b"] and r.seq == 2
        assert r.refresh() == 1 and list(r.ids) == ["a", "b", "c"] and r.checkpoint_id == 1


def _forked_mid_refresh(tmp_path, child_body):
    """Fork while another thread of the parent is inside Reader.refresh, mid-frame."""
    from mmwal import _snapshot

    path = str(tmp_path / "s")
    st = mmwal.Store(path, dim=4, durability="os")
    st.add_many(["a", "b", "c"], np.eye(4, dtype=np.float32)[:3])
    r = mmwal.Reader(path)
    st.add_many(["a", "b", "c", "d"], np.ones((4, 4), np.float32))  # replaces a, b, c
    st.close()
    inside, go = threading.Event(), threading.Event()
    # The record replaces a, b and c: the refresher pauses after the second of
    # the three tail rows it kills, in the middle of applying the record.
    real = _snapshot._Tail._kill_tail_row
    calls = [0]

    def slow_kill(self, row):
        out = real(self, row)
        calls[0] += 1
        if calls[0] == 2 and threading.current_thread().name == "refresher":
            inside.set()
            go.wait(60)
        return out

    _snapshot._Tail._kill_tail_row = slow_kill
    try:
        t = threading.Thread(target=r.refresh, name="refresher")
        t.start()
        assert inside.wait(60)
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report through the pipe, never return into pytest
            try:
                res = child_body(r)
            except BaseException as exc:
                res = {"error": f"{type(exc).__name__}: {exc}"}
            os.write(wfd, json.dumps(res).encode())
            os._exit(0)
        os.close(wfd)
        try:
            with os.fdopen(rfd, "rb") as f:
                data = f.read()
        finally:
            go.set()
            t.join(60)
            os.waitpid(pid, 0)
    finally:
        _snapshot._Tail._kill_tail_row = real
    assert r.snapshot().ids == ["a", "b", "c", "d"]
    r.close()
    return json.loads(data)


def _child_refreshes(r):
    r.refresh()
    snap = r.snapshot()
    return {"ids": list(snap.ids), "len": len(snap), "a": snap.get("a") is not None,
            "hits": sorted(h.id for h in snap.search(np.ones(4), k=10))}


def test_a_child_forked_during_a_refresh_starts_its_state_over(tmp_path):
    # The child inherits a tail with half a frame applied and a cursor not
    # yet past that frame: replaying it again lost documents ("a" born dead).
    res = _forked_mid_refresh(tmp_path, _child_refreshes)
    assert res == {"ids": ["a", "b", "c", "d"], "len": 4, "a": True,
                   "hits": ["a", "b", "c", "d"]}, res


def _child_closes(r):
    import signal as sig

    sig.alarm(20)  # a deadlock kills the child; the parent then reads no result
    r.close()
    sig.alarm(0)
    return {"closed": True}


def test_close_in_a_child_forked_during_a_refresh_returns(tmp_path):
    # close() waited for ever on the copy of a lock a parent thread held.
    assert _forked_mid_refresh(tmp_path, _child_closes) == {"closed": True}


def test_threads_reading_one_checkpoint_share_its_chunk_cache(tmp_path):
    # Every snapshot shares the checkpoint view's small cache of decoded chunks:
    # two threads evicting at once raised KeyError from Reader.get.
    import sys

    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=2, durability="os", config=mmwal.Config(chunk_documents=1)) as st:
        st.add_many([f"i{k}" for k in range(64)], np.ones((64, 2), np.float32),
                    contents=[f"c{k}" for k in range(64)])
        st.checkpoint()
    errors: list[str] = []
    with mmwal.Reader(path) as r:
        def work(seed):
            rng = random.Random(seed)
            try:
                for _ in range(6000):
                    k = rng.randrange(64)
                    assert r.get(f"i{k}").content == f"c{k}"
            except Exception as exc:
                errors.append(repr(exc))

        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        finally:
            sys.setswitchinterval(switch)
    assert not errors, errors[:3]
