"""Crafted version files are refused before any file they name is opened.

A version file lists fragments by integer id and deletion vectors by
(fragment, version); every path is derived from those integers.  A version
file whose entries are out of range, not integers, duplicated, or whose
deletion-vector fields disagree with each other is refused with
CorruptionError by every entry point (Reader, verify, checkpoint, compact,
inspect) - and no file under ``checkpoints/`` other than the version file
itself, nor anything outside the store, is ever opened.  Every open is
recorded with an audit hook (it sees ``os.open``, ``open`` and numpy's opens,
whichever layer they come through); sentinel files sit where the crafted ids
would point.
"""

from __future__ import annotations

import os
import shutil
import sys
import zlib

import numpy as np
import pytest

import mmwal
from mmwal import _format as F
from mmwal import _io
from mmwal._fsutil import Paths
from mmwal._store import open_manifest
from mmwal._version import (
    MAX_ID,
    VERSION_FORMAT,
    VERSION_MAGIC,
    decode_version,
    deletion_path,
    deletion_size,
    read_version,
    version_path,
)
from mmwal.cli import inspect_store

DIM = 4

_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes)):
        p = args[0].decode() if isinstance(args[0], bytes) else args[0]
        _OPENED.append(os.path.realpath(p))


sys.addaudithook(_audit)  # cannot be removed: it records only while _OPENED is a list


class Recorder(_io.OSLayer):
    """The real OS; records every path the I/O layer opens, stats or lists."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []
        real = _io.OSLayer()

        def open_(path: str, flags: int, mode: int = 0o777) -> int:
            self.paths.append(os.path.realpath(path))
            return real.open(path, flags, mode)

        def stat(path: str) -> os.stat_result:
            self.paths.append(os.path.realpath(path))
            return real.stat(path)

        self.open = open_
        self.stat = stat


def vec(k):
    return np.array([k + 1, k % 3, 0.5, 1.0], np.float32)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Three versions (two retained); the current lists three fragments, the first with a
    deletion vector; the older lists two, the first with a deletion vector."""
    root = str(tmp_path_factory.mktemp("vpaths") / "store")
    with mmwal.Store(root, dim=DIM, durability="os",
                     config=mmwal.Config(keep_checkpoints=2, auto_compact=False)) as s:
        for k in range(10):
            s.add(f"d{k}", vec(k), content=f"c{k}")
        s.checkpoint()
        s.remove("d2")
        s.add("d3", vec(33), content="c33")
        s.add("d10", vec(10), content="c10")
        s.checkpoint()
        s.remove("d4")
        s.add("d11", vec(11), content="c11")
        s.checkpoint()
    m = open_manifest(Paths(root))
    v = read_version(Paths(root), m)
    assert len(v.entries) == 3 and v.entries[0].dv and not v.entries[1].dv
    return root


LIVE = sorted(f"d{k}" for k in range(12) if k not in (2, 4))


def crafted(vid, fragments, documents, dim=DIM, seq=None, created=1.0):
    body = {"id": vid, "seq": seq, "dim": dim, "documents": documents, "created": created,
            "fragments": fragments}
    return F.encode_manifest(body, VERSION_MAGIC, VERSION_FORMAT)


def entries_of(root):
    m = open_manifest(Paths(root))
    v = read_version(Paths(root), m)
    return m, v, [list(e.encode()) for e in v.entries]


def _live(frags):
    try:
        return sum(e[1] - e[2] for e in frags)
    except (TypeError, KeyError, IndexError):
        return 5


