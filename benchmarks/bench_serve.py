#!/usr/bin/env python
"""Serving benchmark: ``mmwal serve`` under HTTP load while writers append, side by side
with the same service over LanceDB.

Usage::

    python benchmarks/bench_serve.py                    # default: 100k docs, 60 s per phase
    python benchmarks/bench_serve.py --quick            # smoke run: 5k docs, 10 s per phase
    python benchmarks/bench_serve.py --json out.json --md out.md --backends mmwal

Everything runs on this host over loopback.  For each backend (``mmwal``, ``lancedb``)
and each ingestion mode (``paced``: 2 writers at --paced-rate docs/s in total;
``full``: 2 writers appending as fast as they can, each capped at --full-max-docs):

1. a fresh copy of the base store of N documents (standard workload: 384-dim seeded
   float32 vectors, ~150-byte contents, metadata {"source": "file_{i%100}.pdf",
   "page": i%50}) is built;
2. the service starts on a free port with --workers worker processes: ``mmwal serve
   --workers 4 --refresh-every 1``, or ``uvicorn _serve_lance_app:app --workers 4``
   (LanceDB, read_consistency_interval 1 s), both with one BLAS thread per worker
   (--blas-threads);
3. two writer processes, a checkpointer process (``Store.checkpoint()`` or LanceDB
   ``Table.optimize()`` every --checkpoint-every s) and, after --warmup s, the load
   generator start: locust headless (``_serve_locustfile.py``, closed-loop users, 4
   ``POST /search`` with a random vector and k=10 for 1 ``GET /documents/{id}``);
4. meanwhile a probe writer in this process adds a document with a unique vector and
   polls ``POST /search`` until it is the top hit (freshness: acknowledged write ->
   visible), --probes times; a monitor thread polls ``GET /stats`` (worker pids) and
   sums Pss of the worker processes (/proc/PID/smaps_rollup) every --sample-every s;
5. locust's CSV gives requests/s, p50/p99 latency and failures; the server log is
   scanned for uvicorn lines about dead, killed or restarted workers.

Every process started is killed and reaped (process groups, SIGTERM then SIGKILL) in
``finally``, also on Ctrl-C and SIGTERM.  Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
DIM = 384
BACKENDS = ("mmwal", "lancedb")
MODES = ("idle", "paced", "full")
DEFAULT_MODES = ("paced", "full")
LANCE_TABLE = "docs"
# uvicorn's supervisor logs these when a worker dies, is killed or is replaced.
RESTART_RE = re.compile(r"died|not responding|kill|restart|failed to start|not ready in time",
                        re.IGNORECASE)


# ============================================================================ workload
def _content(i: int) -> str:
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import _workload

    return _workload.content_for(i)


def _metadata(i: int) -> dict[str, Any]:
    return {"source": f"file_{i % 100}.pdf", "page": i % 50}


def _batch(rng: Any, prefix: str, lo: int, hi: int) -> tuple[list[str], Any, list[str], list[dict]]:
    import numpy as np

    vecs = np.ascontiguousarray(rng.standard_normal((hi - lo, DIM), dtype=np.float32))
    ids = [f"{prefix}{i}" for i in range(lo, hi)]
    return ids, vecs, [_content(i) for i in range(lo, hi)], [_metadata(i) for i in range(lo, hi)]


def _lance_rows(ids: list[str], vecs: Any, contents: list[str], metas: list[dict]) -> Any:
    import pyarrow as pa

    flat = pa.array(vecs.reshape(-1), type=pa.float32())
    return pa.table({
        "id": pa.array(ids, type=pa.string()),
        "content": pa.array(contents, type=pa.string()),
        "source": pa.array([m["source"] for m in metas], type=pa.string()),
        "page": pa.array([m["page"] for m in metas], type=pa.int32()),
        "vector": pa.FixedSizeListArray.from_arrays(flat, DIM),
    })


def _open_lance(path: str) -> Any:
    import lancedb

    return lancedb.connect(path).open_table(LANCE_TABLE)


def build_store(backend: str, path: str, n: int, seed: int = 1234) -> dict[str, Any]:
    """Build the base store of ``n`` documents ``doc-0 .. doc-{n-1}`` at ``path``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    step = 10_000
    if backend == "mmwal":
        import mmwal

        with mmwal.Store(path, dim=DIM, durability="os") as st:
            for lo in range(0, n, step):
                ids, vecs, contents, metas = _batch(rng, "doc-", lo, min(n, lo + step))
                st.add_many(ids, vecs, contents, metas)
            st.checkpoint()
    else:
        import lancedb

        db = lancedb.connect(path)
        tbl = None
        for lo in range(0, n, step):
            rows = _lance_rows(*_batch(rng, "doc-", lo, min(n, lo + step)))
            if tbl is None:
                tbl = db.create_table(LANCE_TABLE, rows)
            else:
                tbl.add(rows)
        assert tbl is not None
        import warnings

        with warnings.catch_warnings():  # deprecated in favour of create_index(config=BTree())
            warnings.simplefilter("ignore")
            tbl.create_scalar_index("id")
        tbl.optimize()
    return {"backend": backend, "docs": n, "seconds": time.perf_counter() - t0}


