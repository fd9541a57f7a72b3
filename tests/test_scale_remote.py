"""Publishing to object storage and remote Readers, against moto's S3 server and file://."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from scale_helpers import destination, fill, moto_server

import mmwal
from mmwal import _format as F
from mmwal._scale import _fs
from mmwal._version import VERSION_MAGIC
from mmwal.errors import CorruptionError, MissingDependencyError

pytest.importorskip("s3fs")

DIM = 8
FRAGMENT_FILES = 9  # seven data files, columns.bin and the DESCRIPTOR


@pytest.fixture(scope="module")
def s3_opts():
    with moto_server() as opts:
        yield opts


@pytest.fixture(params=["s3", "file"])
def dest(request, tmp_path, s3_opts):
    return destination(request.param, tmp_path, s3_opts)


def _fs_of(url, opts):
    return _fs.open_fs(url, opts)


def _same_results(local_path, reader):
    q = np.random.default_rng(7).standard_normal((3, DIM)).astype(np.float32)
    with mmwal.Reader(local_path) as loc:
        assert len(loc) == len(reader)
        assert loc.search(q, k=5) == reader.search(q, k=5)
        assert loc.search(q[0], k=4, where={"even": True}) == reader.search(
            q[0], k=4, where={"even": True})
        for i in ("d0", "d5", "d77"):
            assert loc.get(i) == reader.get(i)


def test_publish_and_open_remote(store_path, tmp_path, dest):
    url, opts = dest
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        fill(s, 0, 300)
        s.checkpoint()
    info = mmwal.publish(store_path, url, storage_options=opts)
    assert (info.version, info.files_skipped) == (1, 0)
    assert info.files_uploaded == FRAGMENT_FILES + 2  # + version file + MANIFEST
    with mmwal.Reader(url, cache_dir=tmp_path / "cache", storage_options=opts) as r:
        assert r.seq == 300 and r.checkpoint_id == 1
        _same_results(store_path, r)
        assert r.stats().tail_records == 0
    again = mmwal.publish(store_path, url, storage_options=opts)
    assert (again.files_uploaded, again.bytes_uploaded) == (0, 0)


def test_incremental_publish_uploads_what_changed_and_refresh_fetches_it(
        store_path, tmp_path, dest):
    url, opts = dest
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        fill(s, 0, 2000)
        s.checkpoint()
        mmwal.publish(store_path, url, storage_options=opts)
        r = mmwal.Reader(url, cache_dir=tmp_path / "cache", storage_options=opts)
        got0 = r.downloaded_files
        fill(s, 5000, 50)
        s.remove("d3")
        info = s.checkpoint()
        pub = mmwal.publish(store_path, url, storage_options=opts)
    # the new fragment, one deletion vector, the version file, the MANIFEST
    assert pub.files_uploaded == FRAGMENT_FILES + 3
    assert pub.files_skipped == FRAGMENT_FILES  # fragment 1 was already there
    frag = os.path.join(store_path, "checkpoints", f"{info.id:08d}")
    frag_bytes = sum(os.path.getsize(os.path.join(frag, n)) for n in os.listdir(frag))
    small = sum(os.path.getsize(os.path.join(store_path, p)) for p in (
        "MANIFEST", f"checkpoints/{info.id:08d}.version",
        f"checkpoints/00000001-{info.id:08d}.deleted"))
    assert pub.bytes_uploaded == frag_bytes + small
    try:
        assert "d3" in r and r.seq == 2000
        assert r.refresh() == 51
        assert "d3" not in r and "d5049" in r
        # the new fragment's data files (columns.bin too) + the vector
        assert r.downloaded_files - got0 == 8 + 1
        _same_results(store_path, r)
        assert r.refresh() == 0
    finally:
        r.close()


_KILL_CHILD = r"""
import json, os, signal, sys
import mmwal
from mmwal._scale import publish as P
path, url, opts, after = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
real, n = P._put, [0]
def put(fs, remote, it):
    if n[0] == after:
        os.kill(os.getpid(), signal.SIGKILL)
    n[0] += 1
    if n[0] == after and it.data is None:  # the next object is left half written (file://)
        with fs.open(remote, "wb") as f:
            f.write(os.pread(it.fd, max(1, (it.size or 2) // 2), 0))
        return
    real(fs, remote, it)
P._put = put
mmwal.publish(path, url, storage_options=opts)
"""


@pytest.mark.parametrize("after", [3, FRAGMENT_FILES + 1])
def test_publish_killed_half_way_resumes(store_path, tmp_path, dest, after):
    url, opts = dest
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        fill(s, 0, 500)
        s.checkpoint()
        mmwal.publish(store_path, url, storage_options=opts)
        fill(s, 1000, 100)
        s.remove("d1")
        s.checkpoint()
    p = subprocess.run([sys.executable, "-c", _KILL_CHILD, store_path, url, json.dumps(opts),
                        str(after)], capture_output=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
    # The remote MANIFEST still names version 1, whose files are all there.
    with mmwal.Reader(url, cache_dir=tmp_path / "c1", storage_options=opts) as r:
        assert r.checkpoint_id == 1 and len(r) == 500 and "d1" in r
    info = mmwal.publish(store_path, url, storage_options=opts)
    assert info.version == 2
    assert info.files_skipped >= FRAGMENT_FILES + after - 2
    with mmwal.Reader(url, cache_dir=tmp_path / "c2", storage_options=opts) as r:
        assert r.checkpoint_id == 2 and "d1" not in r
        _same_results(store_path, r)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_remote_object_is_corruption_never_mapped(store_path, tmp_path, dest, how):
    url, opts = dest
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        fill(s, 0, 200)
        s.checkpoint()
    mmwal.publish(store_path, url, storage_options=opts)
    fs, root = _fs_of(url, opts)
    rel = "checkpoints/00000001/embeddings.npy"
    data = bytearray(fs.cat_file(f"{root}/{rel}"))
    if how == "flip":
        data[len(data) // 2] ^= 0x40
    else:
        del data[len(data) - 100:]
    fs.pipe_file(f"{root}/{rel}", bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(CorruptionError, match="embeddings.npy"):
        mmwal.Reader(url, cache_dir=cache, storage_options=opts, retries=2)
    # Nothing damaged reached the cache under a name a Reader maps.
    cached = [os.path.join(d, n) for d, _, ns in os.walk(cache) for n in ns]
    assert not any(c.endswith("/embeddings.npy") for c in cached), cached
    assert not any(c.endswith("/MANIFEST") for c in cached)
    # Once a good copy is published again, the same cache serves it.
    fs.rm_file(f"{root}/{rel}")
    mmwal.publish(store_path, url, storage_options=opts)
    with mmwal.Reader(url, cache_dir=cache, storage_options=opts) as r:
        _same_results(store_path, r)


def test_remote_retention_keeps_what_kept_versions_list(store_path, tmp_path, dest):
    url, opts = dest
    cfg = mmwal.Config(keep_checkpoints=1, auto_compact=False)
    with mmwal.Store(store_path, dim=DIM, durability="os", config=cfg) as s:
        fill(s, 0, 100)
        s.checkpoint()
        mmwal.publish(store_path, url, storage_options=opts, keep=2)
        for k in range(1, 4):
            fill(s, 1000 * k, 20)
            s.remove(f"d{k}")
            s.checkpoint()
            info = mmwal.publish(store_path, url, storage_options=opts, keep=2)
        s.compact()
        fin = mmwal.publish(store_path, url, storage_options=opts, keep=2)
    assert info.files_deleted > 0 and fin.files_deleted > 0
    fs, root = _fs_of(url, opts)
    from mmwal._scale.publish import _listing

    names = _listing(fs, root)
    kinds = [_fs.parse_rel(n) for n in names]
    versions = sorted(k[1] for k in kinds if k and k[0] == "version")
    assert versions == [4, 5]
    # exactly the files the kept versions list remain
    listed = set()
    for vid in versions:
        v = mmwal._version.decode_version(bytes(fs.cat_file(f"{root}/{_fs.version_rel(vid)}")),
                                          "v", vid, DIM)
        listed |= {f.rel for f in _fs.version_files(v)}
        for e in v.entries:
            listed |= {f"checkpoints/{e.fid:08d}/{n}"
                       for n in (*_fs.FILES, "columns.bin", "DESCRIPTOR")}
    assert set(names) == listed
    with mmwal.Reader(url, cache_dir=tmp_path / "cache", storage_options=opts) as r:
        _same_results(store_path, r)


def test_crafted_remote_version_cannot_name_paths(store_path, tmp_path, dest):
    url, opts = dest
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        fill(s, 0, 10)
        s.checkpoint()
    mmwal.publish(store_path, url, storage_options=opts)
    fs, root = _fs_of(url, opts)
    body = {"id": 1, "seq": 10, "dim": DIM, "documents": 10, "created": 0.0,
            "fragments": [["../../etc", 10, 0, 0, 0, 0]]}
    fs.pipe_file(f"{root}/checkpoints/00000001.version",
                 F.encode_manifest(body, VERSION_MAGIC, 1))
    with pytest.raises(CorruptionError, match="not valid"):
        mmwal.Reader(url, cache_dir=tmp_path / "cache", storage_options=opts, retries=0)


def test_cache_limit_evicts_what_the_current_version_does_not_list(store_path, tmp_path):
    url = f"file://{tmp_path / 'remote'}"
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        fill(s, 0, 300)
        s.checkpoint()
        mmwal.publish(store_path, url)
        cache = tmp_path / "cache"
        with mmwal.Reader(url, cache_dir=cache, cache_max_bytes=0) as r:
            fill(s, 1000, 30)
            s.checkpoint()
            s.compact()  # one new fragment: the old two are no longer listed
            mmwal.publish(store_path, url)
            r.refresh()
            root = r.cache_path
            frags = sorted(n for n in os.listdir(os.path.join(root, "checkpoints"))
                           if len(n) == 8)
            assert frags == [f"{r.checkpoint_id:08d}"]
            _same_results(store_path, r)


def test_two_processes_share_one_cache(store_path, tmp_path):
    url = f"file://{tmp_path / 'remote'}"
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        fill(s, 0, 3000)
        s.checkpoint()
    mmwal.publish(store_path, url)
    code = ("import sys, mmwal\nr = mmwal.Reader(sys.argv[1], cache_dir=sys.argv[2])\n"
            "print(len(r), r.downloaded_files)")
    procs = [subprocess.Popen([sys.executable, "-c", code, url, str(tmp_path / "cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    counts = [tuple(map(int, o[0].split())) for o in outs]
    assert all(c[0] == 3000 for c in counts)
    # downloaded once, by whoever came first: 7 data files and columns.bin
    assert sum(c[1] for c in counts) == 8


def test_missing_extra_names_the_install(monkeypatch, store_path):
    monkeypatch.setitem(sys.modules, "fsspec", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'mmwal\[s3\]'"):
        mmwal.publish(store_path, "s3://bucket/x")


def test_local_reader_refuses_remote_options(store_path, tmp_path):
    with mmwal.Store(store_path, dim=DIM, durability="os"):
        pass
    with pytest.raises(mmwal.errors.InvalidInputError, match="URL"):
        mmwal.Reader(store_path, cache_dir=tmp_path)
    with pytest.raises(mmwal.errors.InvalidInputError, match="cache_dir"):
        mmwal.Reader(f"file://{tmp_path}/nothing")


def test_cli_publish(store_path, tmp_path):
    from mmwal.cli import main

    url = f"file://{tmp_path / 'remote'}"
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        fill(s, 0, 50)
        s.checkpoint()
    p = subprocess.run([sys.executable, "-m", "mmwal", "publish", store_path, url, "--keep", "2",
                        "--json"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["version"] == 1 and out["files_uploaded"] == FRAGMENT_FILES + 2
    assert main(["publish", store_path, url, "--keep", "0"]) == 2  # refused: keep >= 1
    assert main(["publish", str(tmp_path / "none"), url]) == 2


def test_empty_store_and_background_refresh(store_path, tmp_path):
    import time

    url = f"file://{tmp_path / 'remote'}"
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        fill(s, 0, 5)  # in the log only: no version yet
        assert mmwal.publish(store_path, url).version == 0
        with mmwal.Reader(url, cache_dir=tmp_path / "cache", refresh_every=0.05) as r:
            assert len(r) == 0 and r.seq == 0 and r.search(np.ones(DIM), k=3) == []
            s.checkpoint()
            mmwal.publish(store_path, url)
            deadline = time.monotonic() + 30
            while len(r) != 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert len(r) == 5 and r.seq == 5
            assert r.stats().refresh_errors == 0


_CHECKPOINTER = r"""
import sys
import numpy as np
import mmwal
path, rounds = sys.argv[1], int(sys.argv[2])
cfg = mmwal.Config(keep_checkpoints=1, auto_compact=True, max_fragments=2)
with mmwal.Store(path, dim=8, durability="os", config=cfg) as s:
    rng = np.random.default_rng(0)
    for k in range(rounds):
        s.add_many([f"c{k}-{j}" for j in range(200)], rng.standard_normal((200, 8)))
        s.remove(f"c{k - 1}-0") if k else None
        s.checkpoint()
"""


def test_publish_while_checkpoints_retire(store_path, tmp_path):
    """Checkpoints (keep_checkpoints=1, compacting) retire files while publishes run."""
    url = f"file://{tmp_path / 'remote'}"
    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        fill(s, 0, 100)
        s.checkpoint()
    child = subprocess.Popen([sys.executable, "-c", _CHECKPOINTER, store_path, "25"],
                             stderr=subprocess.PIPE)
    seen = set()
    err = b""
    try:
        mmwal.publish(store_path, url)
        with mmwal.Reader(url, cache_dir=tmp_path / "cache") as r:
            while child.poll() is None or len(seen) < 3:
                info = mmwal.publish(store_path, url, keep=2)
                r.refresh()
                seen.add(r.checkpoint_id)
                assert r.checkpoint_id == info.version
                # the published version is whole: every live row reads back
                assert len(r.find()) == len(r)
                if child.poll() is not None:
                    break
    finally:
        _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err.decode()[-2000:]
    assert len(seen) >= 2


_RETIRER = r"""
import sys
import numpy as np
import mmwal
path = sys.argv[1]
cfg = mmwal.Config(keep_checkpoints=1, lock_timeout=0.5)
with mmwal.Store(path, config=cfg) as s:
    s.add("late", np.ones(8))
    try:
        s.checkpoint()
        s.compact()  # a new fragment; the one being published is retired
    except mmwal.LockTimeout:
        sys.exit(3)
"""


def test_publish_holds_the_checkpoint_lock_while_it_opens_files(store_path, tmp_path,
                                                                monkeypatch):
    """A checkpoint that would retire the planned fragment waits for the publish."""
    from mmwal._scale import publish as P

    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        fill(s, 0, 100)
        s.checkpoint()
        fill(s, 100, 100)
        s.checkpoint()  # two fragments: compaction then retires both
    real = P._fs.decode_descriptor
    codes = []

    def racing(*a, **kw):
        if not codes:  # between reading the version and opening its files
            p = subprocess.run([sys.executable, "-c", _RETIRER, store_path],
                               capture_output=True, timeout=60)
            codes.append(p.returncode)
        return real(*a, **kw)

    monkeypatch.setattr(P._fs, "decode_descriptor", racing)
    url = f"file://{tmp_path / 'remote'}"
    info = mmwal.publish(store_path, url)
    assert codes == [3]  # the checkpointer could not take the lock meanwhile
    assert info.version == 2
    with mmwal.Reader(url, cache_dir=tmp_path / "cache") as r:
        assert len(r) == 200


def test_format_1_store_publishes_and_opens(store_path, tmp_path):
    """A store whose MANIFEST still names one checkpoint (format 1, no version file)."""
    from mmwal._fsutil import atomic_write

    with mmwal.Store(store_path, dim=DIM, durability="os") as s:
        fill(s, 0, 50)
        s.checkpoint()
    mpath = os.path.join(store_path, "MANIFEST")
    with open(mpath, "rb") as f:
        m = F.decode_manifest(f.read())
    m["format"] = 1
    m.pop("fragments", None)
    atomic_write(mpath, F.encode_manifest(m, version=1))
    os.unlink(os.path.join(store_path, "checkpoints", "00000001.version"))
    url = f"file://{tmp_path / 'remote'}"
    info = mmwal.publish(store_path, url)
    assert (info.version, info.files_uploaded) == (1, FRAGMENT_FILES + 1)  # no version file
    with mmwal.Reader(url, cache_dir=tmp_path / "cache") as r:
        _same_results(store_path, r)


def test_remote_retention_with_fewer_versions_than_keep(store_path, tmp_path):
    """keep larger than the versions published so far keeps every one of them."""
    url = f"file://{tmp_path / 'remote'}"
    with mmwal.Store(store_path, dim=DIM, durability="os",
                     config=mmwal.Config(auto_compact=False)) as s:
        for k in range(4):
            fill(s, 1000 * k, 10)
            s.checkpoint()
            info = mmwal.publish(store_path, url, keep=5)
            assert info.files_deleted == 0
    names = os.listdir(tmp_path / "remote" / "checkpoints")
    assert sorted(n for n in names if n.endswith(".version")) == [
        f"{v:08d}.version" for v in (1, 2, 3, 4)]
