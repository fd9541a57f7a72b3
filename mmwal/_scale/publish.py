"""``mmwal.publish``: upload the current version to an fsspec URL, MANIFEST last.

Protocol (docs/scale-out.md, "Publishing"):

1. Under ``locks/checkpoint.lock`` held *shared* (a checkpoint or compaction
   then waits, so nothing the version lists is retired meanwhile), read the
   MANIFEST and the version it names and open every file the version lists:
   fragment files, deletion vectors, the version file.  Open descriptors keep
   the bytes readable after the lock is released even if a checkpoint then
   retires the files (unlink never invalidates an open file).
2. List the destination once.  Every name in ``checkpoints/`` is immutable
   and unique (fragments, deletion vectors and version files are never
   rewritten, and a published id is never reused), so a destination object
   with the same name and size holds the same bytes: skip it.  Any other
   file is checked (size, and CRC-32 where the DESCRIPTOR or the version
   entry gives one) and uploaded.
3. Upload the MANIFEST last: a remote MANIFEST only ever names a version
   whose files are all there.  A publish killed half way leaves whole or
   partial objects that no remote MANIFEST names; the next publish skips the
   whole ones and overwrites the partial ones (their size differs).
4. With ``keep``: delete remote version files beyond the newest ``keep``
   (version files first), then every fragment or deletion vector that no
   kept remote version lists.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from .. import _format as F
from .._fsutil import Paths, read_file, store_root
from .._lock import FileLock
from .._version import Version, decode_version, open_manifest, read_version
from ..errors import CorruptionError, InvalidInputError, MmwalError, StorageIOError
from . import _fs
from ._fs import RemoteFile

__all__ = ["PublishInfo", "publish"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class PublishInfo:
    """What one :func:`mmwal.publish` did.

    ``version`` is the version the remote MANIFEST names afterwards;
    ``files_uploaded``/``bytes_uploaded`` count what was sent (the MANIFEST
    included), ``files_skipped`` what the destination already had,
    ``files_deleted`` what remote retention removed.
    """

    version: int
    files_uploaded: int
    bytes_uploaded: int
    files_skipped: int
    seconds: float
    url: str
    files_deleted: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Item:
    """One file to publish: relative name, expected size and CRC, and its bytes or descriptor."""

    __slots__ = ("crc", "data", "fd", "path", "rel", "size")

    def __init__(self, f: RemoteFile, path: str, *, data: bytes | None = None,
                 fd: int = -1) -> None:
        self.rel = f.rel
        self.size = len(data) if data is not None else f.size
        self.crc = f.crc
        self.path = path
        self.data = data
        self.fd = fd


@contextlib.contextmanager
def _listed_file(path: str, op: str) -> Iterator[None]:
    """Errors of ``op`` on a file the current version lists, typed: missing is damage."""
    try:
        yield
    except FileNotFoundError:
        raise CorruptionError(f"{path}: missing, the current version lists it; run `mmwal "
                              "verify`", path=path, offset=0) from None
    except OSError as exc:
        raise StorageIOError(f"cannot {op} {path}: {os.strerror(exc.errno or 0)}",
                             err=exc.errno, path=path, op=op) from None


def _open(path: str) -> int:
    with _listed_file(path, "open"):
        return os.open(path, os.O_RDONLY | _O_CLOEXEC)


def _read(path: str, limit: int) -> bytes:
    with _listed_file(path, "read"):
        return read_file(path, limit)


def _plan(paths: Paths) -> tuple[bytes, Version, list[_Item]]:
    """Step 1, under the shared checkpoint lock: the MANIFEST, its version, open files."""
    lock = FileLock(paths.checkpoint_lock, 60.0, readonly=True)
    items: list[_Item] = []
    try:
        lock.acquire_shared()
        try:
            open_manifest(paths)  # a clear StoreNotFoundError for a directory that is no store
            raw = _read(paths.manifest, F.MAX_MANIFEST_BODY + 64)
            manifest = F.decode_manifest(raw, paths.manifest)
            v = read_version(paths, manifest)
            dim = manifest["dim"]
            for e in v.entries:
                dpath = os.path.join(paths.checkpoint(e.fid), "DESCRIPTOR")
                draw = _read(dpath, F.MAX_MANIFEST_BODY + 64)
                d = _fs.decode_descriptor(draw, dpath, e.fid, dim,
                                          None if v.legacy else e.rows)
                for f in _fs.fragment_files(e.fid, d, dpath):
                    p = os.path.join(paths.root, f.rel)
                    items.append(_Item(f, p, fd=_open(p)))
                items.append(_Item(RemoteFile(_fs.descriptor_rel(e.fid), None, None), dpath,
                                   data=draw))
            for f in _fs.version_files(v):
                p = os.path.join(paths.root, f.rel)
                if f.crc is None:  # the version file: checked by decoding it
                    vraw = _read(p, F.MAX_MANIFEST_BODY + 64)
                    decode_version(vraw, p, v.id, dim)
                    items.append(_Item(f, p, data=vraw))
                else:
                    items.append(_Item(f, p, fd=_open(p)))
        finally:
            lock.release_slow()
    except BaseException:
        for it in items:
            if it.fd >= 0:
                os.close(it.fd)
        raise
    finally:
        lock.close()
    return raw, v, items


def _check(it: _Item) -> None:
    """Size and CRC-32 of a local file against its DESCRIPTOR or version entry."""
    if it.fd < 0:
        return
    size = os.fstat(it.fd).st_size
    if size != it.size:
        raise CorruptionError(f"{it.path}: {size} bytes, expected {it.size}; not published "
                              "(run `mmwal verify`)", path=it.path, offset=min(size, it.size or 0))
    crc = _fs.crc_of(it.fd, size, it.path)
    if it.crc is not None and crc != it.crc:
        raise CorruptionError(f"{it.path}: CRC-32 {crc:08x}, expected {it.crc:08x}; not "
                              "published (run `mmwal verify`)", path=it.path, offset=0)


def _is_local(fs: Any) -> bool:
    proto = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return bool({"file", "local"} & set(proto))


def _put(fs: Any, remote: str, it: _Item) -> None:
    """Upload one file (whole; a killed upload leaves a partial object or none)."""
    if _is_local(fs):
        fs.makedirs(posixpath.dirname(remote), exist_ok=True)
    if it.data is not None:
        fs.pipe_file(remote, it.data)
        return
    assert it.size is not None
    with fs.open(remote, "wb") as out:
        pos = 0
        while pos < it.size:
            block = os.pread(it.fd, min(_fs.CHUNK, it.size - pos), pos)
            if not block:
                raise CorruptionError(f"{it.path}: ends at offset {pos} while uploading",
                                      path=it.path, offset=pos)
            out.write(block)
            pos += len(block)


def _put_manifest(fs: Any, remote: str, data: bytes) -> None:
    """Replace the remote MANIFEST in one step (object stores: one PUT; a directory: rename)."""
    if _is_local(fs):
        fs.makedirs(posixpath.dirname(remote), exist_ok=True)
        tmp = f"{posixpath.dirname(remote)}/.tmp-MANIFEST-{secrets.token_hex(4)}"
        fs.pipe_file(tmp, data)
        os.replace(tmp, remote)
    else:
        fs.pipe_file(remote, data)


def _listing(fs: Any, root: str) -> dict[str, int]:
    """Relative name -> size of every object under ``root/checkpoints``."""
    with contextlib.suppress(Exception):
        fs.invalidate_cache(root)
    try:
        found = fs.find(f"{root}/checkpoints", detail=True)
    except FileNotFoundError:
        return {}
    out = {}
    prefix = root + "/"
    for key, info in found.items():
        p = str(key).rstrip("/")
        if p.startswith(prefix) and info.get("type") != "directory":
            out[p[len(prefix):]] = int(info.get("size") or 0)
    return out




def _retire(fs: Any, root: str, current: Version, dim: int, keep: int) -> int:
    """Step 4: remote retention; returns how many files it deleted."""
    listing = _listing(fs, root)
    kinds = {rel: _fs.parse_rel(rel) for rel in listing}
    vids = sorted({k[1] for k in kinds.values() if k and k[0] == "version"})
    older = [x for x in vids if x < current.id]
    kept_older = older[max(0, len(older) - (keep - 1)):] if keep > 1 else []
    kept = [current]
    for vid in kept_older:
        rel = _fs.version_rel(vid)
        try:
            kept.append(decode_version(bytes(fs.cat_file(f"{root}/{rel}")), rel, vid, dim))
        except (MmwalError, OSError):
            return 0  # a kept version cannot be read: delete nothing it might list
    frags = {e.fid for v in kept for e in v.entries}
    dvs = {(e.fid, e.dv) for v in kept for e in v.entries if e.dv}
    gone_versions = [rel for rel, k in kinds.items()
                     if k and k[0] == "version" and k[1] < current.id and k[1] not in kept_older]
    gone: set[str] = set()
    for rel, k in kinds.items():
        if k is None:
            if _fs.is_temp(rel):
                gone.add(rel)
            continue
        # Ids above the current version belong to a newer publish: never ours to delete.
        unlisted = (k[1] not in frags if k[0] == "fragment"
                    else (k[1], k[2]) not in dvs if k[0] == "deleted" else False)
        if unlisted and max(k[1], k[2]) <= current.id:
            gone.add(rel)
    n = 0
    # Version files first: a fragment half deleted is then listed by no remote version.
    for batch in (gone_versions, sorted(gone)):
        for rel in batch:
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(f"{root}/{rel}")
                n += 1
    if _is_local(fs):  # empty fragment directories
        for rel, k in kinds.items():
            if k and k[0] == "fragment" and rel in gone:
                with contextlib.suppress(OSError):
                    os.rmdir(posixpath.dirname(f"{root}/{rel}"))
    return n


def publish(path: str | os.PathLike[str], url: str, *,
            storage_options: dict[str, Any] | None = None,
            keep: int | None = None) -> PublishInfo:
    """Upload the store's current version to ``url`` (any fsspec URL); the MANIFEST last.

    Uploads only the fragment files, deletion vectors and version file that
    the destination lacks, so publishing after each checkpoint costs the new
    fragment, not the store.  Idempotent, and resumable after a crash part way
    (run it again).  One publisher per URL at a time (e.g. the job that runs
    the checkpoints); a publish never moves the remote MANIFEST back to an
    older version.

    Parameters
    ----------
    path
        A local store (writers may keep writing; the checkpoint lock is held
        shared only while the files are opened).
    url
        ``s3://bucket/prefix``, ``gs://...``, ``file:///abs/dir`` ... (needs
        ``pip install 'mmwal[s3]'``: fsspec, and s3fs for ``s3://``).
    storage_options
        Passed to fsspec (e.g. ``{"endpoint_url": ..., "key": ..., "secret": ...}``).
    keep
        Remote retention: keep the newest ``keep`` versions (>= 1) and delete
        the files no kept version lists.  None keeps every remote version.

    Returns
    -------
    PublishInfo

    Examples
    --------
    >>> import mmwal, tempfile
    >>> d, dest = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> with mmwal.Store(d, dim=2, durability="os") as s:
    ...     _ = s.add("a", [1.0, 0.0]); _ = s.checkpoint()
    >>> info = mmwal.publish(d, "file://" + dest)
    >>> info.version, info.files_skipped, mmwal.publish(d, "file://" + dest).files_uploaded
    (1, 0, 0)
    """
    t0 = time.monotonic()
    if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
        raise InvalidInputError(f"keep must be None or an int >= 1, got {keep!r}", got=keep)
    paths = Paths(store_root(path))
    fs, root = _fs.open_fs(url, storage_options)
    raw, v, items = _plan(paths)
    uploaded = skipped = nbytes = 0
    try:
        have = _listing(fs, root)
        for it in items:
            if have.get(it.rel, -1) == it.size:
                skipped += 1
                continue
            _check(it)
            _put(fs, f"{root}/{it.rel}", it)
            uploaded += 1
            nbytes += it.size or 0
    finally:
        for it in items:
            if it.fd >= 0:
                os.close(it.fd)
    current_raw, current = remote_manifest_or_none(fs, root)
    version = v.id
    if current is not None and current["checkpoint"] > v.id:
        version = current["checkpoint"]  # a newer version is already published there
    elif current_raw == raw:
        skipped += 1
    else:
        _put_manifest(fs, f"{root}/MANIFEST", raw)
        uploaded += 1
        nbytes += len(raw)
    deleted = 0
    if keep is not None and version == v.id:
        deleted = _retire(fs, root, v, F.decode_manifest(raw, paths.manifest)["dim"], keep)
    return PublishInfo(version, uploaded, nbytes, skipped, time.monotonic() - t0, url, deleted)


def remote_manifest_or_none(fs: Any, root: str) -> tuple[bytes, dict[str, Any] | None]:
    """The remote MANIFEST's bytes and body; (b"", None) when missing or unreadable."""
    try:
        raw = bytes(fs.cat_file(f"{root}/MANIFEST"))
        return raw, F.decode_manifest(raw, f"{root}/MANIFEST")
    except (FileNotFoundError, MmwalError):
        return b"", None

