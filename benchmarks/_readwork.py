"""Helpers of ``bench_read.py``: the cached stores, child processes, /proc readers.

Two roles:

* imported by ``bench_read.py`` (the parent): building and caching stores,
  copying them, starting children and always reaping them, statistics and
  Markdown;
* run as a script (``python benchmarks/_readwork.py MODE ...``): the child
  processes.  Every child does its imports first, times only what it measures
  with ``time.perf_counter`` and prints one JSON line on stdout as its last line.

Not a package: it is imported from its own directory, like ``_workload.py``.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DIM = 384
SEED = 20240611
BATCH = 10_000  # documents per add_many when building stores

_TEXT = (
    "the quarterly report shows revenue growth in all regions while operating costs "
    "remained stable and the board approved a new budget for research; hiring plans were "
    "revised after the audit found minor issues in the procurement process which the legal "
    "team reviewed before the deadline; customers asked for faster delivery and better "
    "documentation of the api "
) * 4


# ============================================================================ workload
def make_docs(
    start: int, n: int, dim: int = DIM, seed: int = SEED
) -> tuple[list[str], np.ndarray, list[str], list[dict[str, Any]]]:
    """Documents start..start+n-1: ids ``doc-{i}``, float32 vectors, ~150 B content, metadata."""
    rng = np.random.default_rng([seed, start])
    vecs = rng.standard_normal((n, dim), dtype=np.float32)
    ids = [f"doc-{i}" for i in range(start, start + n)]
    contents = []
    for i in range(start, start + n):
        off = (i * 131) % 400
        contents.append(f"Document {i}: " + _TEXT[off : off + 135])
    metas = [{"source": f"file_{i % 100}.pdf", "page": i % 50} for i in range(start, start + n)]
    return ids, vecs, contents, metas


def seg_bytes(path: str) -> int:
    """Total size of the store's wal/*.seg files."""
    wal = os.path.join(path, "wal")
    return sum(e.stat().st_size for e in os.scandir(wal) if e.name.endswith(".seg"))


def ckpt_file(path: str, name: str = "embeddings.npy") -> str:
    """Path of ``name`` in the checkpoint the store's MANIFEST names (newest dir)."""
    d = os.path.join(path, "checkpoints")
    ids = sorted(x for x in os.listdir(d) if x.isdigit())
    if not ids:
        raise FileNotFoundError(f"{path}: no checkpoint")
    return os.path.join(d, ids[-1], name)


def dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


