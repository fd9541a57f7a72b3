"""Versions: the MANIFEST, version files, deletion vectors, and a version mapped as one view.

A checkpoint publishes a **version** (docs/format.md, "Versions and
fragments"): a small immutable file ``checkpoints/<V>.version`` listing the
**fragments** the version is made of - immutable directories
``checkpoints/<F>/``, each what a whole checkpoint was in format 1 - in row
order, each with the **deletion vector** that marks its rows dead as of this
version (``checkpoints/<F>-<V>.deleted``, immutable, written by version V).
The MANIFEST names the current version; it is the only file ever replaced.

A store written before versions existed (MANIFEST format 1) names a single
checkpoint directory: it reads as a version of one fragment without deletions,
and the next checkpoint writes the new layout.

This module owns the manifest's reading, the version and deletion-vector
files, retention (which files a retained version still lists) and
:class:`VersionView`, the mapped fragments of one version seen as one
sequence of rows (dead rows included: ``dead`` masks them).
"""

from __future__ import annotations

import itertools
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _format as F
from . import _io
from ._checkpoint import CheckpointView, list_checkpoints, remove_entry
from ._fsutil import Paths, atomic_write, fsync_dir, list_segments, read_file, unlink_released
from .errors import CorruptionError, FormatVersionError, MmwalError, StoreNotFoundError

__all__ = ["Entry", "Version", "VersionView", "clean_orphans", "folded_past", "open_manifest",
           "read_version", "retire",
           "write_deletions", "write_version"]

#: MANIFEST format that names a version (format 1 named one checkpoint).
MANIFEST_VERSIONED = 2
VERSION_MAGIC = b"MMWALVER"
VERSION_FORMAT = 1
DELETION_MAGIC = b"MMWALDEL"
DELETION_FORMAT = 1
#: magic, format, fragment id, version id, rows, dead rows, CRC-32 of the bitmap
DELETION_HEADER = struct.Struct("<8sIQQQQI")
#: Largest id a fragment or version may have (8 decimal digits in its name).
MAX_ID = 99_999_999
VERSION_FIELDS: dict[str, type] = {
    "id": int, "seq": int, "dim": int, "documents": int, "created": float, "fragments": list,
}


def version_path(paths: Paths, vid: int) -> str:
    return os.path.join(paths.checkpoints, f"{vid:08d}.version")


def deletion_path(paths: Paths, fid: int, vid: int) -> str:
    return os.path.join(paths.checkpoints, f"{fid:08d}-{vid:08d}.deleted")


@dataclass(frozen=True)
class Entry:
    """One fragment of a version: its id, rows, dead rows, and deletion vector (or none)."""

    fid: int
    rows: int
    dead: int
    dv: int = 0  # the version that wrote its deletion vector; 0: no deletions
    dv_size: int = 0
    dv_crc: int = 0

    def encode(self) -> list[int]:
        return [self.fid, self.rows, self.dead, self.dv, self.dv_size, self.dv_crc]


@dataclass(frozen=True)
class Version:
    """A version as its file (or a format-1 MANIFEST) describes it."""

    id: int
    seq: int
    documents: int
    entries: tuple[Entry, ...]
    legacy: bool = False  # a format-1 checkpoint read as a version of one fragment

    def files(self, paths: Paths) -> tuple[set[int], set[str]]:
        """(fragment ids, deletion-vector paths) this version lists."""
        return ({e.fid for e in self.entries},
                {deletion_path(paths, e.fid, e.dv) for e in self.entries if e.dv})


def is_versioned(manifest: dict[str, Any]) -> bool:
    return int(manifest.get("format", 1)) >= MANIFEST_VERSIONED


def _bad(path: str, what: str) -> CorruptionError:
    return CorruptionError(f"{path}: offset {F.MANIFEST_HEADER.size}: {what}; run `mmwal "
                           "verify`", path=path, offset=F.MANIFEST_HEADER.size)


