"""Every error mmwal raises on purpose.

All of them derive from :class:`MmwalError`, and each one also derives from the
built-in exception a careful caller would catch for the same situation
(``ValueError`` for bad input or bad bytes, ``TimeoutError`` for a lock that
could not be taken, ``FileNotFoundError`` for a missing store, ``OSError`` for an
I/O failure).  Messages say what went wrong, where (path, offset) and what to
do; the facts are also attributes.  Every error pickles, so it survives being
sent back from a worker process.  :class:`CheckpointWarning` is the one warning
category: a failure reported beside a result rather than in place of it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CheckpointWarning",
    "ClosedError",
    "CorruptionError",
    "DimensionError",
    "FormatVersionError",
    "InvalidInputError",
    "LockTimeout",
    "MissingDependencyError",
    "MmwalError",
    "PoisonedError",
    "ReadOnlyError",
    "StorageIOError",
    "StoreClosedError",
    "StoreNotFoundError",
    "UnsupportedFilesystemError",
]


class MmwalError(Exception):
    """Root of every error that mmwal raises on purpose."""

    def __init__(self, message: str, **facts: Any) -> None:
        super().__init__(message)
        self.message = message
        self.facts = facts
        for key, value in facts.items():
            setattr(self, key, value)

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as ``cls(*args)``; keyword facts would be lost.
        return (_rebuild, (type(self), self.message, self.facts))

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[MmwalError], message: str, facts: dict[str, Any]) -> MmwalError:
    return cls(message, **facts)


class InvalidInputError(MmwalError, ValueError):
    """An argument was rejected before anything was written (bad id, vector, metadata...)."""


class DimensionError(InvalidInputError):
    """A vector (or a store) has a different dimension than expected.

    Attributes ``expected`` and ``got`` carry the two dimensions.
    """


class CorruptionError(MmwalError, ValueError):
    """Bytes on disk are not what the format says they must be.

    Attributes ``path`` and ``offset`` say where; the message says what was
    expected.  Raised for damage that cannot be a torn, unacknowledged tail.
    """


class FormatVersionError(MmwalError):
    """The store was written by a newer (or unknown) on-disk format version."""


class StoreNotFoundError(MmwalError, FileNotFoundError):
    """No store exists at the path (and it may not be created here)."""


class LockTimeout(MmwalError, TimeoutError):
    """A lock was not acquired within ``Config.lock_timeout`` seconds."""


class StorageIOError(MmwalError, OSError):
    """The operating system refused an I/O operation (EIO, ENOSPC, ...).

    Attributes ``errno`` (also ``err``), ``path`` and ``op`` say what failed.
    """

    def __init__(self, message: str, **facts: Any) -> None:
        MmwalError.__init__(self, message, **facts)
        # OSError.errno is a slot filled only by OSError's own constructor.
        self.errno = facts.get("err")
        self.filename = facts.get("path")
        self.strerror = message


class PoisonedError(StorageIOError):
    """This Store saw a failed fsync and refuses every further write.

    After a failed fsync the kernel may already have dropped the dirty pages,
    so a retry could report success falsely.  Close the Store and open a new
    one; records that were acknowledged before the failure are safe.
    """


class ClosedError(MmwalError, ValueError):
    """The Store or Reader was used after ``close()``."""


class StoreClosedError(ClosedError):
    """A call on a :class:`mmwal.Store` that is closed, or closing.

    ``close()`` refuses calls that arrive once it has started and waits for the
    calls already running; the attribute ``path`` names the store.  A subclass
    of :class:`ClosedError` (and so of ``ValueError``), which callers caught
    before it existed.
    """


class ReadOnlyError(MmwalError, PermissionError):
    """A write was attempted where mmwal only reads."""


class UnsupportedFilesystemError(MmwalError, OSError):
    """The store lies on a filesystem whose locking mmwal cannot rely on (NFS, SMB, ...).

    flock and the page-cache sharing the protocol relies on are not reliable
    over network filesystems (RULES.md 18).  Set ``MMWAL_ALLOW_NETWORK_FS=1`` to
    open it anyway, with one writer process at most.
    """


class CheckpointWarning(UserWarning):
    """An automatic checkpoint (``Config(auto_checkpoint=True)``) failed.

    The write that triggered it was committed and returned its seq; the
    failure is reported here, in ``Store.stats().auto_checkpoint_error`` and by
    the next explicit ``Store.checkpoint()``.  A warning, not an error: it is
    not raised in place of a result.
    """


class MissingDependencyError(MmwalError, ImportError):
    """An optional feature needs a package that is not installed.

    The message names the ``pip install 'mmwal[extra]'`` that installs it;
    attributes ``package`` and ``extra`` carry the two names.  Also an
    ``ImportError``, which is what code that probes for optional features
    catches.
    """
