"""The one door through which every file operation of mmwal passes.

The library never calls ``os.open``/``os.pwrite``/``os.fsync``/``os.replace``...
directly: it calls the methods of :data:`layer`, an :class:`OSLayer`.  A test
can install another layer (see ``mmwal/_faults.py``) to simulate power loss or
inject EIO/ENOSPC at an exact operation.  The default layer's methods *are* the
``os`` functions (bound as attributes, not wrapped), so the hot path pays one
attribute lookup and nothing more.

Every ``OSError`` raised by a layer is translated by the caller into
:class:`mmwal.errors.StorageIOError` with the errno, the file and the
operation (see :func:`io_error`).
"""

from __future__ import annotations

import mmap
import os
import sys
from collections.abc import Callable
from typing import Any

from .errors import StorageIOError

__all__ = ["OSLayer", "io_error", "layer", "set_layer"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _fdatasync_default() -> Callable[[int], None]:
    if sys.platform == "darwin":  # pragma: no cover - not exercised on Linux CI
        import fcntl

        full = getattr(fcntl, "F_FULLFSYNC", None)

        def fullsync(fd: int) -> None:
            # fsync on macOS does not flush the drive cache (RULES.md 8).
            if full is not None:
                fcntl.fcntl(fd, full)
            else:
                os.fsync(fd)

        return fullsync
    return getattr(os, "fdatasync", os.fsync)


def _start_writeback_default() -> Callable[[int, int, int], None]:
    """``start_writeback(fd, offset, nbytes)``: a hint to start writing dirty pages out.

    Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``: the kernel begins writing
    the range back and returns; nothing is made durable (an ``fsync`` still
    does that), so a large file being built is mostly on its way to the disk
    by the time its ``fsync`` comes.  Elsewhere (or without libc) it does
    nothing.  Errors are ignored: the ``fsync`` that follows reports them.
    """
    def nothing(fd: int, offset: int, nbytes: int) -> None:
        return None

    if not sys.platform.startswith("linux"):
        return nothing
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn.restype = ctypes.c_int
    except (ImportError, OSError, AttributeError):  # pragma: no cover - no libc symbol
        return nothing
    write_only = 2  # SYNC_FILE_RANGE_WRITE

    def start(fd: int, offset: int, nbytes: int) -> None:
        fn(fd, offset, nbytes, write_only)

    return start


_start_writeback: Callable[[int, int, int], None] | None = None


class OSLayer:
    """The real operating system.  Subclass and override to inject faults."""

    # Plain functions stored on the instance: calling ``layer.pwrite`` costs the
    # same as calling ``os.pwrite``.
    def __init__(self) -> None:
        self.open: Callable[..., int] = os.open
        self.close: Callable[[int], None] = os.close
        self.pwrite: Callable[[int, Any, int], int] = os.pwrite
        self.pread: Callable[[int, int, int], bytes] = os.pread
        self.fstat: Callable[[int], os.stat_result] = os.fstat
        self.fdatasync: Callable[[int], None] = _fdatasync_default()
        self.fsync: Callable[[int], None] = os.fsync if sys.platform != "darwin" else self.fdatasync
        self.replace: Callable[[str, str], None] = os.replace
        self.rename: Callable[[str, str], None] = os.rename
        self.unlink: Callable[[str], None] = os.unlink
        self.mkdir: Callable[[str], None] = os.mkdir
        self.rmdir: Callable[[str], None] = os.rmdir
        self.ftruncate: Callable[[int, int], None] = os.ftruncate
        self.listdir: Callable[[str], list[str]] = os.listdir
        self.stat: Callable[[str], os.stat_result] = os.stat

    def start_writeback(self, fd: int, offset: int, nbytes: int) -> None:
        """Hint: start writing ``nbytes`` at ``offset`` of ``fd`` back (nothing durable).

        See :func:`_start_writeback_default` (looked up on first use).
        """
        global _start_writeback
        if _start_writeback is None:
            _start_writeback = _start_writeback_default()
        _start_writeback(fd, offset, nbytes)

    def mmap(self, fd: int, length: int, *, write: bool = False) -> mmap.mmap:
        """Map ``length`` bytes of ``fd`` shared; read-only unless ``write``."""
        access = mmap.ACCESS_WRITE if write else mmap.ACCESS_READ
        return mmap.mmap(fd, length, access=access)

    def fsync_dir(self, path: str) -> None:
        """Make the directory entries of ``path`` durable (create/rename/unlink)."""
        fd = self.open(path, os.O_RDONLY | _O_CLOEXEC)
        try:
            self.fsync(fd)
        finally:
            self.close(fd)


layer: OSLayer = OSLayer()


def set_layer(new: OSLayer | None) -> OSLayer:
    """Install ``new`` as the I/O layer (``None`` restores the real one); return the old.

    Stores and Readers bind the layer when they are opened: install the layer
    before opening them.
    """
    global layer
    old = layer
    layer = new if new is not None else OSLayer()
    return old


def io_error(exc: OSError, op: str, path: str) -> StorageIOError:
    """Translate an ``OSError`` from ``op`` on ``path`` into a ``StorageIOError``."""
    what = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = {
        28: "free some disk space, then open a new Store",
        5: "the device reported an I/O error; check the disk and run `mmwal verify`",
        13: "check the permissions of the store directory",
        30: "the filesystem is read-only",
    }.get(exc.errno or 0, "see the errno for the cause")
    return StorageIOError(f"{op} failed on {path}: {what} ({hint})", err=exc.errno, path=path,
                          op=op)