def cases(vid):
    """(name, mutate(list of entries) -> entries) - each breaks one rule."""
    def setf(i, j, x):
        def f(es):
            es[i][j] = x
            return es
        return f

    def dv_fields(i, **kw):
        def f(es):
            for j, x in kw.items():
                es[i]["fid rows dead dv size crc".split().index(j)] = x
            return es
        return f

    out = [
        ("fid-zero", setf(1, 0, 0)),
        ("fid-negative", setf(1, 0, -1)),
        ("fid-too-large", setf(1, 0, MAX_ID + 1)),
        ("fid-huge", setf(1, 0, 2**64 - 1)),
        ("fid-str", setf(1, 0, "00000001")),
        ("fid-path", setf(1, 0, "../../outside")),
        ("fid-float", setf(1, 0, 1.0)),
        ("fid-bool", setf(0, 0, True)),
        ("fid-none", setf(1, 0, None)),
        ("fid-list", setf(1, 0, [1])),
        ("fid-duplicate", lambda es: [es[0], [es[0][0], *es[1][1:]]]),
        ("fid-after-version", setf(1, 0, vid + 1)),
        ("rows-negative", setf(1, 1, -1)),
        ("dead-over-rows", dv_fields(0, dead=10**6)),
        ("dv-without-dead", dv_fields(0, dead=0)),
        ("dead-without-dv", dv_fields(0, dv=0, size=0, crc=0)),
        ("dv-zero-size-set", dv_fields(1, size=45)),
        ("dv-zero-crc-set", dv_fields(1, crc=7)),
        ("dv-size-wrong", dv_fields(0, size=10**9)),
        ("dv-size-short", dv_fields(0, size=3)),
        ("dv-negative", dv_fields(0, dv=-1)),
        ("dv-too-large", dv_fields(0, dv=MAX_ID + 1)),
        ("dv-after-version", dv_fields(0, dv=vid + 1)),
        ("dv-str", dv_fields(0, dv="2")),
        ("crc-too-large", dv_fields(0, crc=2**32)),
        ("entry-short", lambda es: [es[0][:5], es[1]]),
        ("entry-long", lambda es: [[*es[0], 0], es[1]]),
        ("entry-map", lambda es: [{"fid": es[0][0]}, es[1]]),
        ("entry-str", lambda es: ["00000001", es[1]]),
        ("fragments-map", lambda es: {"0": es[0]}),
    ]
    return out


CASE_NAMES = [c[0] for c in cases(99)]


def install(root, tmp_path, name):
    """Write the crafted current version file and the sentinels; return what may be opened."""
    m, v, es = entries_of(root)
    mutate = dict(cases(v.id))[name]
    frags = mutate([list(e) for e in es])
    docs = _live(frags) if isinstance(frags, list) else v.documents
    raw = crafted(v.id, frags, docs, seq=v.seq)
    paths = Paths(root)
    vpath = version_path(paths, v.id)
    with open(vpath, "wb") as f:
        f.write(raw)
    # The files the crafted ids would name, made to look real: a copy of a fragment.
    good = paths.checkpoint(v.entries[0].fid)
    for x in (0, -1, MAX_ID + 1, v.id + 1):
        shutil.copytree(good, paths.checkpoint(x))
        e = v.entries[0]
        shutil.copyfile(deletion_path(paths, e.fid, e.dv), deletion_path(paths, e.fid, x))
    outside = tmp_path / "outside"
    outside.write_bytes(b"sentinel")
    return vpath, str(outside)


def older_files(root, current):
    """Fragment dirs and deletion vectors the intact older versions list (verify reads them)."""
    paths = Paths(root)
    dirs, dvs = set(), set()
    for n in os.listdir(paths.checkpoints):
        if n.endswith(".version") and int(n[:8]) < current:
            with open(os.path.join(paths.checkpoints, n), "rb") as f:
                v = decode_version(f.read(), n, int(n[:8]), DIM)
            frags, vectors = v.files(paths)
            dirs |= {os.path.realpath(paths.checkpoint(x)) for x in frags}
            dvs |= {os.path.realpath(x) for x in vectors}
    return dirs, dvs


