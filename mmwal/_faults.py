"""Fault injection: simulated power loss and injected I/O errors.

Two I/O layers (see :mod:`mmwal._io`) and the campaigns that sweep them, used
by ``tests/`` and by ``mmwal stress --scenario powerloss|io-errors``.  They
ship in the package so that users can run the campaigns on their own machines.

:class:`PowerLossLayer`
    Performs every operation for real (so the library runs normally) while it
    keeps a model of what a power loss would leave, in the manner of SQLite's
    crash VFS (``test6.c``) and LevelDB's ``fault_injection_test.cc``: per file
    the content as of its last fsync plus every write since (``pwrite``,
    ``ftruncate``, and for files mapped writable, the sectors that differ); per
    directory the entries as of its last fsync plus every value each entry
    held since (creates, renames, unlinks).  Real fsyncs are skipped: the
    model, not the disk, is what must be durable.  :meth:`PowerLossLayer.capture`
    freezes the model into a :class:`CrashImage` at any moment (the layer calls
    ``on_point`` before each crash point: every fsync/fdatasync/directory fsync
    and every create/mkdir/rename/replace/unlink/rmdir), and
    :func:`crash_states` materialises an image into fresh directories, one per
    *variant* of what the disk kept (:data:`VARIANTS`).

:class:`ErrorLayer`
    The real OS, except that the Nth operation of one category (``write``,
    ``fsync``, ``rename``, ``mmap``, ``create``, ``unlink``) fails with an errno
    (EIO, ENOSPC...), once or from then on until :meth:`ErrorLayer.heal`.

:func:`run_powerloss`, :func:`run_io_errors`
    The campaigns: in-process workloads (the layer is per process) that
    include first creation, segment rolls, checkpoint publish and retirement,
    and the oracle that checks every recovered state.  Both return the report
    dict of ``mmwal stress`` (keys ``ok``, ``acknowledged``, ``lost``,
    ``phantoms``, ``duplicates``, ``kills``, ``checkpoints``, ``violations``,
    ``throughput``, ``settings``) plus ``crash_states`` or ``faults``.

``python -m mmwal._faults powerloss|io-errors [--quick] [--json PATH] [--seed N] [--dir D]``
runs one campaign standalone.
"""

from __future__ import annotations

import argparse
import contextlib
import errno as _errno
import functools
import json
import mmap
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from . import _fsutil, _io
from .errors import MmwalError, PoisonedError, StorageIOError, StoreNotFoundError

__all__ = [
    "VARIANTS",
    "CrashImage",
    "CrashState",
    "ErrorLayer",
    "PowerLossLayer",
    "SimulatedCrash",
    "crash_states",
    "run_io_errors",
    "run_powerloss",
    "simulated_reboot",
]

#: Granularity at which a power loss keeps, drops or garbles unsynced data.
SECTOR = 512

Progress = Callable[[int, int], object]

_SYNC_OPS = frozenset({"fsync", "fdatasync", "fsync_dir"})
_NAMESPACE_OPS = frozenset({"create", "mkdir", "rename", "replace", "unlink", "rmdir"})
_WRITE_OPS = frozenset({"pwrite", "ftruncate"})
_CATEGORY = {**{op: "sync" for op in _SYNC_OPS}, **{op: "namespace" for op in _NAMESPACE_OPS},
             **{op: "write" for op in _WRITE_OPS}}


class SimulatedCrash(BaseException):
    """The simulated machine lost power (raised by a PowerLossLayer at ``crash_at``).

    A BaseException, so that the library's ``except OSError`` clauses do not
    treat it as an I/O error; every later operation of the layer but ``close``
    raises it too, so that nothing runs "after the power went out".
    """


# ============================================================================ the model
class _File:
    """A file of the model: its content as of the last fsync and the writes since."""

    __slots__ = ("durable", "live", "mapfd", "pending")

    def __init__(self, content: bytes = b"") -> None:
        self.durable = content
        self.live = bytearray(content)
        # ("w", offset, data) or ("t", new size, b""), in the order they happened.
        self.pending: list[tuple[str, int, bytes]] = []
        self.mapfd: int | None = None  # a dup of a descriptor mapped writable

    def write(self, off: int, data: bytes) -> None:
        live = self.live
        if off > len(live):
            live.extend(bytes(off - len(live)))
        live[off : off + len(data)] = data
        self.pending.append(("w", off, data))

    def truncate(self, size: int) -> None:
        live = self.live
        if size < len(live):
            del live[size:]
        else:
            live.extend(bytes(size - len(live)))
        self.pending.append(("t", size, b""))

    def current(self) -> bytes:
        """The live content (read back from the file when it is mapped writable)."""
        if self.mapfd is not None:
            return _read_fd(self.mapfd)
        return bytes(self.live)

    def sync(self) -> None:
        content = self.current()
        self.durable = content
        self.live = bytearray(content)
        self.pending = []


class _Dir:
    """A directory of the model: entries as of its last fsync, and each entry's history."""

    __slots__ = ("durable", "history", "live")

    def __init__(self) -> None:
        self.live: dict[str, _Node] = {}
        self.durable: dict[str, _Node] = {}
        # name -> every value it held since the last fsync, the durable one first.
        self.history: dict[str, list[_Node | None]] = {}

    def set(self, name: str, node: _Node | None) -> None:
        hist = self.history.get(name)
        if hist is None:
            hist = self.history[name] = [self.durable.get(name)]
        if node is None:
            self.live.pop(name, None)
        else:
            self.live[name] = node
        hist.append(node)

    def adopt(self, name: str, node: _Node) -> None:
        """An entry that existed before the layer saw it: durable."""
        self.live[name] = node
        if name not in self.history:
            self.durable[name] = node

    def sync(self) -> None:
        self.durable = dict(self.live)
        self.history = {}


_Node = _File | _Dir


