"""Shared helpers of the log tests (``import helpers``; conftest puts tests/ on sys.path).

* Deterministic documents: ``vec(key, dim)``/``vecs(start, n, dim)``, ``doc_id``,
  ``doc_content``, ``doc_meta`` - a child process and the parent compute the
  same bytes from the same integer key, so no payload has to cross a pipe.
* Log inspection: ``read_log`` (replay as comparable tuples), ``frame_spans``
  (where each frame of a segment starts and ends, from the format spec).
* Store surgery on copies: ``copy_store``, ``set_tail``.
* Child processes: ``reaped`` always kills and joins; every child target is a
  top-level function here (spawn imports it by name) and reports through a
  JSON file written by ``child_main`` (a traceback if it failed).
* I/O layers for fault injection: ``RecordingLayer`` and ``FailingSyncLayer``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import signal
import struct
import threading
import time
import traceback
from collections import Counter
from typing import Any

import numpy as np

import mmwal
from mmwal import _format as F
from mmwal import _io
from mmwal._fsutil import boot_id

DIM = 8


# ------------------------------------------------------------------ documents
def vecs(start: int, n: int, dim: int = DIM) -> np.ndarray:
    """Rows ``start .. start+n-1`` of a deterministic float32 matrix.

    Integer arithmetic divided by a power of two: exact in float32, so a row
    computed alone (``vec``) and the same row computed in a batch are equal
    bit for bit.  Never all-zero (``j * 40503`` is distinct mod 2**16), never
    non-finite.
    """
    i = np.arange(start, start + n, dtype=np.int64)[:, None]
    j = np.arange(dim, dtype=np.int64)[None, :]
    v = ((i * 2654435761 + j * 40503 + 12345) % 65536) - 32768
    return v.astype(np.float32) / np.float32(4096.0)


def vec(key: int, dim: int = DIM) -> np.ndarray:
    """The deterministic vector of document ``key``."""
    return vecs(key, 1, dim)[0]


def doc_id(key: int) -> str:
    return f"doc-{key}"


def doc_content(key: int) -> str:
    return "" if key % 7 == 3 else f"content of document {key} \u2713 \u00fcn\u00efc\u00f6de"


def doc_meta(key: int) -> dict[str, Any] | None:
    if key % 5 == 0:
        return None
    return {"key": key, "source": f"file_{key % 100}.pdf", "page": key % 50,
            "tags": ["t", key % 3, 1.5, None, True], "nested": {"k": [key, {"deep": "x"}]}}


def add_doc(store: mmwal.Store, key: int) -> int:
    """``store.add`` of the deterministic document ``key``; its seq."""
    return store.add(doc_id(key), vec(key), content=doc_content(key), metadata=doc_meta(key))


# ------------------------------------------------------------------ the log
def op_tuple(op: mmwal.Op) -> tuple[Any, ...]:
    """An Op as a plain comparable tuple (the embedding as its raw bytes)."""
    emb = None if op.embedding is None else op.embedding.tobytes()
    return (op.seq, op.kind, op.id, emb, op.content, op.metadata)


def read_log(path: str, **kw: Any) -> list[tuple[Any, ...]]:
    return [op_tuple(op) for op in mmwal.replay(path, **kw)]


def expected_add(seq: int, key: int, dim: int = DIM) -> tuple[Any, ...]:
    return (seq, "add", doc_id(key), vec(key, dim).tobytes(), doc_content(key), doc_meta(key))


def segment_files(path: str) -> list[str]:
    wal = os.path.join(path, "wal")
    return sorted(os.path.join(wal, n) for n in os.listdir(wal) if n.endswith(".seg"))


def frame_spans(seg_path: str) -> list[tuple[int, int, int, int, int]]:
    """Every valid frame of a segment: (start, payload end, padded end, first seq, count)."""
    with open(seg_path, "rb") as f:
        data = f.read()
    h = F.decode_segment_header(data[: F.SEGMENT_HEADER_SIZE])
    off, seq, out = F.SEGMENT_HEADER_SIZE, h.first_seq, []
    while True:
        status, _kind, count, n, nxt, _why = F.check_frame(data, off, len(data), h.seed, seq)
        if status != F.FRAME_OK:
            return out
        out.append((off, off + F.FRAME_HEADER_SIZE + n, nxt, seq, count))
        seq += count
        off = nxt


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def overwrite(path: str, data: bytes) -> None:
    """Make ``path`` hold exactly ``data``, in place.

    Not ``open(path, "wb")``: ext4 (auto_da_alloc) flushes a file truncated to
    zero and rewritten when it is closed, ~20 ms each time in a loop.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def copy_store(src: str, dst: str) -> str:
    """A copy of store ``src`` at ``dst``; an existing copy is refreshed file by file.

    Refreshing in place (same names, fresh contents, extra files removed) is a
    faithful copy and avoids rmdir/mkdir, which cost ~1 ms each on ext4.
    """
    if not os.path.exists(dst):
        shutil.copytree(src, dst)
        return dst
    for root, _dirs, files in os.walk(dst):
        for name in files:
            if not os.path.exists(os.path.join(src, os.path.relpath(root, dst), name)):
                os.unlink(os.path.join(root, name))
    for root, _dirs, files in os.walk(src):
        for name in files:
            overwrite(os.path.join(dst, os.path.relpath(root, src), name),
                      read_bytes(os.path.join(root, name)))
    return dst


