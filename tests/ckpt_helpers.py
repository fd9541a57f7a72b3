"""Helpers of the checkpoint / reader tests (``import ckpt_helpers``).

``conftest.py`` puts ``tests/`` on ``sys.path``, and a ``spawn`` child inherits
the parent's ``sys.path``, so every child target here is importable by name.

* Deterministic documents: ``key_vecs``/``key_vec`` (integer keys -> float32 rows,
  exact, never all-zero), ``wid``/``parse_wid`` for per-writer ids
  ``"w{n}-{i}"``, ``content_of``/``meta_of``.
* Store inspection: ``snapshot`` (every file's size, mtime and hash),
  ``manifest``, ``leftovers`` (what a finished checkpoint must have cleaned).
* Processes: ``reaped`` (always kill + join), ``child_main``/``child_result``
  (JSON result or traceback through a file), ``KillLayer`` (an I/O layer that
  SIGKILLs its own process before its Nth mutating operation).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import struct
import time
import traceback
from typing import Any

import numpy as np
from helpers import reaped  # noqa: F401 (re-exported: one child reaper for all tests)

from mmwal import _io
from mmwal._fsutil import Paths, list_segments
from mmwal._store import open_manifest

DIM = 8


# ------------------------------------------------------------------ documents
def key_vecs(keys: Any, dim: int = DIM) -> np.ndarray:
    """Rows of a deterministic float32 matrix, one per integer key.

    Integer arithmetic divided by a power of two: exact in float32, equal bit
    for bit whether computed alone or in a batch; never all-zero.
    """
    k = np.asarray(keys, dtype=np.int64).reshape(-1, 1)
    j = np.arange(dim, dtype=np.int64)[None, :]
    v = ((k * 2654435761 + j * 40503 + 12345) % 65536) - 32768
    return v.astype(np.float32) / np.float32(4096.0)


def key_vec(key: int, dim: int = DIM) -> np.ndarray:
    return key_vecs([key], dim)[0]


def wid(writer: int, i: int) -> str:
    return f"w{writer}-{i}"


def parse_wid(s: str) -> tuple[int, int]:
    w, i = s[1:].split("-")
    return int(w), int(i)


def wkey(writer: int, i: int) -> int:
    """The integer key of writer ``writer``'s ``i``-th document (for ``key_vecs``)."""
    return writer * 10_000_000 + i


def content_of(key: int) -> str:
    return "" if key % 7 == 3 else f"content {key} \u2713"


def meta_of(key: int) -> dict[str, Any] | None:
    if key % 5 == 0:
        return None
    return {"key": key, "page": key % 50, "tags": ["t", key % 3, None, True]}


# ------------------------------------------------------------------ store inspection
def snapshot(root: str) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``: files as (size, mtime_ns, sha256), dirs as their names."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel + "/"] = ("dir", tuple(sorted(dirnames + filenames)))
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            with open(p, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.join(rel, name)] = (st.st_size, st.st_mtime_ns, digest)
    return out


def manifest(root: str) -> dict[str, Any]:
    return open_manifest(Paths(root))


def checkpoint_dirs(root: str) -> list[str]:
    return sorted(os.listdir(os.path.join(root, "checkpoints")))


def leftovers(root: str, keep: int) -> list[str]:
    """What a completed checkpoint must have cleaned up; [] when the store is tidy.

    At most ``max(keep, 1)`` version files, none newer than the current one;
    exactly the fragments and deletion vectors those versions list; no temp
    file; no segment before the replay start.
    """
    from mmwal._version import load_version, read_version

    paths = Paths(root)
    m = open_manifest(paths)
    bad: list[str] = []
    for d in (paths.checkpoints, paths.wal):
        bad += [f"temp {d}/{n}" for n in os.listdir(d)
                if n.startswith(".tmp-") or n.endswith(".tmp")]
    names = [n for n in os.listdir(paths.checkpoints) if not n.startswith(".tmp-")]
    current = m["checkpoint"]
    versions = sorted(int(n[:8]) for n in names if n.endswith(".version"))
    bad += [f"unpublished version {v}" for v in versions if v > current]
    if len(versions) > max(keep, 1):
        bad.append(f"{len(versions)} versions kept, keep_checkpoints={keep}")
    listed = [read_version(paths, m)] if current else []
    listed += [load_version(paths, v, m["dim"]) for v in versions if v < current]
    frags = {e.fid for v in listed for e in v.entries}
    dvs = {f"{e.fid:08d}-{e.dv:08d}.deleted" for v in listed for e in v.entries if e.dv}
    for n in names:
        if n.isdigit() and len(n) == 8:
            if int(n) not in frags:
                bad.append(f"unreferenced fragment {n}")
        elif n.endswith(".deleted"):
            if n not in dvs:
                bad.append(f"unreferenced deletion vector {n}")
        elif not n.endswith(".version"):
            bad.append(f"unexpected {n}")
    bad += [f"missing fragment {f}" for f in frags if f"{f:08d}" not in names]
    bad += [f"missing deletion vector {d}" for d in dvs if d not in names]
    bad += [f"segment {s} before the replay start {m['replay_segment']}"
            for s in list_segments(paths) if s < m["replay_segment"]]
    return bad


