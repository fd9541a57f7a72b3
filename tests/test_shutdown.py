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
