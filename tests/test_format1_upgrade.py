"""A store written by the release before versions (format 1) opens, verifies and upgrades.

The fixture ``tests/data/store_format1.tar.gz`` was written by the code of
commit 5c8f3b7 (see ``tests/data/make_store_format1.py``): two checkpoint
directories (the older kept by ``keep_checkpoints=2``), a MANIFEST of format 1
naming the newer, and a log tail after it that removes and replaces rows of
that checkpoint.  This release reads it as a version of one fragment; its first
checkpoint writes the new layout (MANIFEST format 2, a version file, the old
directory as the first fragment with a deletion vector for the rows the tail
killed) - and the previous release, run from ``tests/data/mmwal_5c8f3b7.tar.xz``
in a subprocess, then refuses the store with FormatVersionError instead of
misreading it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

import mmwal
from mmwal import _format as F
from mmwal._fsutil import Paths
from mmwal._store import open_manifest
from mmwal._version import (
    DELETION_HEADER,
    VersionView,
    deletion_path,
    read_version,
    version_path,
)
from mmwal.cli import main as cli_main

#: Extraction filters exist from Python 3.10.12 / 3.11.4 (and omitting one warns from 3.12).
SAFE = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def _load_maker():
    spec = importlib.util.spec_from_file_location(
        "make_store_format1", os.path.join(DATA, "make_store_format1.py"))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MAKER = _load_maker()
EXPECTED = MAKER.expected()


@pytest.fixture
def store(tmp_path):
    with tarfile.open(os.path.join(DATA, "store_format1.tar.gz")) as tar:
        tar.extractall(tmp_path, **SAFE)
    return str(tmp_path / "store")


@pytest.fixture(scope="module")
def old_release(tmp_path_factory):
    """A directory to put on PYTHONPATH to run the previous release's ``mmwal``."""
    d = tmp_path_factory.mktemp("mmwal-5c8f3b7")
    with tarfile.open(os.path.join(DATA, "mmwal_5c8f3b7.tar.xz")) as tar:
        tar.extractall(d, **SAFE)
    return str(d)


def manifest_of(path):
    return open_manifest(Paths(path))


def header_version(path):
    with open(os.path.join(path, "MANIFEST"), "rb") as f:
        return F.MANIFEST_HEADER.unpack_from(f.read(), 0)[1]


def assert_exact(path):
    """Reader and snapshot serve exactly EXPECTED: ids, vectors, contents, metadata, search."""
    with mmwal.Reader(path) as r:
        assert sorted(r.ids) == sorted(EXPECTED)
        assert len(r) == len(EXPECTED)
        emb = np.asarray(r.embeddings)
        for row, i in enumerate(r.ids):
            want = EXPECTED[i]
            doc = r.get(i)
            assert doc is not None, i
            assert doc.embedding.tobytes() == want[0].tobytes(), i
            assert emb[row].tobytes() == want[0].tobytes(), i
            assert (doc.content, doc.metadata) == (want[1], want[2]), i
        for gone in ("doc-1", "doc-2", "doc-7", "doc-22", "doc-26"):
            assert r.get(gone) is None and gone not in r
        for i, (v, _c, _m) in EXPECTED.items():
            hit = r.search(v, k=1, metric="l2", exact=True)[0]
            assert hit.score == 0.0 and EXPECTED[hit.id][0].tobytes() == v.tobytes()
            assert r.find({"k": {"$eq": int(i[4:])}}) == ([] if _m is None else [i])
        snap = r.snapshot()
        assert sorted(snap.ids) == sorted(EXPECTED)
        return r.seq