# ============================================================================ cache
def _log(msg: str) -> None:
    print(f"[bench_read {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


log = _log


def cached_store(
    data: str, name: str, params: dict[str, Any], build: Any, rebuild: bool = False
) -> tuple[str, dict[str, Any]]:
    """The store ``data/name``, built by ``build(path) -> info`` unless a valid copy exists.

    Validity: ``data/name.built.json`` exists and records the same ``params``
    and the store's MANIFEST exists.  The marker is written only after a
    successful build, so an interrupted build is redone.
    """
    path = os.path.join(data, name)
    marker = path + ".built.json"
    if not rebuild and os.path.exists(marker) and os.path.exists(os.path.join(path, "MANIFEST")):
        try:
            with open(marker) as f:
                got = json.load(f)
            if got.get("params") == params:
                got["cached"] = True
                return path, got
        except (OSError, ValueError):
            pass
    if os.path.exists(marker):
        os.unlink(marker)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(data, exist_ok=True)
    _log(f"building {name} ...")
    t0 = time.perf_counter()
    info = build(path)
    info = {"params": params, "built": now_iso(), "build_total_s": time.perf_counter() - t0, **info}
    with open(marker + ".tmp", "w") as f:
        json.dump(info, f, indent=1)
    os.replace(marker + ".tmp", marker)
    _log(f"built {name} in {info['build_total_s']:.1f} s")
    info["cached"] = False
    return path, info


def build_docs_store(
    path: str, n: int, *, checkpoint: bool, dim: int = DIM, batch: int = BATCH,
    ann_min_rows: int = 0,
) -> dict[str, Any]:
    """n documents added with add_many in batches of ``batch``; then maybe checkpoint().

    No approximate index by default: these stores measure exact search and
    fragments (benchmarks/bench_ann.py measures the index).
    """
    import mmwal

    t_add = 0.0
    with mmwal.Store(path, dim=dim, durability="os",
                     config=mmwal.Config(ann_min_rows=ann_min_rows)) as s:
        for start in range(0, n, batch):
            k = min(batch, n - start)
            ids, vecs, contents, metas = make_docs(start, k, dim)
            t0 = time.perf_counter()
            s.add_many(ids, vecs, contents, metas)
            t_add += time.perf_counter() - t0
        out: dict[str, Any] = {
            "n": n,
            "add_s": t_add,
            "add_docs_per_s": n / t_add,
            "segment_bytes": seg_bytes(path),
        }
        if checkpoint:
            t0 = time.perf_counter()
            info = s.checkpoint()
            dt = time.perf_counter() - t0
            out.update(
                checkpoint_s=dt,
                checkpoint_docs_per_s=n / dt,
                documents=info.documents,
                embeddings_bytes=os.path.getsize(ckpt_file(path)),
                checkpoint_bytes=dir_bytes(os.path.join(path, "checkpoints")),
            )
    return out


def build_single_store(path: str, n: int, dim: int = DIM) -> dict[str, Any]:
    """n single-document ``add`` records (no checkpoint)."""
    import mmwal

    t_add = 0.0
    with mmwal.Store(path, dim=dim, durability="os") as s:
        add = s.add
        for start in range(0, n, BATCH):
            k = min(BATCH, n - start)
            ids, vecs, contents, metas = make_docs(start, k, dim)
            t0 = time.perf_counter()
            for i in range(k):
                add(ids[i], vecs[i], contents[i], metas[i])
            t_add += time.perf_counter() - t0
    return {"n": n, "add_s": t_add, "add_docs_per_s": n / t_add, "segment_bytes": seg_bytes(path)}


def build_batched_store(path: str, records: int, per: int, dim: int = DIM) -> dict[str, Any]:
    """``records`` add_many records of ``per`` documents each (no checkpoint)."""
    import mmwal

    t_add = 0.0
    with mmwal.Store(path, dim=dim, durability="os") as s:
        for r in range(records):
            ids, vecs, contents, metas = make_docs(r * per, per, dim)
            t0 = time.perf_counter()
            s.add_many(ids, vecs, contents, metas)
            t_add += time.perf_counter() - t0
    n = records * per
    return {
        "n": n,
        "records": records,
        "add_s": t_add,
        "add_docs_per_s": n / t_add,
        "segment_bytes": seg_bytes(path),
    }


def copy_store(src: str, dst: str) -> None:
    """Copy a store; checkpoint files (immutable) are hard-linked, everything else copied.

    A checkpoint never modifies the files of an existing checkpoint (it writes
    a new directory and, at retirement, unlinks old ones - which only drops
    the link), so linking them is safe and instant; segments, tail, MANIFEST
    and locks are real copies.
    """
    ck = os.path.join(src, "checkpoints") + os.sep
    copy_linking(src, dst, lambda s: s.startswith(ck) and "/.tmp-" not in s)


def copy_linking(src: str, dst: str, immutable: Callable[[str], bool]) -> None:
    """``shutil.copytree`` that hard-links the files ``immutable(path)`` accepts
    (a copy when linking fails) and copies the rest."""
    def copy(s: str, d: str) -> None:
        if immutable(s):
            try:
                os.link(s, d)
                return
            except OSError:
                pass
        shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=copy)


def release_children(procs: list[subprocess.Popen[Any]], timeout: float = 30) -> None:
    """Let waiting child processes go (a line on their stdin, then EOF) and reap them."""
    for p in procs:
        try:
            if p.stdin:
                p.stdin.write("\n")
                p.stdin.close()
        except OSError:
            pass
    for p in procs:
        reap(p, timeout=timeout)


