"""Paths of a store and the helpers that publish files durably.

Everything that creates, renames or deletes a file goes through here, and each
of those is followed by an fsync of the directory (RULES.md 9: a created,
renamed or unlinked entry is not durable until its directory is synced).
"""

from __future__ import annotations

import errno
import os
import secrets
import threading
from typing import Any

from . import _io
from .errors import StorageIOError

__all__ = ["Paths", "atomic_write", "boot_id", "read_file"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

#: Files at least this large are unlinked with a descriptor held
#: (:func:`unlink_released`): the kernel frees a file's pages and blocks when
#: its last reference goes, which for a 64 MiB log segment takes tens of ms.
RELEASE_BYTES = 1 << 20
#: At most this many descriptors of unlinked files wait to be closed at once.
RELEASE_MAX = 16

_release_mu = threading.Lock()
_releasing: dict[int, Any] = {}  # descriptor of an unlinked file -> the layer to close it


def _release(fds: list[int]) -> None:
    """Close the descriptors ``unlink_released`` kept (a background thread)."""
    for fd in fds:
        with _release_mu:  # (a fork waits for the close under way: see _fork_*)
            io = _releasing.pop(fd, None)
            if io is not None:
                _close_quietly(io, fd)


def release_pending() -> None:
    """Close now every descriptor that :func:`unlink_released` left to a background thread."""
    with _release_mu:
        fds = list(_releasing)
    _release(fds)


def _fork_before() -> None:
    _release_mu.acquire()


def _fork_after_in_parent() -> None:
    _release_mu.release()


def _fork_after_in_child() -> None:
    # The child's copies of the kept descriptors: closing them frees nothing
    # (the parent still holds them), and the child never holds deleted files.
    # Closed as the OS's, not through the I/O layer they were opened with: a
    # layer may take a lock that a parent thread, absent here, held at the fork.
    for fd in _releasing:
        try:
            os.close(fd)
        except OSError:
            pass
    _releasing.clear()
    _release_mu.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_fork_before, after_in_parent=_fork_after_in_parent,
                        after_in_child=_fork_after_in_child)


def _hold_if_large(io: _io.OSLayer, path: str) -> int:
    """A descriptor of ``path`` if it is at least :data:`RELEASE_BYTES` long, else -1.

    Every other outcome closes what it opened exactly once: close(2) frees
    the number even when it reports an error, and a second close could hit a
    file another thread has opened under that number since.
    """
    try:
        fd = io.open(path, os.O_RDONLY | _O_CLOEXEC)
    except OSError:
        return -1
    try:
        large = io.fstat(fd).st_size >= RELEASE_BYTES
    except OSError:
        large = False
    except BaseException:
        _close_quietly(io, fd)
        raise
    if not large:
        _close_quietly(io, fd)
        return -1
    return fd


def _close_quietly(io: _io.OSLayer, fd: int) -> None:
    """Close ``fd`` once; an error reported by close is ignored (the number is freed)."""
    try:
        io.close(fd)
    except OSError:
        pass


def unlink_released(paths: list[str]) -> list[str]:
    """Unlink ``paths``; those missing already are returned (the others' errors raise).

    The directory entries are gone when this returns; the pages and blocks of
    a large file (:data:`RELEASE_BYTES`) are freed by a background thread:
    its descriptor is held across the unlink and closed there, so the last
    reference, and the freeing, goes off the caller's path.  When no
    descriptor can be held (any error, or :data:`RELEASE_MAX` already wait)
    the file is unlinked as it is, freed in place.
    """
    io = _io.layer
    missing: list[str] = []
    kept: list[int] = []
    try:
        for p in paths:
            # Opened and listed under the lock: a fork waits for both, and the
            # child closes its copy of every descriptor held (_fork_after_in_child).
            with _release_mu:
                fd = _hold_if_large(io, p) if len(_releasing) < RELEASE_MAX else -1
                if fd >= 0:
                    _releasing[fd] = io
                    kept.append(fd)
            try:
                io.unlink(p)
            except FileNotFoundError:
                missing.append(p)
            except OSError as exc:
                raise _io.io_error(exc, "unlink", p) from None
    finally:
        if kept:
            try:
                threading.Thread(target=_release, args=(kept,), name="mmwal-release",
                                 daemon=True).start()
            except RuntimeError:  # no new thread (interpreter shutdown): close here
                _release(kept)
    return missing