def set_tail(path: str, how: str, *, end: int = 0, last_seq: int = 0, segment: int = 1) -> None:
    """Rewrite the ``tail`` hint of a (copied, unused) store.

    ``"kept"`` leaves it; ``"zeroed"`` is what a reboot or a never-written
    record looks like; ``"deleted"`` removes the file; ``"stale"`` writes a
    valid record for this boot ending at ``end``/``last_seq`` with the pending
    word set - a writer killed between announcing its frame and publishing it.
    """
    tail = os.path.join(path, "tail")
    if how == "kept":
        return
    if how == "deleted":
        os.unlink(tail)
        return
    if how == "zeroed":
        data = bytes(F.TAIL_FILE_SIZE)
    elif how == "stale":
        rec = F.encode_tail(boot_id(), F.Tail(segment, end, last_seq, 0, segment, 0))
        data = bytearray(rec + bytes(F.TAIL_FILE_SIZE - len(rec)))
        data[F.PENDING_OFFSET : F.PENDING_OFFSET + 8] = (1).to_bytes(8, "little")
        data = bytes(data)
    else:
        raise ValueError(how)
    overwrite(tail, data)


def check_contiguous(ops: list[tuple[Any, ...]], first: int = 1) -> None:
    seqs = [o[0] for o in ops]
    assert seqs == list(range(first, first + len(seqs))), "seqs are not contiguous"


# ------------------------------------------------------------------ processes
@contextlib.contextmanager
def reaped(*procs: Any):
    """Yield; then kill whatever is still alive and join everything (always)."""
    try:
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                if p.is_alive():
                    p.kill()
        for p in procs:
            with contextlib.suppress(Exception):
                p.join(30)


def child_main(out_path: str, fn: Any, *args: Any) -> None:
    """Run ``fn(*args)`` and write its JSON result (or the traceback) to ``out_path``."""
    try:
        result: Any = {"ok": fn(*args)}
    except BaseException:
        result = {"error": traceback.format_exc()}
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, out_path)


def child_result(out_path: str) -> Any:
    with open(out_path) as f:
        result = json.load(f)
    if "error" in result:
        raise AssertionError("child process failed:\n" + result["error"])
    return result["ok"]


def run_children(ctx: Any, jobs: list[tuple[Any, tuple[Any, ...]]], out_dir: str,
                 timeout: float = 90.0) -> list[Any]:
    """Start one ``ctx.Process`` per (fn, args), wait, return their results in order."""
    outs = [os.path.join(out_dir, f"child-{i}.json") for i in range(len(jobs))]
    procs = [ctx.Process(target=child_main, args=(out, fn, *args))
             for out, (fn, args) in zip(outs, jobs)]
    with reaped(*procs):
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
        for p in procs:
            assert not p.is_alive(), "a child process hung"
        results = [child_result(out) for out in outs]
        for p in procs:
            assert p.exitcode == 0, f"child exit code {p.exitcode}"
    return results