def _id_ok(x: Any) -> bool:
    return type(x) is int and 1 <= x <= MAX_ID


def decode_version(raw: bytes, path: str, vid: int, dim: int) -> Version:
    body = F.decode_manifest(raw, path, VERSION_MAGIC, VERSION_FIELDS)
    if body["id"] != vid or body["dim"] != dim:
        raise _bad(path, f"describes version {body['id']} of dim {body['dim']}, expected "
                         f"{vid} of dim {dim}")
    entries = []
    seen = set()
    for e in body["fragments"]:
        # Every name is derived from these integers: nothing read here can
        # point outside checkpoints/ (DESIGN.md, version-2 invariants).
        # A fragment is named before (or by) the version that lists it; a
        # deletion vector is written by a later version than its fragment and
        # no later than this one, and its size follows from the rows: fields
        # that disagree are refused here, before the files they name are opened.
        if (not isinstance(e, list) or len(e) != 6 or not all(type(x) is int for x in e)
                or not _id_ok(e[0]) or e[0] > vid or e[0] in seen or not 0 <= e[2] <= e[1]
                or (e[3] == 0) != (e[2] == 0)
                or not (e[3] == 0 or e[0] < e[3] <= vid)
                or e[4] != (deletion_size(e[1]) if e[3] else 0)
                or not 0 <= e[5] <= (0xFFFFFFFF if e[3] else 0)):
            raise _bad(path, f"fragment entry {e!r:.80} is not valid")
        seen.add(e[0])
        entries.append(Entry(*e))
    live = sum(e.rows - e.dead for e in entries)
    if live != body["documents"]:
        raise _bad(path, f"lists {live} live rows, says {body['documents']} documents")
    return Version(vid, body["seq"], body["documents"], tuple(entries))


def read_version(paths: Paths, manifest: dict[str, Any]) -> Version:
    """The version the MANIFEST names (format 1: its checkpoint as one fragment)."""
    vid = manifest["checkpoint"]
    if not vid:
        return Version(0, manifest["checkpoint_seq"], 0, ())
    if not is_versioned(manifest):
        n = int(manifest.get("checkpoint_documents", 0))
        return Version(vid, manifest["checkpoint_seq"], n, (Entry(vid, n, 0),), legacy=True)
    v = load_version(paths, vid, manifest["dim"])
    if v.seq != manifest["checkpoint_seq"]:
        path = version_path(paths, vid)
        raise _bad(path, f"version at seq {v.seq}, the MANIFEST says "
                         f"{manifest['checkpoint_seq']}")
    return v


def load_version(paths: Paths, vid: int, dim: int) -> Version:
    path = version_path(paths, vid)
    try:
        raw = read_file(path, F.MAX_MANIFEST_BODY + 64)
    except FileNotFoundError:
        raise CorruptionError(f"{path}: missing; the MANIFEST names version {vid} (run `mmwal "
                              "verify`)", path=path, offset=0) from None
    except OSError as exc:
        raise _io.io_error(exc, "read", path) from None
    return decode_version(raw, path, vid, dim)


def encode_version(v: Version, dim: int, created: float) -> bytes:
    body = {"id": v.id, "seq": v.seq, "dim": dim, "documents": v.documents,
            "created": created, "fragments": [e.encode() for e in v.entries]}
    return F.encode_manifest(body, VERSION_MAGIC, VERSION_FORMAT)


def write_version(paths: Paths, v: Version, dim: int, created: float) -> None:
    """Publish a version file (temp, fsync, rename, fsync directory)."""
    atomic_write(version_path(paths, v.id), encode_version(v, dim, created), replace=False)


def _file_in_path(path: str) -> str:
    """The first existing part of ``path`` that is not a directory ("" when none)."""
    parts: list[str] = []
    while True:
        parent = os.path.dirname(path)
        parts.append(path)
        if parent == path:
            break
        path = parent
    for p in reversed(parts):
        if not os.path.exists(p):
            return ""
        if not os.path.isdir(p):
            return p
    return ""