def store_root(path: Any) -> str:
    """The absolute str path of a store argument; InvalidInputError for what is no path.

    Accepts str, bytes (decoded as the filesystem does) and ``os.PathLike``.
    Refuses other types, an empty path (it would silently mean the current
    directory) and a NUL byte, which the OS cannot take.
    """
    from .errors import InvalidInputError

    try:
        p = os.fsdecode(os.fspath(path))
    except TypeError:
        raise InvalidInputError(f"path must be a str or os.PathLike, got {type(path).__name__}",
                                got=type(path).__name__) from None
    if not p:
        raise InvalidInputError("path is empty: pass the store directory ('.' for the current "
                                "directory)")
    if "\0" in p:
        raise InvalidInputError(f"path {p!r:.80} holds a NUL byte, which no filesystem path "
                                "can hold")
    return os.path.abspath(p)


class Paths:
    """The file names of a store rooted at ``root`` (see docs/format.md)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.manifest = os.path.join(self.root, "MANIFEST")
        self.locks = os.path.join(self.root, "locks")
        self.append_lock = os.path.join(self.locks, "append.lock")
        self.checkpoint_lock = os.path.join(self.locks, "checkpoint.lock")
        self.tail = os.path.join(self.root, "tail")
        self.wal = os.path.join(self.root, "wal")
        self.checkpoints = os.path.join(self.root, "checkpoints")

    def segment(self, seg_id: int) -> str:
        return os.path.join(self.wal, f"{seg_id:020d}.seg")

    def checkpoint(self, ckpt_id: int) -> str:
        return os.path.join(self.checkpoints, f"{ckpt_id:08d}")


def parse_segment_name(name: str) -> int | None:
    """The segment id of a file name in ``wal/``, or None for anything else."""
    if len(name) == 24 and name.endswith(".seg") and name[:20].isdigit():
        return int(name[:20])
    return None


def list_segments(paths: Paths) -> list[int]:
    """Ids of the segments present, ascending (temp files ignored)."""
    io = _io.layer
    try:
        names = io.listdir(paths.wal)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise _io.io_error(exc, "listdir", paths.wal) from None
    return sorted(i for i in map(parse_segment_name, names) if i is not None)


def tmp_name(path: str) -> str:
    d, base = os.path.split(path)
    return os.path.join(d, f".tmp-{base}-{secrets.token_hex(4)}")


def write_all(fd: int, data: Any, offset: int, path: str) -> None:
    """pwrite all of ``data`` at ``offset``; a short write is continued, an error raised."""
    io = _io.layer
    view = memoryview(data)
    done = 0
    while done < len(view):
        try:
            n = io.pwrite(fd, view[done:], offset + done)
        except OSError as exc:
            raise _io.io_error(exc, "write", path) from None
        if n <= 0:
            raise StorageIOError(f"write to {path} made no progress at offset {offset + done}",
                                 err=None, path=path, op="write")
        done += n


def fsync_dir(path: str) -> None:
    try:
        _io.layer.fsync_dir(path)
    except OSError as exc:
        raise _io.io_error(exc, "fsync", path) from None


def atomic_write(path: str, data: bytes, *, replace: bool = True,
                 sync_dir: bool = True) -> None:
    """Publish ``data`` at ``path``: temp file, fsync, rename, fsync directory.

    With ``replace=False`` an existing ``path`` is never clobbered
    (FileExistsError, as a StorageIOError): used for new log segments.
    ``sync_dir=False`` leaves the directory fsync to the caller, who renames
    several files into it and then fsyncs it once.
    """
    io = _io.layer
    tmp = tmp_name(path)
    try:
        fd = io.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, 0o644)
    except OSError as exc:
        raise _io.io_error(exc, "open", tmp) from None
    try:
        try:
            write_all(fd, data, 0, tmp)
            io.fsync(fd)
        except OSError as exc:
            raise _io.io_error(exc, "fsync", tmp) from None
        finally:
            io.close(fd)
        try:
            if replace:
                io.replace(tmp, path)
            else:
                if os.path.exists(path):
                    raise FileExistsError(errno.EEXIST, "exists", path)
                io.rename(tmp, path)
        except OSError as exc:
            raise _io.io_error(exc, "rename", path) from None
    except BaseException:
        try:
            io.unlink(tmp)
        except OSError:
            pass
        raise
    if sync_dir:
        fsync_dir(os.path.dirname(path))


def read_file(path: str, limit: int) -> bytes:
    """Read a whole small file, refusing one larger than ``limit`` bytes."""
    io = _io.layer
    fd = io.open(path, os.O_RDONLY | _O_CLOEXEC)
    try:
        size = io.fstat(fd).st_size
        if size > limit:
            from .errors import CorruptionError

            raise CorruptionError(f"{path}: {size} bytes, at most {limit} expected",
                                  path=path, offset=limit)
        return io.pread(fd, size, 0)
    finally:
        io.close(fd)


def _not_a_directory(path: str) -> Exception:
    from .errors import InvalidInputError

    return InvalidInputError(f"{path} exists and is not a directory, so no store can be made "
                             "there; an mmwal store is a directory: pass a path whose parts "
                             "are directories (or do not exist yet)", path=path)


def makedirs(path: str) -> None:
    """Create ``path`` (and parents) if missing; fsync each parent whose entry was added."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    makedirs(parent)
    try:
        _io.layer.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise _not_a_directory(path) from None
        return
    except NotADirectoryError:
        raise _not_a_directory(parent) from None
    except OSError as exc:
        raise _io.io_error(exc, "mkdir", path) from None
    fsync_dir(parent)


NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "ceph", "glusterfs",
    "fuse.glusterfs", "afs", "lustre", "gpfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone",
})


def filesystem_type(path: str) -> str | None:
    """The filesystem type of the mount holding ``path`` (Linux), or None if unknown."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    real = os.path.realpath(path)
    best, fstype = -1, None
    for line in lines:
        left, sep, right = line.partition(" - ")
        parts = left.split()
        if not sep or len(parts) < 5 or not right:
            continue
        mnt = parts[4].replace("\\040", " ")
        if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > best:
            best, fstype = len(mnt), right.split()[0]
    return fstype


def check_filesystem(path: str) -> None:
    """Refuse network filesystems (RULES.md 18) unless MMWAL_ALLOW_NETWORK_FS=1."""
    fstype = filesystem_type(path)
    if fstype in NETWORK_FILESYSTEMS and os.environ.get("MMWAL_ALLOW_NETWORK_FS") != "1":
        from .errors import UnsupportedFilesystemError

        raise UnsupportedFilesystemError(
            f"{path} is on a {fstype} filesystem: flock and shared page-cache visibility, which "
            "mmwal's multi-process protocol relies on, are not reliable there. Put the store "
            "on a local disk, or set MMWAL_ALLOW_NETWORK_FS=1 to open it anyway with a single "
            "writer process", path=path, fstype=fstype)


_boot: bytes | None = None


def _boot_id_without_proc() -> bytes:
    """macOS: the kernel's per-boot session UUID; else the boot time.

    A value that changes when it need not only makes writers rebuild the tail
    record (always safe); one that stays the same across a reboot would make
    them trust a stale record, hence the UUID first.
    """
    import subprocess

    try:
        out = subprocess.run(["/usr/sbin/sysctl", "-n", "kern.bootsessionuuid"],
                             capture_output=True, text=True, timeout=5,
                             check=True).stdout.strip()
        return bytes.fromhex(out.replace("-", ""))[:16].ljust(16, b"\0")
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    try:
        out = subprocess.run(["/usr/sbin/sysctl", "-n", "kern.boottime"], capture_output=True,
                             text=True, timeout=5, check=True).stdout
        # "{ sec = 1700000000, usec = 123456 } ..."
        digits = "".join(ch if ch.isdigit() else " " for ch in out.split("}")[0]).split()
        return int("".join(digits[:2]) or "0").to_bytes(16, "little")
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    import time

    return int(time.time() - time.monotonic()).to_bytes(16, "little", signed=True)


def boot_id() -> bytes:
    """16 bytes that change at every boot (the tail record is trusted only within one)."""
    global _boot
    if _boot is None:
        try:
            with open("/proc/sys/kernel/random/boot_id", "rb") as f:
                text = f.read().decode().strip().replace("-", "")
            _boot = bytes.fromhex(text)[:16].ljust(16, b"\0")
        except (OSError, ValueError):
            _boot = _boot_id_without_proc()
    return _boot
