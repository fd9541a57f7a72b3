#!/usr/bin/env python
"""Log-write throughput: mmwal against a raw ceiling, SQLite and LMDB, in one run.

Usage::

    python benchmarks/bench_log.py                 # default run, a few minutes
    python benchmarks/bench_log.py --quick         # smoke run, seconds
    python benchmarks/bench_log.py --json out.json --base-dir /mnt/disk/tmp

Cases (DESIGN.md, "Performance targets"):

a  per-op add, durability "os", 1 process                      (ops/s)
b  add_many of 1000 docs, "os", 1 process                      (docs/s)
c  per-op add, "os", N writer processes (default 4)            (total ops/s)
d1 per-op add, "fsync", 1 process                              (ops/s)
d4 per-op add, "fsync", N writer processes                     (total ops/s)

Method: every case runs R rounds (default 5); in each round every contender runs
once, in an order rotated by one per round, each into a fresh directory under
--base-dir that is deleted right after.  A round's number is ops (or docs) / time
of the write loop only: opening and closing a store, generating inputs and
building the raw ceiling's frames all happen before the clock starts.  The
Markdown table reports the median over rounds with min/max and the ratios of
medians against the peers; --json keeps every round.

Multi-process cases: the children build their inputs and open their own
store/env/connection/descriptor, then wait on a barrier together with the
parent; the clock runs from the barrier release (the earliest of the parent's
and the children's clocks - perf_counter is CLOCK_MONOTONIC, shared by all
processes on Linux) to the last child's finish; total ops / that wall time.

Durability per contender (why they are comparable):

* "os" cases - a record is in the OS page cache on return: survives kill -9 of
  the writer, not power loss.
    raw     os.write to an O_APPEND file, no fsync.
    raw-built  the same frames, but encoded (msgpack) and checksummed (CRC-32)
            inside the timed loop, one per document (one per batch in case b,
            written with writev): the least any Python writer of a
            checksummed log does.  No lock, no sequence numbers, no checks.
            Its ratio to raw (reported as "the floor") bounds what a Python
            library can reach against the pre-built ceiling.
    sqlite  journal_mode=WAL, synchronous=NORMAL: a commit appends to the WAL
            without fsync (the WAL is fsynced only at checkpoints), the closest
            SQLite setting to page-cache durability.  synchronous=OFF is faster
            but can corrupt the database on power loss - weaker than mmwal
            "os" - so it is only available via --sqlite-os-sync OFF.
    lmdb    sync=False, metasync=False: commits write pages to the page cache
            (the file, or the shared map with writemap) without fsync/msync,
            i.e. equal to mmwal "os".  "lmdb-wm" is the same with writemap=True,
            which is much faster on Linux; the "vs lmdb" ratio is taken against
            the faster of the two LMDB rows in each case.
    mmwal   durability="os".
* "fsync" cases - a record is on stable storage on return.
    raw     os.write + os.fdatasync per op (raw-built: built in the loop, then the same).
    sqlite  WAL, synchronous=FULL (the WAL is fsynced at every commit).
    lmdb    sync=True, metasync=True (LMDB's durable default).
    mmwal   durability="fsync".
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import shlex
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _workload import (  # noqa: E402
    DIM,
    RAW_HEADER,
    Docs,
    fmt_rate,
    fmt_ratio,
    machine_info,
    make_docs,
    md_table,
    raw_batch_frame,
    raw_doc_frames,
    summarize,
)

try:
    import lmdb

    LMDB_ERR: str | None = None
except Exception as exc:  # pragma: no cover - lmdb is a benchmark dependency
    lmdb = None
    LMDB_ERR = repr(exc)


def _import_mmwal() -> tuple[Any, str | None]:
    """mmwal from the environment, else from the repository root."""
    try:
        try:
            import mmwal
        except ImportError:
            if str(REPO) not in sys.path:
                sys.path.insert(0, str(REPO))
            import mmwal
        mmwal.Store  # noqa: B018 - the API this benchmark needs
        return mmwal, None
    except Exception as exc:  # the library may be half-written while developing
        return None, f"{type(exc).__name__}: {exc}"


mmwal, MMWAL_ERR = _import_mmwal()

_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
LMDB_MAP_SIZE = 1 << 34  # address space only (sparse file with writemap)
BARRIER_TIMEOUT = 120.0


# ====================================================================== writers
# Every writer: __init__ opens (untimed), ops()/batches()/frames() are the timed
# loops, close() (untimed).  Inputs arrive fully built.


@dataclass
class Batch:
    ids: list[str]
    vecs: np.ndarray
    contents: list[str]
    metadatas: list[dict]


def make_batches(docs: Docs, size: int) -> list[Batch]:
    return [
        Batch(
            docs.ids[lo : lo + size],
            docs.vecs[lo : lo + size],
            docs.contents[lo : lo + size],
            docs.metadatas[lo : lo + size],
        )
        for lo in range(0, len(docs), size)
    ]


class RawWriter:
    """The ceiling: pre-built frames, one os.write each, O_APPEND, no lock."""

    def __init__(self, path: str, durability: str, opts: dict, create: bool = True):
        self.fd = os.open(
            os.path.join(path, "raw.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
        )
        self.fsync = durability == "fsync"

    def frames(self, frames: list[bytes]) -> None:
        fd, write = self.fd, os.write
        if self.fsync:
            sync = _fdatasync
            for f in frames:
                if write(fd, f) != len(f):
                    raise OSError("short write")
                sync(fd)
        else:
            for f in frames:
                if write(fd, f) != len(f):
                    raise OSError("short write")

    def close(self) -> None:
        os.close(self.fd)


class BuiltRawWriter(RawWriter):
    """The raw ceiling's frames, built in the timed loop: the floor of any Python writer.

    Per document (or per batch of ``add_many``): one msgpack call, one CRC, one
    os.write - what every writer of a checksummed log must do at least - and
    nothing else: no lock, no sequence number, no input check.  Its ratio to
    ``raw`` is how much of the ceiling is left once a record is encoded at
    all; mmwal's ratio to it is what its checks, lock and bookkeeping cost.
    """

    def ops(self, docs: Docs, lo: int, hi: int) -> None:
        fd, write, packb, crc, head = self.fd, os.write, msgpack.packb, zlib.crc32, RAW_HEADER.pack
        ids, contents, metas, vecs = docs.ids, docs.contents, docs.metadatas, docs.vecs
        sync = _fdatasync if self.fsync else None
        for i in range(lo, hi):
            p = packb([ids[i], contents[i], metas[i], vecs[i].tobytes()])
            f = head(len(p), crc(p)) + p
            if write(fd, f) != len(f):
                raise OSError("short write")
            if sync is not None:
                sync(fd)

    def batches(self, batches: list[Batch]) -> None:
        fd, packb, crc, head = self.fd, msgpack.packb, zlib.crc32, RAW_HEADER.pack
        writev = os.writev
        for b in batches:
            p = packb([b.ids, b.contents, b.metadatas, b.vecs.tobytes()])
            h = head(len(p), crc(p))
            if writev(fd, (h, p)) != len(h) + len(p):  # (no copy of the 1.5 MB payload)
                raise OSError("short write")


class SqliteWriter:
    SQL = "INSERT OR REPLACE INTO docs (id, content, metadata, embedding) VALUES (?, ?, ?, ?)"

    def __init__(self, path: str, durability: str, opts: dict, create: bool = True):
        # isolation_level=None: autocommit, so each INSERT is its own committed
        # transaction - "INSERT + COMMIT per op" without the two extra
        # BEGIN/COMMIT statement round trips the legacy mode issues (measured
        # ~20% faster here, so this is the peer's best form of the same thing).
        self.conn = sqlite3.connect(
            os.path.join(path, "docs.sqlite"),
            isolation_level=None,
            timeout=600.0,
            check_same_thread=False,
        )
        if create:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute(
                "CREATE TABLE IF NOT EXISTS docs (id TEXT PRIMARY KEY, content TEXT,"
                " metadata BLOB, embedding BLOB)"
            )
        # "os": NORMAL - in WAL mode commits are not fsynced (only checkpoints
        # are): the closest SQLite setting to page-cache durability.
        # "fsync": FULL - the WAL is fsynced at every commit.
        sync = opts.get("sqlite_os_sync", "NORMAL") if durability == "os" else "FULL"
        self.conn.execute(f"PRAGMA synchronous={sync}")

    def ops(self, docs: Docs, lo: int, hi: int) -> None:
        ex, sql, packb = self.conn.execute, self.SQL, msgpack.packb
        ids, contents, metas, vecs = docs.ids, docs.contents, docs.metadatas, docs.vecs
        for i in range(lo, hi):
            ex(sql, (ids[i], contents[i], packb(metas[i]), vecs[i].tobytes()))

    def batches(self, batches: list[Batch]) -> None:
        conn, sql, packb = self.conn, self.SQL, msgpack.packb
        for b in batches:
            conn.execute("BEGIN")
            conn.executemany(
                sql,
                zip(
                    b.ids,
                    b.contents,
                    map(packb, b.metadatas),
                    map(np.ndarray.tobytes, b.vecs),
                    strict=True,
                ),
            )
            conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


class LmdbWriter:
    def __init__(self, path: str, durability: str, opts: dict, create: bool = True):
        durable = durability == "fsync"
        # "os": sync=False, metasync=False - commits reach the page cache (write()
        # of the pages, or stores into the shared map with writemap) but are not
        # flushed: equal to mmwal "os".  "fsync": sync=True, metasync=True, the
        # durable default (data pages and meta page flushed per commit).
        # lock=True: the multi-process cases open the env in every process.
        self.env = lmdb.open(
            os.path.join(path, "lmdb"),
            map_size=LMDB_MAP_SIZE,
            sync=durable,
            metasync=durable,
            writemap=bool(opts.get("writemap")),
            lock=True,
            max_dbs=0,
            readahead=False,
        )

    def ops(self, docs: Docs, lo: int, hi: int) -> None:
        begin, packb = self.env.begin, msgpack.packb
        ids, contents, metas, vecs = docs.ids, docs.contents, docs.metadatas, docs.vecs
        for i in range(lo, hi):
            txn = begin(write=True)
            try:
                txn.put(ids[i].encode(), packb([contents[i], metas[i], vecs[i].tobytes()]))
            except BaseException:
                txn.abort()
                raise
            txn.commit()

    def batches(self, batches: list[Batch]) -> None:
        begin, packb = self.env.begin, msgpack.packb
        for b in batches:
            txn = begin(write=True)
            try:
                txn.cursor().putmulti(
                    [
                        (k.encode(), packb([c, m, v.tobytes()]))
                        for k, c, m, v in zip(b.ids, b.contents, b.metadatas, b.vecs, strict=True)
                    ]
                )
            except BaseException:
                txn.abort()
                raise
            txn.commit()

    def close(self) -> None:
        self.env.close()


class MmwalWriter:
    """The public API only."""

    def __init__(self, path: str, durability: str, opts: dict, create: bool = True):
        self.store = mmwal.Store(os.path.join(path, "store"), dim=DIM, durability=durability)

    def ops(self, docs: Docs, lo: int, hi: int) -> None:
        add = self.store.add
        ids, contents, metas, vecs = docs.ids, docs.contents, docs.metadatas, docs.vecs
        for i in range(lo, hi):
            add(ids[i], vecs[i], content=contents[i], metadata=metas[i])

    def batches(self, batches: list[Batch]) -> None:
        add_many = self.store.add_many
        for b in batches:
            add_many(b.ids, b.vecs, contents=b.contents, metadatas=b.metadatas)

    def close(self) -> None:
        self.store.close()


@dataclass(frozen=True)
class Contender:
    name: str
    kind: str  # raw | sqlite | lmdb | mmwal
    opts: dict = field(default_factory=dict)


WRITERS: dict[str, Callable[..., Any]] = {
    "raw": RawWriter,
    "raw-built": BuiltRawWriter,
    "sqlite": SqliteWriter,
    "lmdb": LmdbWriter,
    "mmwal": MmwalWriter,
}


def precreate(c: Contender, path: str, durability: str) -> None:
    """Create the store in the parent so the timed children only open it."""
    if c.kind in ("raw", "raw-built"):
        return
    WRITERS[c.kind](path, durability, c.opts, create=True).close()


# ====================================================================== runs
@dataclass
class Case:
    key: str
    title: str
    unit: str
    durability: str
    procs: int
    mode: str  # "ops" | "batch"
    per_proc: int  # ops (or docs) per process per round
    contenders: list[Contender]


class RunError(RuntimeError):
    pass


def _drop_dir(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class SingleInputs:
    """Everything a single-process case needs, built before any timing."""

    docs: Docs
    n: int  # documents a per-op run writes (docs[0:n])
    frames: list[bytes]  # raw: one frame per document
    batches: list[Batch]  # case b: the add_many batches
    batch_frames: list[bytes]  # case b, raw-batched: one frame per batch

    @classmethod
    def build(cls, case: Case, batch_size: int, seed: int) -> SingleInputs:
        docs = make_docs(0, case.per_proc, seed=seed)
        batch = case.mode == "batch"
        return cls(
            docs=docs,
            n=len(docs),
            frames=raw_doc_frames(docs),
            batches=make_batches(docs, batch_size) if batch else [],
            batch_frames=[
                raw_batch_frame(docs, lo, lo + batch_size) for lo in range(0, len(docs), batch_size)
            ]
            if batch
            else [],
        )

    def prefix(self, n_docs: int, batch_size: int) -> SingleInputs:
        """A shorter view for warm-up runs (shares the inputs)."""
        nb = max(1, n_docs // batch_size) if self.batches else 0
        return SingleInputs(
            self.docs, n_docs, self.frames[:n_docs], self.batches[:nb], self.batch_frames[:nb]
        )


def run_single(
    case: Case, c: Contender, path: str, inp: SingleInputs, batch_size: int
) -> tuple[float, int]:
    w = WRITERS[c.kind](path, case.durability, c.opts, create=True)
    try:
        if c.kind == "raw":
            work = inp.batch_frames if c.opts.get("batched") else inp.frames
            n = (len(work) * batch_size) if c.opts.get("batched") else len(work)
            gc.collect()
            t0 = time.perf_counter()
            w.frames(work)
            t1 = time.perf_counter()
        elif case.mode == "batch":
            n = sum(len(b.ids) for b in inp.batches)
            gc.collect()
            t0 = time.perf_counter()
            w.batches(inp.batches)
            t1 = time.perf_counter()
        else:
            n = inp.n
            gc.collect()
            t0 = time.perf_counter()
            w.ops(inp.docs, 0, n)
            t1 = time.perf_counter()
    finally:
        w.close()
    return t1 - t0, n


def _child(
    c: Contender,
    path: str,
    durability: str,
    rank: int,
    start: int,
    n: int,
    seed: int,
    barrier: Any,
    results: Any,
) -> None:
    """One writer process of a multi-process case."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent's handler is not ours
    try:
        docs = make_docs(start, n, seed=seed)
        frames = raw_doc_frames(docs) if c.kind == "raw" else None
        w = WRITERS[c.kind](path, durability, c.opts, create=False)
        try:
            gc.collect()
            barrier.wait(timeout=BARRIER_TIMEOUT)
            t0 = time.perf_counter()
            if frames is not None:
                w.frames(frames)
            else:
                w.ops(docs, 0, n)
            t1 = time.perf_counter()
        finally:
            w.close()
        results.put((rank, t0, t1, n, None))
    except BaseException:
        try:
            barrier.abort()
        except Exception:
            pass
        results.put((rank, None, None, 0, traceback.format_exc()))