def open_manifest(paths: Paths) -> dict[str, Any]:
    """Read and check MANIFEST; StoreNotFoundError when there is no store."""
    try:
        data = read_file(paths.manifest, F.MAX_MANIFEST_BODY + 64)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.exists(paths.root) and not os.path.isdir(paths.root):
            raise StoreNotFoundError(f"{paths.root} is a file, not an mmwal store directory",
                                     path=paths.root) from None
        part = _file_in_path(paths.root)
        if part:
            raise StoreNotFoundError(f"no mmwal store at {paths.root}: {part} is a file, not "
                                     "a directory", path=paths.root) from None
        raise StoreNotFoundError(
            f"no mmwal store at {paths.root} (no MANIFEST); create one with "
            "mmwal.Store(path, dim=...)", path=paths.root) from None
    except OSError as exc:
        raise _io.io_error(exc, "read", paths.manifest) from None
    return F.decode_manifest(data, paths.manifest)


def folded_past(paths: Paths, seg_id: int) -> bool:
    """Whether the current MANIFEST starts replay after segment ``seg_id`` (it was folded).

    False when the MANIFEST cannot be read: the caller then reports what it found.
    """
    try:
        return bool(open_manifest(paths)["replay_segment"] > seg_id)
    except MmwalError:
        return False


# ------------------------------------------------------------------ deletion vectors
def encode_deletions(fid: int, vid: int, dead: np.ndarray) -> bytes:
    bits = np.packbits(dead.astype(bool), bitorder="little").tobytes()
    hdr = DELETION_HEADER.pack(DELETION_MAGIC, DELETION_FORMAT, fid, vid, len(dead),
                               int(np.count_nonzero(dead)), zlib.crc32(bits))
    return hdr + bits


def deletion_size(rows: int) -> int:
    return DELETION_HEADER.size + (rows + 7) // 8


def decode_deletions(raw: bytes, path: str, e: Entry) -> np.ndarray:
    """The dead-row mask a deletion vector holds, checked against its version entry."""
    want = deletion_size(e.rows)
    if len(raw) != want:
        raise CorruptionError(f"{path}: {len(raw)} bytes, expected {want} for {e.rows} rows; "
                              "run `mmwal verify`", path=path, offset=min(len(raw), want))
    magic, fmt, fid, vid, rows, dead, crc = DELETION_HEADER.unpack_from(raw, 0)
    bits = raw[DELETION_HEADER.size:]
    if magic == DELETION_MAGIC and fmt > DELETION_FORMAT and zlib.crc32(raw) == e.dv_crc:
        # Intact (the version's CRC-32 of the whole file matches) but newer.
        raise FormatVersionError(f"{path}: deletion vector format {fmt}, this mmwal reads up "
                                 f"to {DELETION_FORMAT}; upgrade mmwal to open the store",
                                 path=path, version=fmt)
    if magic != DELETION_MAGIC or fmt != DELETION_FORMAT or (fid, vid, rows) != (
            e.fid, e.dv, e.rows):
        raise CorruptionError(f"{path}: offset 0: not the deletion vector of fragment {e.fid} "
                              f"written by version {e.dv}; run `mmwal verify`", path=path,
                              offset=0)
    if zlib.crc32(bits) != crc or zlib.crc32(raw) != e.dv_crc:
        raise CorruptionError(f"{path}: offset {DELETION_HEADER.size}: checksum mismatch; run "
                              "`mmwal verify`", path=path, offset=DELETION_HEADER.size)
    mask = np.unpackbits(np.frombuffer(bits, np.uint8), count=rows,
                         bitorder="little").astype(bool)
    if int(np.count_nonzero(mask)) != dead or dead != e.dead:
        raise CorruptionError(f"{path}: offset 0: marks {int(np.count_nonzero(mask))} rows "
                              f"dead, the version says {e.dead}; run `mmwal verify`",
                              path=path, offset=0)
    return mask