# ------------------------------------------------------------------ processes
def child_main(out_path: str, fn: Any, *args: Any) -> None:
    """Run ``fn(*args)``; write ``{"ok": result}`` or ``{"error": traceback}`` to ``out_path``.

    Exits with status 1 after an error so that the parent sees it twice.
    """
    try:
        result: Any = {"ok": fn(*args)}
        code = 0
    except BaseException:
        result = {"error": traceback.format_exc()}
        code = 1
    tmp = out_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, out_path)
    if code:
        os._exit(code)


def child_result(out_path: str) -> Any:
    if not os.path.exists(out_path):
        raise AssertionError(f"child wrote no result to {out_path}")
    with open(out_path) as f:
        result = json.load(f)
    if "error" in result:
        raise AssertionError("child process failed:\n" + result["error"])
    return result["ok"]


MUTATING_OPS = ("pwrite", "fsync", "fdatasync", "rename", "replace", "unlink", "mkdir",
                "rmdir", "ftruncate")


class KillLayer(_io.OSLayer):
    """The real OS, except that the process SIGKILLs itself before mutating op number ``n``.

    Counts every call of ``MUTATING_OPS`` (in any file) in call order; ``n=0``
    never kills (use ``count`` to learn how many ops a run makes).
    ``only`` restricts counting to some op names.
    """

    def __init__(self, n: int = 0, only: tuple[str, ...] = MUTATING_OPS) -> None:
        super().__init__()
        self.n = n
        self.count = 0
        self.trace: list[str] = []
        for name in only:
            real = getattr(self, name)
            setattr(self, name, self._wrap(name, real))

    def _wrap(self, name: str, real: Any) -> Any:
        def op(*args: Any) -> Any:
            self.count += 1
            self.trace.append(name)
            if self.count == self.n:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args)

        return op


# ------------------------------------------------------------------ concurrency children
ACK = struct.Struct("<QQ")  # (seq, i) of one acknowledged add


def read_acks(ack_path: str) -> list[tuple[int, int]]:
    with open(ack_path, "rb") as f:
        data = f.read()
    n = len(data) // ACK.size  # a writer killed mid-write leaves a partial last entry
    return [ACK.unpack_from(data, k * ACK.size) for k in range(n)]


def ack_count(ack_path: str) -> int:
    try:
        return os.path.getsize(ack_path) // ACK.size
    except FileNotFoundError:
        return 0


def should_stop(stop_path: str, parent: int, deadline: float) -> bool:
    """Stop when told to, when the parent died (never loop on as an orphan), or at a deadline."""
    return (os.path.exists(stop_path) or os.getppid() != parent
            or time.monotonic() > deadline)


