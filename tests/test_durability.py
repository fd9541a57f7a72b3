"""Durability modes and fsync failure, observed through an instrumented I/O layer.

``helpers.RecordingLayer`` logs every pwrite and fdatasync (with the write end
each fdatasync covers, i.e. every pwrite that had completed when it started),
so "durable" is checked against what the kernel was actually asked to do, not
against timings.  Layers are installed before the Store is opened (Stores bind
the layer at open) and restored by the autouse fixture in conftest.py.
"""

from __future__ import annotations

import errno
import os
import threading
import time

import numpy as np
import pytest
from helpers import (
    DIM,
    FailingSyncLayer,
    RecordingLayer,
    add_doc,
    check_contiguous,
    doc_id,
    expected_add,
    read_log,
    segment_files,
    vec,
    vecs,
)

import mmwal
from mmwal import _io
from mmwal.errors import PoisonedError


def _segment(path):
    return os.path.realpath(segment_files(path)[-1])


def _wait_for(cond, what, deadline_s=30.0):
    """Poll ``cond`` until true; a generous deadline, never a speed assertion."""
    deadline = time.monotonic() + deadline_s
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {deadline_s} s")
        time.sleep(0.005)


# ====================================================================== "fsync"
def test_fsync_mode_every_call_is_durable_on_return(store_path):
    layer = RecordingLayer()
    _io.set_layer(layer)
    with mmwal.Store(store_path, dim=DIM, durability="fsync") as store:
        seg = _segment(store_path)
        calls = [lambda k: add_doc(store, k),
                 lambda k: store.add_many([doc_id(k), doc_id(k + 1)], vecs(k, 2)),
                 lambda k: store.remove(doc_id(k - 10)),
                 lambda k: store.clear()]
        for i in range(12):
            calls[i % 4](100 + 10 * i)
            written = layer.written_end(seg)
            assert written > 0
            assert layer.durable_end(seg) >= written, f"call {i} returned before fdatasync"


def test_fsync_mode_group_commit_threads(store_path):
    """Four threads share a Store: each call is durable on return, fsyncs may be shared."""
    layer = RecordingLayer()
    _io.set_layer(layer)
    failures, errors = [], []
    with mmwal.Store(store_path, dim=DIM, durability="fsync") as store:
        seg = _segment(store_path)
        barrier = threading.Barrier(4)

        def run(w):
            try:
                barrier.wait()
                me = threading.get_ident()
                for k in range(40):
                    add_doc(store, w * 1000 + k)
                    mine = layer.written_end(seg, thread=me)
                    if layer.durable_end(seg) < mine:
                        failures.append((w, k, mine, layer.durable_end(seg)))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors
    assert not failures, failures[:5]
    log = read_log(store_path)
    check_contiguous(log)
    assert len(log) == 160
    assert layer.syncs(seg) <= 160


def test_sync_makes_os_mode_writes_durable(store_path):
    layer = RecordingLayer()
    _io.set_layer(layer)
    with mmwal.Store(store_path, dim=DIM, durability="os") as store:
        seg = _segment(store_path)
        for k in range(5):
            add_doc(store, k)
        store.sync()
        assert layer.durable_end(seg) >= layer.written_end(seg) > 0
    # A Store that wrote nothing itself: sync() still covers the others' frames.
    with mmwal.Store(store_path, dim=DIM, durability="os") as writer:
        add_doc(writer, 50)
        with mmwal.Store(store_path, durability="os") as other:
            other.sync()
        assert layer.durable_end(seg) >= layer.written_end(seg)


# ====================================================================== "interval"
def test_interval_syncs_after_sync_every_records(store_path):
    layer = RecordingLayer()
    _io.set_layer(layer)
    cfg = mmwal.Config(sync_every_records=10, sync_every_ms=10_000_000)
    store = mmwal.Store(store_path, dim=DIM, durability="interval", config=cfg)
    try:
        seg = _segment(store_path)
        for round_ in range(3):
            for k in range(9):
                add_doc(store, round_ * 100 + k)
            # 9 records since the last sync: none yet (interval is not per-record fsync).
            assert layer.durable_end(seg) < layer.written_end(seg)
            add_doc(store, round_ * 100 + 9)
            assert layer.durable_end(seg) >= layer.written_end(seg), f"round {round_}"
        # A batch counts as its number of records.
        store.add_many([doc_id(1000 + i) for i in range(10)], vecs(1000, 10))
        assert layer.durable_end(seg) >= layer.written_end(seg)
    finally:
        store.close()
    assert len(read_log(store_path)) == 40


def test_interval_background_flusher_syncs_within_sync_every_ms(store_path):
    layer = RecordingLayer()
    _io.set_layer(layer)
    cfg = mmwal.Config(sync_every_records=1_000_000, sync_every_ms=20)
    with mmwal.Store(store_path, dim=DIM, durability="interval", config=cfg) as store:
        seg = _segment(store_path)
        for burst in range(3):
            for k in range(3):
                add_doc(store, burst * 10 + k)
            end = layer.written_end(seg)
            _wait_for(lambda end=end: layer.durable_end(seg) >= end,
                      f"background fdatasync of burst {burst}")
    assert len(read_log(store_path)) == 9