def read_deletions(paths: Paths, e: Entry) -> np.ndarray | None:
    if not e.dv:
        return None
    path = deletion_path(paths, e.fid, e.dv)
    try:
        raw = read_file(path, deletion_size(e.rows))
    except FileNotFoundError:
        raise CorruptionError(f"{path}: missing; version lists it (run `mmwal verify`)",
                              path=path, offset=0) from None
    except OSError as exc:
        raise _io.io_error(exc, "read", path) from None
    return decode_deletions(raw, path, e)


def write_deletions(paths: Paths, fid: int, vid: int, dead: np.ndarray) -> Entry:
    """Write the deletion vector of fragment ``fid`` for version ``vid`` (fsynced, renamed).

    The directory is not fsynced here: the caller fsyncs ``checkpoints/`` once
    before it publishes the version that lists the vector.
    """
    data = encode_deletions(fid, vid, dead)
    atomic_write(deletion_path(paths, fid, vid), data, replace=False, sync_dir=False)
    return Entry(fid, len(dead), int(np.count_nonzero(dead)), vid, len(data), zlib.crc32(data))


# ------------------------------------------------------------------ retention
def list_versions(paths: Paths) -> list[int]:
    try:
        names = _io.layer.listdir(paths.checkpoints)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise _io.io_error(exc, "listdir", paths.checkpoints) from None
    return sorted(int(n[:8]) for n in names
                  if len(n) == 16 and n.endswith(".version") and n[:8].isdigit())


def retained_versions(paths: Paths, manifest: dict[str, Any],
                      keep: int | None) -> list[Version]:
    """The versions kept: the current one and up to ``keep - 1`` older ones (newest first).

    ``keep=None``: every older version on disk.
    """
    current = read_version(paths, manifest)
    out = [current]
    if current.legacy or not current.id:
        return out
    dim = manifest["dim"]
    older = [v for v in list_versions(paths) if v < current.id]
    if keep is not None:
        older = older[max(0, len(older) - (max(keep, 1) - 1)):] if max(keep, 1) > 1 else []
    for vid in reversed(older):
        out.append(load_version(paths, vid, dim))
    return out


def clean_orphans(paths: Paths, manifest: dict[str, Any]) -> None:
    """Delete what crashed checkpoints left: temp files, and files no version on disk lists.

    Run at the start of a checkpoint, compaction or repair (under
    ``checkpoint.lock``); unlike :func:`retire` it keeps every older version
    (a checkpoint that then fails has changed nothing a version lists).
    """
    retire(paths, manifest, None, segments=False)


