"""Damage matrix: every file kind x {truncate, junk, zeros} x {0, 30, 60, 90 %}.

(RocksDB ``db_wal_test.cc``, the CORDS study.)  For each case, on a copy of one
pristine store: ``verify()`` and a strict Reader either detect the damage (a
problem in the report, an MmwalError on read) or the reads are exactly right -
never a silently wrong answer, never an exception that is not an MmwalError.
The salvage modes recover what they document: ``point-in-time`` a prefix of
the log, ``skip-bad`` only records that are exactly what was written.  Then a
checkpoint is run over the damaged store (with a salvage recovery mode
configured) and verified: it refuses and publishes nothing, or the result is
exactly what strict reads served, or verify still reports the damage - never
a clean verify over laundered data.  The tail
hint is rebuilt, so its damage is harmless; damage of the MANIFEST is always
detected.

``test_damage_versions`` does the same over what versions add (a store of three
fragments with deletion vectors and two retained versions): the version file
and a deletion vector of the current and of the older version, and the files
of the oldest fragment; there verify() always reports the damage, and a
compaction over it is checked as well as a checkpoint.
"""

from __future__ import annotations

import os
import random
import shutil
from collections import Counter

import numpy as np
import pytest

import mmwal
from mmwal._faults import doc_vec
from mmwal._version import read_version

DIM = 8
HOWS = ("truncate", "junk", "zeros")
WHERE = (0, 30, 60, 90)
SPAN = 64  # bytes overwritten by junk / zeros
CKPT_FILES = ("embeddings.npy", "norms.npy", "ids_offsets.npy", "docs_offsets.npy", "index.npy",
              "ids.bin", "docs.lz4", "DESCRIPTOR", "columns.bin", "ann.usearch")
#: Outcome of the checkpoint run over each damaged case, per kind (for
#: stress/faults/damage_summary.py): "refused" (an MmwalError, nothing
#: published), "exact" (it served exactly what strict reads served), "reported"
#: (verify still reports the damage).
CHECKPOINT_OVER: dict[str, Counter[str]] = {}
KINDS = ("segment-first", "segment-middle", "segment-last", *CKPT_FILES, "MANIFEST", "tail")


def content(k):
    return f"content {k} " * (1 + k % 3)


def meta(k):
    return None if k % 4 == 0 else {"k": k, "tags": ["a", k % 5]}


