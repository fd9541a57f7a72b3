"""Damage is never laundered: reported, or refused, never re-published as good data.

* A checkpoint built on a damaged checkpoint checks every byte it copies (or
  relies on) against the descriptor's CRC-32s and raises ``CorruptionError``
  before anything is published.
* ``verify`` checks the older checkpoints kept beside the current one too.
* ``Store.checkpoint()`` never drops an acknowledged record, whatever
  ``Config.recovery`` says: salvage is ``mmwal repair``, which reports it.
* ``mmwal repair`` keeps a self-contained backup that ``mmwal restore`` turns
  back into the pre-repair store, even after later checkpoints retired the
  files the repair started from; repair goes through the I/O layer, so the
  fault campaigns (``mmwal._faults.run_repair_faults``) cover it.
"""

from __future__ import annotations

import errno
import json
import os

import pytest
from helpers import add_doc, frame_spans, segment_files

import mmwal
from mmwal import _faults, _io, cli
from mmwal import _repair as _repair_mod
from mmwal._fsutil import Paths
from mmwal._store import open_manifest

DIM = 8


def tree(path: str) -> dict[str, bytes]:
    """Every file under ``path`` (relative name -> bytes), lock files included."""
    out = {}
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                out[os.path.relpath(p, path)] = f.read()
    return out


def published(path: str) -> dict[str, bytes]:
    """The MANIFEST and every file under checkpoints/: what a checkpoint publishes."""
    return {k: v for k, v in tree(path).items()
            if k == "MANIFEST" or k.startswith("checkpoints/")}


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


def two_checkpoint_store(path: str, keep: int = 2) -> None:
    cfg = mmwal.Config(chunk_documents=4, keep_checkpoints=keep, segment_bytes=4096)
    with mmwal.Store(path, dim=DIM, durability="os", config=cfg) as s:
        for k in range(20):
            add_doc(s, k)
        s.checkpoint()
        for k in range(20, 30):
            add_doc(s, k)


# Offsets past the .npy header (128 bytes) or inside the data of the others.
DAMAGE = [("embeddings.npy", 128 + 4 * DIM * 3 + 1), ("norms.npy", 128 + 4 * 5),
          ("ids.bin", 10), ("ids_offsets.npy", 128 + 8 * 4), ("index.npy", 128 + 8),
          ("docs.lz4", 20), ("docs_offsets.npy", 128 + 8)]


