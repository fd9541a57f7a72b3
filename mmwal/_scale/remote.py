"""``mmwal.Reader(url, cache_dir=...)``: a published store served from a local cache.

The cache of one URL is a directory laid out like a store
(``<cache_dir>/<digest of url>/MANIFEST`` and ``checkpoints/``) holding only
what readers use.  A sync, under the cache's own ``locks/cache.lock``
(exclusive; several processes of a host share one cache):

1. fetch the remote MANIFEST and the version file it names;
2. download every file of that version the cache lacks, each to a temporary
   name, checked (size, and CRC-32 from the DESCRIPTOR or the version entry;
   DESCRIPTOR and version files by decoding them), fsynced and renamed into
   place, so a name present in the cache is a verified file;
3. write the cache MANIFEST last;
4. with ``cache_max_bytes``, delete files the current version does not list,
   oldest first, until the cache fits.

The version is then mapped by the ordinary Reader machinery, with no log
tail: seq is the version's seq.  A damaged or truncated download is a
:class:`~mmwal.CorruptionError` after a bounded number of retries; it is never
renamed into the cache, so never mapped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import zlib
from collections.abc import Iterator
from typing import Any

from .. import _format as F
from .._checkpoint import _rmtree
from .._fsutil import Paths, atomic_write, makedirs, read_file, store_root, tmp_name
from .._lock import FileLock
from .._reader import Reader, _refresh_period, _State
from .._snapshot import _Tail
from .._version import (
    MAX_ID,
    Entry,
    Version,
    decode_deletions,
    decode_version,
    is_versioned,
)
from ..errors import CorruptionError, InvalidInputError, MmwalError
from . import _fs

__all__ = ["RemoteReader"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class _NoLog:
    """The log cursor of a Reader that serves published versions: there is no tail."""

    seg_id = 0

    def frames(self) -> Iterator[Any]:
        return iter(())

    def close(self) -> None:
        pass


class _Gone(Exception):
    """A remote file vanished mid-sync (retired by a newer publish): start over."""


class RemoteReader(Reader):
    """A read-only Reader of a store published with :func:`mmwal.publish`.

    Made by ``mmwal.Reader(url, cache_dir=...)``; see :class:`mmwal.Reader`
    for the read API, which is the same (no log tail: ``seq`` is the
    published version's).

    Parameters
    ----------
    url
        Where the store was published (``s3://bucket/prefix``, ``file:///dir``...).
    cache_dir
        Local directory for downloaded files; shared safely by processes.
    storage_options
        fsspec options (``endpoint_url``, credentials...).
    cache_max_bytes
        Evict files the current version does not list beyond this size.
    refresh_every
        Seconds between background polls of the remote MANIFEST (None: only
        explicit ``refresh()``).
    retries
        Downloads retried after a damaged or truncated transfer.
    """

    def __init__(self, url: str, *, cache_dir: str | os.PathLike[str] | None = None,
                 storage_options: dict[str, Any] | None = None,
                 cache_max_bytes: int | None = None, refresh_every: float | None = None,
                 retries: int = 3, recovery: str = "strict") -> None:
        self._closed = True
        self._thread: threading.Thread | None = None
        self._cache_lock: FileLock | None = None
        if cache_dir is None:
            raise InvalidInputError(f"Reader({url!r}) reads a published store: pass "
                                    "cache_dir=, a local directory for the downloaded files")
        if cache_max_bytes is not None and (isinstance(cache_max_bytes, bool) or not isinstance(
                cache_max_bytes, int) or cache_max_bytes < 0):
            raise InvalidInputError(f"cache_max_bytes must be None or an int >= 0, got "
                                    f"{cache_max_bytes!r}", got=cache_max_bytes)
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
            raise InvalidInputError(f"retries must be an int in 0..100, got {retries!r}",
                                    got=retries)
        period = _refresh_period(refresh_every)
        self.url = url
        self.path = url
        self.recovery = recovery
        self.refresh_every = period
        self.on_refresh = None
        self.cache_max_bytes = cache_max_bytes
        self.retries = retries
        self._fs, self._root = _fs.open_fs(url, storage_options)
        digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:32]
        self.cache_path = os.path.join(store_root(cache_dir), digest)
        self._paths = Paths(self.cache_path)
        makedirs(self._paths.checkpoints)
        makedirs(self._paths.locks)
        self._cache_lock = FileLock(os.path.join(self._paths.locks, "cache.lock"), 300.0)
        self._lock = None
        self.downloaded_files = 0
        self.downloaded_bytes = 0

        def load() -> None:
            with self._locked():
                manifest = self._sync()
                self.dim = manifest["dim"]
                self._state = self._load(manifest)

        self._start(load)

    # ------------------------------------------------------------------ cache
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = self._cache_lock
        assert lock is not None
        lock.acquire_exclusive_slow()
        try:
            yield
        finally:
            lock.release_slow()

    def _remote(self, rel: str) -> str:
        return f"{self._root}/{rel}"

    def _where(self, rel: str) -> str:
        return f"{self.url.rstrip('/')}/{rel}"

    def _cat(self, rel: str) -> bytes:
        try:
            return bytes(self._fs.cat_file(self._remote(rel)))
        except FileNotFoundError:
            raise _Gone(rel) from None

    def _fetch_small(self, rel: str, check: Any) -> bytes:
        """A self-checked file (MANIFEST, version, DESCRIPTOR): download, ``check``, retry."""
        for attempt in range(self.retries + 1):
            raw = self._cat(rel)
            try:
                check(raw)
                return raw
            except CorruptionError:
                if attempt == self.retries:
                    raise
        raise AssertionError("unreachable")

    def _fetch_file(self, f: _fs.RemoteFile, check: Any = None) -> None:
        """Download ``f`` into the cache under a temporary name, check it, rename it in."""
        local = os.path.join(self.cache_path, f.rel)
        makedirs(os.path.dirname(local))
        for attempt in range(self.retries + 1):
            tmp = tmp_name(local)
            try:
                size, crc = self._download(f.rel, tmp, f.size)
                bad = None
                if f.size is not None and size != f.size:
                    bad = (f"{size} bytes, expected {f.size}", min(size, f.size))
                elif f.crc is not None and crc != f.crc:
                    bad = (f"CRC-32 {crc:08x}, expected {f.crc:08x}", 0)
                if bad is not None:
                    raise CorruptionError(f"{self._where(f.rel)}: {bad[0]} (downloaded to "
                                          f"{tmp}, not used)", path=self._where(f.rel),
                                          offset=bad[1])
                if check is not None:  # a deletion vector: decoded against its entry
                    check(read_file(tmp, size))
                os.replace(tmp, local)
                self.downloaded_files += 1
                self.downloaded_bytes += size
                return
            except CorruptionError:
                if attempt == self.retries:
                    raise
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)

    def _download(self, rel: str, tmp: str, size: int | None) -> tuple[int, int]:
        """Stream a remote file to ``tmp`` (fsynced); (bytes written, their CRC-32)."""
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o644)
        crc = n = 0
        try:
            try:
                src = self._fs.open(self._remote(rel), "rb")
            except FileNotFoundError:
                raise _Gone(rel) from None
            with src:
                while True:
                    block = src.read(_fs.CHUNK)
                    if not block:
                        break
                    crc = zlib.crc32(block, crc)
                    n += len(block)
                    if size is not None and n > size:
                        break  # longer than it should be: report without reading it all
                    view = memoryview(block)
                    while view:
                        view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        return n, crc

    def _sync(self) -> dict[str, Any]:
        """Bring the cache to the remote MANIFEST's version (the caller holds the lock)."""
        for _attempt in range(20):
            try:
                m: dict[str, Any] = self._sync_once()
                return m
            except _Gone:
                continue  # retired by a newer publish while we fetched: read the MANIFEST again
        raise CorruptionError(f"{self.url}: files kept vanishing while the remote MANIFEST "
                              "stayed the same; is the publish there complete? retry",
                              path=self.url, offset=0)

    def _sync_once(self) -> dict[str, Any]:
        paths = self._paths
        holder: dict[str, Any] = {}

        def check_manifest(raw: bytes) -> None:
            m = F.decode_manifest(raw, self._where("MANIFEST"))
            if type(m["checkpoint"]) is not int or not 0 <= m["checkpoint"] <= MAX_ID:
                raise CorruptionError(f"{self._where('MANIFEST')}: names version "
                                      f"{m['checkpoint']!r}", path=self._where("MANIFEST"),
                                      offset=F.MANIFEST_HEADER.size)
            holder["m"] = m

        try:
            raw = self._fetch_small("MANIFEST", check_manifest)
        except _Gone:
            from ..errors import StoreNotFoundError

            raise StoreNotFoundError(f"no published mmwal store at {self.url} (no MANIFEST); "
                                     "publish one with mmwal.publish(path, url)",
                                     path=self.url) from None
        m: dict[str, Any] = holder["m"]
        try:
            if read_file(paths.manifest, F.MAX_MANIFEST_BODY + 64) == raw:
                return m  # files the cache MANIFEST names are all there (written last)
        except OSError:
            pass
        dim = m["dim"]
        vid = m["checkpoint"]
        if not vid:
            v = Version(0, m["checkpoint_seq"], 0, ())
        elif not is_versioned(m):
            v = Version(vid, m["checkpoint_seq"], int(m.get("checkpoint_documents", 0)),
                        (Entry(vid, int(m.get("checkpoint_documents", 0)), 0),), legacy=True)
        else:
            v = self._version(vid, dim)
            if v.seq != m["checkpoint_seq"]:
                raise CorruptionError(f"{self._where(_fs.version_rel(vid))}: at seq {v.seq}, "
                                      f"the MANIFEST says {m['checkpoint_seq']}",
                                      path=self._where(_fs.version_rel(vid)), offset=0)
        for e in v.entries:
            d = self._descriptor(e.fid, dim, None if v.legacy else e.rows)
            for f in _fs.fragment_files(e.fid, d, self._where(_fs.descriptor_rel(e.fid))):
                if not self._cached(f):
                    self._fetch_file(f)
        for f in _fs.version_files(v):
            if f.crc is None or self._cached(f):
                continue  # the version file was fetched above
            e = next(x for x in v.entries if _fs.deletion_rel(x.fid, x.dv) == f.rel)
            self._fetch_file(f, check=lambda b, e=e, f=f: decode_deletions(
                b, self._where(f.rel), e))
        atomic_write(paths.manifest, raw)
        if self.cache_max_bytes is not None:
            self._evict(v)
        return m

    def _cached(self, f: _fs.RemoteFile) -> bool:
        try:
            st = os.stat(os.path.join(self.cache_path, f.rel))
        except OSError:
            return False
        return f.size is None or st.st_size == f.size

    def _version(self, vid: int, dim: int) -> Version:
        rel = _fs.version_rel(vid)
        local = os.path.join(self.cache_path, rel)
        try:
            return decode_version(read_file(local, F.MAX_MANIFEST_BODY + 64), local, vid, dim)
        except (OSError, MmwalError):
            pass
        out: dict[str, Version] = {}

        def check(raw: bytes) -> None:
            out["v"] = decode_version(raw, self._where(rel), vid, dim)

        raw = self._fetch_small(rel, check)
        atomic_write(local, raw)
        return out["v"]

    def _descriptor(self, fid: int, dim: int, rows: int | None) -> dict[str, Any]:
        rel = _fs.descriptor_rel(fid)
        local = os.path.join(self.cache_path, rel)
        try:
            return _fs.decode_descriptor(read_file(local, F.MAX_MANIFEST_BODY + 64), local,
                                         fid, dim, rows)
        except (OSError, MmwalError):
            pass
        out: dict[str, Any] = {}

        def check(raw: bytes) -> None:
            out["d"] = _fs.decode_descriptor(raw, self._where(rel), fid, dim, rows)

        raw = self._fetch_small(rel, check)
        makedirs(os.path.dirname(local))
        atomic_write(local, raw)
        return out["d"]  # type: ignore[no-any-return]

    def _evict(self, v: Version) -> None:
        """Delete cached files ``v`` does not list, oldest id first, until the cache fits."""
        limit = self.cache_max_bytes
        assert limit is not None
        keep_frags = {e.fid for e in v.entries}
        keep_dvs = {_fs.deletion_rel(e.fid, e.dv) for e in v.entries if e.dv}
        keep_version = _fs.version_rel(v.id) if v.id and not v.legacy else None
        total = 0
        candidates: list[tuple[int, str, int]] = []
        for dirpath, _dirs, files in os.walk(self._paths.checkpoints):
            for name in files:
                p = os.path.join(dirpath, name)
                try:
                    size = os.stat(p).st_size
                except OSError:
                    continue
                total += size
        for name in os.listdir(self._paths.checkpoints):
            rel = f"checkpoints/{name}"
            k = _fs.parse_rel(rel)
            p = os.path.join(self._paths.checkpoints, name)
            if k is None:
                if _fs.is_temp(name):
                    candidates.append((-1, p, _du(p)))
            elif k[0] == "fragment" and k[1] not in keep_frags:
                candidates.append((k[1], p, _du(p)))
            elif k[0] == "deleted" and rel not in keep_dvs:
                candidates.append((k[2], p, _du(p)))
            elif k[0] == "version" and rel != keep_version:
                candidates.append((k[1], p, _du(p)))
        for _id, p, size in sorted(candidates):
            if total <= limit:
                break
            if os.path.isdir(p):
                _rmtree(p)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p)
            total -= size

    # ------------------------------------------------------------------ Reader hooks
    def _new_state(self, manifest: dict[str, Any]) -> _State:
        return _State(self._map_version(manifest), manifest["checkpoint"],
                      manifest["checkpoint_seq"], _Tail(self.dim, False),
                      _NoLog(), ())  # type: ignore[arg-type]

    def _refresh_state(self) -> None:
        state = self._state
        assert state is not None
        with self._locked():
            m = self._sync()
            if m["checkpoint"] != state.ckpt_id:
                self._switch(m)
        self._publish()

    def _refresh_locked(self) -> int:
        if self._dirty:
            with self._locked():
                self._dirty = False
                self._switch(self._sync(), reuse=False)
        return super()._refresh_locked()

    def _after_fork(self, *, restart: bool = True) -> None:
        gen = self._generation
        super()._after_fork(restart=restart)
        if gen != self._generation and self._cache_lock is not None:
            self._cache_lock.after_fork()

    def close(self) -> None:
        """Stop the refresh thread, drop the mappings and the cache lock; idempotent."""
        closed = self._closed
        if not closed:
            super().close()
        lock = self._cache_lock
        if lock is not None:
            self._cache_lock = None
            lock.close()

    def __repr__(self) -> str:
        if self._closed:
            return f"Reader({self.url!r}, closed)"
        return (f"Reader({self.url!r}, seq={self._snap.seq}, "
                f"checkpoint={self._snap.checkpoint_id}, cache={self.cache_path!r})")


def _du(path: str) -> int:
    if not os.path.isdir(path):
        try:
            return os.stat(path).st_size
        except OSError:
            return 0
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


def clear_cache(cache_dir: str, url: str) -> None:  # used by benchmarks: a cold cache
    """Delete the cached copy of ``url`` under ``cache_dir`` (nobody may be using it)."""
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:32]
    shutil.rmtree(os.path.join(store_root(cache_dir), digest), ignore_errors=True)
