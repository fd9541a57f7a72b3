"""Shutdown and the automatic checkpoint: what a caller sees when a Store ends under it.

* ``close()`` while other threads write: every call either succeeds (and its
  seqs are in the log afterwards) or raises ``StoreClosedError``; nothing else.
* an automatic checkpoint that fails does not turn a committed ``add`` into an
  error (the caller would retry and duplicate it).
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import threading
from typing import Any

import numpy as np
import pytest
from helpers import DIM, doc_id, read_log, vec

import mmwal
from mmwal import _io
from mmwal.errors import ClosedError, MmwalError

# ------------------------------------------------------------------ close under load
_CALLS = ("add", "add_many", "remove", "sync")


def _hammer(store: mmwal.Store, tid: int, start: threading.Event, acked: list[int],
            errors: list[BaseException]) -> None:
    rnd = random.Random(tid)
    start.wait()
    k = 0
    while True:
        call = _CALLS[rnd.randrange(len(_CALLS))]
        k += 1
        key = tid * 1_000_000 + k
        try:
            if call == "add":
                acked.append(store.add(doc_id(key), vec(key)))
            elif call == "add_many":
                acked.extend(store.add_many([doc_id(key), doc_id(key + 500_000)],
                                            np.stack([vec(key), vec(key + 1)])))
            elif call == "remove":
                acked.append(store.remove(doc_id(key - 1)))
            else:
                store.sync()
        except mmwal.StoreClosedError:
            return
        except BaseException as exc:  # anything else is the bug under test
            errors.append(exc)
            return


@pytest.mark.parametrize("durability", ["os", "fsync", "interval"])
def test_close_while_threads_write(tmp_path: Any, durability: str) -> None:
    for it in range(12 if durability == "fsync" else 25):
        path = str(tmp_path / f"s{it}")
        store = mmwal.Store(path, dim=DIM, durability=durability)
        start = threading.Event()
        acked: list[list[int]] = [[] for _ in range(4)]
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_hammer, args=(store, t, start, acked[t], errors))
                   for t in range(4)]
        for t in threads:
            t.start()
        start.set()
        # Let the writers get going: a few records by one of them, then close.
        while not acked[it % 4]:
            pass
        store.close()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert errors == [], f"iteration {it}: {errors!r}"
        logged = {op[0] for op in read_log(path)}
        for got in acked:
            assert set(got) <= logged, f"iteration {it}: acknowledged seqs missing from the log"


class _BlockingSync(_io.OSLayer):
    """The real OS, except that fdatasync waits for ``release`` once ``armed``."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()
        real = self.fdatasync

        def fdatasync(fd: int) -> None:
            if self.armed:
                self.entered.set()
                self.release.wait(60)
            real(fd)

        self.fdatasync = fdatasync


def test_close_waits_for_a_running_call_then_gives_up_and_can_be_retried(tmp_path: Any) -> None:
    layer = _BlockingSync()
    _io.set_layer(layer)
    path = str(tmp_path / "s")
    store = mmwal.Store(path, dim=DIM, durability="fsync",
                        config=mmwal.Config(lock_timeout=0.2))
    store.add(doc_id(0), vec(0))
    layer.armed = True
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(store.add(doc_id(1), vec(1))))
    t.start()
    assert layer.entered.wait(30)  # the add is inside its fdatasync
    with pytest.raises(mmwal.LockTimeout) as ei:
        store.close()
    assert "call(s) of other threads still running" in str(ei.value) and ei.value.calls == 1
    with pytest.raises(mmwal.StoreClosedError, match="closing"):
        store.add(doc_id(2), vec(2))  # refused while close() is pending
    layer.release.set()
    t.join(30)
    assert got == [2]  # the running call finished normally
    store.close()  # now nothing runs: releases everything
    with pytest.raises(mmwal.StoreClosedError, match="is closed"):
        store.sync()
    assert [op[0] for op in read_log(path)] == [1, 2]