class Pristine:
    """One store and what it must contain; ids are never re-added with other data."""

    def __init__(self, path):
        self.path = path
        self.state: dict[str, int] = {}
        self.ops: list[tuple[int, str, str]] = []  # (seq, kind, id) of every record
        # ann_min_rows=5: the fragments get an approximate index, damaged here too
        cfg = mmwal.Config(segment_bytes=4096, chunk_documents=4, keep_checkpoints=2,
                           ann_min_rows=5)
        with mmwal.Store(path, dim=DIM, durability="os", config=cfg) as s:
            k = 0
            for _ in range(40):
                self._add(s, k)
                k += 1
            s.checkpoint()
            for _ in range(15):
                self._add(s, k)
                k += 1
            for victim in (3, 17, 41):
                seq = s.remove(f"doc-{victim}")
                self.ops.append((seq, "remove", f"doc-{victim}"))
                self.state.pop(f"doc-{victim}")
            keys = list(range(k, k + 6))
            seqs = s.add_many([f"doc-{x}" for x in keys], np.stack([doc_vec(x) for x in keys]),
                              contents=[content(x) for x in keys],
                              metadatas=[meta(x) for x in keys])
            for x, seq in zip(keys, seqs):
                self.ops.append((seq, "add", f"doc-{x}"))
                self.state[f"doc-{x}"] = x
            k += 6
            info = s.checkpoint()
            self.checkpoint_seq = info.seq
            for _ in range(90):  # three segments or more after the checkpoint
                self._add(s, k)
                k += 1
            self.last_seq = s.seq
        self.keys = {f"doc-{x}": x for x in range(k)}
        m = mmwal._store.open_manifest(mmwal._fsutil.Paths(path))
        self.ckpt_dir = os.path.join("checkpoints", f"{m['checkpoint']:08d}")
        segs = sorted(n for n in os.listdir(os.path.join(path, "wal"))
                      if int(n[:20]) >= m["replay_segment"])
        assert len(segs) >= 3, segs
        self.segments = [os.path.join("wal", n) for n in segs]
        assert mmwal.verify(path).ok

    def _add(self, s, k):
        seq = s.add(f"doc-{k}", doc_vec(k), content=content(k), metadata=meta(k))
        self.ops.append((seq, "add", f"doc-{k}"))
        self.state[f"doc-{k}"] = k

    def file_of(self, kind):
        if kind.startswith("segment-"):
            return {"first": self.segments[0], "middle": self.segments[len(self.segments) // 2],
                    "last": self.segments[-1]}[kind.split("-")[1]]
        if kind in CKPT_FILES:
            return os.path.join(self.ckpt_dir, kind)
        return kind

    def state_at(self, seq):
        """The expected id -> key state after every record up to ``seq``."""
        state: dict[str, int] = {}
        for s, kind, id_ in self.ops:
            if s > seq:
                break
            if kind == "add":
                state[id_] = self.keys[id_]
            else:
                state.pop(id_, None)
        return state


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return Pristine(str(tmp_path_factory.mktemp("damage") / "store"))


def damage(path, how, pct, rng):
    size = os.path.getsize(path)
    off = size * pct // 100
    if how == "truncate":
        os.truncate(path, off)
        return
    n = min(SPAN, size - off)
    data = rng.randbytes(n) if how == "junk" else bytes(n)
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(data)


def doc_matches(doc, k):
    return (doc is not None and doc.embedding.tobytes() == doc_vec(k).tobytes()
            and doc.content == content(k) and doc.metadata == meta(k))


QUERY = doc_vec(1) + doc_vec(2)


def top_ids(state, k=3):
    """The ids a cosine search for QUERY must return over ``state`` (id -> key)."""
    ids = sorted(state)
    if not ids:
        return []
    m = np.stack([doc_vec(state[i]) for i in ids]).astype(np.float64)
    q = QUERY.astype(np.float64)
    scores = m @ q / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))
    return [ids[j] for j in np.argsort(-scores, kind="stable")[:k]]


def read_all(path, recovery="strict"):
    """(seq, {id: Document}, ids, top hits) through a Reader; raises what it raises."""
    with mmwal.Reader(path, recovery=recovery) as r:
        ids = list(r.ids)
        docs = {i: r.get(i) for i in ids}
        emb = np.asarray(r.embeddings)
        assert emb.shape == (len(ids), DIM)
        for row, i in enumerate(ids):
            assert docs[i] is None or emb[row].tobytes() == docs[i].embedding.tobytes()
        # Junk in a mapped checkpoint can be NaN: numpy warns in the scoring (the
        # damage itself is verify()'s to report).
        with np.errstate(all="ignore"):
            hits = [h.id for h in r.search(QUERY, k=3)]
        return r.seq, docs, ids, hits


def exactly(p, got, state):
    _seq, docs, ids, hits = got
    return (len(ids) == len(set(ids)) and set(ids) == set(state)
            and all(doc_matches(docs[i], state[i]) for i in ids) and hits == top_ids(state))


@pytest.mark.parametrize("pct", WHERE)
@pytest.mark.parametrize("how", HOWS)
@pytest.mark.parametrize("kind", KINDS)
def test_damage(pristine, tmp_path, kind, how, pct):
    run_case(pristine, str(tmp_path / "store"), kind, how, pct)


