"""What the next writer does with a torn frame (docs/concepts.md, crash table).

A writer that fails (or dies) mid-``pwrite`` leaves part of a frame past the
published end with the pending word set.  The next writer rescans and, finding
bytes it cannot adopt, seals the segment and rolls to a new one: the torn bytes
stay where they are.  Only when that writer fails between publishing its rescan
and the roll does a later writer write its frame over the torn bytes.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest
from helpers import DIM, add_doc, doc_id, segment_files

import mmwal
from mmwal import _io
from mmwal.errors import PoisonedError, StorageIOError


class _Layer(_io.OSLayer):
    """The real OS; ``tear``: the next pwrite writes half its data, then EIO;
    ``fail_sync``: fdatasync fails with EIO."""

    def __init__(self) -> None:
        super().__init__()
        self.tear = False
        self.fail_sync = False
        real_pwrite, real_sync = self.pwrite, self.fdatasync

        def pwrite(fd: int, data: Any, offset: int) -> int:
            if self.tear:
                self.tear = False
                real_pwrite(fd, bytes(data)[: len(data) // 2], offset)
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real_pwrite(fd, data, offset)

        def fdatasync(fd: int) -> None:
            if self.fail_sync:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            real_sync(fd)

        self.pwrite = pwrite
        self.fdatasync = fdatasync


def expect_state(path: str, keys: list[int]) -> None:
    with mmwal.Reader(path) as r:
        assert sorted(r.ids) == sorted(doc_id(k) for k in keys)
    report = mmwal.verify(path)
    assert report.ok, report.problems


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def test_torn_frame_is_sealed_not_written_over(tmp_path: Any) -> None:
    layer = _Layer()
    _io.set_layer(layer)
    path = str(tmp_path / "s")
    s = mmwal.Store(path, dim=DIM, durability="os")
    for k in range(3):
        add_doc(s, k)
    layer.tear = True
    with pytest.raises(StorageIOError):
        add_doc(s, 3)
    [seg1] = segment_files(path)
    torn = _read(seg1)
    add_doc(s, 4)  # rescans, finds the torn half frame, rolls
    segs = segment_files(path)
    assert len(segs) == 2 and _read(segs[0]) == torn  # sealed with its torn tail, untouched
    s.close()
    expect_state(path, [0, 1, 2, 4])


def test_torn_frame_is_written_over_if_the_roll_never_happened(tmp_path: Any) -> None:
    layer = _Layer()
    _io.set_layer(layer)
    path = str(tmp_path / "s")
    s = mmwal.Store(path, dim=DIM, durability="os")
    for k in range(3):
        add_doc(s, k)
    layer.tear = True
    with pytest.raises(StorageIOError):
        add_doc(s, 3)
    [seg1] = segment_files(path)
    size = os.path.getsize(seg1)
    # The next writer publishes its rescan, then the fdatasync that seals the
    # segment before the roll fails: poisoned, no roll.
    layer.fail_sync = True
    with pytest.raises(PoisonedError):
        add_doc(s, 4)
    s.close()
    layer.fail_sync = False
    assert segment_files(path) == [seg1]
    # The record is now trusted with the torn bytes past its end: the next frame
    # goes over them, in the same segment.
    with mmwal.Store(path, durability="os") as other:
        add_doc(other, 5)
    assert segment_files(path) == [seg1] and os.path.getsize(seg1) >= size
    expect_state(path, [0, 1, 2, 5])