def run_old(old_release, code, path):
    """Run ``code`` with the previous release (``path`` in argv[1]); its stdout, parsed."""
    env = {**os.environ, "PYTHONPATH": old_release}
    p = subprocess.run([sys.executable, "-c", code, path], env=env, cwd=old_release,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


OLD_OPEN = """
import json, sys, mmwal
out = {"file": mmwal.__file__}
for name, fn in (("reader", lambda p: mmwal.Reader(p)), ("store", lambda p: mmwal.Store(p)),
                 ("replay", lambda p: list(mmwal.replay(p)))):
    try:
        x = fn(sys.argv[1])
    except Exception as exc:
        out[name] = [type(exc).__name__, isinstance(exc, mmwal.errors.FormatVersionError),
                     str(exc)]
    else:
        out[name] = ["opened", len(x) if name == "reader" else None, ""]
        if hasattr(x, "close"):
            x.close()
out["verify_ok"] = mmwal.verify(sys.argv[1]).ok
print(json.dumps(out))
"""


def test_fixture_is_format_1(store):
    m = manifest_of(store)
    assert header_version(store) == 1 and m.get("format", 1) == 1
    assert sorted(os.listdir(os.path.join(store, "checkpoints"))) == ["00000001", "00000002"]
    assert m["checkpoint"] == 2
    v = read_version(Paths(store), m)
    assert v.legacy and [e.fid for e in v.entries] == [2] and v.entries[0].dv == 0


LAST_SEQ = sum(len(k) if op == "batch" else 1 for op, k, _g in MAKER.OPS if op != "ckpt")


def test_format1_store_reads_exactly(store):
    assert assert_exact(store) == LAST_SEQ
    report = mmwal.verify(store)
    assert report.ok, report.problems
    assert report.checkpoint == 2 and report.last_seq == LAST_SEQ


def test_format1_store_inspect(store, capsys):
    assert cli_main(["inspect", store, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format_version"] == 1 and info["errors"] == []
    assert info["documents"] == len(EXPECTED) and info["seq"] == LAST_SEQ
    frags = info["checkpoint"]["fragments"]
    assert [(f["id"], f["dead_rows"], f["deletion_vector"]) for f in frags] == [(2, 0, None)]
    assert cli_main(["inspect", store]) == 0
    assert "version 1" in capsys.readouterr().out


def test_writer_appends_to_format1_store_without_upgrading(store):
    """Records are appended to the old layout; only a checkpoint writes the new one."""
    with mmwal.Store(store) as s:
        s.add("doc-99", MAKER.vec(99), content=MAKER.content(99), metadata=MAKER.meta(99))
        s.remove("doc-99")
    assert header_version(store) == 1 and manifest_of(store)["checkpoint"] == 2
    assert not [n for n in os.listdir(os.path.join(store, "checkpoints"))
                if n.endswith((".version", ".deleted"))]
    assert assert_exact(store) == LAST_SEQ + 2
    assert mmwal.verify(store).ok


def test_checkpoint_upgrades_format1_store(store, old_release, capsys):
    with mmwal.Reader(store) as before:  # holds the legacy view across the upgrade
        assert before.snapshot().checkpoint_id == 2
        with mmwal.Store(store, config=mmwal.Config(keep_checkpoints=2)) as s:
            info = s.checkpoint()
        assert info.seq == LAST_SEQ and info.documents == len(EXPECTED)
        assert info.fragments == 2 and info.fragments_written == 1
        before.refresh()
        assert sorted(before.ids) == sorted(EXPECTED)
        assert before.get("doc-1") is None and before.get("doc-10").content == \
            MAKER.content(10, 1)

    paths = Paths(store)
    m = manifest_of(store)
    assert header_version(store) == 2 and m["format"] == 2
    vid = m["checkpoint"]
    assert vid == info.id == 3 and os.path.exists(version_path(paths, vid))
    v = read_version(paths, m)
    assert not v.legacy and v.seq == LAST_SEQ and v.documents == len(EXPECTED)
    old, new = v.entries
    # The old checkpoint directory is the first fragment, unchanged, with a deletion
    # vector for the rows the tail removed or replaced: doc-1, doc-2, doc-10, doc-22.
    assert old.fid == 2 and old.rows == 23 and old.dead == 4 and old.dv == vid
    with open(deletion_path(paths, old.fid, old.dv), "rb") as f:
        raw = f.read()
    assert len(raw) == old.dv_size == DELETION_HEADER.size + (old.rows + 7) // 8
    magic, fmt, fid, dvid, rows, dead, _crc = DELETION_HEADER.unpack_from(raw, 0)
    assert (magic, fmt, fid, dvid, rows, dead) == (b"MMWALDEL", 1, 2, vid, 23, 4)
    part = VersionView(paths, m, MAKER.DIM).parts[0]
    assert part.dead is not None
    assert sorted(part.view.id_at(int(i)) for i in np.flatnonzero(part.dead)) == \
        ["doc-1", "doc-10", "doc-2", "doc-22"]
    del part
    # The new fragment holds what the tail added and was still live.
    assert new.fid == vid and new.dead == 0 and new.rows == 6  # doc-25,27,28,29,10,3
    # checkpoint 1 (legacy, listed by no version) is retired; no stray files.
    assert sorted(os.listdir(paths.checkpoints)) == [
        "00000002", f"00000002-{vid:08d}.deleted", f"{vid:08d}", f"{vid:08d}.version"]

    assert assert_exact(store) == LAST_SEQ
    report = mmwal.verify(store)
    assert report.ok, report.problems
    check_inspect_upgraded(store, capsys)

    # The previous release refuses the upgraded store rather than misreading it.
    out = run_old(old_release, OLD_OPEN, store)
    for name in ("reader", "store"):
        kind, is_fve, msg = out[name]
        assert is_fve, (name, kind, msg)
        assert "format version 2" in msg and "upgrade mmwal" in msg
    assert out["replay"][1] is True, out["replay"]
    assert out["verify_ok"] is False

    # And the upgraded store keeps working: more records, a checkpoint, a compaction.
    with mmwal.Store(store, config=mmwal.Config(keep_checkpoints=2)) as s:
        s.remove("doc-0")
        s.add("doc-0", MAKER.vec(0, 3), content=MAKER.content(0, 3), metadata=MAKER.meta(0, 3))
        s.checkpoint()
        s.compact()
    after = {**EXPECTED, "doc-0": (MAKER.vec(0, 3), MAKER.content(0, 3),
                                            MAKER.meta(0, 3))}
    with mmwal.Reader(store) as r:
        assert sorted(r.ids) == sorted(after)
        for i, (vec, c, meta) in after.items():
            d = r.get(i)
            assert d.embedding.tobytes() == vec.tobytes() and (d.content, d.metadata) == (c, meta)
    assert mmwal.verify(store).ok


def check_inspect_upgraded(store, capsys):
    """inspect shows the version's fragments, and says this mmwal reads what it wrote."""
    capsys.readouterr()
    assert cli_main(["inspect", store, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["errors"] == [] and info["format_version"] == 2
    # It used to say "version 2 (this mmwal reads up to 1)" of a store it just wrote.
    assert info["library_format_version"] >= info["format_version"]
    assert info["documents"] == len(EXPECTED) and info["seq"] == LAST_SEQ
    assert [(f["id"], f["rows"], f["dead_rows"], f["deletion_vector"])
            for f in info["checkpoint"]["fragments"]] == [
        (2, 23, 4, "00000002-00000003.deleted"), (3, 6, 0, None)]
    assert cli_main(["inspect", store]) == 0
    assert "version 2 (this mmwal reads up to 2)" in capsys.readouterr().out


def test_old_release_reads_the_fixture(store, old_release):
    """The vendored previous release is the real one: it opens its own store."""
    out = run_old(old_release, OLD_OPEN, store)
    assert out["file"].startswith(old_release), out["file"]
    assert out["reader"] == ["opened", len(EXPECTED), ""] and out["store"][0] == "opened"
    assert out["verify_ok"] is True
