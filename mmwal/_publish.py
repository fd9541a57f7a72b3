"""Publishing versions: a checkpoint folds the log into a new fragment; a compaction merges.

Both run under ``checkpoint.lock`` (exclusive), while writers keep appending
and readers keep reading, and both publish the same way (docs/format.md,
"Publishing a version"):

1. new fragment directories are built under a temporary name, fsynced and
   renamed into ``checkpoints/``;
2. a deletion vector is written (temp, fsync, rename) for every older fragment
   that lost rows;
3. ``checkpoints/`` is fsynced, then the version file is published
   (temp, fsync, rename, fsync);
4. the MANIFEST is replaced atomically - the commit point;
5. only then are the files no retained version lists deleted (:func:`retire`).

A crash before step 4 leaves files no version lists: the next checkpoint
deletes them.  Older fragments are never rewritten by a checkpoint.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

import numpy as np

from . import _format as F
from . import _io
from ._checkpoint import FoldResult, _Builder, _copy_prev, _rmtree, fold
from ._fsutil import Paths, atomic_write, fsync_dir
from ._lock import FileLock
from ._types import CheckpointInfo, CompactionInfo, Config
from ._version import (
    MANIFEST_VERSIONED,
    Entry,
    Version,
    VersionView,
    clean_orphans,
    next_id,
    read_version,
    retire,
    version_path,
    write_deletions,
    write_version,
)
from ._wal import Appender

__all__ = ["compact", "plan_compaction", "publish_fold", "run_checkpoint", "run_compact"]


def make_tmp_dir(paths: Paths, fid: int) -> str:
    """A fresh temporary directory in ``checkpoints/`` to build fragment ``fid`` in."""
    tmp = os.path.join(paths.checkpoints, f".tmp-{fid:08d}-{secrets.token_hex(4)}")
    try:
        _io.layer.mkdir(tmp)
    except OSError as exc:
        raise _io.io_error(exc, "mkdir", tmp) from None
    return tmp


def install_fragment(paths: Paths, tmp: str, fid: int) -> None:
    """fsync the built fragment and rename it to its final name."""
    fsync_dir(tmp)
    final = paths.checkpoint(fid)
    try:
        _io.layer.rename(tmp, final)
    except OSError as exc:
        raise _io.io_error(exc, "rename", final) from None


def _fragment_bytes(body: dict[str, Any]) -> int:
    return sum(int(v[0]) for v in body["files"].values())


def _commit(paths: Paths, manifest: dict[str, Any], v: Version, dim: int,
            replay_segment: int, extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], int]:
    """Steps 3-4: fsync ``checkpoints/``, the version file, then the MANIFEST."""
    fsync_dir(paths.checkpoints)
    now = time.time()
    write_version(paths, v, dim, now)
    new = dict(manifest)
    new.update({"format": MANIFEST_VERSIONED, "checkpoint": v.id, "checkpoint_seq": v.seq,
                "replay_segment": replay_segment, "checkpoint_documents": v.documents,
                "fragments": len(v.entries), "checkpointed": now})
    new.update(extra or {})
    atomic_write(paths.manifest, F.encode_manifest(new, version=MANIFEST_VERSIONED))
    try:
        vbytes = _io.layer.stat(version_path(paths, v.id)).st_size
    except OSError:
        vbytes = 0
    return new, vbytes


def publish_fold(paths: Paths, manifest: dict[str, Any], prev: VersionView | None,
                 res: FoldResult, vid: int, seq: int, replay_segment: int,
                 extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], Version, int]:
    """Publish what :func:`fold` produced (its fragment, if any, already installed as ``vid``).

    Returns the new MANIFEST, the version and the bytes of deletion vectors
    and version file written.
    """
    dim = manifest["dim"]
    entries: list[Entry] = []
    written = 0
    if prev is not None and not res.cleared:
        dead = res.dead
        for p in prev.parts:
            e = p.entry
            lo, hi = np.searchsorted(dead, [p.start, p.start + e.rows])
            if hi == lo:
                entries.append(e)
                continue
            mask = np.zeros(e.rows, bool) if p.dead is None else p.dead.copy()
            mask[dead[lo:hi] - p.start] = True
            if mask.all():
                continue  # every row dead: the version no longer lists the fragment
            ne = write_deletions(paths, e.fid, vid, mask)
            written += ne.dv_size
            entries.append(ne)
    if res.body is not None:
        entries.append(Entry(vid, res.body["count"], 0))
    v = Version(vid, seq, sum(e.rows - e.dead for e in entries), tuple(entries))
    new, vbytes = _commit(paths, manifest, v, dim, replay_segment, extra)
    return new, v, written + vbytes


def run_checkpoint(paths: Paths, log: Appender, lock: FileLock, config: Config) -> CheckpointInfo:
    """Seal the log, fold it into a new version, publish it, retire what no version needs.

    One checkpointer at a time (``checkpoint.lock``); writers keep appending to
    the new segment meanwhile.  With ``config.auto_compact`` the new version is
    compacted in the same hold of the lock when it passes a threshold.
    """
    from ._version import open_manifest

    t0 = time.monotonic()
    lock.acquire_exclusive_slow()
    try:
        manifest = open_manifest(paths)
        dim = manifest["dim"]
        clean_orphans(paths, manifest)  # what a crashed checkpoint left
        log.remove_temp_segments()  # leftovers of rolls that died (under the append lock)
        new_seg, last_seq = log.roll()
        prev_seq = manifest["checkpoint_seq"]
        if last_seq == prev_seq:
            v = read_version(paths, manifest)
            retire(paths, manifest, config.keep_checkpoints)
            return CheckpointInfo(v.id, prev_seq, v.documents, fragments=len(v.entries),
                                  seconds=time.monotonic() - t0)
        prev = VersionView(paths, manifest, dim) if manifest["checkpoint"] else None
        vid = next_id(paths, manifest)
        tmp = make_tmp_dir(paths, vid)
        try:
            res = fold(paths, dim, prev, manifest["replay_segment"], new_seg, prev_seq + 1,
                       last_seq, tmp, vid, config)
            if res.body is not None:
                install_fragment(paths, tmp, vid)
            else:
                _rmtree(tmp)
        except BaseException:
            _rmtree(tmp)
            raise
        new, v, nbytes = publish_fold(paths, manifest, prev, res, vid, last_seq, new_seg)
        del prev
        written = 1 if res.body is not None else 0
        rows = res.body["count"] if res.body is not None else 0
        nbytes += _fragment_bytes(res.body) if res.body is not None else 0
        merged = 0
        if config.auto_compact and plan_compaction(v, config.max_fragments,
                                                   config.compact_dead_fraction):
            c = compact(paths, new, config, config.max_fragments,
                        config.compact_dead_fraction, keep=False)
            new = c.manifest
            v = c.version
            written += c.info.fragments_written
            merged = c.info.fragments_merged
            rows += c.info.rows_copied
            nbytes += c.info.bytes_written
        retire(paths, new, config.keep_checkpoints)
        return CheckpointInfo(v.id, v.seq, v.documents, fragments=len(v.entries),
                              fragments_written=written, fragments_merged=merged,
                              rows_copied=rows, bytes_written=nbytes,
                              seconds=time.monotonic() - t0)
    finally:
        lock.release_slow()


# ============================================================================ compaction
def plan_compaction(v: Version, target: int, min_dead: float) -> list[list[int]]:
    """Groups of entry positions to rewrite, each into one fragment (empty: nothing to do).

    Tiered: while the version lists more than ``target`` fragments, the two
    adjacent groups with the fewest live rows between them merge (so small,
    recent fragments merge with each other long before a large old one is
    copied); a fragment whose dead share reaches ``min_dead`` is rewritten
    without its dead rows; a fragment with no live row is dropped.
    """
    entries = v.entries
    live = [e.rows - e.dead for e in entries]
    groups = [[i] for i in range(len(entries))]
    while len(groups) > max(target, 1):
        sizes = [sum(live[i] for i in g) for g in groups]
        j = min(range(len(groups) - 1), key=lambda x: sizes[x] + sizes[x + 1])
        groups[j:j + 2] = [groups[j] + groups[j + 1]]
    out = []
    for g in groups:
        e = entries[g[0]]
        if len(g) > 1 or (e.dead and (e.dead >= min_dead * e.rows or e.dead == e.rows)):
            out.append(g)
    return out


class _Compacted:
    __slots__ = ("info", "manifest", "version")

    def __init__(self, info: CompactionInfo, manifest: dict[str, Any], version: Version) -> None:
        self.info, self.manifest, self.version = info, manifest, version


def compact(paths: Paths, manifest: dict[str, Any], config: Config, target: int,
            min_dead: float, *, keep: bool = True) -> _Compacted:
    """Merge fragments of the current version into a new version (the caller holds the lock).

    Rows are copied in bounded blocks, each source file checked against its
    descriptor CRC-32 as it streams (damage is never re-published under a new
    checksum).  The new version has the same seq and replay position: no log
    record is folded here.  ``keep=False`` leaves retirement to the caller.
    """
    t0 = time.monotonic()
    dim = manifest["dim"]
    view = VersionView(paths, manifest, dim) if manifest["checkpoint"] else None
    v = view.version if view is not None else read_version(paths, manifest)
    groups = plan_compaction(v, target, min_dead)
    if view is None or not groups:
        if keep:
            retire(paths, manifest, config.keep_checkpoints)
        info = CompactionInfo(v.id, v.seq, v.documents, len(v.entries), len(v.entries),
                              seconds=time.monotonic() - t0)
        return _Compacted(info, manifest, v)
    base = next_id(paths, manifest)
    fid = base
    replaced: dict[int, Entry | None] = {}  # first position of a group -> its new entry
    drop: set[int] = set()
    rows = nbytes = dropped = written = 0
    for g in groups:
        parts = [view.parts[i] for i in g]
        n = sum(p.entry.rows - p.entry.dead for p in parts)
        dropped += sum(p.entry.dead for p in parts)
        drop.update(g)
        if not n:
            replaced[g[0]] = None
            continue
        tmp = make_tmp_dir(paths, fid)
        try:
            b = _Builder(tmp, n, dim, config.chunk_documents, config.metadata_compression_level,
                         config)
            try:
                for p in parts:
                    dead = (np.flatnonzero(p.dead).astype(np.int64) if p.dead is not None
                            else np.empty(0, np.int64))
                    _copy_prev(p.view, dead, b)
                body = b.finish(fid, v.seq)
            except BaseException:
                b.abort()
                raise
            install_fragment(paths, tmp, fid)
        except BaseException:
            _rmtree(tmp)
            raise
        replaced[g[0]] = Entry(fid, n, 0)
        rows += n
        nbytes += _fragment_bytes(body)
        written += 1
        fid += 1
    entries: list[Entry] = []
    for i, e in enumerate(v.entries):
        if i in replaced:
            ne = replaced[i]
            if ne is not None:
                entries.append(ne)
        elif i not in drop:
            entries.append(e)
    vid = max(fid - 1, base) if written else base
    nv = Version(vid, v.seq, v.documents, tuple(entries))
    new, vbytes = _commit(paths, manifest, nv, dim, manifest["replay_segment"],
                          {"compacted": time.time()})
    del view
    if keep:
        retire(paths, new, config.keep_checkpoints)
    info = CompactionInfo(vid, v.seq, v.documents, len(v.entries), len(entries),
                          fragments_merged=sum(len(g) for g in groups),
                          fragments_written=written, rows_copied=rows, rows_dropped=dropped,
                          bytes_written=nbytes + vbytes, seconds=time.monotonic() - t0)
    return _Compacted(info, new, nv)


def run_compact(paths: Paths, lock: FileLock, config: Config, target: int | None,
                min_dead: float | None) -> CompactionInfo:
    """``Store.compact()``: take the checkpoint lock, compact, retire."""
    from ._version import open_manifest

    lock.acquire_exclusive_slow()
    try:
        manifest = open_manifest(paths)
        clean_orphans(paths, manifest)
        if target is None and min_dead is None:  # a full compaction
            target, min_dead = 1, 0.0
        return compact(paths, manifest, config,
                       config.max_fragments if target is None else target,
                       config.compact_dead_fraction if min_dead is None else min_dead).info
    finally:
        lock.release_slow()
