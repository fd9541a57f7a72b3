"""Lock misuse: use after fork, two Stores on one path in one process, lock timeouts.

flock belongs to the open file description: a forked child shares the
parent's, so a child that locked or unlocked through the inherited descriptor
would walk through (or release) the parent's lock (RULES.md 16).  These tests
hold the parent's append lock and watch what a child can do.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import struct
import threading
import warnings

import pytest
from helpers import (
    DIM,
    add_doc,
    check_contiguous,
    check_writer_calls,
    doc_id,
    expected_add,
    forked_add,
    forked_use_and_close,
    read_log,
    reaped,
    try_lock_elsewhere,
    vec,
    writer_script,
)

import mmwal
from mmwal.errors import LockTimeout


def _fork(target, *args):
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=target, args=args)
    with warnings.catch_warnings():
        # Python >= 3.12 warns about fork() with threads running (xdist has some).
        warnings.simplefilter("ignore", DeprecationWarning)
        p.start()
    return p


def _read_seq(fd, timeout):
    """The seq a child wrote to the pipe, or None if nothing came within ``timeout``."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return None
    data = os.read(fd, 8)
    return struct.unpack("<Q", data)[0] if len(data) == 8 else None


def test_forked_child_waits_for_the_parents_lock(store_path):
    store = mmwal.Store(store_path, dim=DIM, durability="os")
    r, w = os.pipe()
    try:
        assert add_doc(store, 1) == 1 and add_doc(store, 2) == 2
        lock_path = os.path.join(store_path, "locks", "append.lock")
        store._lock.acquire_exclusive()  # the parent is "mid-append" while forking
        locked = True
        try:
            p = _fork(forked_add, store, 3, w)
            with reaped(p):
                # The child must block: it may neither share our flock through the
                # inherited descriptor nor deadlock on the inherited thread lock.
                assert _read_seq(r, 0.5) is None, "the child appended while the parent held the lock"
                assert p.is_alive()
                assert not try_lock_elsewhere(lock_path), "the parent lost its lock"
                store._lock.release()
                locked = False
                seq = _read_seq(r, 60)
                assert seq == 3
                p.join(60)
                assert p.exitcode == 0
        finally:
            if locked:
                store._lock.release()
        # The parent's Store goes on after the child wrote through its inherited copy.
        assert add_doc(store, 4) == 4
        store.add_many([doc_id(5), doc_id(6)], [vec(5), vec(6)])
    finally:
        store.close()
        os.close(r)
        os.close(w)
    log = read_log(store_path)
    check_contiguous(log)
    assert [o[2] for o in log] == [doc_id(k) for k in range(1, 7)]
    assert log[2] == expected_add(3, 3)
    assert mmwal.verify(store_path).ok


def test_forked_child_closing_the_store_keeps_the_parents_lock(store_path):
    store = mmwal.Store(store_path, dim=DIM, durability="os")
    r, w = os.pipe()
    lock_path = os.path.join(store_path, "locks", "append.lock")
    try:
        add_doc(store, 1)
        # First the child writes, syncs and closes while nobody holds the lock.
        p = _fork(forked_use_and_close, store, 2, w)
        with reaped(p):
            assert _read_seq(r, 60) == 2
            p.join(60)
            assert p.exitcode == 0
        # Then the parent holds the lock while a child closes its inherited Store.
        store._lock.acquire_exclusive()
        try:
            p = _fork(_close_and_exit, store)
            with reaped(p):
                p.join(60)
                assert p.exitcode == 0
            assert not try_lock_elsewhere(lock_path), "the child's close released our lock"
        finally:
            store._lock.release()
        assert try_lock_elsewhere(lock_path)
        assert add_doc(store, 3) == 3
    finally:
        store.close()
        os.close(r)
        os.close(w)
    log = read_log(store_path)
    assert [o[2] for o in log] == [doc_id(1), doc_id(2), doc_id(3)]
    check_contiguous(log)


def _close_and_exit(store):
    store.close()
    del store


def test_store_closed_in_parent_stays_closed_in_child(store_path):
    store = mmwal.Store(store_path, dim=DIM, durability="os")
    add_doc(store, 1)
    store.close()
    p = _fork(_expect_closed, store)
    with reaped(p):
        p.join(60)
        assert p.exitcode == 0


def _expect_closed(store):
    try:
        store.add("x", vec(1))
    except mmwal.errors.ClosedError:
        os._exit(0)
    os._exit(3)


def test_two_stores_one_path_two_threads(store_path):
    mmwal.Store(store_path, dim=DIM, durability="os").close()
    calls, errors = {}, []
    stores = [mmwal.Store(store_path, durability="os", config=mmwal.Config(segment_bytes=8192))
              for _ in range(2)]
    try:
        barrier = threading.Barrier(2)

        def run(i):
            try:
                barrier.wait()
                calls[i + 1] = writer_script(stores[i], i + 1, 300, DIM)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for s in stores:
            s.close()
    assert not errors, errors
    check_writer_calls(store_path, calls)


def test_two_stores_one_path_one_thread_alternating(store_path):
    a = mmwal.Store(store_path, dim=DIM, durability="fsync", config=mmwal.Config(segment_bytes=4096))
    b = mmwal.Store(store_path, durability="os", config=mmwal.Config(segment_bytes=4096))
    try:
        seqs = [add_doc(a if k % 2 else b, k) for k in range(1, 80)]
    finally:
        a.close()
        b.close()
    assert seqs == list(range(1, 80))
    log = read_log(store_path)
    assert log == [expected_add(k, k) for k in range(1, 80)]
    assert mmwal.verify(store_path).ok


def test_lock_timeout_is_typed_and_writes_nothing(store_path):
    holder = mmwal.Store(store_path, dim=DIM, durability="os")
    waiter = mmwal.Store(store_path, durability="os", config=mmwal.Config(lock_timeout=0.2))
    try:
        add_doc(holder, 1)
        holder._lock.acquire_exclusive()
        try:
            with pytest.raises(LockTimeout) as ei:
                add_doc(waiter, 2)
            err = ei.value
            assert isinstance(err, TimeoutError) and isinstance(err, mmwal.MmwalError)
            assert "append.lock" in str(err)
        finally:
            holder._lock.release()
        assert [o[0] for o in read_log(store_path)] == [1]
        assert add_doc(waiter, 2) == 2
    finally:
        holder.close()
        waiter.close()
