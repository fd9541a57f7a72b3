"""Where the time of the hot paths goes: per-op add, add_many(1000), replay, Reader open.

Not a benchmark against peers (that is ``bench_log.py``): this script times one
path at a time and breaks it down, so that a change to the hot paths can be
judged by where the microseconds went.

    python benchmarks/profile_hot_paths.py                 # every path: timings + cProfile
    python benchmarks/profile_hot_paths.py --path add      # one path
    python benchmarks/profile_hot_paths.py --path add --no-profile   # plain loop (for py-spy)
    python benchmarks/profile_hot_paths.py --tracemalloc   # bytes allocated per call
    py-spy record -o add.svg --format flamegraph -- \\
        python benchmarks/profile_hot_paths.py --path add --no-profile

Paths: ``add`` (Store.add, durability "os", one process), ``add_many``
(Store.add_many of 1000 documents), ``replay-single`` / ``replay-batched``
(``mmwal.replay`` over a tail of single-document records / of 1000-document
records, no checkpoint), ``replay-ids-single`` / ``replay-ids-batched`` (the same with
``fields=("id", "embedding")``), ``reader-single`` / ``reader-batched`` (``mmwal.Reader``
open over the same tails), ``crc`` (zlib.crc32 throughput, for the replay path),
``breakdown`` (CPU time of each step of one ``Store.add``, timed alone).
Inputs are the standard workload of ``_workload.py``, built before any timing.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _workload import DIM, make_docs  # noqa: E402

import mmwal  # noqa: E402

PATHS = ("add", "add_many", "replay-single", "replay-batched", "replay-ids-single",
         "replay-ids-batched", "reader-single", "reader-batched", "crc", "breakdown")


def _store(base: str, name: str) -> mmwal.Store:
    return mmwal.Store(os.path.join(base, name), dim=DIM, durability="os")


def build_tail(base: str, name: str, n: int, batch: int) -> str:
    """A store whose whole state is a log tail of ``n`` documents in records of ``batch``."""
    d = make_docs(0, n)
    path = os.path.join(base, name)
    with mmwal.Store(path, dim=DIM, durability="os") as s:
        if batch == 1:
            for i in range(n):
                s.add(d.ids[i], d.vecs[i], d.contents[i], d.metadatas[i])
        else:
            for i in range(0, n, batch):
                s.add_many(d.ids[i:i + batch], d.vecs[i:i + batch], d.contents[i:i + batch],
                           d.metadatas[i:i + batch])
    return path


def log_bytes(path: str) -> int:
    wal = os.path.join(path, "wal")
    return sum(os.path.getsize(os.path.join(wal, f)) for f in os.listdir(wal))


def workload(which: str, base: str, n: int) -> tuple[Callable[[], Any], int, str]:
    """(run, units, unit name): ``run()`` does the timed work once over ``units`` units."""
    if which == "add":
        d = make_docs(0, n)
        s = _store(base, "add")
        ids, vecs, contents, metas = d.ids, list(d.vecs), d.contents, d.metadatas

        def run() -> None:
            add = s.add
            for i in range(n):
                add(ids[i], vecs[i], contents[i], metas[i])
        return run, n, "call"
    if which == "add_many":
        batches = max(1, n // 1000)
        d = make_docs(0, batches * 1000)
        s = _store(base, "add_many")
        parts = [(d.ids[i:i + 1000], d.vecs[i:i + 1000], d.contents[i:i + 1000],
                  d.metadatas[i:i + 1000]) for i in range(0, batches * 1000, 1000)]

        def run() -> None:
            for p in parts:
                s.add_many(*p)
        return run, batches, "batch of 1000"
    if which == "crc":
        buf = np.random.default_rng(1).bytes(64 << 20)

        def run() -> None:
            zlib.crc32(buf)
        return run, 64, "MiB"
    single = which.endswith("single")
    path = os.path.join(base, "tail-single" if single else "tail-batched")
    if not os.path.exists(path):
        build_tail(base, os.path.basename(path), n, 1 if single else 1000)
    units = n if single else max(1, n // 1000)
    unit = "record" if single else "record of 1000"
    if which.startswith("replay-ids"):
        def run_ids() -> None:
            for _op in mmwal.replay(path, fields=("id", "embedding")):
                pass
        return run_ids, units, unit
    if which.startswith("replay"):
        def run() -> None:
            for _op in mmwal.replay(path):
                pass
        return run, units, unit

    def run_reader() -> None:
        with mmwal.Reader(path) as r:
            r.embeddings  # noqa: B018 - open is complete when the arrays exist
    return run_reader, units, unit


def breakdown(base: str, reps: int) -> None:
    """CPU time of each step of one ``Store.add``, each step timed alone in a loop.

    The steps run outside their context (warm caches, no lock contention), so
    they add up to a little less than the whole call; the difference is the
    glue between them.
    """
    from mmwal import _format as F
    from mmwal import _validate as V

    d = make_docs(0, 16)
    s = _store(base, "breakdown")
    v, c, m = d.vecs[0], d.contents[0], d.metadatas[0]
    log = s._log
    fd = os.open(os.path.join(base, "pwrite-probe"), os.O_RDWR | os.O_CREAT, 0o644)
    frame_bytes = bytes(1736)
    end = [0]

    def pwrite() -> None:
        os.pwrite(fd, frame_bytes, end[0])
        end[0] += len(frame_bytes)

    def lock_pair() -> None:
        log.lock.acquire_exclusive()
        log.lock.release()

    gate = s._gate_lock

    def gate_pair() -> None:
        with gate:
            pass
        with gate:
            pass

    steps: list[tuple[str, Callable[[], Any]]] = [
        ("whole Store.add (standard document)", lambda: s.add("doc-1", v, c, m)),
        ("call gate (two acquisitions of its lock)", gate_pair),
        ("id check (as_id)", lambda: V.as_id("doc-1")),
        ("vector check (as_vectors: dtype, shape, finite, norm)",
         lambda: V.as_vectors(v, DIM, None, "embedding")),
        ("metadata check (normalize_metadata)", lambda: V.normalize_metadata(m)),
        ("pack of [ts, dim, ids, contents, metas, vector bytes]",
         lambda: F.pack([1.0, DIM, ["doc-1"], [c], [m], v.tobytes()])),
    ]
    if hasattr(F, "add_frame"):
        frame, n = F.add_frame(1.0, DIM, ["doc-1"], [c], [m], v)
        steps += [
            ("frame built (add_frame)", lambda: F.add_frame(1.0, DIM, ["doc-1"], [c], [m], v)),
            ("header + CRC sealed (seal_frame)",
             lambda: F.seal_frame(frame, 1, 5, 1, n, 7)),
            ("Appender.append_frame (lock .. publish)",
             lambda: log.append_frame(1, 1, frame, n)),
        ]
    else:
        payload = F.pack([1.0, DIM, ["doc-1"], [c], [m], v.tobytes()])
        steps += [
            ("encode_frame (header, CRC, join)",
             lambda: F.encode_frame(1, 5, 1, payload, 7)),
            ("Appender.append (lock .. publish)", lambda: log.append(1, 1, payload)),
        ]
    tail = F.Tail(1, 2, 3, 0, 1, 2)
    steps += [
        ("  append lock: acquire + release (thread lock, 2 flock)", lock_pair),
        ("  os.pwrite of 1.7 KB, appending", pwrite),
        ("  zlib.crc32 of 1.7 KB", lambda: zlib.crc32(frame_bytes)),
        ("  tail record encoded (encode_tail)", lambda: F.encode_tail(log.boot, tail)),
        ("  tail record written to the shared map (88 B)",
         lambda: log._tail.__setitem__(slice(0, 88), log._raw)),
    ]
    print("\n## breakdown of Store.add (CPU time, us per call, median of 5 loops)")
    for label, fn in steps:
        per = []
        for _ in range(5):
            c0 = time.process_time()
            for _ in range(reps):
                fn()
            per.append((time.process_time() - c0) / reps * 1e6)
        per.sort()
        print(f"  {per[2]:7.2f}  {label}")
    os.close(fd)
    s.close()


def report_profile(prof: cProfile.Profile, units: int, unit: str, top: int) -> None:
    st = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, ct, nc, f"{os.path.basename(file)}:{line}({func})"))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    print(f"  cProfile (profiler overhead included): {total / units * 1e6:.1f} us per {unit}")
    print(f"  {'self us/' + unit:>16} {'cum us/' + unit:>16} {'calls/' + unit:>14}  function")
    for tt, ct, nc, name in rows[:top]:
        print(f"  {tt / units * 1e6:16.2f} {ct / units * 1e6:16.2f} {nc / units:14.2f}  {name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", choices=PATHS, action="append",
                   help="the path(s) to run (default: all)")
    p.add_argument("-n", type=int, default=20000, help="documents per path (default 20000)")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions (median reported)")
    p.add_argument("--no-profile", action="store_true", help="only the plain timed loop")
    p.add_argument("--tracemalloc", action="store_true",
                   help="also count bytes allocated per unit (peak and total blocks)")
    p.add_argument("--top", type=int, default=18)
    p.add_argument("--base-dir", default=None)
    a = p.parse_args()
    base = tempfile.mkdtemp(prefix="mmwal-prof-", dir=a.base_dir)
    print(f"# mmwal hot paths, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, "
          f"mmwal from {os.path.dirname(mmwal.__file__)}")
    try:
        for which in a.path or PATHS:
            if which == "breakdown":
                breakdown(base, a.n)
                continue
            times: list[float] = []
            cpu: list[float] = []  # CPU time (user + system): steadier on a loaded machine
            for r in range(a.repeat):
                sub = os.path.join(base, f"{which}-{r}")
                os.makedirs(sub)
                if which.startswith(("replay", "reader")):
                    sub = base  # the tail is built once and read each time
                run, units, unit = workload(which, sub, a.n)
                c0, t0 = time.process_time(), time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
            times.sort()
            cpu.sort()
            med = times[len(times) // 2]
            extra = ""
            if which.startswith(("replay", "reader")):
                single = which.endswith("single")
                nbytes = log_bytes(os.path.join(base, "tail-single" if single else "tail-batched"))
                extra = f", {nbytes / med / 1e9:.3f} GB/s of log, {a.n / med:,.0f} docs/s"
            elif which == "crc":
                extra = f", {64 * 2**20 / med / 1e9:.2f} GB/s"
            print(f"\n## {which}: median {med / units * 1e6:.2f} us per {unit} "
                  f"({units / med:,.0f} {unit}s/s; min {times[0] / units * 1e6:.2f}, "
                  f"max {times[-1] / units * 1e6:.2f}){extra}")
            print(f"  CPU time: median {cpu[len(cpu) // 2] / units * 1e6:.2f} us per {unit} "
                  f"(min {cpu[0] / units * 1e6:.2f}, max {cpu[-1] / units * 1e6:.2f})")
            if a.tracemalloc:
                # Peak of traced memory above the start while the path runs over
                # few units: for the write paths, the transient copies of one call.
                sub = os.path.join(base, f"{which}-tm")
                os.makedirs(sub)
                small = 2000
                run, units, unit = workload(which, base if which.startswith(
                    ("replay", "reader")) else sub, a.n if which.startswith(
                    ("replay", "reader")) else small)
                tracemalloc.start()
                start = tracemalloc.get_traced_memory()[0]
                run()
                peak = tracemalloc.get_traced_memory()[1] - start
                tracemalloc.stop()
                print(f"  tracemalloc: peak {peak / 1024:.1f} KiB above the start of the run "
                      f"({units} {unit}s)")
            if not a.no_profile and which != "crc":
                sub = os.path.join(base, f"{which}-prof")
                os.makedirs(sub)
                run, units, unit = workload(which, base if which.startswith(
                    ("replay", "reader")) else sub, a.n)
                prof = cProfile.Profile()
                prof.enable()
                run()
                prof.disable()
                report_profile(prof, units, unit, a.top)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