# ============================================================================ children
_children: list[subprocess.Popen[Any]] = []


def _reap_all() -> None:
    for p in list(_children):
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        if p in _children:
            _children.remove(p)


atexit.register(_reap_all)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP raise SystemExit so every ``finally`` (and atexit) reaps children."""

    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


def spawn(mode: str, *args: Any, stdin: Any = subprocess.DEVNULL) -> subprocess.Popen[str]:
    """Start ``python _readwork.py mode args...``; registered for reaping."""
    p = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "_readwork.py"), mode, *map(str, args)],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _children.append(p)
    return p


def reap(p: subprocess.Popen[Any], timeout: float = 10) -> None:
    try:
        if p.poll() is None:
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    finally:
        if p in _children:
            _children.remove(p)


def run_child(mode: str, *args: Any, timeout: float = 3600) -> dict[str, Any]:
    """Run a child to completion; return its JSON line.  Killed and reaped on any error."""
    p = spawn(mode, *args)
    try:
        out, err = p.communicate(timeout=timeout)
    except BaseException:
        p.kill()
        p.wait()
        raise
    finally:
        reap(p)
    if p.returncode != 0:
        raise RuntimeError(f"child {mode} {args} exited {p.returncode}:\n{err}")
    return parse_json_line(out, mode, err)


def parse_json_line(out: str, mode: str, err: str = "") -> dict[str, Any]:
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)  # type: ignore[no-any-return]
    raise RuntimeError(f"child {mode} printed no JSON line:\n{out}\n{err}")


# ============================================================================ /proc
def smaps_rollup(pid: int) -> dict[str, int]:
    """Fields of /proc/PID/smaps_rollup in KiB (Rss, Pss, ...)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[0].endswith(":") and parts[-1] == "kB":
                out[parts[0][:-1]] = int(parts[1])
    return out


def smaps_of_file(pid: int, suffix: str) -> dict[str, int]:
    """Rss/Pss (KiB) summed over the mappings of /proc/PID/smaps whose path ends with suffix."""
    tot = {"Rss": 0, "Pss": 0, "Size": 0}
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if not first.endswith(":"):  # a mapping header line
                inside = line.rstrip("\n").endswith(suffix)
                continue
            if inside and first[:-1] in tot:
                tot[first[:-1]] += int(line.split()[1])
    return tot


# ============================================================================ stats
def summarize(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": list(values),
    }


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def fmt_n(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


def parse_n(s: str) -> int:
    s = s.strip().lower().replace("_", "")
    mult = 1
    if s.endswith("k"):
        mult, s = 1000, s[:-1]
    elif s.endswith("m"):
        mult, s = 1_000_000, s[:-1]
    return int(float(s) * mult)


def fmt_ms(s: float) -> str:
    ms = s * 1000
    if ms >= 100:
        return f"{ms:,.0f} ms"
    if ms >= 10:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


def fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:,.0f}k"
    return f"{x:,.0f}"


def fmt_mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