def test_calls_after_close_raise_store_closed_error(tmp_path: Any) -> None:
    store = mmwal.Store(str(tmp_path / "s"), dim=DIM)
    store.close()
    for call in (lambda s: s.add("x", vec(1)), lambda s: s.add_many(["x"], vec(1)[None]),
                 lambda s: s.remove("x"), lambda s: s.clear(), lambda s: s.sync(),
                 lambda s: s.checkpoint(), lambda s: s.stats(), lambda s: s.needs_checkpoint(),
                 lambda s: s.seq):
        with pytest.raises(mmwal.StoreClosedError) as ei:
            call(store)
        err = ei.value
        # Backwards compatible: still the ClosedError (a ValueError) callers caught before.
        assert isinstance(err, ClosedError) and isinstance(err, MmwalError)
        assert isinstance(err, ValueError)
        assert store.path in str(err) and "closed" in str(err)
        again = pickle.loads(pickle.dumps(err))
        assert type(again) is mmwal.StoreClosedError and again.path == store.path
    store.close()  # idempotent


def test_store_closed_error_is_public() -> None:
    assert "StoreClosedError" in mmwal.__all__
    assert mmwal.__all__ == sorted(mmwal.__all__)
    assert mmwal.StoreClosedError is mmwal.errors.StoreClosedError


# ------------------------------------------------------------------ automatic checkpoints
class _FailingCheckpointFiles(_io.OSLayer):
    """The real OS, except that creating a file under ``checkpoints/`` fails (ENOSPC)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = True
        self.failures = 0
        real = self.open

        def open_(path: str, flags: int, mode: int = 0o777) -> int:
            if self.fail and flags & os.O_CREAT and f"{os.sep}checkpoints{os.sep}" in path:
                self.failures += 1
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            return real(path, flags, mode)

        self.open = open_


def test_failed_auto_checkpoint_keeps_the_committed_add(tmp_path: Any) -> None:
    layer = _FailingCheckpointFiles()
    _io.set_layer(layer)
    path = str(tmp_path / "s")
    cfg = mmwal.Config(auto_checkpoint=True, checkpoint_threshold=3)
    store = mmwal.Store(path, dim=DIM, durability="os", config=cfg)
    seqs = [store.add(doc_id(k), vec(k)) for k in range(2)]
    with pytest.warns(mmwal.CheckpointWarning, match="automatic checkpoint") as rec:
        seqs.append(store.add(doc_id(2), vec(2)))  # reaches the threshold; the fold fails
    assert layer.failures >= 1 and len(rec) == 1
    assert rec[0].filename == __file__  # points at the caller's line
    assert seqs == [1, 2, 3], "the add committed and must return its seq, not raise"
    st = store.stats()
    assert st.checkpoint_id == 0
    assert st.auto_checkpoint_error is not None and "checkpoints" in st.auto_checkpoint_error
    assert [op[0] for op in read_log(path)] == [1, 2, 3]  # in the log once: nothing to retry
    # No new attempt (and no warning, which filterwarnings=error would raise)
    # before another checkpoint_threshold records.
    seqs += [store.add(doc_id(k), vec(k)) for k in range(3, 5)]
    assert layer.failures == 1
    with pytest.warns(mmwal.CheckpointWarning):
        seqs += store.add_many([doc_id(5), doc_id(6)], np.stack([vec(5), vec(6)]))
    assert seqs == list(range(1, 8)) and layer.failures == 2
    # The next explicit checkpoint runs and raises the current cause while it persists...
    with pytest.raises(mmwal.errors.StorageIOError) as ei:
        store.checkpoint()
    assert ei.value.errno == errno.ENOSPC
    assert store.stats().auto_checkpoint_error is not None
    # ...and once the cause is gone, succeeds and clears the report.
    layer.fail = False
    info = store.checkpoint()
    assert info.seq == 7
    assert store.stats().auto_checkpoint_error is None
    store.close()
    r = mmwal.Reader(path)
    assert len(r) == 7 and all(doc_id(k) in r for k in range(7))
    r.close()