def run_case(p, work, kind, how, pct):
    """Damage a copy of ``p`` at ``work``, check it; return the outcome.

    "harmless" (reads exactly right, or nothing changed), "detected" (verify()
    or a strict read says so), "prefix" (a whole-frame cut of the newest
    segment: a clean, shorter log).  stress/faults/damage_summary.py tallies them.
    """
    shutil.copytree(p.path, work)
    rel = p.file_of(kind)
    target = os.path.join(work, rel)
    with open(target, "rb") as f:
        before = f.read()
    damage(target, how, pct, random.Random(f"{kind}{how}{pct}"))
    with open(target, "rb") as f:
        changed = f.read() != before

    report = mmwal.verify(work)  # never raises: damage is reported
    read_error = None
    try:
        got = read_all(work)
    except mmwal.MmwalError as exc:
        read_error = exc
    detected = read_error is not None or not report.ok
    if read_error is None:
        seq = got[0]
        if exactly(p, got, p.state):
            # Reads are right; verify() may still see the damage (e.g. unread bytes).
            outcome = "detected" if not report.ok else "harmless"
        elif (kind == "segment-last" and how == "truncate"
              and exactly(p, got, p.state_at(seq)) and seq >= p.checkpoint_seq):
            # A cut exactly at a frame boundary of the newest segment reads as a clean
            # end of log (torn-tail semantics: the same state a power loss in "os"
            # mode may leave); the tail record then claims more (see the xfail in
            # test_log_recovery.py).  Anything shorter than a whole-frame prefix is
            # reported.
            outcome = "prefix"
        else:
            assert detected, (f"{kind} {how} {pct}%: reads return wrong data and verify() "
                              "says ok")
            outcome = "detected"
    else:
        outcome = "detected"

    if not changed:
        assert outcome == "harmless" and report.ok, report.problems
    if kind == "tail":
        # A hint, rebuilt by the next writer: reads, verify and appends all fine.
        assert outcome == "harmless" and report.ok, (read_error, report.problems)
        with mmwal.Store(work, durability="fsync") as s:
            s.add("after", doc_vec(999), content=content(999), metadata=meta(999))
        got = read_all(work)
        assert exactly(p, got, {**p.state, "after": 999}) and got[0] == p.last_seq + 1
        assert mmwal.verify(work).ok
    if kind == "MANIFEST" and changed:
        assert isinstance(read_error, (mmwal.CorruptionError, mmwal.errors.StoreNotFoundError,
                                       mmwal.errors.FormatVersionError)), read_error
        assert not report.ok
    if kind in CKPT_FILES and changed and outcome != "harmless":
        assert not report.ok or isinstance(read_error, mmwal.CorruptionError)
    if kind.startswith("segment-") and changed and outcome == "detected":
        assert not report.ok, "log damage a Reader refuses must be a verify() problem"

    if kind.startswith("segment-"):
        check_salvage(p, work)
    if changed and (kind in CKPT_FILES or kind.startswith("segment-")):
        after = check_checkpoint_over(p, work, kind, None if read_error is not None else got)
        CHECKPOINT_OVER.setdefault(kind, Counter())[after] += 1
    return outcome if changed else "unchanged"


def published(work):
    """The MANIFEST's bytes and the checkpoint directories: what a checkpoint publishes."""
    with open(os.path.join(work, "MANIFEST"), "rb") as f:
        return f.read(), sorted(os.listdir(os.path.join(work, "checkpoints")))


def check_checkpoint_over(p, work, kind, strict_read):
    """Checkpoint the damaged store (salvage recovery configured), then verify.

    The damage must never be laundered: either the checkpoint raises an
    MmwalError (a CorruptionError for a damaged checkpoint file) and publishes
    nothing, or what it publishes serves exactly what a strict read served
    before (no acknowledged record dropped, no damaged byte re-published), or
    verify() still reports the damage.  keep_checkpoints=1: a successful
    checkpoint retires the damaged one, so only re-published damage is left
    for verify to find.
    """
    before = published(work)
    cfg = mmwal.Config(keep_checkpoints=1, recovery="skip-bad", chunk_documents=4)
    try:
        with mmwal.Store(work, config=cfg) as s:
            s.checkpoint()
    except mmwal.MmwalError as exc:
        if kind in CKPT_FILES or kind in VKINDS_FULL or kind in OLD_FRAGMENT:
            assert isinstance(exc, mmwal.CorruptionError), exc
        assert published(work) == before, "a refused checkpoint published something"
        assert not [n for n in before[1] if n.startswith(".tmp-")]
        return "refused"
    report = mmwal.verify(work)
    if not report.ok:
        return "reported"
    assert strict_read is not None, f"{kind}: a checkpoint made unreadable damage clean"
    got = read_all(work)
    assert exactly(p, got, p.state_at(strict_read[0])), \
        f"{kind}: after a checkpoint over damage verify is clean but the data is not"
    assert got[0] == strict_read[0], f"{kind}: the checkpoint dropped records"
    return "exact"