def check_opens(root, opened, vpath, outside, allowed):
    """Under checkpoints/: only version files and what an intact older version lists."""
    ck = os.path.realpath(os.path.join(root, "checkpoints"))
    real_root = os.path.realpath(root)
    dirs, dvs = allowed
    for p in opened:
        assert p != os.path.realpath(outside), "a file outside the store was opened"
        if p.startswith(os.path.dirname(real_root) + os.sep):  # not modules, /proc...
            assert p == real_root or p.startswith(real_root + os.sep), p
        if p.startswith(ck + os.sep) and not p.endswith(".version"):
            assert p in dvs or os.path.dirname(p) in dirs or p in dirs, \
                f"{p} opened, named by the refused version {vpath}"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_crafted_version_refused_before_any_open(pristine, tmp_path, name):
    global _OPENED
    root = str(tmp_path / "store")
    shutil.copytree(pristine, root)
    vpath, outside = install(root, tmp_path, name)
    allowed = older_files(root, int(os.path.basename(vpath)[:8]))
    with open(os.path.join(root, "MANIFEST"), "rb") as f:
        manifest_before = f.read()
    rec = Recorder()
    _io.set_layer(rec)
    _OPENED = []
    try:
        with pytest.raises(mmwal.CorruptionError) as ei:
            mmwal.Reader(root)
        assert vpath in str(ei.value)

        report = mmwal.verify(root)
        assert not report.ok
        assert any(p.file == vpath for p in report.problems), report.problems

        info = inspect_store(root)
        assert info["errors"], info

        with mmwal.Store(root, durability="os", config=mmwal.Config(keep_checkpoints=2)) as s:
            s.add("new", vec(50))
            with pytest.raises(mmwal.CorruptionError):
                s.checkpoint()
            with pytest.raises(mmwal.CorruptionError):
                s.compact()
        opened = list(_OPENED)
    finally:
        _OPENED = None
        _io.set_layer(None)
    check_opens(root, opened, vpath, outside, allowed)
    check_opens(root, rec.paths, vpath, outside, allowed)
    with open(os.path.join(root, "MANIFEST"), "rb") as f:
        assert f.read() == manifest_before, "a checkpoint over a refused version published"
    assert os.path.exists(os.path.join(root, "checkpoints", "00000000"))  # nothing deleted


@pytest.mark.parametrize("name", ["fid-zero", "fid-negative", "fid-duplicate",
                                  "dv-size-wrong", "dv-after-version"])
def test_crafted_older_version(pristine, tmp_path, name):
    """A crafted OLDER version: verify reports it; checkpoints go on and delete nothing it names."""
    global _OPENED
    root = str(tmp_path / "store")
    shutil.copytree(pristine, root)
    paths = Paths(root)
    m, v, es = entries_of(root)
    older = [x for x in sorted(os.listdir(paths.checkpoints)) if x.endswith(".version")][0]
    oid = int(older[:8])
    assert oid < v.id
    with open(version_path(paths, oid), "rb") as f:
        ov = decode_version(f.read(), "x", oid, DIM)
    assert len(ov.entries) == 2 and ov.entries[0].dv
    frags = dict(cases(oid))[name]([list(e.encode()) for e in ov.entries])
    vpath = version_path(paths, oid)
    with open(vpath, "wb") as f:
        f.write(crafted(oid, frags, _live(frags), seq=ov.seq))
    outside = tmp_path / "outside"
    outside.write_bytes(b"sentinel")
    _OPENED = []
    try:
        report = mmwal.verify(root)
        with mmwal.Reader(root) as r:  # the current version is intact
            assert sorted(r.ids) == LIVE
        opened = list(_OPENED)
    finally:
        _OPENED = None
    assert not report.ok and any(p.file == vpath for p in report.problems), report.problems
    ck = os.path.realpath(paths.checkpoints)
    assert os.path.realpath(str(outside)) not in opened
    cur = {os.path.realpath(paths.checkpoint(e.fid)) for e in v.entries}
    for p in opened:
        if p.startswith(ck + os.sep) and not p.endswith(".version") and \
                not p.endswith(".deleted"):
            assert os.path.dirname(p) in cur, p
    with mmwal.Store(root, config=mmwal.Config(keep_checkpoints=2)) as s:
        s.add("new", vec(50))
        s.checkpoint()
    # The crafted version was the oldest: retired with what only it listed.
    assert not os.path.exists(vpath)
    assert mmwal.verify(root).ok
    with mmwal.Reader(root) as r:
        assert sorted(r.ids) == sorted([*LIVE, "new"]) and r.get("d3").content == "c33"


def test_valid_version_round_trips(pristine):
    """The crafted-file helper writes what the decoder accepts when nothing is broken."""
    m, v, es = entries_of(pristine)
    raw = crafted(v.id, es, v.documents, seq=v.seq)
    got = decode_version(raw, "x", v.id, DIM)
    assert got.entries == v.entries
    e = v.entries[0]
    assert e.dv_size == deletion_size(e.rows)
    with open(deletion_path(Paths(pristine), e.fid, e.dv), "rb") as f:
        assert zlib.crc32(f.read()) == e.dv_crc