def _reap(procs: list[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        if p.pid is None:
            continue
        p.join(timeout=max(0.1, deadline - time.monotonic()))
    for p in procs:
        if p.pid is not None and p.is_alive():
            p.terminate()
            p.join(timeout=5)
        if p.pid is not None and p.is_alive():
            p.kill()
            p.join(timeout=5)


def run_multi(
    case: Case, c: Contender, path: str, seed: int, ctx: Any, run_timeout: float
) -> tuple[float, int]:
    precreate(c, path, case.durability)
    barrier = ctx.Barrier(case.procs + 1)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_child,
            name=f"bench-{c.name}-{r}",
            daemon=True,
            args=(
                c,
                path,
                case.durability,
                r,
                r * case.per_proc,
                case.per_proc,
                seed,
                barrier,
                results,
            ),
        )
        for r in range(case.procs)
    ]
    got: list[tuple] = []
    ok = False
    try:
        for p in procs:
            p.start()
        t_start = None
        try:
            barrier.wait(timeout=BARRIER_TIMEOUT)
            t_start = time.perf_counter()
        except threading.BrokenBarrierError:
            pass
        deadline = time.monotonic() + run_timeout
        while len(got) < case.procs:
            try:
                got.append(results.get(timeout=0.5))
                continue
            except Exception:  # queue.Empty
                pass
            if time.monotonic() > deadline:
                raise RunError(f"{c.name}: timed out after {run_timeout:.0f} s")
            dead = [p for p in procs if p.exitcode is not None]
            if len(dead) == len(procs) and results.empty():
                # everyone exited; give the feeder threads' last items a moment
                try:
                    got.append(results.get(timeout=2.0))
                    continue
                except Exception:
                    raise RunError(
                        f"{c.name}: children exited without reporting "
                        f"(exit codes {[p.exitcode for p in procs]})"
                    ) from None
        errors = [e for *_, e in got if e]
        if errors:
            raise RunError(f"{c.name}: a writer process failed:\n{errors[0]}")
        starts = [t0 for _, t0, _, _, _ in got]
        if t_start is not None:
            starts.append(t_start)
        ok = True
        return max(t1 for _, _, t1, _, _ in got) - min(starts), sum(n for *_, n, _ in got)
    finally:
        # children have reported (they only close and exit now); on failure or
        # timeout do not wait long before terminating them
        _reap(procs, timeout=30.0 if ok else 2.0)
        results.close()
        results.cancel_join_thread()