def check_salvage(p, work):
    """point-in-time: a prefix of the log; skip-bad: only exact records, in seq order."""
    try:
        got = read_all(work, "point-in-time")
    except mmwal.MmwalError:
        pass  # e.g. the first segment's header is gone: nothing to salvage from
    else:
        assert p.checkpoint_seq <= got[0] <= p.last_seq
        assert exactly(p, got, p.state_at(got[0])), "point-in-time is not a prefix"
    expected = {s: (kind, id_) for s, kind, id_ in p.ops}
    for mode in ("point-in-time", "skip-bad"):
        try:
            got = [(op.seq, op.kind, op.id, op) for op in mmwal.replay(work, mode=mode)]
        except mmwal.MmwalError:
            continue
        seqs = [g[0] for g in got]
        assert seqs == sorted(set(seqs))
        for s, kind, id_, op in got:
            assert expected[s] == (kind, id_), (mode, s)
            if kind == "add":
                k = p.keys[id_]
                assert op.embedding.tobytes() == doc_vec(k).tobytes()
                assert (op.content, op.metadata) == (content(k), meta(k))
        if mode == "point-in-time" and got:
            # Contiguous from the first record the log still holds.
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    try:
        with mmwal.Reader(work, recovery="skip-bad") as r:
            for i in r.ids:
                assert doc_matches(r.get(i), p.keys[i])
    except mmwal.MmwalError:
        pass


# ============================================================================ versions
#: Damage of what versions add: the version file and a deletion vector of the current
#: version and of the older one kept (keep_checkpoints=2), and every file of the OLDEST
#: fragment (listed by both versions, under a deletion vector in each).
VKINDS_FULL = ("version-current", "version-older", "dv-current", "dv-older")
# (ann.usearch of the older fragment: its zero-padded tail makes some "zeros"
# cases no change at all; the index's damage is covered by the matrix above.)
OLD_FRAGMENT = tuple(f"old-fragment/{name}" for name in CKPT_FILES if name != "ann.usearch")


def _version_cases():
    """Every offset for the version files and vectors; for the old fragment's files each
    (file, how) at one offset, rotating so every offset is covered (runtime)."""
    out = [(k, h, p) for k in VKINDS_FULL for h in HOWS for p in WHERE]
    for i, k in enumerate(OLD_FRAGMENT):
        for j, h in enumerate(HOWS):
            out.append((k, h, WHERE[(i + j) % len(WHERE)]))
    return out


class VersionedPristine(Pristine):
    """Three checkpoints (versions 1-3, the last two retained), a log tail after them.

    Version 3 lists fragments 1, 2, 3 (1 and 2 under deletion vectors written by
    version 3); version 2 lists fragments 1 and 2 (1 under a vector written by
    version 2).  The tail removes rows of fragments 1 and 3.
    """

    def __init__(self, path):  # noqa: D107 - builds another store than Pristine
        self.path = path
        self.state = {}
        self.ops = []
        cfg = mmwal.Config(segment_bytes=4096, chunk_documents=4, keep_checkpoints=2,
                           auto_compact=False, ann_min_rows=5)
        with mmwal.Store(path, dim=DIM, durability="os", config=cfg) as s:
            for k in range(30):
                self._add(s, k)
            s.checkpoint()
            for k in range(30, 45):
                self._add(s, k)
            self._remove(s, 3)
            self._remove(s, 17)
            self._add(s, 5)  # the same document again: its row in fragment 1 dies
            s.checkpoint()
            for k in range(45, 60):
                self._add(s, k)
            self._remove(s, 8)
            self._remove(s, 33)
            info = s.checkpoint()
            self.checkpoint_seq = info.seq
            for k in range(60, 65):
                self._add(s, k)
            self._remove(s, 12)
            self._remove(s, 50)
            self.last_seq = s.seq
        self.keys = {f"doc-{x}": x for x in range(65)}
        paths = mmwal._fsutil.Paths(path)
        m = mmwal._store.open_manifest(paths)
        cur = read_version(paths, m)
        assert [e.fid for e in cur.entries] == [1, 2, 3] and cur.id == 3
        assert [e.dv for e in cur.entries] == [3, 3, 0]
        names = sorted(os.listdir(paths.checkpoints))
        assert names == ["00000001", "00000001-00000002.deleted", "00000001-00000003.deleted",
                         "00000002", "00000002-00000003.deleted", "00000002.version",
                         "00000003", "00000003.version"], names
        self.ckpt_dir = os.path.join("checkpoints", "00000003")
        assert mmwal.verify(path).ok

    def _remove(self, s, k):
        seq = s.remove(f"doc-{k}")
        self.ops.append((seq, "remove", f"doc-{k}"))
        self.state.pop(f"doc-{k}")

    def file_of(self, kind):
        c = "checkpoints"
        return {"version-current": os.path.join(c, "00000003.version"),
                "version-older": os.path.join(c, "00000002.version"),
                "dv-current": os.path.join(c, "00000001-00000003.deleted"),
                "dv-older": os.path.join(c, "00000001-00000002.deleted"),
                }.get(kind) or os.path.join(c, "00000001", kind.split("/")[1])