def test_interval_close_flushes_and_stops_the_flusher(store_path):
    layer = RecordingLayer()
    _io.set_layer(layer)
    cfg = mmwal.Config(sync_every_records=1_000_000, sync_every_ms=3_600_000)
    store = mmwal.Store(store_path, dim=DIM, durability="interval", config=cfg)
    seg = _segment(store_path)
    for k in range(3):
        add_doc(store, k)
    assert layer.durable_end(seg) < layer.written_end(seg)  # an hour to go
    flusher = store._flusher
    store.close()
    assert layer.durable_end(seg) >= layer.written_end(seg), "close() did not flush"
    # close() must end the background thread, even one waiting out a long interval.
    assert flusher is None or not flusher.is_alive(), "the flusher thread outlived close()"


# ====================================================================== fsync failure
def _poison_checks(store, store_path, acked):
    """After a failed fsync: every write raises PoisonedError; a new Store works."""
    for call in (lambda: add_doc(store, 900), lambda: store.add_many([doc_id(901)], vec(901)[None]),
                 lambda: store.remove(doc_id(1)), lambda: store.clear(), lambda: store.sync()):
        with pytest.raises(PoisonedError) as ei:
            call()
        assert ei.value.errno == errno.EIO
    store.close()
    _io.set_layer(None)
    log = read_log(store_path)
    check_contiguous(log)
    by_seq = {o[0]: o for o in log}
    for seq, key in acked:
        assert by_seq[seq] == expected_add(seq, key)
    # The records written after the failure were never acknowledged; at most the
    # one whose fsync failed may be in the log.
    assert len(log) <= len(acked) + 1
    with mmwal.Store(store_path, durability="fsync") as fresh:
        seq = add_doc(fresh, 2000)
    assert seq == len(log) + 1
    assert read_log(store_path)[-1] == expected_add(seq, 2000)
    assert mmwal.verify(store_path).ok


@pytest.mark.parametrize("durability", ["fsync", "interval", "os"])
def test_failed_fsync_poisons_the_store(store_path, durability):
    layer = FailingSyncLayer()
    _io.set_layer(layer)
    cfg = mmwal.Config(sync_every_records=1)
    store = mmwal.Store(store_path, dim=DIM, durability=durability, config=cfg)
    try:
        acked = [(add_doc(store, k), k) for k in range(1, 4)]
        store.sync()
        layer.fail = True
        with pytest.raises(PoisonedError) as ei:
            if durability == "os":
                add_doc(store, 4)  # "os" never fsyncs on its own: sync() is where it fails
                store.sync()
            else:
                add_doc(store, 4)
        err = ei.value
        assert isinstance(err, mmwal.MmwalError) and isinstance(err, OSError)
        assert err.errno == errno.EIO and "fsync" in str(err)
        layer.fail = False  # a retry would "succeed" falsely: the Store must stay poisoned
        _poison_checks(store, store_path, acked)
    finally:
        store.close()


def test_failed_background_fsync_poisons_the_store(store_path):
    layer = FailingSyncLayer()
    _io.set_layer(layer)
    cfg = mmwal.Config(sync_every_records=1_000_000, sync_every_ms=200)
    store = mmwal.Store(store_path, dim=DIM, durability="interval", config=cfg)
    try:
        acked = [(add_doc(store, 1), 1)]
        store.sync()
        layer.fail = True
        try:
            # Normally returns: its fsync is the flusher's job.  On a machine that
            # stalled for sync_every_ms since sync(), the call itself is due to
            # fsync and fails; the poisoning contract is the same.
            acked.append((add_doc(store, 2), 2))
        except PoisonedError:
            layer.fail = False
        else:
            _wait_for(lambda: layer.failures > 0, "the background fdatasync")
            layer.fail = False
            keys = iter(range(3, 10_000))

            def poisoned():
                key = next(keys)
                try:
                    acked.append((add_doc(store, key), key))  # the poison may land later
                except PoisonedError:
                    return True
                return False

            _wait_for(poisoned, "poisoning after the failed background fsync")
        _poison_checks(store, store_path, acked)
    finally:
        store.close()


def test_failed_fsync_in_a_segment_roll_poisons_the_store(store_path):
    layer = FailingSyncLayer()
    _io.set_layer(layer)
    cfg = mmwal.Config(segment_bytes=4096)
    store = mmwal.Store(store_path, dim=DIM, durability="os", config=cfg)
    try:
        acked = [(add_doc(store, k), k) for k in range(1, 4)]
        layer.fail = True
        with pytest.raises(PoisonedError):
            for k in range(4, 200):  # the roll to segment 2 fdatasyncs segment 1
                acked.append((add_doc(store, k), k))
        layer.fail = False
        assert len(segment_files(store_path)) == 1
        _poison_checks(store, store_path, acked)
    finally:
        store.close()


def test_acknowledged_vectors_are_never_zero(store_path):
    """An oracle RULES.md asks for: vectors equal their seeded values, never all-zero."""
    with mmwal.Store(store_path, dim=DIM, durability="fsync") as store:
        for k in range(20):
            add_doc(store, k)
    for op in mmwal.replay(store_path):
        assert np.any(op.embedding != 0)
        assert op.embedding.tobytes() == vec(int(op.id.split("-")[1])).tobytes()
