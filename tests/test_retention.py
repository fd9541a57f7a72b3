"""keep_checkpoints keeps exactly the newest N checkpoints (the current one included)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import mmwal


@pytest.mark.parametrize("keep", [0, 1, 2, 3, 5])
def test_keep_checkpoints_counts(tmp_path, keep):
    cfg = mmwal.Config(keep_checkpoints=keep, auto_compact=False)
    with mmwal.Store(tmp_path / "s", dim=2, durability="os", config=cfg) as s:
        for i in range(6):
            s.add(f"d{i}", np.full(2, i, dtype=np.float32))
            info = s.checkpoint()
            names = os.listdir(tmp_path / "s" / "checkpoints")
            kept = sorted(int(n[:8]) for n in names if n.endswith(".version"))
            want = max(keep, 1)
            assert kept == list(range(max(1, info.id - want + 1), info.id + 1)), (i, kept)
            # Every version lists every fragment so far: none is retired.
            assert sorted(int(n) for n in names if n.isdigit()) == list(range(1, i + 2))
    with mmwal.Reader(tmp_path / "s") as r:
        assert len(r) == 6


def _deleted_segments_held() -> dict[int, str]:
    """This process's descriptors of deleted log segments, and their targets."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith(".seg (deleted)"):
            out[int(fd)] = target
    return out


def _store_over_segments(path: str) -> None:
    cfg = mmwal.Config(auto_compact=False, auto_checkpoint=False, segment_bytes=8192)
    with mmwal.Store(path, dim=8, durability="os", config=cfg) as s:
        for i in range(60):
            s.add(f"d{i}", np.full(8, i, dtype=np.float32), content="x" * 1000)
    assert len(os.listdir(os.path.join(path, "wal"))) >= 3


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="descriptor listing: Linux")
def test_retired_segments_go_at_once_and_their_descriptors_after(tmp_path, monkeypatch):
    # A checkpoint unlinks the segments it folded before it returns; the blocks
    # of a large one are freed by a background close of a descriptor held
    # across the unlink, which never outlives release_pending().
    from mmwal import _fsutil

    path = str(tmp_path / "s")
    _store_over_segments(path)
    gate = threading.Event()
    real = _fsutil._release
    monkeypatch.setattr(_fsutil, "RELEASE_BYTES", 0)  # every segment counts as large
    monkeypatch.setattr(_fsutil, "_release", lambda fds: (gate.wait(10), real(fds)))
    try:
        with mmwal.Store(path, durability="os") as s:
            s.checkpoint()
            segs = [n for n in os.listdir(os.path.join(path, "wal")) if n.endswith(".seg")]
            assert len(segs) == 1  # (the segment the roll opened)
            held = set(_fsutil._releasing)
            assert 0 < len(held) <= _fsutil.RELEASE_MAX
            assert held <= set(_deleted_segments_held())
            if hasattr(os, "fork"):
                r, w = os.pipe()
                pid = os.fork()
                if pid == 0:  # the child holds none of them
                    os.write(w, str(len(held & set(_deleted_segments_held()))).encode())
                    os._exit(0)
                os.close(w)
                got = os.read(r, 32)
                os.close(r)
                os.waitpid(pid, 0)
                assert got == b"0"
                assert held <= set(_deleted_segments_held())  # (the parent's stay)
    finally:
        gate.set()
        _fsutil.release_pending()
    assert not _fsutil._releasing
    assert not held & set(_deleted_segments_held())
    with mmwal.Reader(path) as rd:
        assert len(rd) == 60


def test_unlink_released_closes_once_when_close_reports_an_error(tmp_path):
    # close(2) frees the descriptor even when it reports an error (EINTR, EIO):
    # closing the number again could close a file another thread opened since.
    import errno

    from mmwal import _fsutil, _io

    closes: list[int] = []

    class CloseFails(_io.OSLayer):
        def __init__(self) -> None:
            super().__init__()

            def close(fd: int) -> None:
                closes.append(fd)
                os.close(fd)
                raise OSError(errno.EIO, "close reported an error")

            self.close = close

    p = tmp_path / "small.seg"
    p.write_bytes(b"x" * 10)
    old = _io.set_layer(CloseFails())
    try:
        assert _fsutil.unlink_released([str(p)]) == []
    finally:
        _io.set_layer(old)
    assert not p.exists()
    assert len(closes) == len(set(closes)) == 1