@pytest.fixture(scope="module")
def versioned(tmp_path_factory):
    return VersionedPristine(str(tmp_path_factory.mktemp("vdamage") / "store"))


@pytest.mark.parametrize(("kind", "how", "pct"), _version_cases())
def test_damage_versions(versioned, tmp_path, kind, how, pct):
    run_version_case(versioned, str(tmp_path / "store"), kind, how, pct)


def run_version_case(p, work, kind, how, pct):
    """Damage a version file, a deletion vector or an old fragment's file; check it.

    Everything a version names is covered by a checksum its parent holds, and
    verify checks every retained version: any change is a verify() problem.
    A damaged version file or deletion vector of the current version is a
    CorruptionError on read; the older version's are never read by a Reader,
    which serves the current version exactly.  Then neither a checkpoint nor a
    compaction over the damage launders it.
    """
    shutil.copytree(p.path, work)
    target = os.path.join(work, p.file_of(kind))
    with open(target, "rb") as f:
        before = f.read()
    damage(target, how, pct, random.Random(f"{kind}{how}{pct}"))
    with open(target, "rb") as f:
        assert f.read() != before, "every case changes the file"

    report = mmwal.verify(work)
    assert not report.ok, f"{kind} {how} {pct}%: verify() missed the damage"
    assert any(pr.file.startswith(os.path.join(work, "checkpoints")) for pr in report.problems)
    read_error = None
    got = None
    try:
        got = read_all(work)
    except mmwal.MmwalError as exc:
        read_error = exc
    if kind in ("version-current", "dv-current"):
        assert isinstance(read_error, mmwal.CorruptionError), read_error
    elif kind in ("version-older", "dv-older"):
        # Readers never open an older version: they serve the current one exactly.
        assert read_error is None and exactly(p, got, p.state), read_error
    # A fragment's mapped bytes are not checksummed on every read (as in the matrix
    # above): a Reader may serve them (or raise an MmwalError); verify() reports them.

    copy = work + "-compact"
    shutil.copytree(work, copy)
    check_checkpoint_over(p, work, kind, got if read_error is None else None)
    check_compact_over(p, copy, kind, got if read_error is None else None)


def check_compact_over(p, work, kind, strict_read):
    """Compact the damaged store into one fragment: refused (nothing published), or what it
    publishes reads exactly as strict reads did, or verify still reports the damage."""
    before = published(work)
    cfg = mmwal.Config(keep_checkpoints=1, chunk_documents=4)
    try:
        with mmwal.Store(work, durability="os", config=cfg) as s:
            info = s.compact()
    except mmwal.MmwalError as exc:
        assert isinstance(exc, mmwal.CorruptionError), exc
        assert published(work) == before, "a refused compaction published something"
        return "refused"
    assert info.fragments == 1, info
    report = mmwal.verify(work)
    if not report.ok:
        return "reported"
    assert strict_read is not None, f"{kind}: a compaction made unreadable damage clean"
    got = read_all(work)
    assert got[0] == strict_read[0] and exactly(p, got, p.state), \
        f"{kind}: after a compaction over damage verify is clean but the data is not"
    return "exact"
