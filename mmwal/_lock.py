"""The one lock module: flock on dedicated lock files, plus a thread lock.

Rules followed (RULES.md 13-17):

* Lock files live in ``locks/`` and are never replaced, truncated or deleted.
* flock semantics (portalocker's default on Unix), never ``lockf``: a POSIX
  record lock is dropped when *any* descriptor of the file is closed, which
  ``np.load(mmap_mode=...)`` and ``mmap.close()`` do.
* flock belongs to the open file description, so threads sharing the
  descriptor are not excluded by it: a ``threading.Lock`` is taken first.
* After ``fork`` the child's descriptor shares the parent's open file
  description; unlocking it would release the *parent's* lock.  A lock used in
  a child reopens its file and never touches the inherited descriptor.

portalocker provides timeouts, non-blocking tries, error translation and
portability for every lock except the per-append exclusive lock.  There,
``fcntl.flock`` is called directly: measured on the dev machine,
``portalocker.lock`` + ``unlock`` costs about 7.3 us against about 1.0 us for
the flock it wraps (DESIGN.md) - half the per-append budget.  On contention the
hot path never polls at portalocker's default 0.25 s (RULES.md 17): it yields
and retries for a few microseconds, then blocks in the kernel (no timeout) or
backs off from 50 us to 1 ms (with a timeout).
"""

from __future__ import annotations

import errno
import os
import sys

if sys.platform == "win32":  # pragma: no cover - refused, not supported
    raise ImportError(
        "mmwal v1 supports Linux and macOS only: its locking relies on flock(2) and on "
        "POSIX mmap semantics (unlinked files stay mapped); run it under WSL2 on Windows")

import fcntl
import threading
import time

import portalocker

from .errors import LockTimeout, StorageIOError

__all__ = ["FileLock"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_flock = fcntl.flock
_LOCK_EX_NB = fcntl.LOCK_EX | fcntl.LOCK_NB
_LOCK_UN = fcntl.LOCK_UN
_BUSY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)


class FileLock:
    """A flock on ``path`` owned by one process, safe across threads and fork.

    ``acquire_exclusive``/``release`` form the hot path; ``acquire_shared`` and
    ``try_exclusive`` go through portalocker.
    """

    def __init__(self, path: str, timeout: float | None, *, readonly: bool = False) -> None:
        self.path = path
        self.timeout = timeout
        self.readonly = readonly
        self.thread_lock = threading.Lock()
        self._pid = os.getpid()
        self._fd = self._open()

    @classmethod
    def for_reader(cls, path: str, timeout: float | None = 30.0) -> FileLock | None:
        """A lock opened read-only (readers create nothing); None if the file is missing."""
        try:
            return cls(path, timeout, readonly=True)
        except StorageIOError:
            return None

    def _open(self) -> int:
        try:
            if self.readonly:
                # flock works on a read-only descriptor; a reader never creates files.
                return os.open(self.path, os.O_RDONLY | _O_CLOEXEC)
            # O_CREAT without O_TRUNC: the file is created once and never changed.
            return os.open(self.path, os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageIOError(
                f"cannot open lock file {self.path}: {os.strerror(exc.errno or 0)}",
                err=exc.errno, path=self.path, op="open",
            ) from None

    def after_fork(self) -> None:
        """In a forked child: drop the inherited descriptor without unlocking it."""
        # Closing our copy does not release the parent's lock (the parent's
        # descriptor keeps the open file description alive); LOCK_UN would.
        try:
            os.close(self._fd)
        except OSError:
            pass
        self.thread_lock = threading.Lock()
        self._pid = os.getpid()
        self._fd = self._open()

    # ------------------------------------------------------------ hot path
    def acquire_exclusive(self) -> None:
        """Take the thread lock and the exclusive flock (the per-append lock)."""
        tl = self.thread_lock
        if not tl.acquire(False) and not tl.acquire(
            timeout=-1 if self.timeout is None else self.timeout
        ):
            raise self._timeout("exclusive (another thread of this process holds it)")
        try:
            _flock(self._fd, _LOCK_EX_NB)
        except OSError as exc:
            if exc.errno not in _BUSY:
                self.thread_lock.release()
                raise
            try:
                self._wait_exclusive()
            except BaseException:
                self.thread_lock.release()
                raise

    def _wait_exclusive(self) -> None:
        # Holders keep the append lock for microseconds: yield the CPU a few
        # times before sleeping; a sleeping poller would leave the lock idle.
        for _ in range(64):
            os.sched_yield()
            try:
                _flock(self._fd, _LOCK_EX_NB)
                return
            except OSError as exc:
                if exc.errno not in _BUSY:
                    raise
        if self.timeout is None:
            _flock(self._fd, fcntl.LOCK_EX)  # kernel-queued, no polling
            return
        deadline = time.monotonic() + self.timeout
        delay = 5e-5
        while True:
            try:
                _flock(self._fd, _LOCK_EX_NB)
                return
            except OSError as exc:
                if exc.errno not in _BUSY:
                    raise
            if time.monotonic() >= deadline:
                raise self._timeout("exclusive")
            time.sleep(delay)
            delay = min(delay * 2, 1e-3)

    def release(self) -> None:
        """Release the flock, then the thread lock."""
        try:
            _flock(self._fd, _LOCK_UN)
        finally:
            self.thread_lock.release()

    # ------------------------------------------------------------ portalocker paths
    def acquire_shared(self, timeout: float | None = None) -> None:
        """Take the thread lock and a shared flock (readers re-checking the tail)."""
        self._portalock(portalocker.LockFlags.SHARED, timeout)

    def acquire_exclusive_slow(self, timeout: float | None = None) -> None:
        """Take the exclusive lock through portalocker (rare paths: checkpoint, create)."""
        self._portalock(portalocker.LockFlags.EXCLUSIVE, timeout)

    def try_exclusive(self) -> bool:
        """Take the exclusive lock if it is free now; return whether it was taken."""
        if not self.thread_lock.acquire(blocking=False):
            return False
        try:
            flags = portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING
            portalocker.lock(self._fd, flags)
            return True
        except portalocker.LockException:
            self.thread_lock.release()
            return False
        except BaseException:
            self.thread_lock.release()
            raise

    def _portalock(self, flags: portalocker.LockFlags, timeout: float | None) -> None:
        timeout = self.timeout if timeout is None else timeout
        if not self.thread_lock.acquire(timeout=-1 if timeout is None else timeout):
            raise self._timeout("shared" if flags & portalocker.LockFlags.SHARED else "exclusive")
        try:
            if timeout is None:
                portalocker.lock(self._fd, flags)  # blocking in the kernel
                return
            deadline = time.monotonic() + timeout
            delay = 1e-4
            while True:
                try:
                    portalocker.lock(self._fd, flags | portalocker.LockFlags.NON_BLOCKING)
                    return
                except portalocker.LockException:
                    if time.monotonic() >= deadline:
                        raise self._timeout(
                            "shared" if flags & portalocker.LockFlags.SHARED else "exclusive"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 1e-3)  # never portalocker's 0.25 s default
        except BaseException:
            self.thread_lock.release()
            raise

    def release_slow(self) -> None:
        try:
            portalocker.unlock(self._fd)
        finally:
            self.thread_lock.release()

    def _timeout(self, how: str) -> LockTimeout:
        return LockTimeout(
            f"could not take the {how} lock {self.path} within {self.timeout} s: another "
            "process holds it (a stuck or stopped writer or checkpointer?); raise "
            "Config.lock_timeout or find the holder with `fuser -v` on the lock file",
            path=self.path, timeout=self.timeout,
        )

    def close(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            finally:
                self._fd = -1