def _held_release(tmp_path, monkeypatch):
    """Every file counts as large and the background close waits for the returned
    event: the descriptors unlink_released keeps stay listed.  Returns the event
    and a small file to unlink."""
    from mmwal import _fsutil

    gate = threading.Event()
    real = _fsutil._release
    monkeypatch.setattr(_fsutil, "RELEASE_BYTES", 0)
    monkeypatch.setattr(_fsutil, "_release", lambda fds: (gate.wait(10), real(fds)))
    p = tmp_path / "big.seg"
    p.write_bytes(b"x" * 100)
    return gate, p


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_drops_kept_descriptors_without_the_layer(tmp_path, monkeypatch):
    # The child drops its copies of the kept descriptors at fork, before any
    # of its code runs: through the I/O layer that would take whatever lock
    # the layer holds, possibly held by a parent thread that does not exist
    # in the child (a layer's lock, held here by the forking thread itself).
    import signal
    import time

    from mmwal import _fsutil, _io

    class Locking(_io.OSLayer):
        def __init__(self) -> None:
            super().__init__()
            self.mu = threading.Lock()
            real_close = self.close

            def close(fd: int) -> None:
                with self.mu:
                    real_close(fd)

            self.close = close

    gate, p = _held_release(tmp_path, monkeypatch)
    layer = Locking()
    old = _io.set_layer(layer)
    try:
        assert _fsutil.unlink_released([str(p)]) == []
        assert _fsutil._releasing
        with layer.mu:
            pid = os.fork()
            if pid == 0:
                os._exit(0 if not _fsutil._releasing else 1)
        for _ in range(2000):  # (a guard against a hung child, not a timing check)
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.01)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung in the at-fork hook")
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        _io.set_layer(old)
        gate.set()
        _fsutil.release_pending()
    assert not _fsutil._releasing


def _link(path: str) -> str:
    """The target of a symbolic link, or "" when there is none (any error)."""
    try:
        return os.readlink(path)
    except OSError:
        return ""


@pytest.mark.skipif(not hasattr(os, "fork") or not os.path.isdir("/proc/self/fd"),
                    reason="fork, descriptor listing: Linux")
def test_a_fork_between_the_open_and_the_listing_leaves_the_child_nothing(tmp_path,
                                                                          monkeypatch):
    # Another thread forks while unlink_released holds a descriptor it has not
    # listed yet: the child must not keep its copy (it would hold the deleted
    # file, and its blocks, for as long as it lives).  The fork waits for the
    # listing; the fstat below gives up waiting for the fork after a while.
    from mmwal import _fsutil, _io

    gate, p = _held_release(tmp_path, monkeypatch)
    in_window, forked = threading.Event(), threading.Event()

    class Pausing(_io.OSLayer):
        def __init__(self) -> None:
            super().__init__()
            real_fstat = self.fstat

            def fstat(fd: int) -> os.stat_result:
                in_window.set()
                forked.wait(2)
                return real_fstat(fd)

            self.fstat = fstat

    got: list[bytes] = []

    def fork_in_window() -> None:
        in_window.wait(10)
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                held = [fd for fd in os.listdir("/proc/self/fd")
                        if _link(f"/proc/self/fd/{fd}").startswith(str(p))]
                os.write(w, str(len(held)).encode())
            finally:
                os._exit(0)
        forked.set()
        os.close(w)
        got.append(os.read(r, 32))
        os.close(r)
        os.waitpid(pid, 0)

    t = threading.Thread(target=fork_in_window)
    old = _io.set_layer(Pausing())
    try:
        t.start()
        assert _fsutil.unlink_released([str(p)]) == []
        t.join(30)
    finally:
        _io.set_layer(old)
        forked.set()
        gate.set()
        _fsutil.release_pending()
    assert got == [b"0"]