def retire(paths: Paths, manifest: dict[str, Any], keep: int | None, *,
           segments: bool = True) -> None:
    """Delete what no retained version needs: old segments, versions, fragments, vectors.

    Called under ``checkpoint.lock`` after the MANIFEST naming the current
    version is durable (and at the start of a checkpoint, to remove what a
    crashed one left).  A fragment or deletion vector is deleted only when no
    retained version lists it; files written for a version that was never
    published (a crash before the MANIFEST) are listed by none and go too.
    Readers that still map deleted files keep working: unlink never
    invalidates a mapping.  When a retained version file cannot be read,
    nothing but segments is deleted (``mmwal verify`` reports the damage).
    """
    io = _io.layer
    replay_from = manifest["replay_segment"] if segments else 0
    # Ascending: what is left stays contiguous.  Their blocks are freed off
    # this path (unlink_released): gone from the directory all the same.
    old = [paths.segment(s) for s in itertools.takewhile(replay_from.__gt__,
                                                          list_segments(paths))]
    removed = len(unlink_released(old)) < len(old)
    # wal/.tmp-* are left alone here: a writer may be rolling right now (under
    # the append lock, which we do not hold); writers remove them on rebuild.
    if removed:
        fsync_dir(paths.wal)
    try:
        kept = retained_versions(paths, manifest, keep)
    except MmwalError:
        return
    frags: set[int] = set()
    dvs: set[str] = set()
    vids = {v.id for v in kept}
    for v in kept:
        f, d = v.files(paths)
        frags |= f
        dvs |= {os.path.basename(p) for p in d}
    try:
        names = io.listdir(paths.checkpoints)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _io.io_error(exc, "listdir", paths.checkpoints) from None
    doomed = []
    for name in names:
        if name.startswith(".tmp-") or name.endswith(".tmp"):
            doomed.append(name)
        elif len(name) == 8 and name.isdigit():
            if int(name) not in frags:
                doomed.append(name)
        elif name.endswith(".version") and name[:8].isdigit():
            if int(name[:8]) not in vids:
                doomed.append(name)
        elif name.endswith(".deleted") and name not in dvs:
            doomed.append(name)
    # Version files go first, durably: a fragment or deletion vector half
    # deleted (a crash mid-retirement) is then listed by no version on disk,
    # so nothing ever reads it; the next checkpoint finishes the job.
    first = [n for n in doomed if n.endswith(".version")]
    rest = [n for n in doomed if not n.endswith(".version")]
    for batch in (first, rest):
        for name in batch:
            remove_entry(os.path.join(paths.checkpoints, name))
        if batch:
            fsync_dir(paths.checkpoints)


def next_id(paths: Paths, manifest: dict[str, Any]) -> int:
    """An id above every fragment and version on disk and the current version."""
    top = max([manifest["checkpoint"], *list_checkpoints(paths), *list_versions(paths)])
    if top >= MAX_ID:
        raise CorruptionError(f"{paths.checkpoints}: ids have reached {top}; no further "
                              "version can be named", path=paths.checkpoints, offset=0)
    return int(top) + 1


# ------------------------------------------------------------------ the mapped version
class Part:
    """One fragment of a mapped version: its view, first global row, dead-row mask."""

    __slots__ = ("dead", "entry", "ndead", "start", "view")

    def __init__(self, view: CheckpointView, entry: Entry, start: int,
                 dead: np.ndarray | None) -> None:
        self.view = view
        self.entry = entry
        self.start = start
        self.dead = dead
        self.ndead = entry.dead