def _read_fd(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    out = bytearray()
    while len(out) < size:
        chunk = os.pread(fd, size - len(out), len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _read_path(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ============================================================================ images
@dataclass(frozen=True)
class FileImage:
    """A file at the moment of a crash: durable content and the unsynced writes."""

    durable: bytes
    pending: tuple[tuple[str, int, bytes], ...]
    size: int  # the live size


@dataclass(frozen=True)
class DirImage:
    """A directory at the moment of a crash."""

    durable: dict[str, NodeImage]
    live: dict[str, NodeImage]
    history: dict[str, tuple[NodeImage | None, ...]]


NodeImage = FileImage | DirImage


@dataclass(frozen=True)
class CrashImage:
    """What a power loss at one moment could leave: the input of :func:`crash_states`."""

    top: DirImage
    index: int  # the crash point: before the index-th counted operation (-1: at the end)
    op: str
    path: str  # relative to the layer's root

    def unsynced_bytes(self) -> int:
        """Bytes written since their file's last fsync (all files), for reports."""
        seen: set[int] = set()
        total = 0

        def walk(d: DirImage) -> None:
            nonlocal total
            for node in list(d.live.values()) + list(d.durable.values()):
                if id(node) in seen:
                    continue
                seen.add(id(node))
                if isinstance(node, FileImage):
                    total += sum(len(p[2]) for p in node.pending)
                else:
                    walk(node)

        walk(self.top)
        return total


# ============================================================================ the layer
class PowerLossLayer(_io.OSLayer):
    """The real OS plus a model of what is durable; captures crash images.

    Parameters
    ----------
    root
        Only files under this directory are modelled (others pass through).
        What exists there already counts as durable.
    crash_at
        If given, the crash point (0-based, counting the operations of
        ``points``) before which the layer captures :attr:`image` and raises
        :class:`SimulatedCrash`; every later operation but ``close`` raises too.
    points
        Which operation categories are crash points: ``"sync"`` (fsync,
        fdatasync, directory fsync), ``"namespace"`` (create, mkdir, rename,
        replace, unlink, rmdir), ``"write"`` (pwrite, ftruncate).
    on_point
        Called as ``on_point(index, op, path)`` before each crash point (under
        the layer's lock, in the thread doing the operation); it may call
        :meth:`capture`.
    real_sync
        Also fsync for real (off: the model is what must be durable).
    pause_before_sync
        Seconds to sleep before each file fsync, outside the layer's lock, so
        that other threads' writes land first (concurrent workloads).
    """

    def __init__(self, root: str, *, crash_at: int | None = None,
                 points: Sequence[str] = ("sync", "namespace"),
                 on_point: Callable[[int, str, str], None] | None = None,
                 real_sync: bool = False, pause_before_sync: float = 0.0) -> None:
        super().__init__()
        self.root = os.path.abspath(root)
        self.pause_before_sync = pause_before_sync
        self.crash_at = crash_at
        self.points = frozenset(points)
        self.on_point = on_point
        self.real_sync = real_sync
        self.image: CrashImage | None = None
        self.dead = False
        self.ops: list[tuple[str, str]] = []  # the crash points passed: (op, relative path)
        self._mu = threading.RLock()
        self._fds: dict[int, tuple[_Node, str]] = {}
        self._top = self._scan_dir(self.root) if os.path.isdir(self.root) else _Dir()
        real_fsync, real_fdatasync = self.fsync, self.fdatasync
        self._real_fsync = real_fsync
        self._real_fdatasync = real_fdatasync
        self.open = self._open
        self.close = self._close
        self.pwrite = self._pwrite
        self.pread = self._pread
        self.fstat = self._fstat
        self.fdatasync = self._fdatasync
        self.fsync = self._fsync
        self.replace = self._replace
        self.rename = self._rename
        self.unlink = self._unlink
        self.mkdir = self._mkdir
        self.rmdir = self._rmdir
        self.ftruncate = self._ftruncate
        self.listdir = self._listdir
        self.stat = self._stat

    # ------------------------------------------------------------------ model helpers
    def _scan_dir(self, path: str) -> _Dir:
        d = _Dir()
        for name in os.listdir(path):
            p = os.path.join(path, name)
            if os.path.isdir(p) and not os.path.islink(p):
                d.adopt(name, self._scan_dir(p))
            elif os.path.isfile(p):
                d.adopt(name, _File(_read_path(p)))
        return d

    def _rel(self, path: str) -> str:
        return os.path.relpath(os.path.abspath(path), self.root)

    def _resolve(self, path: str) -> tuple[_Dir, str] | None:
        """(parent directory node, name) of ``path``, or None when it is not modelled."""
        ap = os.path.abspath(path)
        if ap == self.root or not ap.startswith(self.root + os.sep):
            return None
        parts = ap[len(self.root) + 1 :].split(os.sep)
        d = self._top
        cur = self.root
        for part in parts[:-1]:
            cur = os.path.join(cur, part)
            node = d.live.get(part)
            if node is None:
                if not os.path.isdir(cur):
                    return None
                node = self._scan_dir(cur)  # created behind our back: take it as durable
                d.adopt(part, node)
            if not isinstance(node, _Dir):
                return None
            d = node
        return d, parts[-1]

    def _lookup(self, path: str) -> _Node | None:
        """The node at ``path``, adopting what exists on disk but is not modelled yet."""
        if os.path.abspath(path) == self.root:
            return self._top
        res = self._resolve(path)
        if res is None:
            return None
        d, name = res
        node = d.live.get(name)
        if node is None:
            if os.path.isdir(path):
                node = self._scan_dir(path)
            elif os.path.isfile(path):
                node = _File(_read_path(path))
            else:
                return None
            d.adopt(name, node)
        return node

    def _point(self, op: str, path: str) -> None:
        """Count a crash point; capture and crash there if it is ``crash_at``."""
        if self.dead:
            raise SimulatedCrash(f"the power is off ({op} {path})")
        if _CATEGORY[op] not in self.points:
            return
        n = len(self.ops)
        rel = self._rel(path)
        if self.on_point is not None:
            self.on_point(n, op, rel)
        if self.crash_at is not None and n == self.crash_at:
            self.image = self.capture(n, op, rel)
            self.dead = True
            raise SimulatedCrash(f"power lost before {op} {rel} (crash point {n})")
        self.ops.append((op, rel))

    def _alive(self) -> None:
        if self.dead:
            raise SimulatedCrash("the power is off")

    # ------------------------------------------------------------------ operations
    def _open(self, path: str, flags: int, mode: int = 0o777) -> int:
        with self._mu:
            creating = bool(flags & os.O_CREAT) and not os.path.exists(path)
            if creating:
                self._point("create", path)
            else:
                self._alive()
            fd = os.open(path, flags, mode)
            node: _Node | None
            if creating:
                res = self._resolve(path)
                node = None
                if res is not None:
                    node = _File()
                    res[0].set(res[1], node)
            else:
                node = self._lookup(path)
                if isinstance(node, _File) and flags & os.O_TRUNC:
                    node.truncate(0)
            if node is not None:
                self._fds[fd] = (node, path)
            return fd

    def _close(self, fd: int) -> None:
        with self._mu:
            self._fds.pop(fd, None)
        os.close(fd)

    def _path_of(self, fd: int) -> str:
        got = self._fds.get(fd)
        return got[1] if got is not None else f"<fd {fd}>"

    def _pwrite(self, fd: int, data: Any, offset: int) -> int:
        with self._mu:
            self._point("pwrite", self._path_of(fd))
            n = os.pwrite(fd, data, offset)
            got = self._fds.get(fd)
            if got is not None and isinstance(got[0], _File):
                got[0].write(offset, bytes(memoryview(data).cast("B")[:n]))
            return n

    def _ftruncate(self, fd: int, size: int) -> None:
        with self._mu:
            self._point("ftruncate", self._path_of(fd))
            os.ftruncate(fd, size)
            got = self._fds.get(fd)
            if got is not None and isinstance(got[0], _File):
                got[0].truncate(size)

    def _pread(self, fd: int, n: int, offset: int) -> bytes:
        self._alive()
        return os.pread(fd, n, offset)

    def _fstat(self, fd: int) -> os.stat_result:
        self._alive()
        return os.fstat(fd)

    def _stat(self, path: str) -> os.stat_result:
        self._alive()
        return os.stat(path)

    def _listdir(self, path: str) -> list[str]:
        self._alive()
        return os.listdir(path)

    def _sync_fd(self, op: str, fd: int) -> None:
        if self.pause_before_sync:
            # Let other threads write first: group commit, several frames pending.
            time.sleep(self.pause_before_sync)
        with self._mu:
            self._point(op, self._path_of(fd))
            if self.real_sync:
                (self._real_fdatasync if op == "fdatasync" else self._real_fsync)(fd)
            got = self._fds.get(fd)
            if got is not None:
                got[0].sync()

    def _fsync(self, fd: int) -> None:
        self._sync_fd("fsync", fd)

    def _fdatasync(self, fd: int) -> None:
        self._sync_fd("fdatasync", fd)

    def fsync_dir(self, path: str) -> None:
        with self._mu:
            self._point("fsync_dir", path)
            if self.real_sync:
                super().fsync_dir(path)
            node = self._lookup(path)
            if isinstance(node, _Dir):
                node.sync()

    def _move(self, op: str, src: str, dst: str, real: Callable[[str, str], None]) -> None:
        with self._mu:
            self._point(op, dst)
            node = self._lookup(src)
            rs, rd = self._resolve(src), self._resolve(dst)
            real(src, dst)
            if rs is not None:
                rs[0].set(rs[1], None)
            if rd is not None:
                rd[0].set(rd[1], node if node is not None else self._lookup(dst))

    def _rename(self, src: str, dst: str) -> None:
        self._move("rename", src, dst, os.rename)

    def _replace(self, src: str, dst: str) -> None:
        self._move("replace", src, dst, os.replace)

    def _remove(self, op: str, path: str, real: Callable[[str], None]) -> None:
        with self._mu:
            self._point(op, path)
            self._lookup(path)
            res = self._resolve(path)
            real(path)
            if res is not None:
                res[0].set(res[1], None)

    def _unlink(self, path: str) -> None:
        self._remove("unlink", path, os.unlink)

    def _rmdir(self, path: str) -> None:
        self._remove("rmdir", path, os.rmdir)

    def _mkdir(self, path: str, mode: int = 0o777) -> None:
        with self._mu:
            self._point("mkdir", path)
            os.mkdir(path, mode)
            res = self._resolve(path)
            if res is not None:
                res[0].set(res[1], _Dir())

    def mmap(self, fd: int, length: int, *, write: bool = False) -> mmap.mmap:
        with self._mu:
            self._alive()
            if write:
                got = self._fds.get(fd)
                if got is not None and isinstance(got[0], _File) and got[0].mapfd is None:
                    # Writes through the map bypass pwrite: read them back from
                    # the file (its sectors that differ) when syncing or capturing.
                    got[0].mapfd = os.dup(fd)
            return super().mmap(fd, length, write=write)

    # ------------------------------------------------------------------ images
    def capture(self, index: int = -1, op: str = "end", path: str = "") -> CrashImage:
        """Freeze what a power loss right now could leave."""
        with self._mu:
            memo: dict[int, NodeImage] = {}
            top = self._image(self._top, memo)
            assert isinstance(top, DirImage)
            return CrashImage(top, index, op, path)

    def _image(self, node: _Node, memo: dict[int, NodeImage]) -> NodeImage:
        got = memo.get(id(node))
        if got is not None:
            return got
        img: NodeImage
        if isinstance(node, _File):
            if node.mapfd is not None:
                now = node.current()
                img = FileImage(node.durable, _diff_sectors(node.durable, now), len(now))
            else:
                img = FileImage(node.durable, tuple(node.pending), len(node.live))
        else:
            # Placeholder first: a directory never contains itself, but keep the memo simple.
            durable: dict[str, NodeImage] = {}
            live: dict[str, NodeImage] = {}
            history: dict[str, tuple[NodeImage | None, ...]] = {}
            img = DirImage(durable, live, history)
            memo[id(node)] = img
            for name, child in node.durable.items():
                durable[name] = self._image(child, memo)
            for name, child in node.live.items():
                live[name] = self._image(child, memo)
            for name, hist in node.history.items():
                history[name] = tuple(None if h is None else self._image(h, memo) for h in hist)
        memo[id(node)] = img
        return img

    def release(self) -> None:
        """Close the descriptors the layer keeps for mapped files."""
        with self._mu:
            stack: list[_Node] = [self._top]
            while stack:
                node = stack.pop()
                if isinstance(node, _Dir):
                    stack.extend(node.live.values())
                    stack.extend(node.durable.values())
                    for hist in node.history.values():
                        stack.extend(h for h in hist if h is not None)
                elif node.mapfd is not None:
                    try:
                        os.close(node.mapfd)
                    except OSError:
                        pass
                    node.mapfd = None


def _diff_sectors(durable: bytes, live: bytes) -> tuple[tuple[str, int, bytes], ...]:
    out: list[tuple[str, int, bytes]] = []
    if len(live) < len(durable):
        out.append(("t", len(live), b""))
    for s in range(0, len(live), SECTOR):
        chunk = live[s : s + SECTOR]
        if chunk != durable[s : s + SECTOR]:
            out.append(("w", s, chunk))
    return tuple(out)


# ============================================================================ crash states
#: Variant -> (what happens to unsynced data, what happens to unsynced directory entries).
VARIANTS: dict[str, tuple[str, str]] = {
    "drop": ("drop", "durable"),          # the strict POSIX minimum survives
    "keep": ("keep", "live"),             # everything reached the disk (= a process kill)
    "dirs-lost": ("keep", "durable"),     # data written back, unsynced entries lost
    "data-lost": ("drop", "live"),        # entries journaled, unsynced data lost
    "subset": ("subset", "random"),       # a random subset of sectors and entries
    "garble": ("garble", "random"),       # pending sectors kept, dropped, junk or zeros
    "size-first": ("size-first", "live"),  # sizes persisted before data (zeros), RULES.md 11
    "hole": ("hole", "live"),             # early unsynced sectors lost, later ones kept
}
RANDOM_VARIANTS = frozenset({"subset", "garble", "size-first", "hole"})


@dataclass(frozen=True)
class CrashState:
    """One materialised crash state: ``root`` stands for the layer's root directory."""

    label: str
    variant: str
    root: str


def _pieces(off: int, data: bytes) -> Iterator[tuple[int, bytes]]:
    """``data`` written at ``off``, cut at sector boundaries."""
    pos = 0
    while pos < len(data):
        start = off + pos
        n = min(len(data) - pos, SECTOR - start % SECTOR)
        yield start, data[pos : pos + n]
        pos += n


def _put(buf: bytearray, off: int, data: bytes) -> None:
    if off > len(buf):
        buf.extend(bytes(off - len(buf)))
    buf[off : off + len(data)] = data


def file_content(f: FileImage, policy: str, rng: random.Random) -> bytes:
    """The content ``f`` has after a crash under ``policy`` (see :data:`VARIANTS`)."""
    if policy == "drop" or not f.pending:
        return f.durable
    buf = bytearray(f.durable)
    if policy == "keep":
        for kind, off, data in f.pending:
            if kind == "t":
                _truncate(buf, off)
            else:
                _put(buf, off, data)
        return bytes(buf)
    if policy == "hole":
        # Writeback in any order: the first unsynced sectors never made it, the
        # ones after them did (the adversarial case for telling a torn tail from
        # mid-log damage).
        pieces = [(start, piece) for kind, off, data in f.pending if kind == "w"
                  for start, piece in _pieces(off, data)]
        cut = rng.randrange(1, len(pieces)) if len(pieces) > 1 else 1
        for start, piece in pieces[cut:]:
            _put(buf, start, piece)
        return bytes(buf)
    p = rng.choice((0.2, 0.5, 0.8))
    if policy == "size-first" and f.size > len(buf):
        buf.extend(bytes(f.size - len(buf)))
    for kind, off, data in f.pending:
        if kind == "t":
            if rng.random() < p:
                _truncate(buf, off)
            continue
        for start, piece in _pieces(off, data):
            r = rng.random()
            if policy == "garble":
                # Only the bytes being written are garbled, never durable bytes
                # sharing their sector (the drive writes sectors atomically:
                # SQLite's "powersafe overwrite").
                if r < p * 0.6:
                    _put(buf, start, piece)
                elif r < p * 0.6 + 0.2:
                    _put(buf, start, rng.randbytes(len(piece)))
                elif r < p * 0.6 + 0.3:
                    _put(buf, start, bytes(len(piece)))
            elif r < p:
                _put(buf, start, piece)
    return bytes(buf)


def _truncate(buf: bytearray, size: int) -> None:
    if size < len(buf):
        del buf[size:]
    else:
        buf.extend(bytes(size - len(buf)))


def _entries(d: DirImage, policy: str, rng: random.Random) -> dict[str, NodeImage]:
    if policy == "durable":
        return d.durable
    if policy == "live":
        return d.live
    out = dict(d.durable)
    for name, hist in d.history.items():
        v = rng.choice(hist)
        if v is None:
            out.pop(name, None)
        else:
            out[name] = v
    return out


def materialise(image: CrashImage, dest: str, variant: str, rng: random.Random) -> None:
    """Write the crash state ``variant`` of ``image`` into the new directory ``dest``."""
    data_policy, dir_policy = VARIANTS[variant]
    contents: dict[int, bytes] = {}

    def write_dir(d: DirImage, path: str) -> None:
        os.mkdir(path)
        for name, node in sorted(_entries(d, dir_policy, rng).items()):
            p = os.path.join(path, name)
            if isinstance(node, DirImage):
                write_dir(node, p)
            else:
                got = contents.get(id(node))
                if got is None:
                    got = contents[id(node)] = file_content(node, data_policy, rng)
                with open(p, "wb") as f:
                    f.write(got)

    write_dir(image.top, dest)


def crash_states(image: CrashImage, dest: str, *, seed: int = 0,
                 variants: Sequence[str] = tuple(VARIANTS), repeats: int = 1,
                 keep: bool = False) -> Iterator[CrashState]:
    """Materialise the crash states of ``image`` under ``dest``, one directory each.

    Random variants (:data:`RANDOM_VARIANTS`) are drawn ``repeats`` times with
    seeds derived from ``seed``.  Unless ``keep``, each state's directory is
    deleted when the consumer asks for the next one.
    """
    rng = random.Random(seed)
    os.makedirs(dest, exist_ok=True)
    for v in variants:
        for i in range(repeats if v in RANDOM_VARIANTS else 1):
            label = f"{v}-{i}" if v in RANDOM_VARIANTS else v
            out = os.path.join(dest, label)
            if os.path.exists(out):
                shutil.rmtree(out)
            materialise(image, out, v, random.Random(rng.getrandbits(64)))
            try:
                yield CrashState(label, v, out)
            finally:
                if not keep:
                    shutil.rmtree(out, ignore_errors=True)


@contextlib.contextmanager
def simulated_reboot() -> Iterator[bytes]:
    """Pretend the machine rebooted: a new boot id for everything opened inside.

    After a real power loss the boot id changes, so the shared tail record is
    distrusted and rebuilt from the log; a crash state recovered in the same
    boot would otherwise be judged with a tail hint from "before the crash".
    """
    old = _fsutil._boot
    new = os.urandom(16)
    _fsutil._boot = new
    try:
        yield new
    finally:
        _fsutil._boot = old


# ============================================================================ I/O errors
#: Category -> the layer operations it covers.
ERROR_CATEGORIES: dict[str, tuple[str, ...]] = {
    "write": ("pwrite", "ftruncate"),
    "fsync": ("fsync", "fdatasync"),  # directory fsyncs go through fsync
    "rename": ("rename", "replace"),
    "mmap": ("mmap",),
    "create": ("create", "mkdir"),
    "unlink": ("unlink", "rmdir"),
}


@dataclass
class Fault:
    """One injected failure."""

    category: str
    op: str
    path: str
    errno: int
    nth: int


class ErrorLayer(_io.OSLayer):
    """The real OS, except that the ``nth`` operation of ``category`` fails with ``err``.

    ``persistent``: every later operation of the category fails too, until
    :meth:`heal` ("space was freed").  ``torn``: a failing pwrite first writes
    the first half of its data (what a real EIO may leave behind).  With
    ``category=None`` it only counts (:attr:`counts`, :attr:`seen`).
    """

    def __init__(self, category: str | None = None, nth: int = 1, err: int = _errno.EIO, *,
                 persistent: bool = False, torn: bool = False) -> None:
        super().__init__()
        if category is not None and category not in ERROR_CATEGORIES:
            raise ValueError(f"unknown category {category!r}; use one of {list(ERROR_CATEGORIES)}")
        self.category = category
        self.nth = nth
        self.err = err
        self.persistent = persistent
        self.torn = torn
        self.armed = category is not None
        self.counts: Counter[str] = Counter()
        self.seen: list[tuple[str, str, str]] = []  # (category, op, path) in order
        self.faults: list[Fault] = []
        self._mu = threading.Lock()
        self._paths: dict[int, str] = {}
        real = _io.OSLayer()
        self._real = real

        def open_(path: str, flags: int, mode: int = 0o777) -> int:
            if flags & os.O_CREAT and not os.path.exists(path):
                self._check("create", "create", path)
            fd = real.open(path, flags, mode)
            self._paths[fd] = path
            return fd

        def close(fd: int) -> None:
            self._paths.pop(fd, None)
            real.close(fd)

        def pwrite(fd: int, data: Any, offset: int) -> int:
            path = self._paths.get(fd, f"<fd {fd}>")
            try:
                self._check("write", "pwrite", path)
            except OSError:
                if self.torn:
                    mv = memoryview(data).cast("B")
                    real.pwrite(fd, mv[: len(mv) // 2], offset)
                raise
            return real.pwrite(fd, data, offset)

        def ftruncate(fd: int, size: int) -> None:
            self._check("write", "ftruncate", self._paths.get(fd, f"<fd {fd}>"))
            real.ftruncate(fd, size)

        def fsync(fd: int) -> None:
            self._check("fsync", "fsync", self._paths.get(fd, f"<fd {fd}>"))
            real.fsync(fd)

        def fdatasync(fd: int) -> None:
            self._check("fsync", "fdatasync", self._paths.get(fd, f"<fd {fd}>"))
            real.fdatasync(fd)

        def rename(src: str, dst: str) -> None:
            self._check("rename", "rename", dst)
            real.rename(src, dst)

        def replace(src: str, dst: str) -> None:
            self._check("rename", "replace", dst)
            real.replace(src, dst)

        def mkdir(path: str, mode: int = 0o777) -> None:
            self._check("create", "mkdir", path)
            os.mkdir(path, mode)

        def unlink(path: str) -> None:
            self._check("unlink", "unlink", path)
            real.unlink(path)

        def rmdir(path: str) -> None:
            self._check("unlink", "rmdir", path)
            real.rmdir(path)

        self.open = open_
        self.close = close
        self.pwrite = pwrite
        self.ftruncate = ftruncate
        self.fsync = fsync
        self.fdatasync = fdatasync
        self.rename = rename
        self.replace = replace
        self.mkdir = mkdir
        self.unlink = unlink
        self.rmdir = rmdir

    def _check(self, category: str, op: str, path: str) -> None:
        with self._mu:
            self.counts[category] += 1
            self.seen.append((category, op, path))
            n = self.counts[category]
            fail = (self.armed and category == self.category
                    and (n == self.nth or (self.persistent and n > self.nth)))
            if fail:
                self.faults.append(Fault(category, op, path, self.err, n))
        if fail:
            raise OSError(self.err, os.strerror(self.err), path)

    def mmap(self, fd: int, length: int, *, write: bool = False) -> mmap.mmap:
        self._check("mmap", "mmap", self._paths.get(fd, f"<fd {fd}>"))
        return super().mmap(fd, length, write=write)

    def heal(self) -> None:
        """Stop failing (the disk has space again / the device recovered)."""
        self.armed = False

    @property
    def fired(self) -> bool:
        return bool(self.faults)


# ============================================================================ workloads
DIM = 8


@functools.lru_cache(maxsize=4096)
def doc_vec(key: int, dim: int = DIM) -> np.ndarray:
    """The deterministic float32 vector of document ``key`` (exact, never all-zero; read-only)."""
    j = np.arange(dim, dtype=np.int64)
    v = ((key * 2654435761 + j * 40503 + 12345) % 65536) - 32768
    out: np.ndarray = (v.astype(np.float32) / np.float32(4096.0)).astype(np.float32)
    out.flags.writeable = False
    return out


def doc_content(key: int) -> str:
    return f"content of document {key} " * (1 + key % 4)


def doc_meta(key: int) -> dict[str, Any] | None:
    if key % 4 == 0:
        return None
    return {"key": key, "source": f"file_{key % 7}.pdf", "tags": ["t", key % 3]}


@dataclass
class WOp:
    """One step of a workload: a record (add/add_many/remove/clear) or sync/checkpoint."""

    kind: str
    keys: tuple[int, ...] = ()

    @property
    def records(self) -> int:
        if self.kind in ("add", "add_many"):
            return len(self.keys)
        return 1 if self.kind in ("remove", "clear") else 0


def build_workload(seed: int) -> list[WOp]:
    """First creation is implicit; then adds, a batch, removes, rolls, two checkpoints."""
    rng = random.Random(seed)
    ops: list[WOp] = []
    key = 0

    def adds(n: int) -> None:
        nonlocal key
        for _ in range(n):
            ops.append(WOp("add", (key,)))
            key += 1

    def batch(n: int) -> None:
        nonlocal key
        ops.append(WOp("add_many", tuple(range(key, key + n))))
        key += n

    adds(4)
    batch(6)
    ops.append(WOp("remove", (rng.randrange(key),)))
    adds(6)
    ops.append(WOp("sync"))
    batch(12)   # ~2 KB: with 4 KiB segments the log rolls around here
    adds(5)
    ops.append(WOp("checkpoint"))   # publish #1
    adds(3)
    ops.append(WOp("add", (rng.randrange(key),)))  # replace a checkpointed document
    ops.append(WOp("remove", (rng.randrange(key),)))
    batch(5)
    ops.append(WOp("sync"))
    ops.append(WOp("checkpoint"))   # publish #2, retires #1 and the folded segments
    adds(3)
    ops.append(WOp("clear"))
    adds(2)
    return ops


def model_states(ops: Sequence[WOp]) -> tuple[list[int], list[dict[str, int]]]:
    """For each prefix of the record ops: (last seq, state id -> key)."""
    seqs = [0]
    states: list[dict[str, int]] = [{}]
    state: dict[str, int] = {}
    seq = 0
    for op in ops:
        if not op.records:
            continue
        if op.kind in ("add", "add_many"):
            for k in op.keys:
                state.pop(f"doc-{k}", None)
                state[f"doc-{k}"] = k
        elif op.kind == "remove":
            state.pop(f"doc-{op.keys[0]}", None)
        else:
            state.clear()
        seq += op.records
        seqs.append(seq)
        states.append(dict(state))
    return seqs, states


def apply_op(store: Any, op: WOp) -> Any:
    """Run one workload step on ``store``."""
    if op.kind == "add":
        k = op.keys[0]
        return store.add(f"doc-{k}", doc_vec(k), content=doc_content(k), metadata=doc_meta(k))
    if op.kind == "add_many":
        ks = op.keys
        return store.add_many([f"doc-{k}" for k in ks], np.stack([doc_vec(k) for k in ks]),
                              contents=[doc_content(k) for k in ks],
                              metadatas=[doc_meta(k) for k in ks])
    if op.kind == "remove":
        return store.remove(f"doc-{op.keys[0]}")
    if op.kind == "clear":
        return store.clear()
    if op.kind == "sync":
        return store.sync()
    return store.checkpoint()


def check_reader(reader: Any, expected: dict[str, int]) -> list[str]:
    """Differences between what ``reader`` returns and the expected id -> key state."""
    bad: list[str] = []
    ids = list(reader.ids)
    if len(ids) != len(set(ids)):
        twice = sorted(k for k, c in Counter(ids).items() if c > 1)[:5]
        bad.append(f"duplicate ids in Reader.ids: {twice}")
    if set(ids) != set(expected):
        missing = sorted(set(expected) - set(ids))[:5]
        extra = sorted(set(ids) - set(expected))[:5]
        bad.append(f"ids differ: missing {missing}, unexpected {extra}")
    if len(reader) != len(expected):
        bad.append(f"len {len(reader)}, expected {len(expected)}")
    emb = np.asarray(reader.embeddings)
    if emb.shape != (len(ids), DIM):
        bad.append(f"embeddings shape {emb.shape}, {len(ids)} ids")
    for row, id_ in enumerate(ids):
        k = expected.get(id_)
        if k is None:
            continue
        doc = reader.get(id_)
        want = doc_vec(k)
        if doc is None:
            bad.append(f"{id_}: get() returned None")
        elif (doc.embedding.tobytes() != want.tobytes() or doc.content != doc_content(k)
              or doc.metadata != doc_meta(k)):
            bad.append(f"{id_}: wrong document")
        if emb.shape[0] > row and emb[row].tobytes() != want.tobytes():
            bad.append(f"{id_}: row {row} of embeddings differs")
        if len(bad) > 5:
            break
    return bad


# ============================================================================ power-loss campaign
@dataclass
class _Oracle:
    """What the workload had done when a crash point was reached."""

    created: bool = False
    started: int = 0     # record ops begun
    done: int = 0        # record ops returned
    durable: int = 0     # record ops guaranteed durable (fsync returns, sync(), checkpoint)
    inflight: str = ""

    def snap(self) -> _Oracle:
        return _Oracle(self.created, self.started, self.done, self.durable, self.inflight)


@dataclass
class _Tally:
    crash_points: int = 0
    crash_states: int = 0
    acknowledged: int = 0
    lost: int = 0
    phantoms: int = 0
    duplicates: int = 0
    checkpoints: int = 0
    strict_refusals: int = 0
    writer_refusals: int = 0
    violations: list[str] = field(default_factory=list)
    limitations: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    refusals_by_mode: Counter[str] = field(default_factory=Counter)


# A private mkdtemp directory is made inside it, never a fixed name.
_SHM = "/dev/shm"  # noqa: S108


def scratch_dir(workdir: str, fast: bool) -> str:
    """Where to materialise crash states / run fault cases: tmpfs when ``fast`` and present.

    Their own durability is irrelevant (the power loss is simulated, the I/O
    errors injected), and on a real disk the recovery's fsyncs would dominate
    the run time.
    """
    if fast and os.path.isdir(_SHM) and os.access(_SHM, os.W_OK):
        return tempfile.mkdtemp(prefix="mmwal-faults-", dir=_SHM)
    os.makedirs(workdir, exist_ok=True)
    return tempfile.mkdtemp(prefix="scratch-", dir=workdir)


#: Kinds of violation the campaigns report (the prefix of each violation string).
VIOLATION_KINDS = {
    "lost": "an acknowledged record is missing or unreadable after recovery",
    "phantom": "a record that was never attempted is present",
    "duplicate": "an id listed twice by a Reader",
    "prefix": "the recovered state is not the state after a prefix of the log",
    "torn-batch": "the recovered log ends inside an add_many batch",
    "recovery": "the strict Reader refused a state that must be clean",
    "verify": "verify() disagrees with what reads return",
    "continue": "a new writer cannot continue after recovery or after the fault",
    "error-type": "an I/O error surfaced without its type, errno or file",
    "poison": "a Store accepted a write after a failed fsync of the log",
    "crash": "an exception that is not an MmwalError",
}


def _count_kinds(violations: Sequence[str]) -> dict[str, int]:
    return dict(sorted(Counter(v.split(":", 1)[0] for v in violations).items()))


def _fmt_exc(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _run_workload(run_dir: str, durability: str, ops: Sequence[WOp], seed: int,
                  select: Callable[[int, str, str, bool], bool],
                  ) -> tuple[list[tuple[CrashImage, _Oracle]], int, list[tuple[str, str]]]:
    """Run ``ops`` under a PowerLossLayer; capture (image, oracle) at selected points."""
    from ._store import Store
    from ._types import Config

    store_path = os.path.join(run_dir, "store")
    oracle = _Oracle()
    captured: list[tuple[CrashImage, _Oracle]] = []
    layer: PowerLossLayer

    def on_point(n: int, op: str, path: str) -> None:
        if select(n, op, path, oracle.created):
            captured.append((layer.capture(n, op, path), oracle.snap()))

    layer = PowerLossLayer(run_dir, on_point=on_point)
    cfg = Config(segment_bytes=4096, keep_checkpoints=1, chunk_documents=4,
                 sync_every_records=4, sync_every_ms=50.0)
    old = _io.set_layer(layer)
    checkpoints = 0
    store = None
    try:
        store = Store(store_path, dim=DIM, durability=durability, config=cfg)
        oracle.created = True
        rec = 0
        for op in ops:
            if op.records:
                oracle.started = rec + 1
                oracle.inflight = op.kind
            else:
                oracle.inflight = op.kind
            apply_op(store, op)
            if op.records:
                rec += 1
                oracle.done = rec
                if durability == "fsync":
                    oracle.durable = rec
            elif op.kind in ("sync", "checkpoint"):
                oracle.durable = rec
                checkpoints += op.kind == "checkpoint"
            oracle.inflight = ""
        store.close()
        store = None
        captured.append((layer.capture(-1, "end", ""), oracle.snap()))
    finally:
        end_capture(layer, old, store)
    return captured, checkpoints, list(layer.ops)


def end_capture(layer: Any, old: Any, store: Any = None) -> None:
    """The end of a capture run: a Store still open is closed (quietly: the run
    may have failed inside it), the previous I/O layer is put back and the
    capturing layer released."""
    if store is not None:
        with contextlib.suppress(Exception):
            store.close()
    _io.set_layer(old)
    layer.release()


#: A judge looks at a recovered Reader and returns the state it accepts as the
#: truth (id -> key; None when it cannot tell) and the violations it found, as
#: (kind, message, records affected).
Judge = Callable[[Any], tuple["dict[str, int] | None", "list[tuple[str, str, int]]"]]


def sequential_judge(oracle: _Oracle, seqs: list[int], states: list[dict[str, int]]) -> Judge:
    """One writer: the recovered state must be the state after a prefix of its records."""
    durable_seq = seqs[oracle.durable]
    started_seq = seqs[oracle.started]

    def judge(reader: Any) -> tuple[dict[str, int] | None, list[tuple[str, str, int]]]:
        bad: list[tuple[str, str, int]] = []
        rseq = reader.seq
        if rseq < durable_seq:
            bad.append(("lost", f"lost acknowledged records: recovered seq {rseq}, durable up "
                        f"to {durable_seq}", durable_seq - rseq))
        if rseq > started_seq:
            bad.append(("phantom", f"phantom records: recovered seq {rseq}, only {started_seq} "
                        "were ever attempted", rseq - started_seq))
        if rseq not in seqs:
            bad.append(("torn-batch", f"recovered seq {rseq} is not a record boundary "
                        "(a partial batch?)", 1))
            return None, bad
        want = states[seqs.index(rseq)]
        diff = check_reader(reader, want)
        if diff:
            kind = "duplicate" if any("duplicate" in d for d in diff) else "prefix"
            bad.append((kind, f"state at seq {rseq} differs from the log prefix: {diff}", 1))
        return want, bad

    return judge


def check_crash_state(store_path: str, judge: Judge, *, durable: int, created: bool,
                      must_be_clean: bool, tally: _Tally, where: str) -> None:
    """Recover one crash state with the real OS layer and check it.

    ``durable``: records that must survive; ``created``: ``Store()`` had
    returned (the store itself must survive); ``must_be_clean``: a strict
    Reader must accept the state (otherwise a refusal that the point-in-time
    salvage mode recovers from is counted as a known limitation).
    """
    from ._reader import Reader
    from ._store import Store
    from ._types import Config
    from ._verify import verify

    def violation(kind: str, msg: str, records: int = 0) -> None:
        tally.violations.append(f"{kind}: {where}: {msg}")
        if kind == "lost":
            tally.lost += records
        elif kind == "phantom":
            tally.phantoms += records
        elif kind == "duplicate":
            tally.duplicates += records

    tally.acknowledged += durable
    reader: Any = None
    strict_error: BaseException | None = None
    try:
        reader = Reader(store_path)
    except StoreNotFoundError as exc:
        if created:
            violation("lost", f"the store vanished after Store() returned: {_fmt_exc(exc)}",
                      durable)
            return
        tally.outcomes["not-created"] += 1
    except MmwalError as exc:
        strict_error = exc
    except Exception as exc:
        violation("crash", f"Reader raised a non-mmwal error: {_fmt_exc(exc)}\n"
                  f"{traceback.format_exc()}")
        return
    if strict_error is not None:
        try:
            reader = Reader(store_path, recovery="point-in-time")
        except MmwalError as exc:
            violation("lost" if durable else "recovery",
                      f"strict Reader: {_fmt_exc(strict_error)}; point-in-time Reader: "
                      f"{_fmt_exc(exc)}", durable)
            return
        except Exception as exc:
            violation("crash", f"point-in-time Reader raised a non-mmwal error: {_fmt_exc(exc)}")
            return
        msg = f"strict Reader refused ({_fmt_exc(strict_error)}); point-in-time recovers"
        if must_be_clean:
            violation("recovery", msg)
        else:
            tally.strict_refusals += 1
            tally.refusals_by_mode[where.split(" ", 1)[0]] += 1
            if len(tally.limitations) < 20:
                tally.limitations.append(f"{where}: {msg}")
    base: dict[str, int] | None = {}
    rseq = 0
    try:
        if reader is not None:
            rseq = reader.seq
            base, found = judge(reader)
            for kind, msg, n in found:
                violation(kind, msg, n)
    except MmwalError as exc:
        violation("recovery", f"reading the recovered state raised {_fmt_exc(exc)}")
        base = None
    except Exception as exc:
        violation("crash", f"reading raised a non-mmwal error: {_fmt_exc(exc)}\n"
                  f"{traceback.format_exc()}")
        base = None
    finally:
        if reader is not None:
            reader.close()
    # verify() must agree with what reads return.
    if os.path.exists(os.path.join(store_path, "MANIFEST")):
        try:
            report = verify(store_path)
        except Exception as exc:
            violation("crash", f"verify raised {_fmt_exc(exc)}")
        else:
            if strict_error is None and not report.ok:
                violation("verify", f"verify reports problems on a state reads accept: "
                          f"{[str(p) for p in report.problems][:3]}")
            if strict_error is not None and report.ok:
                violation("verify", "verify says ok, the strict Reader raised "
                          f"{_fmt_exc(strict_error)}")
    # A new writer continues after recovery: appends, a checkpoint, clean verify.
    key = 1_000_000
    try:
        cfg = Config(segment_bytes=4096, keep_checkpoints=1, chunk_documents=4)
        with Store(store_path, dim=DIM, durability="fsync", config=cfg) as s:
            s.add(f"doc-{key}", doc_vec(key), content=doc_content(key), metadata=doc_meta(key))
            want = None if base is None else {**base, f"doc-{key}": key}
            with Reader(store_path) as r:
                diff = [] if want is None else check_reader(r, want)
                if diff:
                    violation("continue", f"after recovery and one append: {diff}")
                if r.seq != rseq + 1:
                    violation("continue", f"after recovery the next record got seq {r.seq}, "
                              f"expected {rseq + 1}")
            s.checkpoint()
            tally.checkpoints += 1
        with Reader(store_path) as r:
            diff = [] if want is None else check_reader(r, want)
            if diff:
                violation("continue", f"after recovery and a checkpoint: {diff}")
        report = verify(store_path)
        if not report.ok:
            problems = [str(p) for p in report.problems][:3]
            violation("verify", f"verify after recovery + checkpoint: {problems}")
    except MmwalError as exc:
        if must_be_clean or strict_error is None:
            violation("continue", f"a new writer cannot continue: {_fmt_exc(exc)}")
        else:
            tally.writer_refusals += 1
            if len(tally.limitations) < 40:
                tally.limitations.append(f"{where}: a new writer refuses too: {_fmt_exc(exc)}")
    except Exception as exc:
        violation("crash", f"continuing raised a non-mmwal error: {_fmt_exc(exc)}\n"
                  f"{traceback.format_exc()}")
    tally.outcomes["strict-ok" if strict_error is None else "point-in-time"] += 1


def concurrent_judge(ops_by_writer: Sequence[Sequence[tuple[int, ...]]], started: Sequence[int],
                     done: Sequence[int]) -> Judge:
    """Several writers (unique ids each): per writer, the recovered ops are a prefix of its
    calls, containing every acknowledged one; nothing else is present."""

    def judge(reader: Any) -> tuple[dict[str, int] | None, list[tuple[str, str, int]]]:
        bad: list[tuple[str, str, int]] = []
        present = set(reader.ids)
        want: dict[str, int] = {}
        known: set[str] = set()
        for w, ops in enumerate(ops_by_writer):
            p = 0
            while p < len(ops) and all(f"doc-{k}" in present for k in ops[p]):
                p += 1
            for j in range(p, len(ops)):
                got = [k for k in ops[j] if f"doc-{k}" in present]
                if got:
                    kind = "torn-batch" if j == p else "prefix"
                    bad.append((kind, f"writer {w}: {len(got)} of the {len(ops[j])} documents "
                                f"of its op {j} are present, ops from {p} on should not be", 1))
            if p < done[w]:
                n = sum(len(op) for op in ops[p : done[w]])
                bad.append(("lost", f"writer {w}: acknowledged ops {p}..{done[w] - 1} missing",
                            n))
            if p > started[w]:
                bad.append(("phantom", f"writer {w}: ops up to {p - 1} present, only "
                            f"{started[w]} were attempted", p - started[w]))
            for op in ops[:p]:
                for k in op:
                    want[f"doc-{k}"] = k
            known.update(f"doc-{k}" for op in ops for k in op)
        extra = sorted(present - known)
        if extra:
            bad.append(("phantom", f"ids no writer ever wrote: {extra[:5]}", len(extra)))
        diff = check_reader(reader, want)
        if diff and not bad:
            bad.append(("prefix", f"recovered state differs: {diff}", 1))
        return want, bad

    return judge


def _run_concurrent(run_dir: str, seed: int, select: Callable[[int, str, str, bool], bool],
                    writers: int = 2, per_writer: int = 14,
                    ) -> tuple[list[tuple[CrashImage, tuple[list[int], list[int]]]],
                               list[list[tuple[int, ...]]], int]:
    """Writers in threads, each with its own Store (durability "fsync"); group commit means
    frames of several writers are pending at once.  Writer 0 checkpoints midway."""
    from ._store import Store
    from ._types import Config

    rng = random.Random(seed)
    store_path = os.path.join(run_dir, "store")
    ops_by_writer: list[list[tuple[int, ...]]] = []
    for w in range(writers):
        ops: list[tuple[int, ...]] = []
        i = 0
        for _ in range(per_writer):
            n = 3 if rng.random() < 0.25 else 1
            ops.append(tuple(w * 100_000 + i + j for j in range(n)))
            i += n
        ops_by_writer.append(ops)
    started = [0] * writers
    done = [0] * writers
    captured: list[tuple[CrashImage, tuple[list[int], list[int]]]] = []
    layer: PowerLossLayer

    def on_point(n: int, op: str, path: str) -> None:
        if select(n, op, path, True):
            captured.append((layer.capture(n, op, path), (list(started), list(done))))

    cfg = Config(segment_bytes=4096, keep_checkpoints=1, chunk_documents=4)
    errors: list[BaseException] = []
    checkpoints = 0
    barrier = threading.Barrier(writers)

    def writer(w: int) -> None:
        nonlocal checkpoints
        try:
            with Store(store_path, dim=DIM, durability="fsync", config=cfg) as s:
                barrier.wait()
                for j, keys in enumerate(ops_by_writer[w]):
                    started[w] = j + 1
                    if len(keys) == 1:
                        apply_op(s, WOp("add", keys))
                    else:
                        apply_op(s, WOp("add_many", keys))
                    done[w] = j + 1
                    if w == 0 and j == len(ops_by_writer[w]) // 2:
                        s.checkpoint()
                        checkpoints += 1
        except BaseException as exc:
            errors.append(exc)

    os.makedirs(run_dir, exist_ok=True)
    layer = PowerLossLayer(run_dir, pause_before_sync=0.002)
    old = _io.set_layer(layer)
    try:
        Store(store_path, dim=DIM, durability="fsync", config=cfg).close()
        layer.on_point = on_point
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        captured.append((layer.capture(-1, "end", ""), (list(started), list(done))))
    finally:
        end_capture(layer, old)
    if errors:
        raise errors[0]
    return captured, ops_by_writer, checkpoints


def _point_kind(op: str, path: str) -> str:
    """``op`` and the directory it touches, with ids and random suffixes blurred."""
    parent = os.path.basename(os.path.dirname(path)) or "."
    if parent.startswith(".tmp-"):
        parent = ".tmp"
    elif parent.isdigit():
        parent = "N"
    base = os.path.basename(path)
    if base.startswith(".tmp-"):
        base = ".tmp"
    elif base.split(".")[0].isdigit():
        base = "N" + base[len(base.split(".")[0]):]
    return f"{op}:{parent}/{base}"


def _select_points(quick: bool, rng: random.Random, sample: float, creation: bool,
                   ) -> Callable[[int, str, str, bool], bool]:
    seen_kinds: Counter[str] = Counter()

    def select(n: int, op: str, path: str, created: bool) -> bool:
        if not quick:
            return True
        if not created and not creation:
            return False
        kind = _point_kind(op, path)
        seen_kinds[kind] += 1
        # Every kind of point once (creation, roll, publish, retire...), then a sample.
        return seen_kinds[kind] == 1 or rng.random() < sample

    return select


_T = TypeVar("_T")


def _thin(items: list[_T], limit: int | None) -> list[_T]:
    """At most ``limit`` of ``items``, evenly spread, the last one always kept."""
    if limit is None or len(items) <= limit:
        return items
    if limit <= 1:
        return items[-1:]
    step = (len(items) - 1) / (limit - 1)
    return [items[round(i * step)] for i in range(limit)]


def _pick_variants(always: Sequence[str], others: Sequence[str], per_point: int,
                   rotation: int) -> list[str]:
    chosen = list(always)
    for j in range(len(others)):
        if len(chosen) >= per_point:
            break
        chosen.append(others[(rotation + j) % len(others)])
    return chosen


def _powerloss_concurrent(scratch: str, quick: bool, rng: random.Random, sample: float,
                          seed: int, variants: Sequence[str], always: Sequence[str],
                          per_point: int, repeats: int, tally: _Tally,
                          points_by_mode: dict[str, int], progress: Progress | None,
                          max_points: int | None) -> None:
    mode = "fsync-concurrent"
    run_dir = tempfile.mkdtemp(prefix="powerloss-concurrent-", dir=scratch)
    base = _select_points(quick, rng, sample, False)

    def select(n: int, op: str, path: str, created: bool) -> bool:
        # Every log fdatasync: that is where frames of several writers are pending.
        return base(n, op, path, created) or (op == "fdatasync" and path.endswith(".seg")
                                              and (not quick or rng.random() < 0.5))

    try:
        captured, ops_by_writer, ckpts = _run_concurrent(run_dir, seed, select)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    tally.checkpoints += ckpts
    captured = _thin(captured, max_points)
    points_by_mode[mode] = len(captured)
    states_dir = tempfile.mkdtemp(prefix="states-concurrent-", dir=scratch)
    for i, (image, (started, done)) in enumerate(captured):
        tally.crash_points += 1
        # Holes between pending frames of several writers: always try some.
        chosen = list(dict.fromkeys([*always, *(v for v in ("hole",) if v in variants)]))
        durable = sum(len(op) for w, ops in enumerate(ops_by_writer) for op in ops[: done[w]])
        for st in crash_states(image, states_dir, seed=rng.getrandbits(32), variants=chosen,
                               repeats=max(repeats, 2)):
            where = (f"{mode} crash point {image.index} (before {image.op} {image.path}) "
                     f"state {st.label}")
            with simulated_reboot():
                # Frames of several writers may be pending at once: a strict refusal
                # that point-in-time recovers is a known limitation, not a loss.
                check_crash_state(os.path.join(st.root, "store"),
                                  concurrent_judge(ops_by_writer, started, done),
                                  durable=durable, created=True,
                                  must_be_clean=st.variant == "keep", tally=tally, where=where)
            tally.crash_states += 1
        if progress is not None:
            progress(i + 1, len(captured))


def run_powerloss(workdir: str, *, quick: bool, seed: int,
                  progress: Progress | None = None,
                  durabilities: Sequence[str] = ("fsync", "os", "interval", "fsync-concurrent"),
                  variants: Sequence[str] | None = None, repeats: int | None = None,
                  sample: float | None = None, per_point: int | None = None,
                  max_points: int | None = None, fast_scratch: bool = True,
                  ) -> dict[str, Any]:
    """Sweep power-loss crash points over a workload; recover and check every crash state.

    For each durability mode: run the workload once under a
    :class:`PowerLossLayer` capturing an image at each selected crash point
    (quick: every kind of point once - creation in the first mode only - plus
    a random ``sample``; full: all), then materialise the crash states of each
    image (:data:`VARIANTS`; random ones ``repeats`` times) and recover each
    with the real OS layer after a simulated reboot.  Checks: every
    acknowledged record (fsync-mode returns, ``sync()``, checkpoint returns)
    present with exact data; the state is a prefix of the log (no phantom, no
    partial batch, nothing out of order); only MmwalError for damage;
    ``verify()`` agrees with reads; a new writer continues (append,
    checkpoint, verify ok).  ``per_point``: how many variants per crash point
    (quick: 4, "drop" and "keep" always, the others in rotation; full: all).
    ``max_points``: at most this many crash points per mode, spread evenly over
    those selected (the end state always included).  ``fast_scratch``:
    materialise the states on tmpfs when there is one (see :func:`scratch_dir`).
    """
    t0 = time.perf_counter()
    rng = random.Random(seed)
    variants = tuple(VARIANTS) if variants is None else tuple(variants)
    repeats = (1 if quick else 3) if repeats is None else repeats
    sample = (0.03 if quick else 1.0) if sample is None else sample
    per_point = (4 if quick else len(variants)) if per_point is None else per_point
    always: list[str] = [str(v) for v in ("drop", "keep") if v in variants][:per_point]
    others = [v for v in variants if v not in always]
    rotation = 0
    ops = build_workload(seed)
    seqs, states = model_states(ops)
    tally = _Tally()
    points_by_mode: dict[str, int] = {}
    total_points: dict[str, int] = {}
    os.makedirs(workdir, exist_ok=True)
    scratch = scratch_dir(workdir, fast_scratch)
    try:
        for i_mode, mode in enumerate(durabilities):
            if mode == "fsync-concurrent":
                _powerloss_concurrent(scratch, quick, rng, sample, seed, variants, always,
                                      per_point, repeats, tally, points_by_mode, progress,
                                      max_points)
                continue
            run_dir = tempfile.mkdtemp(prefix=f"powerloss-{mode}-", dir=scratch)
            try:
                select = _select_points(quick, rng, sample, i_mode == 0)
                captured, ckpts, all_ops = _run_workload(run_dir, mode, ops, seed, select)
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)
            tally.checkpoints += ckpts
            captured = _thin(captured, max_points)
            points_by_mode[mode] = len(captured)
            total_points[mode] = len(all_ops) + 1
            states_dir = tempfile.mkdtemp(prefix=f"states-{mode}-", dir=scratch)
            for i, (image, oracle) in enumerate(captured):
                tally.crash_points += 1
                chosen = _pick_variants(always, others, per_point, rotation)
                rotation += max(1, per_point - len(always))
                for st in crash_states(image, states_dir, seed=rng.getrandbits(32),
                                       variants=chosen, repeats=repeats):
                    where = (f"{mode} crash point {image.index} (before {image.op} "
                             f"{image.path}) state {st.label}")
                    with simulated_reboot():
                        check_crash_state(
                            os.path.join(st.root, "store"),
                            sequential_judge(oracle, seqs, states),
                            durable=seqs[oracle.durable], created=oracle.created,
                            must_be_clean=st.variant == "keep" or mode == "fsync",
                            tally=tally, where=where)
                    tally.crash_states += 1
                if progress is not None:
                    progress(i + 1, len(captured))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    return {
        "scenario": "powerloss",
        "ok": not tally.violations,
        "acknowledged": tally.acknowledged,
        "lost": tally.lost,
        "phantoms": tally.phantoms,
        "duplicates": tally.duplicates,
        "kills": 0,
        "checkpoints": tally.checkpoints,
        "violations": tally.violations[:200],
        "violation_count": len(tally.violations),
        "violation_counts": _count_kinds(tally.violations),
        "crash_states": tally.crash_states,
        "crash_points": tally.crash_points,
        "strict_refusals": tally.strict_refusals,
        "writer_refusals": tally.writer_refusals,
        "strict_refusals_by_mode": dict(tally.refusals_by_mode),
        "limitations": tally.limitations,
        "outcomes": dict(tally.outcomes),
        "throughput": {
            "elapsed_s": round(elapsed, 3),
            "crash_states_per_s": round(tally.crash_states / elapsed, 1) if elapsed else 0.0,
        },
        "settings": {
            "quick": quick, "seed": seed, "durabilities": list(durabilities),
            "variants": list(variants), "repeats": repeats, "sample": sample,
            "variants_per_point": per_point,
            "workload_ops": len(ops), "workload_records": seqs[-1],
            "crash_points_checked": points_by_mode, "crash_points_total": total_points,
            "sector": SECTOR, "scratch_on_tmpfs": scratch.startswith(_SHM),
        },
    }


# ============================================================================ I/O-error campaign
@dataclass
class _CaseResult:
    faults: int = 0
    acknowledged: int = 0
    lost: int = 0
    phantoms: int = 0
    duplicates: int = 0  # add frames the store wrote twice by itself: must be 0
    # Retried in-doubt records: an attempt failed (its fsync, say) after its frame
    # may have reached the log, the workload retried it, and the log holds both.
    in_doubt_retries: int = 0
    checkpoints: int = 0
    poisoned: int = 0
    violations: list[str] = field(default_factory=list)


_IO_OPS_READER = "reader"


def _io_workload(seed: int) -> list[WOp]:
    ops = build_workload(seed)
    out: list[WOp] = []
    for op in ops:
        out.append(op)
        if op.kind == "checkpoint":
            out.append(WOp(_IO_OPS_READER))
    out.append(WOp(_IO_OPS_READER))
    return out


def _is_log_fsync(fault: Fault) -> bool:
    base = os.path.basename(fault.path)
    return (fault.category == "fsync" and base.endswith(".seg") and not base.startswith(".tmp-")
            and os.path.basename(os.path.dirname(fault.path)) == "wal")


def run_io_case(workdir: str, category: str | None, nth: int, err: int, *, persistent: bool,
                torn: bool = False, seed: int = 0) -> tuple[_CaseResult, ErrorLayer]:
    """One workload under an ErrorLayer failing the ``nth`` ``category`` operation."""
    from ._reader import Reader
    from ._store import Store
    from ._types import Config
    from ._verify import verify

    res = _CaseResult()
    label = (f"{category}#{nth} {os.strerror(err).split(' ')[0] if category else ''}"
             f"{' persistent' if persistent else ''}{' torn' if torn else ''}")

    def violation(kind: str, msg: str) -> None:
        res.violations.append(f"{kind}: {label}: {msg}")

    store_path = os.path.join(workdir, "store")
    layer = ErrorLayer(category, nth, err, persistent=persistent, torn=torn)
    cfg = Config(segment_bytes=4096, keep_checkpoints=1, chunk_documents=4)
    ops = _io_workload(seed)
    acked: dict[str, int | None] = {}   # id -> key (None: removed) of acknowledged ops
    state: dict[str, int] = {}          # model of everything acknowledged, in order
    attempted: set[str] = set()
    acked_adds: Counter[str] = Counter()  # acknowledged adds per id (replacements: > 1)
    failed_adds: Counter[str] = Counter()  # attempts of adds that raised, then were retried
    store: Any = None
    aborted = False
    old = _io.set_layer(layer)

    def check_error(exc: MmwalError, what: str) -> None:
        if not layer.faults:
            violation("error-type", f"{what}: {_fmt_exc(exc)} with no fault injected")
            return
        if not isinstance(exc, StorageIOError):
            violation("error-type", f"{what}: {_fmt_exc(exc)} is not a StorageIOError")
            return
        if exc.errno != err:
            violation("error-type", f"{what}: errno {exc.errno} in {_fmt_exc(exc)}, injected {err}")
        path = getattr(exc, "path", None)
        if not path or not str(path).startswith(workdir):
            violation("error-type", f"{what}: error names no file of the store: path={path!r}")

    def open_store() -> Any:
        return Store(store_path, dim=DIM, durability="fsync", config=cfg)

    def attempt(op: WOp) -> bool:
        """Run ``op`` until it succeeds (retrying as a user would); False to abort the case."""
        nonlocal store
        for round_ in range(5):
            if round_ == 2:
                layer.heal()  # a persistent fault lasted two tries: now space is freed
            if round_ == 4:
                violation("continue", f"{op.kind} still failing after the fault was healed")
                return False
            before = len(layer.faults)
            try:
                if store is None:
                    store = open_store()
                if op.kind == _IO_OPS_READER:
                    with Reader(store_path) as r:
                        diff = check_reader(r, state)
                        if diff:
                            violation("prefix", f"a Reader during the workload: {diff}")
                else:
                    apply_op(store, op)
                swallowed = [f for f in layer.faults[before:] if _is_log_fsync(f)]
                if swallowed:
                    violation("poison", f"{op.kind} returned normally although the fsync of "
                              f"{swallowed[0].path} failed during it")
                return True
            except MmwalError as exc:
                check_error(exc, f"{op.kind}")
                if op.kind in ("add", "add_many"):
                    for k in op.keys:
                        failed_adds[f"doc-{k}"] += 1  # in doubt: its frame may be in the log
                fault = layer.faults[-1] if len(layer.faults) > before else None
                if isinstance(exc, PoisonedError):
                    res.poisoned += 1
                if fault is not None and _is_log_fsync(fault) and store is not None:
                    # RULES.md 12: a failed fsync of the log poisons the Store.
                    k = 2_000_000 + round_
                    try:
                        store.add(f"doc-{k}", doc_vec(k))
                        violation("poison", f"{op.kind}: the Store accepted a write after a failed "
                                  f"fsync of {fault.path}")
                        attempted.add(f"doc-{k}")
                    except PoisonedError as p:
                        if p.errno != err:
                            violation("poison", f"PoisonedError carries errno {p.errno}, not {err}")
                    except MmwalError as other:
                        violation("poison", "after a failed fsync the Store raised "
                                  f"{_fmt_exc(other)}, "
                                  "not PoisonedError")
                if store is not None and (store._poisoned is not None or persistent):
                    # A poisoned Store is closed and replaced, as the error says to.
                    with contextlib.suppress(MmwalError):
                        store.close()
                    store = None
            except Exception as exc:
                violation("crash", f"{op.kind}: non-mmwal error {_fmt_exc(exc)}\n"
                          f"{traceback.format_exc()}")
                layer.heal()
                return False
        return False

    try:
        for op in ops:
            for k in op.keys:
                attempted.add(f"doc-{k}")
            if not attempt(op):
                aborted = True  # the outcome of this op is unknown: stop here
                break
            # The op returned (possibly after retries): acknowledged.
            if op.kind in ("add", "add_many"):
                for k in op.keys:
                    state.pop(f"doc-{k}", None)
                    state[f"doc-{k}"] = k
                    acked[f"doc-{k}"] = k
                    acked_adds[f"doc-{k}"] += 1
            elif op.kind == "remove":
                state.pop(f"doc-{op.keys[0]}", None)
                acked[f"doc-{op.keys[0]}"] = None
            elif op.kind == "clear":
                state.clear()
            elif op.kind == "checkpoint":
                res.checkpoints += 1
            res.acknowledged += op.records
    finally:
        if store is not None:
            with contextlib.suppress(MmwalError):
                store.close()
        _io.set_layer(old)
    res.faults = len(layer.faults)
    if aborted:
        return res, layer
    # Recovery with the real OS: everything acknowledged is there, exactly.
    try:
        with Reader(store_path) as r:
            diff = check_reader(r, state)
            if diff:
                violation("lost", f"final state: {diff}")
                res.lost += sum(1 for i in state if i not in r)
                res.phantoms += sum(1 for i in r.ids if i not in attempted)
        from ._replay import replay

        adds: Counter[str | None] = Counter(
            op.id for op in replay(store_path) if op.kind == "add")
        for doc, c in adds.items():
            # Copies beyond the adds the workload had acknowledged (replacements)
            # are in-doubt retries up to the failed attempts of that id; any
            # copy beyond those the store made by itself.
            extra = c - max(1, acked_adds[str(doc)])
            if extra <= 0:
                continue
            doubt = min(extra, failed_adds[str(doc)])
            res.in_doubt_retries += doubt
            if extra > doubt:
                res.duplicates += extra - doubt
                violation("duplicate", f"{doc} is logged {c} times: {acked_adds[str(doc)]} "
                          f"acknowledged add(s), {failed_adds[str(doc)]} failed attempt(s)")
        report = verify(store_path)
        if not report.ok:
            violation("verify", f"verify: {[str(p) for p in report.problems][:3]}")
        with Store(store_path, durability="fsync", config=cfg) as s:
            k = 3_000_000
            s.add(f"doc-{k}", doc_vec(k))
    except MmwalError as exc:
        violation("continue", f"recovery: {_fmt_exc(exc)}")
    except Exception as exc:
        violation("crash", f"recovery: non-mmwal error {_fmt_exc(exc)}\n{traceback.format_exc()}")
    return res, layer


def run_io_errors(workdir: str, *, quick: bool, seed: int,
                  progress: Progress | None = None,
                  categories: Sequence[str] = tuple(ERROR_CATEGORIES),
                  errnos: Sequence[int] = (_errno.EIO, _errno.ENOSPC),
                  per_category: int | None = None, fast_scratch: bool = True,
                  ) -> dict[str, Any]:
    """Inject EIO/ENOSPC at the Nth operation of each category; check what survives.

    A dry run counts the operations of each category in the workload (first
    creation, adds, batches, rolls, two checkpoints, Readers); then for each
    category, errno, N (quick: a sample of ``per_category``; full: every N)
    and mode (once, persistent until healed, and for writes a torn once):
    the error must reach the caller as a StorageIOError carrying the errno and
    a file of the store; a failed fsync of the log poisons the Store
    (PoisonedError with the errno on the next write); the op is retried (a new
    Store after poisoning or after the fault is healed); at the end every
    acknowledged record is present with exact data, verify() is clean and a
    new Store appends.
    """
    t0 = time.perf_counter()
    rng = random.Random(seed)
    os.makedirs(workdir, exist_ok=True)
    scratch = scratch_dir(workdir, fast_scratch)
    try:
        dry_dir = tempfile.mkdtemp(prefix="io-dry-", dir=scratch)
        try:
            dry, layer = run_io_case(dry_dir, None, 0, 0, persistent=False, seed=seed)
        finally:
            shutil.rmtree(dry_dir, ignore_errors=True)
        counts = dict(layer.counts)
        violations = list(dry.violations)
        per = (6 if quick else 10**9) if per_category is None else per_category
        cases: list[tuple[str, int, int, bool, bool]] = []
        for cat in categories:
            total = counts.get(cat, 0)
            if not total:
                continue
            ns = list(range(1, total + 1))
            if len(ns) > per:
                # The first, the last, and a spread between (rolls, checkpoints sit in between).
                pick = {1, total} if per >= 2 else {1}
                if per > 2:
                    pick.update(rng.sample(ns[1:-1], per - 2))
                ns = sorted(pick)
            for n in ns:
                for e in errnos:
                    cases.append((cat, n, e, False, False))
                    cases.append((cat, n, e, True, False))
                    if cat == "write" and e == _errno.EIO:
                        cases.append((cat, n, e, False, True))
        totals = _CaseResult()
        fired = 0
        doubt_cases = 0
        doubt_by_fault: Counter[str] = Counter()
        doubt_examples: list[str] = []
        for i, (cat, n, e, persistent, torn) in enumerate(cases):
            case_dir = tempfile.mkdtemp(prefix="io-case-", dir=scratch)
            try:
                r, lay = run_io_case(case_dir, cat, n, e, persistent=persistent, torn=torn,
                                     seed=seed)
            finally:
                shutil.rmtree(case_dir, ignore_errors=True)
            fired += bool(lay.faults)
            totals.faults += r.faults
            totals.acknowledged += r.acknowledged
            totals.lost += r.lost
            totals.phantoms += r.phantoms
            totals.duplicates += r.duplicates
            totals.in_doubt_retries += r.in_doubt_retries
            if r.in_doubt_retries:
                doubt_cases += 1
                kind = f"{cat} {_errno.errorcode.get(e, str(e))}"
                doubt_by_fault[kind] += r.in_doubt_retries
                if len(doubt_examples) < 20:
                    doubt_examples.append(
                        f"{cat}#{n} {_errno.errorcode.get(e, str(e))}"
                        f"{' persistent' if persistent else ''}{' torn' if torn else ''}: "
                        f"{r.in_doubt_retries} record(s)")
            totals.checkpoints += r.checkpoints
            totals.poisoned += r.poisoned
            violations.extend(r.violations)
            if progress is not None:
                progress(i + 1, len(cases))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    return {
        "scenario": "io-errors",
        "ok": not violations,
        "acknowledged": totals.acknowledged,
        "lost": totals.lost,
        "phantoms": totals.phantoms,
        "duplicates": totals.duplicates,
        "in_doubt_retries": totals.in_doubt_retries,
        "in_doubt": {
            "help": ("records whose first attempt failed after its frame may have reached the "
                     "log (e.g. its fsync failed) and which the workload retried, as a caller "
                     "must: replay shows both copies, the state holds one. Not duplicates."),
            "records": totals.in_doubt_retries,
            "cases": doubt_cases,
            "by_fault": dict(sorted(doubt_by_fault.items())),
            "examples": doubt_examples,
        },
        "kills": 0,
        "checkpoints": totals.checkpoints,
        "violations": violations[:200],
        "violation_count": len(violations),
        "violation_counts": _count_kinds(violations),
        "faults": totals.faults,
        "cases": len(cases),
        "cases_fired": fired,
        "poisoned": totals.poisoned,
        "throughput": {
            "elapsed_s": round(elapsed, 3),
            "cases_per_s": round(len(cases) / elapsed, 1) if elapsed else 0.0,
        },
        "settings": {
            "quick": quick, "seed": seed, "categories": list(categories),
            "errnos": [_errno.errorcode.get(e, str(e)) for e in errnos],
            "operations_per_category": counts, "per_category": per,
            "scratch_on_tmpfs": scratch.startswith(_SHM),
        },
    }


# ============================================================================ repair
def _damaged_store(path: str) -> None:
    """A small store for the repair campaign: a checkpoint, four segments, one bad frame."""
    from ._fsutil import Paths
    from ._store import Store
    from ._types import Config
    from ._version import open_manifest
    from ._wal import read_segment_header

    cfg = Config(segment_bytes=4096, keep_checkpoints=1, chunk_documents=4)
    with Store(path, dim=DIM, durability="os", config=cfg) as s:
        for k in range(12):
            s.add(f"doc-{k}", doc_vec(k), content=doc_content(k), metadata=doc_meta(k))
        s.checkpoint()
        for k in range(12, 100):
            s.add(f"doc-{k}", doc_vec(k), content=doc_content(k), metadata=doc_meta(k))
        s.remove("doc-3")
    paths = Paths(path)
    start = open_manifest(paths)["replay_segment"]
    seg = paths.segment(start + 1)  # sealed, with segments after it
    h = read_segment_header(seg)
    from . import _format as F

    with open(seg, "r+b") as f:
        data = f.read()
        st, _k, _c, _n, nxt, _w = F.check_frame(data, F.SEGMENT_HEADER_SIZE, len(data),
                                                 h.seed, h.first_seq)
        assert st == F.FRAME_OK
        f.seek(nxt + F.FRAME_HEADER_SIZE + 3)  # the payload of its second frame
        f.write(bytes([data[nxt + F.FRAME_HEADER_SIZE + 3] ^ 0x5A]))


def _observe(path: str, mode: str) -> dict[str, Any]:
    """What a store holds (a Reader in ``mode``, the replay) and what verify reports."""
    from ._reader import Reader
    from ._replay import replay
    from ._verify import verify

    root = os.path.abspath(path)
    report = verify(path)
    with Reader(path, recovery=mode) as r:
        docs = {i: (r[i].embedding.tobytes(), r[i].content, r[i].metadata) for i in r.ids}
        seq = r.seq
    # The whole history only in a salvage mode: a repaired store may still hold
    # the damaged segments below its replay start (their unlink failed or was
    # lost), which a strict replay of everything rightly refuses.
    ops = [] if mode == "strict" else [(op.seq, op.kind, op.id)
                                       for op in replay(path, mode=mode)]
    return {"ok": report.ok, "seq": seq, "docs": docs, "ops": ops,
            "problems": sorted((os.path.relpath(p.file, root), p.offset)
                               for p in report.problems)}


def _repair(path: str) -> dict[str, Any]:
    from ._repair import apply_plan, make_plan, repair_locks
    from ._types import Config

    with repair_locks(path, exclusive=True, timeout=10.0):
        plan = make_plan(path, "skip-bad")
        try:
            return apply_plan(plan, Config(lock_timeout=10.0))
        finally:
            plan.close()


def _judge_repair(store: str, before: dict[str, Any], after: dict[str, Any], scratch: str,
                  ) -> tuple[str, list[str]]:
    """Classify a store a faulted repair left: "repaired" or "unrepaired", never broken.

    Repaired: verify() is clean and the strict Reader serves exactly what a
    repair without faults gives.  Unrepaired: the salvage reads are exactly
    what they were before, and a repair run now gives the repaired state.
    Either way every complete backup (its REPAIR.json written) restores the
    pre-repair store exactly; an incomplete one is refused.
    """
    from ._repair import BACKUP_INDEX, restore
    from .errors import CorruptionError

    bad: list[str] = []
    outcome = "broken"
    try:
        if _observe(store, "strict") == after:
            outcome = "repaired"
    except MmwalError:
        pass
    if outcome != "repaired":
        try:
            now = _observe(store, "skip-bad")
            if now["docs"] == before["docs"] and now["ops"] == before["ops"] and not now["ok"]:
                outcome = "unrepaired"
        except MmwalError as exc:
            bad.append(f"recovery: the faulted repair left a store that cannot be read: "
                       f"{_fmt_exc(exc)}")
    for name in sorted(os.listdir(store)):
        if not name.startswith("repair-backup-"):
            continue
        backup = os.path.join(store, name)
        dest = os.path.join(scratch, f"restored-{name}-{random.getrandbits(32):08x}")
        complete = os.path.exists(os.path.join(backup, BACKUP_INDEX))
        try:
            restore(backup, dest)
        except CorruptionError as exc:
            if complete:
                bad.append(f"lost: complete backup {name} does not restore: {_fmt_exc(exc)}")
            continue
        except MmwalError as exc:
            bad.append(f"continue: restoring {name} failed: {_fmt_exc(exc)}")
            continue
        try:
            got = _observe(dest, "skip-bad")
            if got != before:
                bad.append(f"lost: backup {name} restores a store other than the pre-repair one")
        except MmwalError as exc:
            bad.append(f"lost: the store restored from {name} cannot be read: {_fmt_exc(exc)}")
        finally:
            shutil.rmtree(dest, ignore_errors=True)
    if outcome == "unrepaired":
        try:
            _repair(store)
            if _observe(store, "strict") != after:
                bad.append("continue: a repair after the fault does not give the repaired state")
        except MmwalError as exc:
            bad.append(f"continue: a repair after the fault failed: {_fmt_exc(exc)}")
    elif outcome == "broken":
        bad.append("recovery: the faulted repair left the store neither repaired nor as it was")
    return outcome, bad


def run_repair_faults(workdir: str, *, quick: bool, seed: int,
                      progress: Progress | None = None, fast_scratch: bool = True,
                      per_category: int | None = None) -> dict[str, Any]:
    """``mmwal repair`` (skip-bad) under injected I/O errors and simulated power loss.

    A damaged store (a checkpoint, four segments, a bad frame in a sealed one)
    is repaired once without faults: the reference.  Then, on copies: EIO (and,
    in the full run, ENOSPC) at the Nth operation of each I/O-error category
    (quick: a sample of ``per_category`` per category; full: every N), and a
    power loss before each sync/namespace operation of the repair (quick: a
    sample), each crash image in the ``drop`` and ``keep`` states (full: all
    variants).  Every outcome must be an MmwalError or success, and the store
    either repaired or as it was (and repairable), never broken; every backup
    that says it is complete restores the pre-repair store (see
    :func:`_judge_repair`).
    """
    from ._io import set_layer

    t0 = time.perf_counter()
    rng = random.Random(seed)
    os.makedirs(workdir, exist_ok=True)
    scratch = scratch_dir(workdir, fast_scratch)
    violations: list[str] = []
    outcomes: Counter[str] = Counter()
    io_cases = states = 0
    try:
        pristine = os.path.join(scratch, "pristine")
        _damaged_store(pristine)
        before = _observe(pristine, "skip-bad")
        ref = os.path.join(scratch, "reference")
        shutil.copytree(pristine, ref)
        _repair(ref)
        after = _observe(ref, "strict")
        assert after["ok"], after["problems"]
        shutil.rmtree(ref)

        # How many operations of each category one repair does.
        dry = os.path.join(scratch, "dry")
        shutil.copytree(pristine, dry)
        counter = ErrorLayer()
        old = set_layer(counter)
        try:
            _repair(dry)
        finally:
            set_layer(old)
        shutil.rmtree(dry)
        counts = dict(counter.counts)
        per = per_category if per_category is not None else (4 if quick else None)
        errnos = (_errno.EIO,) if quick else (_errno.EIO, _errno.ENOSPC)
        cases: list[tuple[str, int, int]] = []
        for cat in ERROR_CATEGORIES:
            ns = list(range(1, counts.get(cat, 0) + 1))
            if per is not None and len(ns) > per:
                ns = sorted({ns[0], ns[-1], *rng.sample(ns, per - 2)})
            cases += [(cat, n, e) for n in ns for e in errnos]

        # Power loss: capture an image before every crash point of one repair.
        run = os.path.join(scratch, "powerloss")
        os.makedirs(run)
        store = os.path.join(run, "store")
        shutil.copytree(pristine, store)
        layer: PowerLossLayer
        images: list[CrashImage] = []

        def on_point(n: int, op: str, path: str) -> None:
            images.append(layer.capture(n, op, path))

        layer = PowerLossLayer(run, on_point=on_point)
        old = set_layer(layer)
        try:
            _repair(store)
        finally:
            set_layer(old)
            layer.release()
        images.append(layer.capture(-1, "end", ""))
        if quick:
            images = _thin(images, 12)
        variants = ("drop", "keep") if quick else tuple(VARIANTS)
        total = len(cases) + len(images) * len(variants)
        done = 0

        for cat, n, err in cases:
            work = os.path.join(scratch, f"io-{cat}-{n}-{err}")
            shutil.copytree(pristine, work)
            fault = ErrorLayer(cat, n, err)
            old = set_layer(fault)
            try:
                _repair(work)
            except MmwalError:
                pass
            except Exception as exc:
                violations.append(f"crash: repair with {cat} #{n} failing: {_fmt_exc(exc)}")
            finally:
                set_layer(old)
            got, bad = _judge_repair(work, before, after, scratch)
            outcomes[got] += 1
            violations += [f"{v} (repair, {cat} #{n} {_errno.errorcode.get(err, err)})"
                           for v in bad]
            io_cases += 1
            shutil.rmtree(work, ignore_errors=True)
            done += 1
            if progress is not None:
                progress(done, total)

        for image in images:
            for state in crash_states(image, os.path.join(scratch, "states"),
                                      seed=rng.getrandbits(32), variants=variants):
                with simulated_reboot():
                    got, bad = _judge_repair(os.path.join(state.root, "store"), before, after,
                                             scratch)
                outcomes[got] += 1
                where = f"{image.op} {image.path or ''} #{image.index}"
                violations += [f"{v} (repair, power loss before {where}, {state.label})"
                               for v in bad]
                states += 1
                done += 1
                if progress is not None:
                    progress(done, total)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    return {
        "scenario": "repair-faults",
        "ok": not violations,
        "io_cases": io_cases,
        "powerloss_states": states,
        "outcomes": dict(outcomes),
        "violations": violations[:200],
        "violation_count": len(violations),
        "violation_counts": _count_kinds(violations),
        "throughput": {"elapsed_s": round(elapsed, 3)},
        "settings": {"quick": quick, "seed": seed, "operations_per_category": counts,
                     "per_category": per, "variants": list(variants)},
    }


# ============================================================================ harness report
def stress_report(rep: dict[str, Any], *, run_dir: str = "", run_s: float | None = None,
                  ) -> dict[str, Any]:
    """``rep`` (from a campaign) with every key of the default ``mmwal stress`` report.

    The campaign's own keys (``crash_states`` or ``faults``, ``limitations``,
    ...) are kept; ``violations`` become ``{"kind", "source", "detail",
    "count"}`` dicts; the keys that only make sense for the kill loop (readers'
    lag, kills by role...) are present and zero.
    """
    import platform

    from . import __version__

    name = rep.get("scenario", "powerloss")
    elapsed = float(rep.get("throughput", {}).get("elapsed_s", 0.0)) if run_s is None else run_s
    settings = dict(rep.get("settings", {}))
    settings.setdefault("writers", 1)
    settings.setdefault("readers", 0)
    settings.setdefault("durability", ",".join(settings.get("durabilities", ["fsync"])))
    violations = [{"kind": v.split(":", 1)[0], "source": name,
                   "detail": v.split(":", 1)[1].strip() if ":" in v else v, "count": 1}
                  for v in rep.get("violations", [])]
    ok = bool(rep.get("ok"))
    counts = rep.get("violation_counts") or _count_kinds(rep.get("violations", []))
    out = dict(rep)
    acked = int(rep.get("acknowledged", 0))
    out.update({
        "ok": ok,
        "exit_code": 0 if ok else 1,
        "scenario": {"name": name, "help": ("simulated power loss at every fsync/rename/unlink; "
                                            "every crash state recovered and checked")
                     if name == "powerloss" else
                     ("EIO/ENOSPC injected at the Nth write, fsync, rename, mmap, create, "
                      "unlink; once and persistently")},
        "settings": settings,
        "mmwal_version": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_dir": run_dir,
        "store": run_dir,
        "kept": False,
        "interrupted": False,
        "run_s": round(elapsed, 3),
        "verify_s": 0.0,
        "acknowledged_ops": acked,
        "acknowledged_by_durability": {"fsync": acked},
        "pending_unacknowledged": 0,
        "pending_landed": 0,
        "documents": 0,
        "last_seq": 0,
        "kills_by_role": {},
        "kills_by_phase": {},
        "crashes": {},
        "restarts": 0,
        "kills_called_off": 0,
        "final_checkpoint": {},
        "throughput": {"docs_per_s": 0.0, "ops_per_s": 0.0, "peak_docs_per_s": 0.0,
                       "docs_by_writer": [], **rep.get("throughput", {})},
        "readers": {"refreshes": 0, "full_checks": 0, "docs_checked": 0, "lag_p50": 0.0,
                    "lag_p99": 0.0, "lag_max": 0.0, "lag_mean": 0.0},
        "audit": {"records": 0, "skipped": 0, "gaps": 0},
        "verify": {"ok": ok, "problems": [], "notes": []},
        "injected": None,
        "violation_counts": counts,
        "violation_kinds": {k: VIOLATION_KINDS.get(k, "") for k in counts},
        "violations": violations,
        "timeline": {},
        "events": {"kills": [], "checkpoints": []},
    })
    return out


# ============================================================================ command line
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmwal._faults",
        description="Run the power-loss, I/O-error or repair-under-faults campaign "
        "standalone.")
    parser.add_argument("scenario", choices=("powerloss", "io-errors", "repair"))
    parser.add_argument("--quick", action="store_true", help="a sample of the sweep")
    parser.add_argument("--json", metavar="PATH", help="write the report here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", metavar="D", help="work directory (default: a temp dir)")
    parser.add_argument("--on-disk", action="store_true",
                        help="materialise crash states / run fault cases under --dir, not on "
                        "tmpfs (/dev/shm), which is the default when present")
    args = parser.parse_args(argv)
    work = args.dir or tempfile.mkdtemp(prefix=f"mmwal-{args.scenario}-")
    runs: dict[str, Callable[..., dict[str, Any]]] = {
        "powerloss": run_powerloss, "io-errors": run_io_errors, "repair": run_repair_faults}
    run = runs[args.scenario]

    def progress(done: int, total: int) -> None:
        print(f"\r{args.scenario}: {done}/{total}", end="", file=sys.stderr, flush=True)

    try:
        report = run(work, quick=args.quick, seed=args.seed, progress=progress,
                     fast_scratch=not args.on_disk)
    finally:
        print(file=sys.stderr)
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    if args.scenario == "repair":
        summary: dict[str, Any] = {k: report[k] for k in ("ok", "io_cases", "powerloss_states",
                                                           "outcomes", "violation_count")}
    else:
        keys = ("ok", "acknowledged", "lost", "phantoms", "duplicates", "checkpoints",
                "violation_count")
        summary = {k: report[k] for k in keys if k in report}
        if "in_doubt_retries" in report:
            summary["in_doubt_retries"] = report["in_doubt_retries"]
        summary["crash_states" if "crash_states" in report else "faults"] = report.get(
            "crash_states", report.get("faults"))
    print(json.dumps(summary))
    for v in report["violations"][:10]:
        print("violation:", v.splitlines()[0])
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