# ------------------------------------------------------------------ writer workload
def writer_script(store: mmwal.Store, writer: int, n_calls: int, dim: int) -> list[list[Any]]:
    """A deterministic mix of add / add_many / remove; returns [kind, seqs, keys] per call.

    Keys are ``writer * 1_000_000 + counter`` so ids never collide between writers.
    A remove always removes an id this writer added and never removed before.
    """
    rng = random.Random(writer)
    base = writer * 1_000_000
    counter = 0
    live: list[int] = []
    calls: list[list[Any]] = []
    for _ in range(n_calls):
        r = rng.random()
        if r < 0.25 and live:
            key = live.pop(rng.randrange(len(live)))
            seq = store.remove(doc_id(key))
            calls.append(["remove", [seq], [key]])
        elif r < 0.45:
            n = rng.choice((1, 2, 3, 5, 17))
            keys = list(range(base + counter, base + counter + n))
            counter += n
            seqs = store.add_many([doc_id(k) for k in keys], vecs(keys[0], n, dim),
                                  contents=[doc_content(k) for k in keys],
                                  metadatas=[doc_meta(k) for k in keys])
            assert isinstance(seqs, range) and len(seqs) == n
            calls.append(["add", list(seqs), keys])
            live.extend(keys)
        else:
            key = base + counter
            counter += 1
            seq = store.add(doc_id(key), vec(key, dim), content=doc_content(key),
                            metadata=doc_meta(key))
            calls.append(["add", [seq], [key]])
            live.append(key)
    return calls


def writer_process(path: str, writers: list[int], n_calls: int, durability: str,
                   segment_bytes: int, dim: int, start: Any) -> dict[str, Any]:
    """One process: a Store shared by one thread per writer number; returns their calls."""
    store = mmwal.Store(path, durability=durability,
                        config=mmwal.Config(segment_bytes=segment_bytes))
    try:
        start.wait(60)  # a multiprocessing Barrier shared by the writer processes
        results: dict[str, Any] = {}
        errors: list[str] = []

        def run(w: int) -> None:
            try:
                results[str(w)] = writer_script(store, w, n_calls, dim)
            except BaseException:
                errors.append(traceback.format_exc())

        threads = [threading.Thread(target=run, args=(w,)) for w in writers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise RuntimeError(errors[0])
        return results
    finally:
        store.close()


def check_writer_calls(path: str, calls_by_writer: dict[Any, list[list[Any]]],
                       dim: int = DIM) -> list[tuple[Any, ...]]:
    """The oracle: every acknowledged seq exactly once, contiguous, ordered, exact."""
    log = read_log(path)
    check_contiguous(log)
    by_seq = {o[0]: o for o in log}
    acked: list[int] = []
    for writer, calls in calls_by_writer.items():
        mine = [s for _kind, seqs, _keys in calls for s in seqs]
        assert mine == sorted(mine) and len(set(mine)) == len(mine), \
            f"writer {writer}: seqs not increasing in call order"
        acked.extend(mine)
        for kind, seqs, keys in calls:
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a batch is not contiguous"
            for seq, key in zip(seqs, keys):
                assert seq in by_seq, f"acknowledged seq {seq} missing from the log"
                if kind == "add":
                    assert by_seq[seq] == expected_add(seq, key, dim), f"seq {seq}: wrong payload"
                else:
                    assert by_seq[seq] == (seq, "remove", doc_id(key), None, None, None)
    assert sorted(acked) == [o[0] for o in log], "log and acknowledged seqs differ"
    added = Counter(o[2] for o in log if o[1] == "add")
    assert all(c == 1 for c in added.values()), "an add appears more than once"
    report = mmwal.verify(path)
    assert report.ok, report.problems
    assert report.records == len(log) and report.last_seq == len(log)
    return log


# ------------------------------------------------------------------ kill children
class SignalBigWrites(_io.OSLayer):
    """The real OS; writes b"w" to ``fd`` just before any pwrite larger than 1 MiB."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        real = self.pwrite

        def pwrite(f: int, data: Any, offset: int) -> int:
            if len(data) > 1 << 20:
                os.write(fd, b"w")
            return real(f, data, offset)

        self.pwrite = pwrite


def batch_child(path: str, ids: list[str], emb: np.ndarray, ready_fd: int) -> None:
    """Open the store, say ready, append ONE big batch (the parent kills us meanwhile).

    Pipe protocol: b"r" once open, b"w" when the frame's pwrite starts, b"d"
    when add_many returned.  Run with the fork context: ``ids`` and ``emb`` are
    inherited, not pickled.
    """
    _io.set_layer(SignalBigWrites(ready_fd))
    with mmwal.Store(path, durability="os") as store:
        os.write(ready_fd, b"r")
        store.add_many(ids, emb)
    os.write(ready_fd, b"d")


def per_op_child(path: str, first_key: int, ack_path: str, ready_fd: int) -> None:
    """Tight loop of single adds; after each returns, append (seq, key) to ``ack_path``."""
    fd = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with mmwal.Store(path, durability="os") as store:
        os.write(ready_fd, b"r")
        key = first_key
        while True:
            seq = store.add(doc_id(key), vec(key), content=doc_content(key),
                            metadata=doc_meta(key))
            os.write(fd, struct.pack("<QQ", seq, key))
            key += 1


def kill_now(p: Any) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(p.pid, signal.SIGKILL)
    p.join(30)


# ------------------------------------------------------------------ fork children
def forked_add(store: mmwal.Store, key: int, ack_fd: int) -> None:
    """In a forked child: add through the Store object inherited from the parent."""
    seq = add_doc(store, key)
    os.write(ack_fd, struct.pack("<Q", seq))


def forked_use_and_close(store: mmwal.Store, key: int, ack_fd: int) -> None:
    """In a forked child: write, sync, close the inherited Store, then exit."""
    seq = add_doc(store, key)
    store.sync()
    store.close()
    os.write(ack_fd, struct.pack("<Q", seq))


def try_lock_elsewhere(lock_path: str) -> bool:
    """Whether an exclusive flock on ``lock_path`` can be taken on a new open file description."""
    import fcntl

    fd = os.open(lock_path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


# ------------------------------------------------------------------ I/O layers
class RecordingLayer(_io.OSLayer):
    """The real OS, recording pwrite and fdatasync calls in order (thread-safe)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str, int, int, int]] = []
        self._mu = threading.Lock()
        real_pwrite, real_sync = self.pwrite, self.fdatasync

        def pwrite(fd: int, data: Any, offset: int) -> int:
            n = real_pwrite(fd, data, offset)
            self._log("pwrite", fd, offset, n)
            return n

        def fdatasync(fd: int) -> None:
            # What this fdatasync makes durable: every pwrite to the file that
            # completed (and was logged) before it started.
            name = self._name(fd)
            covers = self.written_end(name)
            real_sync(fd)
            self._log("fdatasync", fd, covers, 0, name)

        self.pwrite = pwrite
        self.fdatasync = fdatasync

    @staticmethod
    def _name(fd: int) -> str:
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return f"fd:{fd}"

    def _log(self, what: str, fd: int, offset: int, n: int, name: str | None = None) -> None:
        ev = (what, name or self._name(fd), offset, n, threading.get_ident())
        with self._mu:
            self.events.append(ev)

    def syncs(self, path: str | None = None) -> int:
        with self._mu:
            return sum(1 for e in self.events
                       if e[0] == "fdatasync" and (path is None or e[1] == path))

    def written_end(self, path: str, thread: int | None = None) -> int:
        """The furthest end of the pwrites to ``path`` (by ``thread``, if given)."""
        with self._mu:
            return max((off + n for what, name, off, n, t in self.events
                        if what == "pwrite" and name == path
                        and (thread is None or t == thread)), default=0)

    def durable_end(self, path: str) -> int:
        """How far ``path`` is durable: the furthest write end an fdatasync covered."""
        with self._mu:
            return max((off for what, name, off, _n, _t in self.events
                        if what == "fdatasync" and name == path), default=0)