class VersionView:
    """Every fragment of one version, mapped: rows numbered across fragments in order.

    Opening costs one small file read and one map per fragment file, plus
    ``rows / 8`` bytes per deletion vector: no per-document Python work.
    ``count`` counts every row (dead ones too); ``live`` the live ones.
    """

    def __init__(self, paths: Paths, manifest: dict[str, Any] | None, dim: int,
                 reuse: dict[int, CheckpointView] | None = None, *,
                 version: Version | None = None) -> None:
        if version is None:
            assert manifest is not None
            version = read_version(paths, manifest)
        v = version
        self.version = v
        self.id = v.id
        self.seq = v.seq
        self.dim = dim
        self.parts: list[Part] = []
        start = 0
        for entry in v.entries:
            e = entry
            view = (reuse or {}).get(e.fid)
            if view is None:
                view = CheckpointView(paths, e.fid, dim)
            if v.legacy and view.count != e.rows:
                # A format-1 MANIFEST's checkpoint_documents is optional: the
                # descriptor (checked against its files) says how many rows.
                e = Entry(e.fid, view.count, 0)
                v = Version(v.id, v.seq, view.count, (e,), legacy=True)
                self.version = v
            if view.count != e.rows:
                path = version_path(paths, v.id)
                raise _bad(path, f"lists fragment {e.fid} with {e.rows} rows, its descriptor "
                                 f"says {view.count}")
            if v.legacy and view.seq != v.seq:
                raise CorruptionError(
                    f"{paths.manifest}: names checkpoint {v.id} at seq {v.seq}, its "
                    f"descriptor says {view.seq}", path=paths.manifest,
                    offset=F.MANIFEST_HEADER.size)
            self.parts.append(Part(view, e, start, read_deletions(paths, e)))
            start += e.rows
        self.count = start
        self.live = self.version.documents
        self._starts = np.array([p.start for p in self.parts], dtype=np.int64)
        self._dead: Any = False  # not computed yet

    @property
    def views(self) -> dict[int, CheckpointView]:
        return {p.entry.fid: p.view for p in self.parts}

    @property
    def dead(self) -> np.ndarray | None:
        """Bool mask over every row: True where this version's deletion vectors mark it."""
        if self._dead is False:
            if not any(p.dead is not None for p in self.parts):
                self._dead = None
            else:
                self._dead = np.concatenate([
                    p.dead if p.dead is not None else np.zeros(p.view.count, bool)
                    for p in self.parts])
        return self._dead  # type: ignore[no-any-return]

    @property
    def embeddings(self) -> np.ndarray | None:
        """The mapped matrix itself when the version is one fragment without deletions."""
        if len(self.parts) == 1 and self.parts[0].dead is None:
            return self.parts[0].view.embeddings
        if not self.parts:
            empty = np.empty((0, self.dim), np.float32)
            empty.flags.writeable = False
            return empty
        return None

    def locate(self, row: int) -> tuple[Part, int]:
        i = int(np.searchsorted(self._starts, row, side="right")) - 1
        p = self.parts[i]
        return p, row - p.start

    def lookup(self, key: bytes) -> int:
        """The global row of the live id with UTF-8 bytes ``key``, or -1 (newest first)."""
        for p in reversed(self.parts):
            r = p.view.lookup(key)
            if r >= 0 and (p.dead is None or not p.dead[r]):
                return p.start + r
        return -1

    def lookup_many(self, keys: list[bytes]) -> np.ndarray:
        """:meth:`lookup` of many ids: their global rows (int64), -1 where not live."""
        out = np.full(len(keys), -1, dtype=np.int64)
        todo = np.arange(len(keys))
        for p in reversed(self.parts):
            if not len(todo):
                break
            rows = p.view.lookup_many([keys[i] for i in todo.tolist()])
            hit = rows >= 0
            if p.dead is not None:
                hit &= ~p.dead[np.where(hit, rows, 0)]
            out[todo[hit]] = p.start + rows[hit]
            todo = todo[~hit]
        return out

    def id_at(self, row: int) -> str:
        p, r = self.locate(row)
        return p.view.id_at(r)

    def doc(self, row: int) -> tuple[str, dict[str, Any] | None]:
        p, r = self.locate(row)
        return p.view.doc(r)

    def vector(self, row: int) -> np.ndarray:
        p, r = self.locate(row)
        return p.view.embeddings[r]  # type: ignore[no-any-return]

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` (ascending global rows), one fancy index per fragment."""
        out = [np.empty((0, self.dim), np.float32)]
        for p in self.parts:
            lo, hi = np.searchsorted(rows, [p.start, p.start + p.view.count])
            if hi > lo:
                out.append(np.asarray(p.view.embeddings[rows[lo:hi] - p.start]))
        return np.concatenate(out) if len(out) > 2 else out[-1]

    def id_block(self, start: int, k: int) -> list[bytes]:
        out: list[bytes] = []
        end = start + k
        for p in self.parts:
            a, b = max(start, p.start), min(end, p.start + p.view.count)
            if a < b:
                out.extend(p.view.id_block(a - p.start, b - a))
        return out

    def iter_docs(self) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """(content, metadata) of every row in order, one chunk decode at a time."""
        for p in self.parts:
            v = p.view
            for k in range(v.nchunks):
                for pair in v.chunk(k):
                    yield pair[0], pair[1]

    def dir_of(self, row: int) -> str:
        return self.locate(row)[0].view.dir