@pytest.mark.parametrize(("name", "offset"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damage_in_an_older_fragment_is_never_republished(tmp_path, name, offset):
    """A checkpoint does not copy older fragments; a compaction checks what it copies.

    The checkpoint either refuses (a damaged id index misleads the lookups it
    does) or publishes a new fragment beside the damaged one, which stays as
    it was, damage and descriptor, for verify to report.  A compaction, which
    does copy, refuses with the damaged file named and publishes nothing.
    """
    path = str(tmp_path / "s")
    two_checkpoint_store(path)
    m = open_manifest(Paths(path))
    target = os.path.join(Paths(path).checkpoint(m["checkpoint"]), name)
    flip(target, offset)
    with open(target, "rb") as f:
        damaged = f.read()
    with mmwal.Store(path) as s:
        before = published(path)
        try:
            s.checkpoint()
        except mmwal.CorruptionError as exc:
            # The damaged id index misled a lookup: refused, nothing published,
            # and with one fragment and no deletions a compaction has nothing to do.
            assert exc.path == target and name in str(exc)
            assert published(path) == before
            assert s.compact().fragments_merged == 0
        else:
            before = published(path)
            with pytest.raises(mmwal.CorruptionError) as ei:
                s.compact()
            assert ei.value.path == target and name in str(ei.value)
    # Nothing published: the MANIFEST and every checkpoint file as before, no
    # temporary directory left.
    assert published(path) == before
    assert not [n for n in os.listdir(Paths(path).checkpoints) if n.startswith(".tmp-")]
    with open(target, "rb") as f:
        assert f.read() == damaged  # never rewritten under a fresh checksum
    report = mmwal.verify(path)
    assert not report.ok and any(name in p.file for p in report.problems)


def test_verify_checks_the_older_versions_it_keeps(tmp_path):
    """A fragment only an older retained version lists is checked too."""
    path = str(tmp_path / "s")
    two_checkpoint_store(path, keep=2)
    with mmwal.Store(path) as s:
        s.checkpoint()  # version 2: fragments 1 and 2
        s.compact()  # version 3: one new fragment; version 2 is kept beside it
    names = sorted(os.listdir(Paths(path).checkpoints))
    assert names == ["00000001", "00000002", "00000002.version", "00000003",
                     "00000003.version"], names
    assert mmwal.verify(path).ok
    older = os.path.join(Paths(path).checkpoints, "00000001", "embeddings.npy")
    flip(older, 128 + 7)
    with mmwal.Reader(path) as r:  # the current version does not use it
        assert len(r) == 30
    report = mmwal.verify(path)
    assert not report.ok
    assert [p for p in report.problems if p.file == older], report.problems


@pytest.mark.parametrize("recovery", ["skip-bad", "point-in-time"])
def test_checkpoint_never_drops_an_acknowledged_record(tmp_path, recovery):
    path = str(tmp_path / "s")
    cfg = mmwal.Config(segment_bytes=4096, recovery=recovery)
    with mmwal.Store(path, dim=DIM, durability="os", config=cfg) as s:
        for k in range(150):
            add_doc(s, k)
    segs = segment_files(path)
    assert len(segs) >= 3
    start, _end, _pad, seq, _n = frame_spans(segs[1])[2]  # a frame in a sealed segment
    flip(segs[1], start + 40)
    before = published(path)
    with mmwal.Store(path, config=cfg) as s:
        with pytest.raises(mmwal.CorruptionError) as ei:
            s.checkpoint()
    assert segs[1] == ei.value.path and "repair" in str(ei.value)
    assert published(path) == before
    with mmwal.Reader(path, recovery="skip-bad") as r:
        assert r.seq == 150 and f"doc-{seq - 1}" not in r  # still there for repair to report
    # Salvage is explicit, and its report names what is dropped: file, offset, seqs.
    assert cli.main(["repair", path, "--mode", "skip-bad", "--json"]) == 1


def test_repair_report_lists_the_dropped_records(tmp_path, capsys):
    path = str(tmp_path / "s")
    with mmwal.Store(path, dim=DIM, durability="os",
                     config=mmwal.Config(segment_bytes=4096)) as s:
        for k in range(150):
            add_doc(s, k)
    segs = segment_files(path)
    start, _end, _pad, seq, n = frame_spans(segs[1])[2]
    flip(segs[1], start + 40)
    capsys.readouterr()
    assert cli.main(["repair", path, "--mode", "skip-bad", "--yes", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    lost = [d for d in out["damage"] if not d["harmless"]]
    assert lost == [{"file": os.path.relpath(segs[1], path), "start": start,
                     "end": lost[0]["end"], "why": lost[0]["why"], "harmless": False,
                     "seqs": [seq, seq + n - 1]}]
    assert out["repaired"] and out["result"]["backup"]


def damaged_store(path: str) -> tuple[int, str]:
    """A store with a checkpoint, damage in a sealed segment; keep_checkpoints=1."""
    cfg = mmwal.Config(segment_bytes=4096, keep_checkpoints=1, chunk_documents=4)
    with mmwal.Store(path, dim=DIM, durability="os", config=cfg) as s:
        for k in range(30):
            add_doc(s, k)
        s.checkpoint()
        for k in range(30, 150):
            add_doc(s, k)
        s.remove("doc-3")
    m = open_manifest(Paths(path))
    segs = [p for p in segment_files(path) if int(os.path.basename(p)[:20])
            >= m["replay_segment"]]
    start = frame_spans(segs[1])[1][0]
    flip(segs[1], start + 40)
    return m["checkpoint"], segs[1]


def observed(path: str) -> dict[str, object]:
    """What the store holds and what is wrong with it, comparable across copies."""
    report = mmwal.verify(path)
    root = os.path.abspath(path)
    with mmwal.Reader(path, recovery="skip-bad") as r:
        docs = {i: (r[i].embedding.tobytes(), r[i].content, r[i].metadata) for i in r.ids}
        seq = r.seq
    ops = [(op.seq, op.kind, op.id) for op in mmwal.replay(path, mode="skip-bad")]
    return {"ok": report.ok, "seq": seq, "docs": docs, "ops": ops,
            "problems": sorted((os.path.relpath(p.file, root), p.offset)
                               for p in report.problems)}


def test_repair_backup_restores_the_pre_repair_store_after_later_checkpoints(tmp_path, capsys):
    path = str(tmp_path / "s")
    old_ckpt, _seg = damaged_store(path)
    before = observed(path)
    assert not before["ok"] and before["problems"]
    assert cli.main(["repair", path, "--mode", "skip-bad", "--yes", "--json"]) == 0
    backup = json.loads(capsys.readouterr().out)["result"]["backup"]
    cfg = mmwal.Config(segment_bytes=4096, keep_checkpoints=1)
    with mmwal.Store(path, config=cfg) as s:  # retires what the repair started from
        add_doc(s, 999)
        s.checkpoint()
        add_doc(s, 1000)
        s.checkpoint()
        s.compact()  # the fragment the repair started from is listed by no version now
    assert not os.path.exists(Paths(path).checkpoint(old_ckpt))
    with open(os.path.join(backup, "REPAIR.json")) as f:
        held = json.load(f)["files"]
    assert f"checkpoints/{old_ckpt:08d}/DESCRIPTOR" in held and "MANIFEST" in held
    dest = str(tmp_path / "restored")
    capsys.readouterr()
    assert cli.main(["restore", backup, dest]) == 0, capsys.readouterr()
    assert observed(dest) == before
    with mmwal.Store(dest) as s:  # a working store: the same damage, repairable again
        assert s.seq == before["seq"]
    assert cli.main(["repair", dest, "--mode", "skip-bad", "--yes"]) == 0
    # A damaged or incomplete backup is refused, and nothing is created.
    os.unlink(os.path.join(backup, "wal", os.listdir(os.path.join(backup, "wal"))[0]))
    assert cli.main(["restore", backup, str(tmp_path / "again")]) == 1
    assert not os.path.exists(tmp_path / "again")


def test_repair_goes_through_the_io_layer(tmp_path):
    path = str(tmp_path / "s")
    damaged_store(path)
    layer = _faults.ErrorLayer()  # counts only
    old = _io.set_layer(layer)
    try:
        assert cli.main(["repair", path, "--mode", "skip-bad", "--yes"]) == 0
    finally:
        _io.set_layer(old)
    rel = [(cat, op, os.path.relpath(p, path)) for cat, op, p in layer.seen]
    assert [r for r in rel if r[0] == "mmap" and r[2].startswith("wal/")]  # the scan
    assert [r for r in rel if r[0] == "create" and r[2].startswith("repair-backup-")]
    assert [r for r in rel if r[0] == "fsync" and r[2].startswith("repair-backup-")]
    assert [r for r in rel if r[0] == "write" and "REPAIR.json" in r[2]]
    assert [r for r in rel if r[0] == "unlink" and r[2].startswith("wal/")]


def test_repair_under_io_errors_and_power_loss(tmp_path):
    """Every fault point of a repair (sampled): un-repaired or repaired, backup intact."""
    rep = _faults.run_repair_faults(str(tmp_path), quick=True, seed=7)
    assert rep["io_cases"] >= 20 and rep["powerloss_states"] >= 20, rep
    assert rep["outcomes"].get("repaired") and rep["outcomes"].get("unrepaired"), rep
    assert rep["violations"] == [], rep["violations"][:5]


def test_enospc_during_the_backup_changes_nothing_and_leaves_an_incomplete_backup(tmp_path):
    path = str(tmp_path / "s")
    damaged_store(path)
    before = tree(path)
    layer = _faults.ErrorLayer("write", nth=5, err=errno.ENOSPC)
    old = _io.set_layer(layer)
    try:
        with pytest.raises(mmwal.errors.StorageIOError) as ei:
            _faults._repair(path)
    finally:
        _io.set_layer(old)
    assert ei.value.err == errno.ENOSPC and "repair-backup-" in ei.value.path
    after = tree(path)
    assert {k: v for k, v in after.items() if not k.startswith("repair-backup-")} == before
    (backup,) = {k.split("/")[0] for k in after if k.startswith("repair-backup-")}
    with pytest.raises(mmwal.CorruptionError, match="not a complete repair backup"):
        _repair_mod.restore(os.path.join(path, backup), str(tmp_path / "r"))
    assert not os.path.exists(tmp_path / "r")
    _faults._repair(path)  # space freed: the repair goes through
    assert mmwal.verify(path).ok
