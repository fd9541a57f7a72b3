"""Refusals that protect the protocol's assumptions: network filesystems."""

from __future__ import annotations

import numpy as np
import pytest

import mmwal
from mmwal import _fsutil
from mmwal.errors import UnsupportedFilesystemError


def test_filesystem_type_of_a_local_dir(tmp_path):
    # /proc/self/mountinfo exists on Linux; the type is some non-network fs.
    fstype = _fsutil.filesystem_type(str(tmp_path))
    assert fstype is None or fstype not in _fsutil.NETWORK_FILESYSTEMS


@pytest.mark.parametrize("fstype", ["nfs", "nfs4", "cifs", "fuse.sshfs"])
def test_network_filesystem_is_refused(tmp_path, monkeypatch, fstype):
    monkeypatch.setattr(_fsutil, "filesystem_type", lambda path: fstype)
    monkeypatch.delenv("MMWAL_ALLOW_NETWORK_FS", raising=False)
    with pytest.raises(UnsupportedFilesystemError) as info:
        mmwal.Store(tmp_path / "s", dim=2)
    assert fstype in str(info.value) and isinstance(info.value, mmwal.MmwalError)
    assert not (tmp_path / "s" / "MANIFEST").exists()


def test_network_filesystem_override(tmp_path, monkeypatch):
    monkeypatch.setattr(_fsutil, "filesystem_type", lambda path: "nfs")
    monkeypatch.setenv("MMWAL_ALLOW_NETWORK_FS", "1")
    with mmwal.Store(tmp_path / "s", dim=2, durability="os") as s:
        assert s.add("a", np.ones(2)) == 1


def test_default_io_layer_adds_no_call_on_the_hot_path():
    # The default layer's operations ARE the os functions (bound as attributes, not
    # wrapped): the append path pays one attribute lookup, nothing more.
    import os

    from mmwal import _io

    layer = _io.OSLayer()
    assert layer.pwrite is os.pwrite and layer.pread is os.pread
    assert layer.replace is os.replace and layer.unlink is os.unlink
    assert layer.fsync is os.fsync and layer.fdatasync is getattr(os, "fdatasync", os.fsync)