def count_written(c: Contender, path: str) -> int:
    """Documents actually stored by a finished run (--verify; untimed)."""
    if c.kind in ("raw", "raw-built"):
        n = 0
        with open(os.path.join(path, "raw.log"), "rb") as f:
            data = f.read()
        off = 0
        while off < len(data):
            length, crc = RAW_HEADER.unpack_from(data, off)
            payload = data[off + RAW_HEADER.size : off + RAW_HEADER.size + length]
            if len(payload) != length or zlib.crc32(payload) != crc:
                raise RunError(f"raw: bad frame at offset {off}")
            first = msgpack.unpackb(payload)[0]
            n += len(first) if isinstance(first, list) else 1
            off += RAW_HEADER.size + length
        return n
    if c.kind == "sqlite":
        conn = sqlite3.connect(os.path.join(path, "docs.sqlite"))
        try:
            return conn.execute("SELECT count(*) FROM docs").fetchone()[0]
        finally:
            conn.close()
    if c.kind == "lmdb":
        env = lmdb.open(
            os.path.join(path, "lmdb"), map_size=LMDB_MAP_SIZE, readonly=True, lock=False
        )
        try:
            return env.stat()["entries"]
        finally:
            env.close()
    store = os.path.join(path, "store")
    if hasattr(mmwal, "Reader"):
        with mmwal.Reader(store) as r:
            return len(r)
    return len({op.id for op in mmwal.replay(store) if op.kind == "add"})


