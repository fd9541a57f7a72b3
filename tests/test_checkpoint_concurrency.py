"""Checkpoints while writers append and readers refresh, in real processes.

* Two writer processes append per-op ("os" durability) and log every
  acknowledged (seq, i); two reader processes refresh in a loop and check, on
  every refresh, that they see a prefix of every writer's documents with exact
  vectors; two checkpointer threads (separate Store objects) fold meanwhile.
* Readers touching every mapped page while checkpoints with keep_checkpoints=1
  unlink the files they map: never a signal (SIGBUS), never an exception.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
import time
import traceback

import numpy as np
from ckpt_helpers import (
    DIM,
    ack_count,
    check_prefix_view,
    child_main,
    child_result,
    content_of,
    key_vec,
    key_vecs,
    leftovers,
    meta_of,
    read_acks,
    reader_child,
    reaped,
    toucher_loop,
    wid,
    wkey,
    writer_child,
)

import mmwal

WRITERS = 2


def _wait_for(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_checkpoints_during_writes_and_refreshes(tmp_path):
    path = str(tmp_path / "store")
    segment_bytes = 16 * 1024  # the log rolls every ~60 records
    cfg = mmwal.Config(segment_bytes=segment_bytes, keep_checkpoints=1)
    mmwal.Store(path, dim=DIM, durability="os", config=cfg).close()
    stop = str(tmp_path / "stop")
    acks = [str(tmp_path / f"acks-{w}") for w in range(WRITERS)]
    samples = [str(tmp_path / f"samples-{j}") for j in range(2)]
    outs = {name: str(tmp_path / f"{name}.json") for name in ("w0", "w1", "r0", "r1")}
    spawn, fork = mp.get_context("spawn"), mp.get_context("fork")
    me = os.getpid()
    procs = {
        "r0": fork.Process(target=child_main, args=(outs["r0"], reader_child, path, WRITERS,
                                                    stop, samples[0], me)),
        "r1": spawn.Process(target=child_main, args=(outs["r1"], reader_child, path, WRITERS,
                                                     stop, samples[1], me)),
        "w0": spawn.Process(target=child_main, args=(outs["w0"], writer_child, path, 0, acks[0],
                                                     stop, 20_000, segment_bytes, me)),
        "w1": fork.Process(target=child_main, args=(outs["w1"], writer_child, path, 1, acks[1],
                                                    stop, 20_000, segment_bytes, me)),
    }
    infos: list[mmwal.CheckpointInfo] = []
    errors: list[str] = []

    def checkpointer(rounds: int) -> None:
        try:
            with mmwal.Store(path, config=cfg) as s:
                for _ in range(rounds):
                    start = sum(ack_count(a) for a in acks)
                    # wait for fresh writes so that every fold runs alongside appends
                    _wait_for(lambda start=start: sum(ack_count(a) for a in acks) >= start + 150,
                              "writers to make progress")
                    infos.append(s.checkpoint())
        except BaseException:
            errors.append(traceback.format_exc())

    with reaped(*procs.values()):
        for p in procs.values():
            p.start()
        _wait_for(lambda: all(ack_count(a) > 0 for a in acks), "both writers to start")
        # readers that opened before the first checkpoint must see at least two
        _wait_for(lambda: all(os.path.exists(s + ".ready") for s in samples),
                  "both readers to start")
        threads = [threading.Thread(target=checkpointer, args=(3,)) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        with open(stop, "w"):
            pass
        for p in procs.values():
            p.join(60)
        assert not errors, errors[0]
        for name, p in procs.items():
            assert p.exitcode == 0, f"{name} exit code {p.exitcode}"
        written = [child_result(outs[f"w{w}"]) for w in range(WRITERS)]
        seen = [child_result(outs[f"r{j}"]) for j in range(2)]

    # checkpoints: six of them, in order, each folding more
    assert len(infos) == 6
    ids_ = sorted(i.id for i in infos)
    assert ids_ == list(range(1, 7))
    by_id = sorted(infos, key=lambda i: i.id)
    assert all(a.seq < b.seq for a, b in zip(by_id, by_id[1:]))
    # every acknowledged record, once, in per-writer order, with global seqs 1..total
    acked = [read_acks(a) for a in acks]
    seq_of: list[dict[int, int]] = []
    for w, entries in enumerate(acked):
        assert len(entries) == written[w]
        assert [i for _s, i in entries] == list(range(written[w]))
        seqs = [s for s, _i in entries]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        seq_of.append({i: s for s, i in entries})
    total = sum(written)
    assert sorted(s for e in acked for s, _i in e) == list(range(1, total + 1))
    # readers: each saw a prefix of the log at every refresh, and moved across checkpoints
    for j in range(2):
        assert seen[j]["refreshes"] >= 1 and len(seen[j]["checkpoints"]) >= 2
        with open(samples[j]) as f:
            for seq, *counts in json.load(f):
                for w in range(WRITERS):
                    want = sum(1 for s in seq_of[w].values() if s <= seq)
                    assert counts[w] == want, \
                        f"reader {j} at seq {seq}: writer {w} shows {counts[w]}, log has {want}"
    # the final state: everything acknowledged, nothing else, exact
    with mmwal.Reader(path) as r:
        assert r.seq == total and len(r) == total
        assert check_prefix_view(r, WRITERS) == written
        for w in range(WRITERS):
            for i in range(written[w]):
                key = wkey(w, i)
                d = r[wid(w, i)]
                assert (d.content, d.metadata) == (content_of(key), meta_of(key))
                assert np.array_equal(d.embedding, key_vec(key))
    report = mmwal.verify(path)
    assert report.ok, report.problems
    assert leftovers(path, 1) == []


def test_readers_touching_every_page_while_checkpoints_retire_files(tmp_path):
    path = str(tmp_path / "store")
    cfg = mmwal.Config(keep_checkpoints=1, segment_bytes=32 * 1024, chunk_documents=64)
    stop = str(tmp_path / "stop")
    outs = [str(tmp_path / f"toucher-{j}.json") for j in range(2)]
    rng = np.random.default_rng(3)
    live: set[int] = set()
    with mmwal.Store(path, dim=DIM, durability="os", config=cfg) as s:

        def add_keys(keys: list[int]) -> None:
            s.add_many([f"d{k}" for k in keys], key_vecs(keys),
                       contents=[content_of(k) for k in keys],
                       metadatas=[meta_of(k) for k in keys])
            live.update(keys)

        add_keys(list(range(2000)))
        s.checkpoint()
        me = os.getpid()
        procs = [mp.get_context("fork").Process(target=child_main,
                                                args=(outs[0], toucher_loop, path, stop, me)),
                 mp.get_context("spawn").Process(target=child_main,
                                                 args=(outs[1], toucher_loop, path, stop, me))]
        thread_result: list[object] = []

        def in_thread() -> None:
            try:
                thread_result.append(toucher_loop(path, stop, os.getppid()))
            except BaseException:
                thread_result.append(traceback.format_exc())

        t = threading.Thread(target=in_thread)
        with reaped(*procs):
            for p in procs:
                p.start()
            t.start()
            next_key = 2000
            for round_ in range(12):
                add_keys(list(range(next_key, next_key + 300)))
                next_key += 300
                pool = sorted(live)
                replaced = rng.choice(pool, 150, replace=False).tolist()
                for k in replaced[:50]:      # per-op replacements (same data, new row)
                    s.add(f"d{k}", key_vec(k), content=content_of(k), metadata=meta_of(k))
                add_keys(replaced[50:])      # batched replacements
                for k in rng.choice(pool, 60, replace=False).tolist():
                    s.remove(f"d{k}")
                    live.discard(k)
                if round_ % 4 == 3:
                    s.clear()
                    live.clear()
                    add_keys(list(range(next_key, next_key + 500)))
                    next_key += 500
                s.checkpoint()  # keep_checkpoints=1: the previous files are unlinked now
                names = os.listdir(os.path.join(path, "checkpoints"))
                assert [n for n in names if n.endswith(".version")] != []
                assert leftovers(path, 1) == []
            with open(stop, "w"):
                pass
            t.join(60)
            for p in procs:
                p.join(60)
            for j, p in enumerate(procs):
                assert p.exitcode == 0, f"reader process {j} exit code {p.exitcode} " \
                    "(-7 is SIGBUS)"
                assert child_result(outs[j])["loops"] >= 1
        assert not t.is_alive()
        assert thread_result and isinstance(thread_result[0], dict), thread_result
    with mmwal.Reader(path) as r:
        assert sorted(int(x[1:]) for x in r.ids) == sorted(live)
    assert mmwal.verify(path).ok