# ============================================================================ machine
def machine_info(data_dir: str) -> dict[str, Any]:
    import mmwal

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    fs = ""
    try:
        real = os.path.realpath(
            data_dir if os.path.exists(data_dir) else os.path.dirname(data_dir.rstrip("/")) or "/"
        )
        best: tuple[str, str, str] | None = None
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and (
                    best is None or len(mnt) > len(best[1])
                ):
                    best = (dev, mnt, fstype)
        if best:
            fs = f"{best[2]} on {best[0]} ({best[1]})"
    except OSError:
        pass
    commit = ""
    try:
        commit = subprocess.run(
            ["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", HERE, "status", "--porcelain", "--", "../mmwal"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        if dirty:
            commit += " (mmwal/ modified)"
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "date": now_iso(),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu,
        "mem_total_gib": round(mem / 2**30, 1) if mem else None,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "mmwal": mmwal.__version__,
        "commit": commit,
        "loadavg_start": os.getloadavg(),
        "data_dir": data_dir,
        "filesystem": fs,
        "blas_threads_env": {
            k: os.environ[k]
            for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            if k in os.environ
        },
    }


# ============================================================================ child side
def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def child_open(path: str) -> None:
    """Time Reader(path) + embeddings.shape + one row, after the imports."""
    t0 = time.perf_counter()
    import mmwal

    t_import = time.perf_counter() - t0
    pc = time.perf_counter
    t0 = pc()
    r = mmwal.Reader(path)
    e = r.embeddings
    shape = e.shape
    row = np.array(e[shape[0] // 2])  # copies the row: its page is faulted in
    t1 = pc()
    n = len(r)
    ok = bool(np.isfinite(row).all())
    r.close()
    _emit({"seconds": t1 - t0, "import_s": t_import, "n": n, "shape": list(shape), "ok": ok})


def child_pss_reader(path: str) -> None:
    """Open a Reader, touch every page of the embeddings, report, sleep until stdin closes."""
    import mmwal

    r = mmwal.Reader(path)
    e = r.embeddings
    t0 = time.perf_counter()
    total = float(np.asarray(e).sum())
    _emit(
        {
            "pid": os.getpid(),
            "n": len(r),
            "sum": total,
            "touch_s": time.perf_counter() - t0,
            "memmap": isinstance(e, np.memmap),
        }
    )
    sys.stdin.readline()  # the parent writes a line (or dies: EOF) to let us go
    r.close()


def child_replay(path: str, repeats: str) -> None:
    """Time Reader(path) (replays the whole log), iterating mmwal.replay(path), and the
    same with ``fields=("id", "embedding")`` (documents left undecoded)."""
    import gc

    import mmwal

    reps = int(repeats)
    opens, replays, projected = [], [], []
    n_reader = n_ops = n_proj = 0
    for i in range(reps + 1):  # the first round is the unmeasured warm-up
        gc.collect()
        t0 = time.perf_counter()
        r = mmwal.Reader(path)
        t1 = time.perf_counter()
        n_reader = len(r)
        r.close()
        del r
        gc.collect()
        t2 = time.perf_counter()
        n_ops = sum(1 for _ in mmwal.replay(path))
        t3 = time.perf_counter()
        gc.collect()
        t4 = time.perf_counter()
        n_proj = sum(1 for _ in mmwal.replay(path, fields=("id", "embedding")))
        t5 = time.perf_counter()
        if i:
            opens.append(t1 - t0)
            replays.append(t3 - t2)
            projected.append(t5 - t4)
    _emit({"open_s": opens, "replay_s": replays, "replay_ids_s": projected, "n_reader": n_reader,
           "n_ops": n_ops, "n_proj": n_proj})


def child_checkpoint(path: str) -> None:
    """Open the Store, then time checkpoint(); peak RSS around it.

    Peak RSS is read two ways (KiB):

    * ``VmHWM`` of /proc/self/status, reset to the current RSS
      (``echo 5 > /proc/self/clear_refs``, Linux >= 4.0) right after opening the
      Store: the peak of *this* process during the checkpoint;
    * ``ru_maxrss`` (getrusage RUSAGE_SELF) before and after - but on Linux it
      survives execve: exec records the RSS of the mm it replaces (the parent's,
      which subprocess vforks from) in signal->maxrss, so it starts at the
      parent's RSS and growth below that level is invisible in it.
    """
    import resource

    import mmwal

    s = mmwal.Store(path, durability="os")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    st0 = _status()
    hwm_reset = _reset_hwm()
    st1 = _status()
    t0 = time.perf_counter()
    info = s.checkpoint()
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    st2 = _status()
    s.close()
    _emit(
        {
            "seconds": dt,
            "documents": info.documents,
            "base_maxrss_kib": base,
            "peak_maxrss_kib": peak,
            "rss_before_kib": st1["VmRSS"],
            "hwm_open_kib": st0["VmHWM"],
            "hwm_reset": hwm_reset,
            "hwm_after_kib": st2["VmHWM"] if hwm_reset else max(st2["VmHWM"], st1["VmRSS"]),
            "rss_after_kib": st2["VmRSS"],
            "rss_file_after_kib": st2.get("RssFile"),
            "rss_anon_after_kib": st2.get("RssAnon"),
        }
    )


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_search(path: str, nq: str, batch: str, batch_reps: str, k: str) -> None:
    """mmwal Reader.search on the mapped checkpoint vs numpy on the same matrix in RAM."""
    import mmwal

    nq_, m, reps, kk = int(nq), int(batch), int(batch_reps), int(k)
    emb_path = ckpt_file(path)
    rng = np.random.default_rng([SEED, 777])
    warm = 3
    Qs = rng.standard_normal((warm + nq_, DIM), dtype=np.float32)
    QB = rng.standard_normal((reps + 1, m, DIM), dtype=np.float32)
    pc = time.perf_counter

    r = mmwal.Reader(path)
    assert isinstance(r.embeddings, np.memmap), "expected a zero-copy mapped checkpoint"
    float(np.asarray(r.embeddings).sum())  # fault every page in (warm mapping)
    mm_single, mm_batch, mm_hits = [], [], []
    for i, q in enumerate(Qs):
        t0 = pc()
        hits = r.search(q, k=kk, metric="cosine")
        dt = pc() - t0
        if i >= warm:
            mm_single.append(dt)
            mm_hits.append([h.id for h in hits])
    mm_bhits = []
    for i, Q in enumerate(QB):
        t0 = pc()
        hits = r.search(Q, k=kk, metric="cosine")
        dt = pc() - t0
        if i:
            mm_batch.append(dt)
            mm_bhits.append([[h.id for h in hl] for hl in hits])
    n = len(r)
    r.close()
    del r

    # Baseline: the same matrix fully in RAM, norms precomputed.
    t0 = pc()
    M = np.load(emb_path)  # a plain in-memory ndarray
    load_s = pc() - t0
    norms = np.linalg.norm(M, axis=1)

    def np_single(q: np.ndarray) -> np.ndarray:
        scores = (M @ q) / (norms * np.linalg.norm(q))
        idx = np.argpartition(-scores, kk - 1)[:kk]
        return idx[np.argsort(-scores[idx], kind="stable")]

    def np_batch(Q: np.ndarray) -> list[np.ndarray]:
        S = (M @ Q.T) / (norms[:, None] * np.linalg.norm(Q, axis=1)[None, :])
        idx = np.argpartition(-S, kk - 1, axis=0)[:kk]
        out = []
        for j in range(Q.shape[0]):
            col = idx[:, j]
            out.append(col[np.argsort(-S[col, j], kind="stable")])
        return out

    np_s, np_b = [], []
    agree = agree_b = 0
    for i, q in enumerate(Qs):
        t0 = pc()
        idx = np_single(q)
        dt = pc() - t0
        if i >= warm:
            np_s.append(dt)
            agree += [f"doc-{j}" for j in idx.tolist()] == mm_hits[i - warm]
    for i, Q in enumerate(QB):
        t0 = pc()
        res = np_batch(Q)
        dt = pc() - t0
        if i:
            np_b.append(dt)
            agree_b += [[f"doc-{j}" for j in x.tolist()] for x in res] == mm_bhits[i - 1]
    _emit(
        {
            "n": n,
            "k": kk,
            "batch": m,
            "mmwal_single_s": mm_single,
            "numpy_single_s": np_s,
            "mmwal_batch_s": mm_batch,
            "numpy_batch_s": np_b,
            "np_load_s": load_s,
            "single_agree": agree,
            "single_total": nq_,
            "batch_agree": agree_b,
            "batch_total": reps,
        }
    )


CHILDREN = {
    "open": child_open,
    "pss-reader": child_pss_reader,
    "replay": child_replay,
    "checkpoint": child_checkpoint,
    "search": child_search,
}

if __name__ == "__main__":
    CHILDREN[sys.argv[1]](*sys.argv[2:])