# ====================================================================== driver
def build_cases(a: argparse.Namespace) -> list[Case]:
    raw = Contender("raw", "raw")
    built = Contender("raw-built", "raw-built")
    sqlite_ = Contender("sqlite", "sqlite", {"sqlite_os_sync": a.sqlite_os_sync})
    lm = Contender("lmdb", "lmdb")
    lm_wm = Contender("lmdb-wm", "lmdb", {"writemap": True})
    mm = Contender("mmwal", "mmwal")
    os_peers = [raw, built, sqlite_, lm, lm_wm, mm]
    fs_peers = [raw, built, sqlite_, lm, mm] + ([lm_wm] if a.fsync_writemap else [])
    n = a.procs
    cases = [
        Case(
            "a", 'per-op add, durability "os", 1 process', "ops/s", "os", 1, "ops", a.ops, os_peers
        ),
        Case(
            "b",
            f'add_many of {a.batch_size} docs, "os", 1 process',
            "docs/s",
            "os",
            1,
            "batch",
            a.batches * a.batch_size,
            [raw, Contender("raw-batched", "raw", {"batched": True}), built, sqlite_, lm, lm_wm,
             mm],
        ),
        Case("c", f'per-op add, "os", {n} processes', "ops/s", "os", n, "ops", a.mp_ops, os_peers),
        Case(
            "d1",
            'per-op add, "fsync", 1 process',
            "ops/s",
            "fsync",
            1,
            "ops",
            a.fsync_ops,
            fs_peers,
        ),
        Case(
            f"d{n}",
            f'per-op add, "fsync", {n} processes',
            "ops/s",
            "fsync",
            n,
            "ops",
            a.fsync_ops,
            fs_peers,
        ),
    ]
    want = set(a.cases.split(",")) if a.cases else None
    if want:
        cases = [c for c in cases if c.key in want or c.key[0] in want]
    only = set(a.contenders.split(",")) if a.contenders else None
    for case in cases:
        keep = []
        for c in case.contenders:
            if only and c.name not in only:
                continue
            if c.kind == "mmwal" and mmwal is None:
                continue
            if c.kind == "lmdb" and lmdb is None:
                continue
            keep.append(c)
        case.contenders = keep
    return cases


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_case(case: Case, a: argparse.Namespace, base: str, ctx: Any) -> dict:
    _log(
        f"== case {case.key}: {case.title} ({case.per_proc} per process x {case.procs}, "
        f"{a.rounds} rounds)"
    )
    inp = SingleInputs.build(case, a.batch_size, a.seed) if case.procs == 1 else None
    res: dict[str, dict] = {
        c.name: {"rates": [], "seconds": [], "count": None} for c in case.contenders
    }

    def one(c: Contender, warm: bool) -> tuple[float, int]:
        path = tempfile.mkdtemp(prefix=f"{case.key}-{c.name}-", dir=base)
        try:
            if a.sync_between:
                os.sync()  # start every run without other runs' dirty pages
            if case.procs == 1:
                use = inp
                if warm:
                    use = inp.prefix(
                        max(a.batch_size if case.mode == "batch" else 1, case.per_proc // 10),
                        a.batch_size,
                    )
                secs, n = run_single(case, c, path, use, a.batch_size)
            else:
                secs, n = run_multi(case, c, path, a.seed, ctx, a.run_timeout)
            if a.verify:
                found = count_written(c, path)
                if found != n:
                    raise RunError(f"{case.key}/{c.name}: wrote {n} docs, found {found}")
            return secs, n
        finally:
            _drop_dir(path)

    if a.warmup and case.procs == 1:
        for c in case.contenders:
            one(c, warm=True)
    k = len(case.contenders)
    for r in range(a.rounds):
        order = case.contenders[r % k :] + case.contenders[: r % k] if k else []
        for c in order:
            secs, n = one(c, warm=False)
            rate = n / secs
            res[c.name]["rates"].append(rate)
            res[c.name]["seconds"].append(secs)
            res[c.name]["count"] = n
            _log(
                f"   round {r + 1}/{a.rounds} {c.name:<12} {n:>7} in {secs:7.3f} s "
                f"= {rate:>10,.0f} {case.unit}"
            )
    out: dict[str, Any] = {
        "title": case.title,
        "unit": case.unit,
        "durability": case.durability,
        "processes": case.procs,
        "per_process": case.per_proc,
        "contenders": {},
    }
    for name, r in res.items():
        if r["rates"]:
            s = summarize(r["rates"])
            s["seconds"] = r["seconds"]
            s["count_per_round"] = r["count"]
            out["contenders"][name] = s
    return out


def mmwal_info() -> dict[str, Any]:
    """Which mmwal was measured: version, location, a digest of its sources."""
    import hashlib

    pkg = Path(mmwal.__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(pkg.rglob("*.py")):
        h.update(f.relative_to(pkg).as_posix().encode() + b"\0" + f.read_bytes())
    try:
        where = os.path.relpath(pkg)
    except ValueError:
        where = str(pkg)
    return {
        "version": getattr(mmwal, "__version__", "?"),
        "path": where,
        "sources_sha256": h.hexdigest(),
    }


def _ref(meds: dict[str, float], kind: str) -> tuple[str | None, float | None]:
    if kind == "lmdb":
        cands = [(n, meds[n]) for n in ("lmdb", "lmdb-wm") if n in meds]
        return max(cands, key=lambda t: t[1]) if cands else (None, None)
    return (kind, meds[kind]) if kind in meds else (None, None)


def render(results: dict, cases: list[Case]) -> tuple[str, list[dict]]:
    rows = []
    notes = []
    for case in cases:
        cr = results.get(case.key)
        if not cr:
            continue
        meds = {n: s["median"] for n, s in cr["contenders"].items()}
        refs = {k: _ref(meds, k) for k in ("raw", "lmdb", "sqlite")}
        if refs["lmdb"][0]:
            notes.append(f'{case.key}: "vs lmdb" = vs {refs["lmdb"][0]}')
        for i, (name, s) in enumerate(cr["contenders"].items()):
            cells = [
                f"{case.key}: {case.title}" if i == 0 else "",
                name,
                f"{fmt_rate(s['median'])} {case.unit}",
                f"{fmt_rate(s['min'])} – {fmt_rate(s['max'])}",
            ]
            for k in ("raw", "lmdb", "sqlite"):
                rname, rval = refs[k]
                cells.append("–" if rname in (None, name) else fmt_ratio(s["median"] / rval))
            rows.append(cells)
        if mmwal is None:
            rows.append(
                [
                    "" if rows else f"{case.key}: {case.title}",
                    "mmwal",
                    "not importable",
                    "",
                    "",
                    "",
                    "",
                ]
            )
    table = md_table(
        ["case", "contender", "median", "min – max", "vs raw", "vs lmdb", "vs sqlite"], rows
    )
    if notes:
        table += "\n\n" + "; ".join(notes) + " (the faster LMDB configuration in that case)."

    # target checks from DESIGN.md
    def med(case: str, name: str) -> float | None:
        s = results.get(case, {}).get("contenders", {}).get(name)
        return s["median"] if s else None

    def best_lmdb(case: str) -> float | None:
        vals = [v for v in (med(case, "lmdb"), med(case, "lmdb-wm")) if v]
        return max(vals) if vals else None

    nproc = next((c.procs for c in cases if c.procs > 1), 4)
    checks = []

    def check(what: str, num: float | None, den: float | None, goal: float) -> None:
        if num is None or den is None:
            return
        r = num / den
        checks.append({"what": what, "ratio": r, "goal": goal, "met": r >= goal})

    check("a: mmwal / raw", med("a", "mmwal"), med("a", "raw"), 0.6)
    check("a: mmwal / lmdb (best)", med("a", "mmwal"), best_lmdb("a"), 1.5)
    check("a: mmwal / sqlite", med("a", "mmwal"), med("a", "sqlite"), 3.5)
    check("b: mmwal / raw (one write per doc)", med("b", "mmwal"), med("b", "raw"), 0.8)
    check(
        "b: mmwal / raw-batched (one write per 1000)",
        med("b", "mmwal"),
        med("b", "raw-batched"),
        0.8,
    )
    check(f"c: mmwal / lmdb (best), {nproc} processes", med("c", "mmwal"), best_lmdb("c"), 1.5)
    check(
        f"d: mmwal fsync {nproc} processes / 1 process",
        med(f"d{nproc}", "mmwal"),
        med("d1", "mmwal"),
        1.5,
    )
    check(
        "d: mmwal fsync 1 process / raw write+fdatasync", med("d1", "mmwal"), med("d1", "raw"), 0.8
    )
    floor = [
        [f"{k}: raw-built / {ref}", fmt_ratio(med(k, "raw-built") / med(k, ref))]
        for k, ref in (("a", "raw"), ("b", "raw-batched"), ("d1", "raw"))
        if med(k, "raw-built") and med(k, ref)
    ]
    if floor:
        table += (
            "\n\nThe floor of a Python writer (raw-built: the raw frames encoded and "
            "checksummed in the timed loop, no lock, no checks) against the ceiling:\n\n"
            + md_table(["case", "ratio"], floor)
        )
    if checks:
        table += "\n\nTargets (DESIGN.md):\n\n" + md_table(
            ["target", "measured", "goal", "met"],
            [
                [c["what"], fmt_ratio(c["ratio"]), f"≥ {c['goal']}", "yes" if c["met"] else "NO"]
                for c in checks
            ],
        )

    # scaling, N processes / 1 process, for every contender
    scal = []
    for pair, label in ((("a", "c"), '"os"'), (("d1", f"d{nproc}"), '"fsync"')):
        for name in ("raw", "sqlite", "lmdb", "lmdb-wm", "mmwal"):
            one, many = med(pair[0], name), med(pair[1], name)
            if one and many:
                scal.append([f"{label} {nproc} proc / 1 proc", name, fmt_ratio(many / one)])
    if scal:
        table += "\n\nScaling:\n\n" + md_table(["what", "contender", "ratio"], scal)
    return table, checks


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="tiny counts: a smoke run of seconds")
    p.add_argument("--rounds", type=int, help="interleaved rounds per case (default 5)")
    p.add_argument("--ops", type=int, help="case a: ops per round (default 20000)")
    p.add_argument("--batches", type=int, help="case b: batches per round (default 50)")
    p.add_argument("--batch-size", type=int, default=1000, help="case b: docs per batch")
    p.add_argument("--mp-ops", type=int, help="case c: ops per process per round (default 10000)")
    p.add_argument("--fsync-ops", type=int, help="case d: ops per process per round (default 2000)")
    p.add_argument("--procs", type=int, default=4, help="writer processes in c and d")
    p.add_argument("--cases", help="comma list of cases to run: a,b,c,d (or d1,d4)")
    p.add_argument("--contenders", help="comma list: raw,raw-batched,sqlite,lmdb,lmdb-wm,mmwal")
    p.add_argument(
        "--base-dir",
        help="where the per-run temp dirs go (default: a new temp "
        "dir under the system temp dir); use the disk you care about",
    )
    p.add_argument("--json", metavar="PATH", help="write every round's numbers here")
    p.add_argument(
        "--mp-context",
        default="fork" if sys.platform == "linux" else "spawn",
        choices=("fork", "spawn", "forkserver"),
    )
    p.add_argument(
        "--sqlite-os-sync",
        default="NORMAL",
        choices=("NORMAL", "OFF"),
        help='SQLite synchronous= for the "os" cases (default NORMAL)',
    )
    p.add_argument(
        "--fsync-writemap", action="store_true", help="also run lmdb-wm in the fsync cases"
    )
    p.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="skip the untimed warm-up run of each single-process contender",
    )
    p.add_argument(
        "--no-sync-between",
        dest="sync_between",
        action="store_false",
        help="do not call os.sync() (untimed) before every run",
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="after every run (untimed) count what each contender stored",
    )
    p.add_argument("--run-timeout", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=1234)
    a = p.parse_args(argv)
    defaults = (
        dict(rounds=3, ops=2000, batches=4, mp_ops=1000, fsync_ops=100)
        if a.quick
        else dict(rounds=5, ops=20000, batches=50, mp_ops=10000, fsync_ops=2000)
    )
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.rounds < 1 or a.procs < 2:
        p.error("--rounds must be >= 1 and --procs >= 2")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    # SIGTERM -> SystemExit, so the finally blocks reap children and delete temp dirs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    base = tempfile.mkdtemp(prefix="mmwal-bench-log-", dir=a.base_dir)
    ctx = mp.get_context(a.mp_context)
    cases = build_cases(a)
    info = machine_info(base)
    info["loadavg_start"] = _loadavg()
    command = "python " + " ".join(
        shlex.quote(x)
        for x in [os.path.relpath(__file__)] + (sys.argv[1:] if argv is None else argv)
    )
    header = [
        "# mmwal log-write benchmark",
        "",
        f"- date: {info['date']}",
        f"- machine: nproc={info['nproc']} ({info['cpu']}), {info['platform']}",
        f"- python {info['python']}, numpy {info['numpy']}, msgpack {info['msgpack']}, "
        f"sqlite {info['sqlite']}, py-lmdb {info['lmdb']}",
        f"- disk: {info['filesystem'] or '?'} (base dir {base})",
        f"- load average at start: {info['loadavg_start']}",
        f"- command: `{command}`",
        f"- rounds={a.rounds} (interleaved, order rotated per round), ops={a.ops}, "
        f"batches={a.batches}x{a.batch_size}, mp_ops={a.mp_ops}/process, "
        f"fsync_ops={a.fsync_ops}/process, procs={a.procs}, mp context={a.mp_context}, "
        f"warm-up={'yes' if a.warmup else 'no'}, os.sync() between runs="
        f"{'yes' if a.sync_between else 'no'}, verify={'yes' if a.verify else 'no'}",
    ]
    if mmwal is None:
        header.append(f"- mmwal: not importable ({MMWAL_ERR}) - skipped")
    else:
        info["mmwal"] = mmwal_info()
        header.append(
            f"- mmwal {info['mmwal']['version']} from {info['mmwal']['path']} "
            f"(sources sha256 {info['mmwal']['sources_sha256'][:12]})"
        )
    if lmdb is None:
        header.append(f"- lmdb: not importable ({LMDB_ERR}) - skipped")
    print("\n".join(header), flush=True)
    if mmwal is None:
        _log(f"mmwal: not importable ({MMWAL_ERR})")
    results: dict[str, dict] = {}
    t_all = time.perf_counter()
    try:
        for case in cases:
            results[case.key] = run_case(case, a, base, ctx)
    finally:
        _drop_dir(base)  # our own mkdtemp (under --base-dir if given)
    elapsed = time.perf_counter() - t_all
    info["loadavg_end"] = _loadavg()
    table, checks = render(results, cases)
    print()
    print(table)
    print(f"\n(total benchmark time {elapsed:.0f} s; load average at end: {info['loadavg_end']})")
    if a.json:
        doc = {
            "benchmark": "bench_log",
            "command": command,
            "machine": info,
            "settings": {k: v for k, v in vars(a).items() if k != "json"},
            "mmwal_error": MMWAL_ERR,
            "cases": results,
            "targets": checks,
            "elapsed_s": elapsed,
        }
        Path(a.json).write_text(json.dumps(doc, indent=2) + "\n")
        _log(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