def embeddings_file_bytes(backend: str, path: str) -> int | None:
    """Size of the newest checkpoint's embeddings.npy (mmwal); None for LanceDB."""
    if backend != "mmwal":
        return None
    ck = os.path.join(path, "checkpoints")
    names = sorted(d for d in os.listdir(ck) if d.isdigit()) if os.path.isdir(ck) else []
    for name in reversed(names):
        with contextlib.suppress(OSError):
            return os.path.getsize(os.path.join(ck, name, "embeddings.npy"))
    return None


# ============================================================================ child roles
class _Stop:
    def __init__(self) -> None:
        self.flag = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, *_: Any) -> None:
        self.flag = True


def role_writer(a: argparse.Namespace) -> int:
    """Append batches until the deadline, the cap or SIGTERM; print one JSON line."""
    import numpy as np

    stop = _Stop()
    rng = np.random.default_rng(a.seed)
    batch = a.batch if a.rate == 0 else max(1, min(a.batch, int(a.rate // 20) or 1))
    if a.backend == "mmwal":
        import mmwal

        store = mmwal.Store(a.path, durability="os")
        add = lambda ids, vecs, contents, metas: store.add_many(ids, vecs, contents, metas)  # noqa: E731
        close = store.close
    else:
        tbl = _open_lance(a.path)
        add = lambda *b: tbl.add(_lance_rows(*b))  # noqa: E731
        close = lambda: None  # noqa: E731
    t0 = time.monotonic()
    deadline = t0 + a.duration
    done = errors = 0
    next_t = t0
    try:
        while not stop.flag and done < a.max_docs and time.monotonic() < deadline:
            hi = min(a.max_docs, done + batch)
            try:
                add(*_batch(rng, a.prefix, done, hi))
                done = hi
            except Exception as exc:  # counted and reported, the run goes on
                errors += 1
                print(f"writer error: {exc!r}", file=sys.stderr)
                if errors > 100:
                    break
            if a.rate > 0:
                next_t += batch / a.rate
                delay = next_t - time.monotonic()
                if delay > 0:
                    time.sleep(min(delay, 1.0))
    finally:
        close()
    secs = time.monotonic() - t0
    print(json.dumps({"docs": done, "seconds": secs, "errors": errors,
                      "capped": done >= a.max_docs}), flush=True)
    return 0


def role_checkpointer(a: argparse.Namespace) -> int:
    """Checkpoint (mmwal) or optimize (LanceDB) every ``a.every`` s until the deadline."""
    stop = _Stop()
    if a.backend == "mmwal":
        import mmwal

        store = mmwal.Store(a.path, durability="os")
        step, close = store.checkpoint, store.close
    else:
        tbl = _open_lance(a.path)
        step, close = tbl.optimize, (lambda: None)
    deadline = time.monotonic() + a.duration
    times: list[float] = []
    errors = 0
    try:
        while not stop.flag and time.monotonic() < deadline and len(times) + errors < 10_000:
            end = time.monotonic() + a.every
            while not stop.flag and time.monotonic() < min(end, deadline):
                time.sleep(0.1)
            if stop.flag or time.monotonic() >= deadline:
                break
            t = time.perf_counter()
            try:
                step()
                times.append(time.perf_counter() - t)
            except Exception as exc:
                errors += 1
                print(f"checkpointer error: {exc!r}", file=sys.stderr)
    finally:
        close()
    print(json.dumps({"runs": len(times), "errors": errors,
                      "max_seconds": max(times, default=None),
                      "median_seconds": statistics.median(times) if times else None}), flush=True)
    return 0


# ============================================================================ processes
class Procs:
    """Child processes, each the leader of its own process group, killed and reaped on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.files: list[Any] = []

    def start(self, argv: list[str], log: str, env: dict[str, str] | None = None,
              stdout: str | None = None) -> subprocess.Popen[bytes]:
        err = open(log, "ab")  # noqa: SIM115 - closed in close()
        self.files.append(err)
        out: Any = subprocess.DEVNULL
        if stdout is not None:
            out = open(stdout, "wb")  # noqa: SIM115
            self.files.append(out)
        p = subprocess.Popen(argv, stdout=out, stderr=err, env=env, start_new_session=True,
                             cwd=HERE)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
        """SIGTERM the group, wait up to ``timeout``, then SIGKILL it; reap."""
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # The leader may be gone while workers of its group linger: kill the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(10)
        return p.returncode

    def close(self) -> None:
        for p in reversed(self.procs):
            self.stop(p, timeout=5.0)
        self.procs.clear()
        for f in self.files:
            with contextlib.suppress(OSError):
                f.close()
        self.files.clear()


def _role_argv(role: str, **kw: Any) -> list[str]:
    argv = [sys.executable, os.path.abspath(__file__), "_role", role]
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(port: int, method: str, path: str, body: Any = None,
              timeout: float = 10.0) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, None
    finally:
        conn.close()


def wait_healthy(port: int, proc: subprocess.Popen[bytes], workers: int, timeout: float) -> int:
    """Wait until /healthz answers, then (best effort, same deadline) until ``workers``
    distinct worker pids have answered it; return how many did."""
    deadline = time.monotonic() + timeout
    pids: set[int] = set()
    while time.monotonic() < deadline and len(pids) < workers:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} while starting")
        with contextlib.suppress(OSError, http.client.HTTPException, TypeError, KeyError):
            status, body = http_json(port, "GET", "/healthz", timeout=2.0)
            if status == 200:
                pids.add(int(body["pid"]))
        time.sleep(0.05 if pids else 0.2)
    if not pids:
        raise RuntimeError(f"the server did not answer /healthz within {timeout:.0f} s")
    return len(pids)


def worker_pids(server_pid: int) -> list[int]:
    """Pids of the server's worker processes: its direct children but multiprocessing's
    resource tracker (a worker's own short-lived children are not workers)."""
    import psutil

    try:
        kids = psutil.Process(server_pid).children(recursive=False)
    except psutil.Error:
        return []
    out = []
    for k in kids:
        with contextlib.suppress(psutil.Error):
            # multiprocessing's resource tracker is no worker (a spawned worker's own
            # command line mentions "tracker_fd", hence the full name here).
            if "resource_tracker" not in " ".join(k.cmdline()):
                out.append(k.pid)
    return out


def pss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# ============================================================================ one phase
class Monitor(threading.Thread):
    """Polls /stats (pids, documents) and the workers' Pss until stopped."""

    def __init__(self, port: int, server_pid: int, every: float, deadline: float) -> None:
        super().__init__(daemon=True)
        self.port, self.server_pid, self.every, self.deadline = port, server_pid, every, deadline
        self.stop_event = threading.Event()
        self.stats_pids: set[int] = set()
        self.proc_pids: set[int] = set()
        self.samples: list[dict[str, Any]] = []
        self.stats_errors = 0

    def run(self) -> None:
        next_pss = 0.0
        n = 0
        while not self.stop_event.is_set() and time.monotonic() < self.deadline and n < 100_000:
            n += 1
            docs = None
            try:
                status, body = http_json(self.port, "GET", "/stats", timeout=10.0)
                if status == 200 and isinstance(body, dict):
                    self.stats_pids.add(int(body["pid"]))
                    docs = body.get("documents")
                else:
                    self.stats_errors += 1
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                self.stats_errors += 1
            pids = worker_pids(self.server_pid)
            self.proc_pids.update(pids)
            if time.monotonic() >= next_pss:
                next_pss = time.monotonic() + self.every
                pss = [pss_bytes(p) for p in pids]
                self.samples.append({"t": time.time(), "workers": len(pids), "documents": docs,
                                     "pss_bytes": sum(x for x in pss if x is not None)})
            self.stop_event.wait(0.3)


class Prober(threading.Thread):
    """Adds a document with a unique vector, polls /search until it is the top hit."""

    def __init__(self, backend: str, path: str, port: int, n: int, spacing: float,
                 timeout: float, tag: str) -> None:
        super().__init__(daemon=True)
        self.backend, self.path, self.port = backend, path, port
        self.n, self.spacing, self.timeout, self.tag = n, spacing, timeout, tag
        self.stop_event = threading.Event()
        self.latencies: list[float] = []
        self.missed = 0
        self.unfinished = 0
        self.made = 0
        self.error: str | None = None

    def run(self) -> None:
        import numpy as np

        rng = np.random.default_rng(987)
        store: Any = None
        try:
            if self.backend == "mmwal":
                import mmwal

                store = mmwal.Store(self.path, durability="os")
            else:
                store = _open_lance(self.path)
            for i in range(self.n):
                if self.stop_event.wait(self.spacing):
                    break
                ids, vecs, contents, metas = _batch(rng, f"probe-{self.tag}-", i, i + 1)
                self.made += 1
                if self.backend == "mmwal":
                    store.add(ids[0], vecs[0], contents[0], metas[0])
                else:
                    store.add(_lance_rows(ids, vecs, contents, metas))
                t0 = time.monotonic()  # the write is acknowledged
                query = {"vector": [float(x) for x in vecs[0]], "k": 1}
                seen = False
                while time.monotonic() - t0 < self.timeout and not self.stop_event.is_set():
                    with contextlib.suppress(OSError, http.client.HTTPException):
                        status, body = http_json(self.port, "POST", "/search", query)
                        if status == 200 and body["hits"] and body["hits"][0]["id"] == ids[0]:
                            self.latencies.append(time.monotonic() - t0)
                            seen = True
                            break
                    time.sleep(0.01)
                if not seen and self.stop_event.is_set():
                    self.unfinished += 1  # the load window ended first: not a miss
                    self.made -= 1
                elif not seen:
                    self.missed += 1
        except Exception as exc:
            self.error = repr(exc)
        finally:
            if self.backend == "mmwal" and store is not None:
                store.close()


def read_locust_csv(prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with open(prefix + "_stats.csv", newline="") as f:
        for row in csv.DictReader(f):
            def num(key: str, row: dict[str, str] = row) -> float | None:
                v = row.get(key, "")
                return None if v in ("", "N/A") else float(v)

            out[row["Name"]] = {
                "requests": int(num("Request Count") or 0),
                "failures": int(num("Failure Count") or 0),
                "rps": num("Requests/s"),
                "p50_ms": num("50%"), "p99_ms": num("99%"), "max_ms": num("Max Response Time"),
            }
    return out


def start_server(procs: Procs, backend: str, path: str, port: int, a: argparse.Namespace,
                 log: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    if a.blas_threads != "inherit":
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(a.blas_threads)
    if backend == "mmwal":
        argv = [sys.executable, "-m", "mmwal", "serve", path, "--port", str(port),
                "--workers", str(a.workers), "--refresh-every", str(a.refresh_every)]
    else:
        env.update(BENCH_LANCE_PATH=path, BENCH_LANCE_REFRESH=str(a.refresh_every))
        argv = [sys.executable, "-m", "uvicorn", "_serve_lance_app:app", "--app-dir", HERE,
                "--host", "127.0.0.1", "--port", str(port), "--workers", str(a.workers),
                "--no-access-log", "--log-level", "info"]
    return procs.start(argv, log, env=env)


def run_phase(backend: str, mode: str, a: argparse.Namespace, work: str) -> dict[str, Any]:
    tag = f"{backend}-{mode}"
    path = os.path.join(work, tag)
    logs = os.path.join(work, "logs")
    os.makedirs(logs, exist_ok=True)
    res: dict[str, Any] = {"backend": backend, "mode": mode}
    print(f"[{tag}] building {a.docs} documents ...", file=sys.stderr, flush=True)
    res["build"] = build_store(backend, path, a.docs)
    procs = Procs()
    monitor: Monitor | None = None
    prober: Prober | None = None
    try:
        port = free_port()
        server_log = os.path.join(logs, f"{tag}.server.log")
        server = start_server(procs, backend, path, port, a, server_log)
        t_start = time.monotonic()
        res["workers_ready"] = wait_healthy(port, server, a.workers, a.start_timeout)
        res["server_start_seconds"] = time.monotonic() - t_start
        # The probe spacing and the load window decide how long the helpers run.
        window = a.warmup + a.run_time + 30
        rate_each = a.paced_rate / 2 if mode == "paced" else 0
        n_writers = 0 if mode == "idle" else 2
        writers = [
            procs.start(_role_argv("writer", backend=backend, path=path, prefix=f"w{j}-",
                                   rate=rate_each, batch=a.full_batch, max_docs=a.full_max_docs
                                   if mode == "full" else 10**9, duration=window, seed=100 + j),
                        os.path.join(logs, f"{tag}.writer{j}.log"),
                        stdout=os.path.join(logs, f"{tag}.writer{j}.json"))
            for j in range(n_writers)
        ]
        ckpt = None if mode == "idle" else procs.start(_role_argv("checkpointer", backend=backend, path=path,
                                      every=a.checkpoint_every, duration=window),
                           os.path.join(logs, f"{tag}.checkpointer.log"),
                           stdout=os.path.join(logs, f"{tag}.checkpointer.json"))
        monitor = Monitor(port, server.pid, a.sample_every, time.monotonic() + window + 60)
        monitor.start()
        time.sleep(a.warmup)
        # Half the window between probes, leaving the other half for the probes' own
        # waits (each bounded by --probe-timeout), so that they fit in the load window.
        spacing = a.run_time / (2 * (a.probes + 1))
        prober = Prober(backend, path, port, a.probes, spacing, a.probe_timeout, tag)
        prober.start()
        csv_prefix = os.path.join(logs, f"{tag}.locust")
        env = dict(os.environ, BENCH_DIM=str(DIM), BENCH_N=str(a.docs))
        loc = procs.start([sys.executable, "-m", "locust", "-f",
                           os.path.join(HERE, "_serve_locustfile.py"), "--headless",
                           "--host", f"http://127.0.0.1:{port}", "--users", str(a.users),
                           "--spawn-rate", str(a.users), "--run-time", f"{a.run_time}s",
                           "--csv", csv_prefix, "--only-summary", "--stop-timeout", "5",
                           "--loglevel", "WARNING"],
                          os.path.join(logs, f"{tag}.locust.log"), env=env,
                          stdout=os.path.join(logs, f"{tag}.locust.out"))
        try:
            loc.wait(a.run_time + 60)
        except subprocess.TimeoutExpired:
            res["locust_timeout"] = True
        res["locust_returncode"] = procs.stop(loc)
        prober.stop_event.set()
        prober.join(a.probe_timeout + 15)
        # Pss while the writers are still running: the last sample of the load window.
        monitor.stop_event.set()
        monitor.join(30)
        for p in [*writers, *([ckpt] if ckpt else [])]:
            procs.stop(p, timeout=a.checkpoint_every + 60)
        res["writers"] = [_read_json_line(os.path.join(logs, f"{tag}.writer{j}.json"))
                          for j in range(n_writers)]
        res["checkpointer"] = _read_json_line(os.path.join(logs, f"{tag}.checkpointer.json"))
        res["load"] = read_locust_csv(csv_prefix)
        res["server_alive_at_end"] = server.poll() is None
        res["embeddings_file_bytes"] = embeddings_file_bytes(backend, path)
    finally:
        if prober is not None:
            prober.stop_event.set()
        if monitor is not None:
            monitor.stop_event.set()
        procs.close()
    # ---------------------------------------------------------------- summarise
    agg = res["load"].get("Aggregated", {})
    res["rps"], res["p50_ms"], res["p99_ms"] = agg.get("rps"), agg.get("p50_ms"), agg.get("p99_ms")
    res["requests"], res["errors"] = agg.get("requests", 0), agg.get("failures", 0)
    with open(os.path.join(logs, f"{tag}.server.log"), errors="replace") as f:
        res["restart_log_lines"] = [ln.rstrip() for ln in f if RESTART_RE.search(ln)][:20]
    assert monitor is not None and prober is not None
    pids = monitor.stats_pids | monitor.proc_pids
    res["worker_pids_seen"] = sorted(pids)
    res["worker_pids_via_stats"] = sorted(monitor.stats_pids)
    res["worker_pids_via_proc"] = sorted(monitor.proc_pids)
    res["worker_restarts"] = max(len(pids) - a.workers, len(res["restart_log_lines"]), 0)
    res["stats_errors"] = monitor.stats_errors
    lat = sorted(prober.latencies)
    res["freshness"] = {"probes": a.probes, "made": prober.made, "seen": len(lat),
                        "missed": prober.missed,
                        "unfinished": prober.unfinished,
                        "error": prober.error, "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
                        "max_ms": lat[-1] * 1000 if lat else None}
    wrote = [w for w in res["writers"] if w]
    secs = max((w["seconds"] for w in wrote), default=0) or None
    res["ingest_docs"] = sum(w["docs"] for w in wrote)
    res["ingest_rate"] = res["ingest_docs"] / secs if secs else None
    res["writer_errors"] = sum(w["errors"] for w in wrote)
    res["writers_capped"] = any(w["capped"] for w in wrote)
    last = monitor.samples[-1] if monitor.samples else {}
    res["pss_samples"] = monitor.samples
    res["pss_bytes"] = last.get("pss_bytes")
    res["pss_max_bytes"] = max((s["pss_bytes"] for s in monitor.samples), default=None)
    docs = last.get("documents")
    res["documents_at_pss"] = docs
    res["raw_embeddings_bytes"] = docs * DIM * 4 if docs else None
    if res["pss_bytes"] and res["raw_embeddings_bytes"]:
        res["pss_ratio"] = res["pss_bytes"] / res["raw_embeddings_bytes"]
    else:
        res["pss_ratio"] = None
    emb = res["embeddings_file_bytes"]
    res["pss_file_ratio"] = res["pss_bytes"] / emb if res["pss_bytes"] and emb else None
    if not a.keep:
        shutil.rmtree(path, ignore_errors=True)
    return res


def _pct(sorted_secs: list[float], q: float) -> float | None:
    if not sorted_secs:
        return None
    i = min(len(sorted_secs) - 1, max(0, round(q / 100 * (len(sorted_secs) - 1))))
    return sorted_secs[i] * 1000


def _read_json_line(path: str) -> dict[str, Any] | None:
    with contextlib.suppress(OSError, ValueError), open(path) as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip()]
        return json.loads(lines[-1]) if lines else None
    return None


# ============================================================================ report
def _f(x: float | None, fmt: str = "{:.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def markdown(report: dict[str, Any]) -> str:
    head = ["backend", "ingestion", "ingest docs/s", "req/s", "p50 ms", "p99 ms", "errors",
            "worker pids / restarts", "fresh p50 ms", "fresh p99 ms", "probes seen/made",
            "workers' PSS MiB", "PSS / emb. file", "PSS / raw vectors"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        if "failed" in r:
            lines.append(f"| {r['backend']} | {r['mode']} | failed: {r['failed']} |")
            continue
        fr = r["freshness"]
        mode = r["mode"]
        if r["writers_capped"]:
            secs = max(w["seconds"] for w in r["writers"] if w)
            mode += f" (cap reached after {secs:.0f} s)"
        lines.append("| " + " | ".join([
            r["backend"], mode,
            _f(r["ingest_rate"]), _f(r["rps"], "{:.1f}"), _f(r["p50_ms"]), _f(r["p99_ms"]),
            str(r["errors"]), f"{len(r['worker_pids_seen'])} / {r['worker_restarts']}",
            _f(fr["p50_ms"]), _f(fr["p99_ms"]), f"{fr['seen']}/{fr['made']}",
            _f(r["pss_bytes"] and r["pss_bytes"] / 2**20),
            _f(r["pss_file_ratio"], "{:.2f} x"), _f(r["pss_ratio"], "{:.2f} x"),
        ]) + " |")
    skipped = report.get("skipped", {})
    if skipped:
        lines.append("")
        lines.extend(f"- {k} skipped: {v}" for k, v in skipped.items())
    return "\n".join(lines) + "\n"


# ============================================================================ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run (~2 min): small N, short phases")
    ap.add_argument("--docs", type=int, help="documents in the base store (default 100000)")
    ap.add_argument("--run-time", type=int, help="seconds of load per phase (default 60)")
    ap.add_argument("--users", type=int, help="locust users (default 8)")
    ap.add_argument("--probes", type=int, help="freshness probes per phase (default 20)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--refresh-every", type=float, default=1.0)
    ap.add_argument("--paced-rate", type=int, default=2000, help="docs/s of both writers together")
    ap.add_argument("--full-batch", type=int, default=256, help="docs per write at full speed")
    ap.add_argument("--full-max-docs", type=int, help="cap per full-speed writer (default 10 x N)")
    ap.add_argument("--checkpoint-every", type=float, help="seconds (default 10)")
    ap.add_argument("--warmup", type=float, help="seconds of ingestion before the load starts")
    ap.add_argument("--sample-every", type=float, default=5.0, help="seconds between Pss samples")
    ap.add_argument("--probe-timeout", type=float, default=15.0)
    ap.add_argument("--start-timeout", type=float, default=120.0)
    ap.add_argument("--blas-threads", default="1",
                    help="OPENBLAS/OMP/MKL_NUM_THREADS for the servers' workers (default 1, "
                         "as docs/deployment.md advises for as many workers as cores or "
                         "more); 'inherit' leaves the environment as it is")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--modes", default=",".join(DEFAULT_MODES),
                    help="ingestion modes, from idle (no writers, no checkpointer), paced, full")
    ap.add_argument("--work", help="working directory (default: a fresh temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the stores and logs")
    ap.add_argument("--json", help="write the full report here")
    ap.add_argument("--md", help="write the Markdown table here")
    a = ap.parse_args(argv)
    if a.blas_threads != "inherit" and not a.blas_threads.isdigit():
        ap.error(f"--blas-threads takes a number or 'inherit', got {a.blas_threads!r}")
    quick = {"docs": 5000, "run_time": 10, "users": 4, "probes": 6, "warmup": 2.0,
             "checkpoint_every": 4.0}
    full = {"docs": 100_000, "run_time": 60, "users": 8, "probes": 20, "warmup": 5.0,
            "checkpoint_every": 10.0}
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.full_max_docs is None:
        a.full_max_docs = 10 * a.docs
    a.backends = [b for b in a.backends.split(",") if b]
    a.modes = [m for m in a.modes.split(",") if m]
    for b in a.backends:
        if b not in BACKENDS:
            ap.error(f"unknown backend {b!r}: choose from {', '.join(BACKENDS)}")
    for m in a.modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r}: choose from {', '.join(MODES)}")
    return a


def parse_role(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench_serve.py _role")
    ap.add_argument("role", choices=("writer", "checkpointer"))
    ap.add_argument("--backend", required=True, choices=BACKENDS)
    ap.add_argument("--path", required=True)
    ap.add_argument("--prefix", default="w-")
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--max-docs", type=int, default=10**6)
    ap.add_argument("--duration", type=float, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--every", type=float, default=10)
    return ap.parse_args(argv)


def _raise_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_role"]:
        r = parse_role(argv[1:])
        return role_writer(r) if r.role == "writer" else role_checkpointer(r)
    a = parse_args(argv)
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import _workload

    signal.signal(signal.SIGTERM, _raise_interrupt)
    # A shell starts background jobs with SIGINT ignored; Ctrl-C must still stop the run.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    own_work = a.work is None
    work = a.work or tempfile.mkdtemp(prefix="mmwal-bench-serve-")
    os.makedirs(work, exist_ok=True)
    report: dict[str, Any] = {"machine": _workload.machine_info(work), "args": {
        k: v for k, v in vars(a).items() if not k.startswith("_")}, "results": [],
        "skipped": {"chroma": "its PersistentClient is not safe across processes, so the same "
                              "setup (4 workers + 2 writer processes + a compactor on one path) "
                              "cannot be built; a single-process server measures something else"}}
    t0 = time.monotonic()
    try:
        for backend in a.backends:
            if backend == "lancedb":
                try:
                    import lancedb  # noqa: F401
                except ImportError as exc:
                    report["skipped"]["lancedb"] = f"not installed ({exc}): pip install lancedb"
                    continue
            for mode in a.modes:
                try:
                    report["results"].append(run_phase(backend, mode, a, work))
                except (RuntimeError, OSError) as exc:
                    report["results"].append({"backend": backend, "mode": mode, "failed": str(exc)})
                print(markdown({"results": report["results"][-1:]}), file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        report["interrupted"] = True
        print("interrupted: every process was stopped", file=sys.stderr)
    finally:
        report["seconds"] = time.monotonic() - t0
        if own_work and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif a.keep:
            report["work"] = work
    md = markdown(report)
    print(md)
    if a.md:
        with open(a.md, "w") as f:
            f.write(md)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    bad = [r for r in report["results"] if "failed" in r or r.get("errors") or r.get("worker_restarts")]
    return 1 if bad or report.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
