"""Concurrent writers: processes (spawn and fork) x threads, add / add_many / remove.

The oracle (helpers.check_writer_calls): every acknowledged seq is in the log
exactly once, the log's seqs are 1..N without gaps, each writer's calls appear
in call order, batches are contiguous, and every payload (id, vector bytes,
content, metadata) is exactly what the writer passed.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import select
import struct
import threading
import time
import warnings
from collections import Counter

import numpy as np
import pytest
from helpers import (
    DIM,
    batch_child,
    check_contiguous,
    check_writer_calls,
    expected_add,
    frame_spans,
    kill_now,
    per_op_child,
    read_log,
    reaped,
    run_children,
    segment_files,
    vec,
    vecs,
    writer_process,
    writer_script,
)

import mmwal


def _run_writers(tmp_path, method, n_procs, threads_per_proc, n_calls, durability,
                 segment_bytes):
    path = str(tmp_path / "store")
    mmwal.Store(path, dim=DIM, durability="os").close()
    ctx = multiprocessing.get_context(method)
    # Every writer opens its Store, then all start at once: maximum contention.
    start = ctx.Barrier(n_procs)
    jobs = []
    for p in range(n_procs):
        writers = [1 + p * threads_per_proc + t for t in range(threads_per_proc)]
        jobs.append((writer_process, (path, writers, n_calls, durability, segment_bytes, DIM,
                                      start)))
    with warnings.catch_warnings():
        # Python >= 3.12 warns about fork() in a multi-threaded process (xdist's
        # worker has threads); the children here only run mmwal code.
        warnings.simplefilter("ignore", DeprecationWarning)
        results = run_children(ctx, jobs, str(tmp_path))
    calls = {}
    for r in results:
        calls.update(r)
    assert len(calls) == n_procs * threads_per_proc
    log = check_writer_calls(path, calls)
    assert len(log) == sum(len(s) for c in calls.values() for _k, s, _keys in c)
    return log


@pytest.mark.parametrize("method", ["spawn", "fork"])
@pytest.mark.parametrize("segment_bytes", [64 << 20, 4096], ids=["one-segment", "small-segments"])
def test_writers_os_durability(tmp_path, method, segment_bytes):
    log = _run_writers(tmp_path, method, n_procs=3, threads_per_proc=2, n_calls=200,
                       durability="os", segment_bytes=segment_bytes)
    assert len(log) > 1000
    if segment_bytes == 4096:
        assert len(os.listdir(tmp_path / "store" / "wal")) > 3  # rolls happened under load


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_writers_fsync_durability(tmp_path, method):
    _run_writers(tmp_path, method, n_procs=3, threads_per_proc=2, n_calls=60,
                 durability="fsync", segment_bytes=8192)


def test_threads_sharing_one_store(tmp_path):
    """Eight threads of one process share one Store object."""
    path = str(tmp_path / "store")
    calls, errors = {}, []
    with mmwal.Store(path, dim=DIM, durability="os",
                     config=mmwal.Config(segment_bytes=16384)) as store:
        barrier = threading.Barrier(8)

        def run(w):
            try:
                barrier.wait()
                calls[w] = writer_script(store, w, 200, DIM)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(w,)) for w in range(1, 9)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    check_writer_calls(path, calls)


def test_replay_after_seq_and_order(tmp_path):
    """replay(after_seq=k) is exactly the suffix of the full replay, for every k."""
    path = str(tmp_path / "store")
    with mmwal.Store(path, dim=DIM, durability="os",
                     config=mmwal.Config(segment_bytes=4096)) as store:
        writer_script(store, 1, 120, DIM)
        store.clear()
    full = [op.seq for op in mmwal.replay(path)]
    assert full == list(range(1, len(full) + 1))
    for k in range(0, len(full) + 2, 7):
        assert [op.seq for op in mmwal.replay(path, after_seq=k)] == full[k:]


# ====================================================================== SIGKILL
def _start_killable(target, *args):
    """A forked child plus the read end of its 'ready' pipe (fork: big args are not copied)."""
    r, w = os.pipe()
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=target, args=(*args, w))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        p.start()
    os.close(w)
    return p, r


def _next_byte(r):
    assert select.select([r], [], [], 60)[0], "the child went silent"
    return os.read(r, 1)


def _wait_ready(r, p):
    ready, _, _ = select.select([r], [], [], 60)
    assert ready and os.read(r, 1) == b"r", f"child not ready (exit code {p.exitcode})"


def test_sigkill_during_a_big_add_many_is_all_or_nothing(tmp_path):
    """20k x 384 floats in ONE record; SIGKILL at random moments of the call.

    A fresh store every two kills keeps verify() (which decodes every record)
    cheap; within a store, kill -> check -> marker -> kill -> check -> marker.
    """
    n, dim = 20_000, 384
    emb = vecs(0, n, dim)  # inherited by the forked children
    rng = random.Random(20_000)
    outcomes = Counter()
    duration = None
    path = last = None
    for it in range(9):
        if it % 2 == 1:
            path = str(tmp_path / f"store-{it}")
            mmwal.Store(path, dim=dim, durability="os").close()
            last = 0
        elif it == 0:
            path = str(tmp_path / "calibration")
            mmwal.Store(path, dim=dim, durability="os").close()
            last = 0
        ids = [f"b{it}-{i}" for i in range(n)]
        p, r = _start_killable(batch_child, path, ids, emb)
        try:
            with reaped(p):
                _wait_ready(r, p)
                if duration is None:
                    # Iteration 0 is not killed: it measures how long the call takes
                    # here (validation, packing, then one big pwrite).
                    t0 = time.monotonic()
                    assert _next_byte(r) == b"w" and _next_byte(r) == b"d"
                    duration = time.monotonic() - t0
                    p.join(60)
                elif it % 2:
                    # Anywhere in the call, or just after it.
                    time.sleep(duration * rng.uniform(0, 1.2))
                    kill_now(p)
                else:
                    # Aimed at the frame's pwrite (the child says when it starts):
                    # these leave torn frames behind.
                    assert _next_byte(r) == b"w"
                    time.sleep(rng.uniform(0, 0.03))
                    kill_now(p)
        finally:
            os.close(r)
        ops = list(mmwal.replay(path, after_seq=last))
        len_new = len(ops)
        assert len_new in (0, n), f"iteration {it}: a partial batch of {len_new} records"
        if ops:
            outcomes["whole"] += 1
            assert [op.seq for op in ops] == list(range(last + 1, last + n + 1))
            assert [op.id for op in ops] == ids
            assert np.array_equal(np.stack([op.embedding for op in ops]), emb)
        else:
            seg = segment_files(path)[-1]
            spans = frame_spans(seg)
            end = spans[-1][2] if spans else 64
            outcomes["torn" if os.path.getsize(seg) > end else "none"] += 1
        del ops
        report = mmwal.verify(path)
        assert report.ok, report.problems
        with mmwal.Store(path, durability="os") as store:
            marker = store.add(f"marker-{it}", np.ones(dim, dtype=np.float32))
        assert marker == report.last_seq + 1 == last + len_new + 1
        assert [op.id for op in mmwal.replay(path, after_seq=marker - 1)] == [f"marker-{it}"]
        last = marker
    print("batch kill outcomes:", dict(outcomes))


def test_sigkill_per_op_writers_lose_no_acknowledged_record(tmp_path):
    """Two children add in a tight loop and log each returned seq; SIGKILL them."""
    path = str(tmp_path / "store")
    mmwal.Store(path, dim=DIM, durability="os").close()
    rng = random.Random(7)
    last = 0
    for it in range(5):
        children = []
        try:
            for c in range(2):
                ack = str(tmp_path / f"ack-{it}-{c}")
                first_key = (it * 10 + c + 1) * 1_000_000
                p, r = _start_killable(per_op_child, path, first_key, ack)
                children.append((p, r, ack, first_key))
            with reaped(*(ch[0] for ch in children)):
                for p, r, ack, _k in children:
                    _wait_ready(r, p)
                    # Kill only once it has acknowledged something (a loaded machine
                    # may not run it for a while): every kill then tests something.
                    deadline = time.monotonic() + 60
                    while not (os.path.exists(ack) and os.path.getsize(ack) >= 16):
                        assert time.monotonic() < deadline and p.is_alive(), "no progress"
                        time.sleep(0.001)
                for p, _r, _ack, _k in children:
                    time.sleep(rng.uniform(0.01, 0.15))
                    kill_now(p)
        finally:
            for _p, r, _ack, _k in children:
                os.close(r)
        log = read_log(path, after_seq=last)
        check_contiguous(log, first=last + 1)
        by_seq = {o[0]: o for o in log}
        for _p, _r, ack, first_key in children:
            with open(ack, "rb") as f:
                data = f.read()
            pairs = [struct.unpack_from("<QQ", data, i) for i in range(0, len(data) // 16 * 16, 16)]
            assert pairs, "a child acknowledged nothing before it was killed"
            for seq, key in pairs:
                assert seq in by_seq, f"acknowledged seq {seq} lost"
                assert by_seq[seq] == expected_add(seq, key)
            # Its records in the log: the acknowledged ones, in order, plus at most
            # the one it wrote but was killed before acknowledging.
            mine = [o for o in log if o[2].startswith(f"doc-{first_key // 1_000_000}") and
                    int(o[2][4:]) >= first_key and int(o[2][4:]) < first_key + 1_000_000]
            keys = [int(o[2][4:]) - first_key for o in mine]
            assert keys == list(range(len(keys))), "a child's records are out of order"
            assert len(pairs) <= len(mine) <= len(pairs) + 1
            assert [o[0] for o in mine[: len(pairs)]] == [s for s, _k in pairs]
        report = mmwal.verify(path)
        assert report.ok, report.problems
        with mmwal.Store(path, durability="os") as store:
            marker = store.add(f"marker-{it}", vec(it))
        assert marker == last + len(log) + 1
        last = marker