def writer_child(path: str, writer: int, ack_path: str, stop_path: str, max_docs: int,
                 segment_bytes: int, parent: int) -> int:
    """Per-op adds of ``w{writer}-{i}`` for i = 0, 1, ...; each ack is logged after it returns."""
    import mmwal

    fd = os.open(ack_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    cfg = mmwal.Config(segment_bytes=segment_bytes)
    deadline = time.monotonic() + 100
    try:
        with mmwal.Store(path, durability="os", config=cfg) as store:
            i = 0
            while i < max_docs and not (i % 16 == 0 and should_stop(stop_path, parent, deadline)):
                key = wkey(writer, i)
                seq = store.add(wid(writer, i), key_vec(key), content=content_of(key),
                                metadata=meta_of(key))
                os.write(fd, ACK.pack(seq, i))
                i += 1
                if i % 4 == 0:
                    time.sleep(0.002)  # pacing only: let checkpoints interleave
            return i
    finally:
        os.close(fd)


def check_prefix_view(r: Any, writers: int) -> list[int]:
    """Assert the Reader shows, per writer, exactly its first k docs with exact data."""
    ids = list(r.ids)
    assert len(ids) == len(r) == len(set(ids)), "duplicate or miscounted ids"
    parsed = np.array([parse_wid(s) for s in ids], dtype=np.int64).reshape(-1, 2)
    counts = []
    for w in range(writers):
        mine = np.sort(parsed[parsed[:, 0] == w, 1])
        assert np.array_equal(mine, np.arange(len(mine))), \
            f"writer {w}: visible docs are not a prefix: {mine[:10]}..."
        counts.append(len(mine))
    assert sum(counts) == len(ids), "documents of an unknown writer"
    emb = r.embeddings
    keys = parsed[:, 0] * 10_000_000 + parsed[:, 1]
    assert np.array_equal(emb, key_vecs(keys, emb.shape[1])), "a vector is not its seeded value"
    return counts


def reader_child(path: str, writers: int, stop_path: str, sample_path: str,
                 parent: int) -> dict[str, Any]:
    """Refresh in a loop; on every refresh check the prefix property; log (seq, counts)."""
    import mmwal

    deadline = time.monotonic() + 100
    samples: list[list[int]] = []
    ckpts: set[int] = set()
    with mmwal.Reader(path) as r:
        last = -1
        stopping = False
        while True:
            # read before the refresh: the last one then sees everything
            stopping = should_stop(stop_path, parent, deadline)
            r.refresh()
            assert r.seq >= last, f"seq went back from {last} to {r.seq}"
            last = r.seq
            counts = check_prefix_view(r, writers)
            ckpts.add(r.checkpoint_id)
            samples.append([r.seq, *counts])
            if len(samples) == 1:
                with open(sample_path + ".ready", "w"):
                    pass
            for w, k in enumerate(counts):  # the newest document of each writer, in full
                if k:
                    key = wkey(w, k - 1)
                    d = r[wid(w, k - 1)]
                    assert (d.content, d.metadata) == (content_of(key), meta_of(key))
            if stopping:
                break
            time.sleep(0.002)  # leave the writers some CPU
    with open(sample_path, "w") as f:
        json.dump(samples, f)
    return {"refreshes": len(samples), "checkpoints": sorted(ckpts)}


def touch_everything(r: Any) -> float:
    """Read every mapped byte a Reader exposes: the matrix, every id and document."""
    emb = r.embeddings
    total = float(np.sum(emb, dtype=np.float64))
    ids = list(r.ids)
    keys = [int(s[1:]) for s in ids]
    assert np.array_equal(emb, key_vecs(keys, emb.shape[1])), "wrong vectors"
    for s, key in zip(ids, keys):
        d = r[s]
        assert d.content == content_of(key) and d.metadata == meta_of(key), s
    if ids:
        r.search(emb[0], k=5)
        r.search(emb[-1], k=5, metric="l2")
    return total


def toucher_loop(path: str, stop_path: str, parent: int) -> dict[str, int]:
    """Refresh and touch every page until told to stop; old arrays stay valid meanwhile.

    ``parent``: the pid whose death ends the loop (for a thread: its own ppid).
    """
    import mmwal

    deadline = time.monotonic() + 100
    loops = 0
    ckpts: set[int] = set()
    with mmwal.Reader(path) as r:
        while True:
            stopping = should_stop(stop_path, parent, deadline)
            old = r.embeddings
            old_sum = float(np.sum(old, dtype=np.float64))
            r.refresh()  # may move to a checkpoint whose predecessor is being unlinked
            ckpts.add(r.checkpoint_id)
            touch_everything(r)
            # the previous matrix (maybe of an unlinked file) still reads the same
            assert float(np.sum(old, dtype=np.float64)) == old_sum
            loops += 1
            if stopping:
                break
            time.sleep(0.002)  # leave the writer some CPU
    return {"loops": loops, "checkpoints": len(ckpts)}


# ------------------------------------------------------------------ kill children
def checkpoint_child(path: str, kill_at: int, cfg_kwargs: dict[str, Any],
                     ready_fd: int = -1) -> dict[str, Any]:
    """Run one checkpoint with a ``KillLayer(kill_at)`` installed (0: never kill).

    Writes one byte to ``ready_fd`` right before the checkpoint starts.
    """
    import mmwal

    layer = KillLayer(kill_at)
    _io.set_layer(layer)  # before the Store binds it
    try:
        with mmwal.Store(path, config=mmwal.Config(**cfg_kwargs)) as store:
            opened = layer.count
            if ready_fd >= 0:
                os.write(ready_fd, b"r")
            info = store.checkpoint()
    finally:
        _io.set_layer(None)
    return {"count": layer.count, "opened": opened, "trace": layer.trace,
            "info": [info.id, info.seq, info.documents]}