class FailingSyncLayer(_io.OSLayer):
    """The real OS, except that fdatasync fails with EIO while ``fail`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False
        self.failures = 0
        real = self.fdatasync

        def fdatasync(fd: int) -> None:
            if self.fail:
                self.failures += 1
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real(fd)

        self.fdatasync = fdatasync


def remove_many_worker(path: str, start: int, rounds: int, queue: Any) -> None:
    """A writer process of tests/test_remove_many.py (here, so spawned children import it).

    ``rounds`` times: ``remove_many`` of 10 ids from ``doc-{start}`` on, then one
    ``add``; puts ("ok", [(seqs, ids), ...]) or ("error", repr) on ``queue``.
    """
    from mmwal._faults import doc_vec

    try:
        with mmwal.Store(path, durability="os") as s:
            got = []
            for i in range(rounds):
                ids = [f"doc-{start + 10 * i + j}" for j in range(10)]
                got.append((list(s.remove_many(ids)), ids))
                s.add(f"new-{start}-{i}", doc_vec(i))
        queue.put(("ok", got))
    except BaseException as exc:  # reported to the test
        queue.put(("error", repr(exc)))


def arm(lay: Any, category: str, err: int = errno.EIO, *, persistent: bool = False,
        torn: bool = False, after: int = 0) -> None:
    """Make the ErrorLayer ``lay`` fail the next (``after`` + 1)-th operation of ``category``."""
    lay.category, lay.err, lay.persistent, lay.torn = category, err, persistent, torn
    lay.nth = lay.counts[category] + 1 + after
    lay.armed = True
