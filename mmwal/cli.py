"""The ``mmwal`` command line (also ``python -m mmwal``).

Every command has ``--help`` with an example.  Exit codes: 0 ok; 1 problems
found (a damaged store, a failed check, a repair not carried out); 2 usage
error or no store at the path; 130 interrupted (Ctrl-C); 141 output pipe
closed (``mmwal dump PATH | head``).  Errors are one line on stderr,
``mmwal <command>: <message>``, never a traceback (set ``MMWAL_DEBUG=1`` to get
one for an unexpected error).  See docs/cli.md.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as _dt
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .errors import InvalidInputError, MissingDependencyError, MmwalError, StoreNotFoundError

__all__ = ["build_parser", "main"]



class _RAW(argparse.RawDescriptionHelpFormatter):
    """Epilogs as written; command names and their help on one line."""

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if action.nargs == argparse.PARSER:
            # argparse measures sub-commands one indent short, so "checkpoint"
            # would wrap: leave room for it.
            self._action_max_length = max(self._action_max_length, 16)


class UsageError(Exception):
    """A bad combination of arguments found after parsing (exit code 2)."""


# ============================================================================ helpers
def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _when(t: float | None) -> str:
    if not t:
        return "-"
    return _dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _iso(t: float | None) -> str | None:
    if not t:
        return None
    when = _dt.datetime.fromtimestamp(t, _dt.timezone.utc).replace(microsecond=0)
    return when.isoformat().replace("+00:00", "Z")


def _require_store(path: str) -> str:
    """The absolute path of an existing store, or StoreNotFoundError (exit code 2)."""
    root = os.path.abspath(path)
    if not os.path.isdir(root):
        what = "does not exist" if not os.path.exists(root) else "is not a directory"
        raise StoreNotFoundError(f"no mmwal store at {path}: the path {what}", path=root)
    if not os.path.exists(os.path.join(root, "MANIFEST")):
        raise StoreNotFoundError(f"no mmwal store at {path}: the directory has no MANIFEST",
                                 path=root)
    return root


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


#: How non-finite floats are written (JSON has no NaN or Infinity; these are the
#: strings of the protobuf JSON mapping).  Writers refuse non-finite metadata, but
#: a store written before that check, or a damaged one, may still hold some.
_NONFINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _finite_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by its string (other values as is)."""
    if isinstance(obj, float):
        return obj if obj - obj == 0.0 else _NONFINITE[repr(obj)]
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    return obj


def _json_encoder(**kw: Any) -> Callable[[Any], str]:
    """A strict JSON encoder (``allow_nan=False``: output any JSON parser accepts)."""
    encode = json.JSONEncoder(allow_nan=False, default=_json_default, **kw).encode

    def dumps(obj: Any) -> str:
        try:
            return encode(obj)
        except ValueError:  # a non-finite float somewhere: the slow path, rarely taken
            return encode(_finite_json(obj))

    return dumps


_dumps_pretty = _json_encoder(indent=2)


def _print_json(obj: Any) -> None:
    print(_dumps_pretty(obj))


# ============================================================================ demo
def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import DemoOptions, run_demo

    opts = DemoOptions()
    if args.quick:
        opts.docs, opts.batch, opts.queries = 4_000, 250, 20
    if args.docs is not None:
        if args.docs < 1:
            raise UsageError("--docs must be at least 1")
        opts.docs = args.docs
    opts.keep = args.keep
    opts.dir = args.dir
    return run_demo(opts)


# ============================================================================ inspect
def _read_descriptor(root: str, ckpt_id: int) -> dict[str, Any]:
    from . import _format as F
    from ._fsutil import Paths, read_file

    path = os.path.join(Paths(root).checkpoint(ckpt_id), "DESCRIPTOR")
    return F.decode_manifest(read_file(path, F.MAX_MANIFEST_BODY + 64), path,
                             F.DESCRIPTOR_MAGIC, F.DESCRIPTOR_FIELDS)


def inspect_store(path: str) -> dict[str, Any]:
    """What is on disk, read-only: manifest, checkpoint descriptor, segments, sizes.

    Never writes and never opens a Store; ``documents`` and ``seq`` come from a
    Reader (read-only by contract).  A part that cannot be read is reported
    under ``errors`` instead of raising.
    """
    from . import _format as F
    from ._fsutil import Paths, read_file
    from ._reader import Reader
    from ._repair import read_tail_hint
    from ._version import deletion_path, list_versions, open_manifest, read_version
    from ._wal import read_segment_header

    root = _require_store(path)
    paths = Paths(root)
    manifest = open_manifest(paths)
    raw = read_file(paths.manifest, F.MAX_MANIFEST_BODY + 64)
    errors: list[str] = []
    info: dict[str, Any] = {
        "path": root,
        "format_version": int(F.MANIFEST_HEADER.unpack_from(raw, 0)[1]),
        "library_format_version": F.MANIFEST_VERSION,
        "dim": manifest["dim"],
        "created": _iso(manifest.get("created")),
    }
    # documents and seq: what a Reader sees (checkpoint + log tail)
    try:
        with Reader(root) as r:
            info["documents"] = len(r)
            info["seq"] = r.seq
    except MmwalError as exc:
        info["documents"] = None
        info["seq"] = None
        errors.append(f"reader: {exc}")
    tail = read_tail_hint(paths)
    info["tail_seq"] = tail[2] if tail else None
    cid = manifest["checkpoint"]
    ckpt: dict[str, Any] | None = None
    if cid:
        ckpt = {"id": cid, "seq": manifest["checkpoint_seq"],
                "documents": manifest.get("checkpoint_documents"), "fragments": []}
        try:
            version = read_version(paths, manifest)
            total = 0
            for e in version.entries:
                cdir = paths.checkpoint(e.fid)
                d = _read_descriptor(root, e.fid)
                size = sum(os.path.getsize(os.path.join(cdir, n)) for n in os.listdir(cdir))
                total += size + e.dv_size
                ann_meta = d.get("ann") if isinstance(d.get("ann"), dict) else None
                ann_file = d["files"].get("ann.usearch")
                ckpt["fragments"].append({
                    "id": e.fid, "rows": e.rows, "dead_rows": e.dead, "seq": d["seq"],
                    "created": _iso(d["created"]), "dir": cdir, "bytes": size,
                    "index": None if ann_meta is None else {
                        "metric": ann_meta.get("metric"), "dtype": ann_meta.get("dtype"),
                        "bytes": ann_file[0] if isinstance(ann_file, list) else None},
                    "columns": isinstance(d.get("columns"), dict),
                    "deletion_vector": (os.path.basename(deletion_path(paths, e.fid, e.dv))
                                        if e.dv else None)})
            ckpt.update({"documents": version.documents, "seq": version.seq, "bytes": total})
        except (MmwalError, OSError) as exc:
            errors.append(f"checkpoint {cid}: {exc}")
    info["checkpoint"] = ckpt
    info["checkpoints_kept"] = [v for v in list_versions(paths) if v < cid]
    segs = []
    for s in _segments(paths):
        p = paths.segment(s)
        entry: dict[str, Any] = {"id": s, "file": os.path.relpath(p, root),
                                 "folded": s < manifest["replay_segment"]}
        try:
            entry["bytes"] = os.path.getsize(p)
            h = read_segment_header(p)
            entry["first_seq"] = h.first_seq
            entry["created"] = _iso(h.created)
        except (MmwalError, OSError) as exc:
            entry["error"] = str(exc)
            errors.append(f"segment {s}: {exc}")
        segs.append(entry)
    info["replay_segment"] = manifest["replay_segment"]
    info["segments"] = segs
    info["log_bytes"] = sum(e.get("bytes", 0) for e in segs)
    info["log_bytes_since_checkpoint"] = sum(e.get("bytes", 0) for e in segs if not e["folded"])
    if info["seq"] is not None:
        info["records_since_checkpoint"] = info["seq"] - manifest["checkpoint_seq"]
    total, newest, newest_file, backups = 0, 0.0, None, []
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == root:
            backups = sorted(d for d in dirnames if d.startswith("repair-backup-"))
            dirnames[:] = [d for d in dirnames if not d.startswith("repair-backup-")]
        for name in filenames:
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue  # retired meanwhile
            total += st.st_size
            if st.st_mtime > newest:
                newest, newest_file = st.st_mtime, os.path.relpath(os.path.join(dirpath, name),
                                                                   root)
    info["bytes"] = total
    info["last_modified"] = _iso(newest)
    info["last_modified_file"] = newest_file
    info["repair_backups"] = backups
    if manifest.get("repaired"):
        info["repaired"] = {"at": _iso(manifest["repaired"]),
                            "backup": manifest.get("repair_backup")}
    info["errors"] = errors
    return info


def _segments(paths: Any) -> list[int]:
    from ._fsutil import list_segments

    return list_segments(paths)


def _cmd_inspect(args: argparse.Namespace) -> int:
    info = inspect_store(args.path)
    if args.json:
        _print_json(info)
        return 1 if info["errors"] else 0
    c = info["checkpoint"]
    rows: list[tuple[str, str]] = [
        ("store", info["path"]),
        ("format", f"version {info['format_version']} (this mmwal reads up to "
                   f"{info['library_format_version']})"),
        ("dim", str(info["dim"])),
        ("documents", "unknown" if info["documents"] is None else f"{info['documents']:,}"),
        ("seq", "unknown" if info["seq"] is None else
         f"{info['seq']:,} ({info.get('records_since_checkpoint', 0):,} since the checkpoint)"),
    ]
    if c is None:
        rows.append(("checkpoint", "none yet (the whole state is in the log)"))
    else:
        frags = c.get("fragments") or []
        rows.append(("checkpoint", f"version {c['id']}: {c.get('documents') or 0:,} documents "
                     f"at seq {c['seq']:,}, {_size(c.get('bytes', 0))}, {len(frags)} "
                     f"fragment{'' if len(frags) == 1 else 's'}"))
        for f in frags:
            ix = f.get("index")
            extra = (f", index {ix['metric']}/{ix['dtype']} {_size(ix['bytes'] or 0)}"
                     if ix else "") + (", columns" if f.get("columns") else "")
            rows.append(("", f"fragment {f['id']}: {_n(f['rows'], 'row')}, "
                         f"{f['dead_rows']:,} dead, "
                         f"{_size(f['bytes'])}{extra}, created {f.get('created') or '-'}"))
    if info["checkpoints_kept"]:
        rows.append(("", "older versions kept: "
                     + ", ".join(map(str, info["checkpoints_kept"]))))
    segs = info["segments"]
    live = [e for e in segs if not e["folded"]]
    rows.append(("segments", f"{len(segs)} ({_size(info['log_bytes'])}); replay starts at "
                 f"segment {info['replay_segment']} ({len(live)} segment"
                 f"{'' if len(live) == 1 else 's'}, {_size(info['log_bytes_since_checkpoint'])} "
                 "since the checkpoint)"))
    for e in segs[-8:]:
        extra = "  folded, retired at the next checkpoint" if e["folded"] else ""
        if "error" in e:
            rows.append(("", f"{e['file']}  {e['error']}"))
        else:
            rows.append(("", f"{e['file']}  first seq {e['first_seq']:,}  "
                         f"{_size(e['bytes'])}{extra}"))
    if len(segs) > 8:
        rows.append(("", f"... and {len(segs) - 8} older segment(s)"))
    rows.append(("bytes", f"{_size(info['bytes'])} in total"))
    rows.append(("created", info["created"] or "-"))
    rows.append(("last modified", f"{info['last_modified'] or '-'} "
                 f"({info['last_modified_file'] or '-'})"))
    if info.get("repaired"):
        rows.append(("repaired", f"{info['repaired']['at']} (backup "
                     f"{info['repaired']['backup']})"))
    for err in info["errors"]:
        rows.append(("error", err))
    for key, val in rows:
        print(f"{key:<14} {val}")
    return 1 if info["errors"] else 0


# ============================================================================ verify
def _cmd_verify(args: argparse.Namespace) -> int:
    from ._verify import verify

    root = _require_store(args.path)
    t0 = time.perf_counter()
    report = verify(root)
    seconds = time.perf_counter() - t0
    if args.json:
        _print_json({**report.as_dict(), "seconds": seconds})
    else:
        for p in report.problems:
            print(f"problem: {p}")
        for note in report.notes:
            print(f"note: {note}")
        state = "ok" if report.ok else f"DAMAGED ({_n(len(report.problems), 'problem')})"
        ckpt = (f"checkpoint {report.checkpoint} ({_n(report.documents, 'document')})"
                if report.checkpoint else "no checkpoint")
        if report.records:
            log = f"seqs {report.first_seq:,}..{report.last_seq:,}"
        else:
            log = "no record since the checkpoint"
        print(f"{state}: {ckpt}; log of {_n(report.records, 'record')} in "
              f"{_n(report.segments, 'segment')}, {log}; checked in {seconds:.2f} s")
        if not report.ok:
            print(f"see `mmwal repair {args.path} --mode point-in-time` (or skip-bad); it "
                  "explains what it would drop before it changes anything")
    return 0 if report.ok else 1


# ============================================================================ dump
def _cmd_dump(args: argparse.Namespace) -> int:
    from ._reader import Reader

    if args.ids and args.embeddings:
        raise UsageError("--ids and --embeddings exclude each other")
    if args.format == "parquet":
        return _dump_parquet(args)
    if args.output is not None:
        raise UsageError("--output is for --format parquet; JSON lines go to stdout "
                         "(redirect them: > FILE)")
    root = _require_store(args.path)
    out = sys.stdout
    buf: list[str] = []
    with Reader(root, recovery=args.recovery) as r:
        ids = r.ids
        if args.ids:
            for i, key in enumerate(ids):
                buf.append(key)
                if i % 4096 == 4095:
                    out.write("\n".join(buf) + "\n")
                    buf.clear()
            if buf:
                out.write("\n".join(buf) + "\n")
            return 0
        emb = r.embeddings if args.embeddings else None
        dumps = _json_encoder(ensure_ascii=False)
        for i, key in enumerate(ids):
            doc = r[key]
            rec: dict[str, Any] = {"id": key, "content": doc.content, "metadata": doc.metadata}
            if emb is not None:
                rec["embedding"] = emb[i].tolist()
            buf.append(dumps(rec))
            if len(buf) >= 1024:
                out.write("\n".join(buf) + "\n")
                buf.clear()
        if buf:
            out.write("\n".join(buf) + "\n")
    return 0


def _dump_parquet(args: argparse.Namespace) -> int:
    from ._arrow import require
    from ._reader import Reader

    if args.output is None:
        raise UsageError("--format parquet needs --output FILE (Parquet is not written to "
                         "stdout)")
    pq = require("pyarrow.parquet", "arrow", "mmwal dump --format parquet")
    root = _require_store(args.path)
    out = os.path.abspath(args.output)
    if not os.path.isdir(os.path.dirname(out)):
        raise UsageError(f"--output {args.output}: the directory {os.path.dirname(out)} "
                         "does not exist")
    tmp = f"{out}.tmp-{os.getpid()}"
    with Reader(root, recovery=args.recovery) as r:
        snap = r.snapshot()
        table = snap.to_arrow(["id"] if args.ids else None)
        try:
            # Written aside and renamed: an interrupted dump leaves no half file at FILE.
            pq.write_table(table, tmp)
            os.replace(tmp, out)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    print(f"wrote {table.num_rows} documents (seq {snap.seq}) to {args.output}")
    return 0


# ============================================================================ checkpoint
def _cmd_checkpoint(args: argparse.Namespace) -> int:
    from ._store import Store

    root = _require_store(args.path)
    with Store(root) as store:
        t0 = time.perf_counter()
        info = store.checkpoint()
        seconds = time.perf_counter() - t0
        stats = store.stats()
    if args.json:
        _print_json({"id": info.id, "seq": info.seq, "documents": info.documents,
                     "fragments": info.fragments, "fragments_written": info.fragments_written,
                     "fragments_merged": info.fragments_merged, "rows_copied": info.rows_copied,
                     "bytes_written": info.bytes_written,
                     "bytes": stats.checkpoint_bytes, "seconds": seconds})
    else:
        print(f"checkpoint {info.id}: {info.documents:,} documents at seq {info.seq:,} "
              f"in {_n(info.fragments, 'fragment')} ({_size(stats.checkpoint_bytes)}); wrote "
              f"{_n(info.rows_copied, 'row')}, {_size(info.bytes_written)}"
              + (f", merged {_n(info.fragments_merged, 'fragment')}"
                 if info.fragments_merged else "") + f", in {seconds:.2f} s")
    return 0


# ============================================================================ publish
def _cmd_publish(args: argparse.Namespace) -> int:
    from ._scale.publish import publish

    root = _require_store(args.path)
    info = publish(root, args.url, keep=args.keep)
    if args.json:
        _print_json(info.as_dict())
    else:
        print(f"published version {info.version} to {info.url}: uploaded "
              f"{_n(info.files_uploaded, 'file')} ({_size(info.bytes_uploaded)}), skipped "
              f"{info.files_skipped} already there"
              + (f", deleted {_n(info.files_deleted, 'file')}" if info.files_deleted else "")
              + f", in {info.seconds:.2f} s")
    return 0


# ============================================================================ compact
def _cmd_compact(args: argparse.Namespace) -> int:
    from ._store import Store
    from ._types import Config

    root = _require_store(args.path)
    with Store(root, config=Config(lock_timeout=args.lock_timeout)) as store:
        info = store.compact(target_fragments=args.target_fragments,
                             min_dead_fraction=args.min_dead_fraction)
    if args.json:
        _print_json(dataclasses.asdict(info))
    elif not info.fragments_merged:
        print(f"nothing to compact: version {info.id} has {_n(info.fragments, 'fragment')} "
              f"and {_n(info.documents, 'document')}")
    else:
        print(f"version {info.id}: {_n(info.fragments_before, 'fragment')} -> "
              f"{info.fragments}; merged {info.fragments_merged}, copied "
              f"{_n(info.rows_copied, 'row')}, dropped {_n(info.rows_dropped, 'dead row')}, "
              f"wrote {_size(info.bytes_written)}, in {info.seconds:.2f} s")
    return 0


# ============================================================================ repair
def _n(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def _seq_range(a: int, b: int) -> str:
    return f"seq {a:,}" if a == b else f"seqs {a:,}..{b:,}"


def _explain(plan: Any, path: str) -> list[str]:
    """The human account of a repair plan: what is damaged, kept and dropped."""
    from . import _format as F

    lines = []
    m = plan.manifest
    rel = plan._rel
    base = (f"checkpoint {m['checkpoint']} (seq {m['checkpoint_seq']:,})" if m["checkpoint"]
            else "an empty store (no checkpoint yet)")
    lines.append(f"mmwal repair: {path} (mode {plan.mode})")
    lines.append(f"  scanned       {base} + the log from segment {m['replay_segment']} "
                 f"({_n(len(plan.segments), 'segment')})")
    for p in plan.checkpoint_problems:
        lines.append(f"  CHECKPOINT    {p}")
    for d in plan.damage:
        where = f"{rel(d.path)}: " + (f"bytes {d.start:,}..{d.end:,}" if d.end > d.start
                                       else f"offset {d.start:,}")
        if d.harmless:
            lines.append(f"  harmless      {where}: torn, unacknowledged tail (nothing lost)")
        else:
            lost = f" ({_seq_range(*d.seqs)} lost)" if d.seqs else ""
            lines.append(f"  damage        {where}: {d.why}{lost}")
    if not plan.needed:
        return lines
    kept = sum(f.count for f in plan.keep)
    if kept:
        span = _seq_range(plan.keep[0].first_seq, plan.last_kept)
        onto = "the checkpoint" if m["checkpoint"] else "an empty store"
        lines.append(f"  keep          {_n(kept, 'record')} ({span}) on top of {onto}")
    else:
        lines.append(f"  keep          {'the checkpoint' if m['checkpoint'] else 'nothing'}; "
                     "no record of the log survives")
    spans = [d.seqs for d in plan.problems if d.seqs]
    if spans:
        n = sum(b - a + 1 for a, b in spans)
        lines.append(f"  drop          {_n(n, 'record')} unreadable in the damaged bytes")
    if plan.dropped:
        n = sum(f.count for f in plan.dropped)
        kinds: dict[str, int] = {}
        for f in plan.dropped:
            kinds[F.KIND_NAMES[f.kind]] = kinds.get(F.KIND_NAMES[f.kind], 0) + f.count
        first = plan.dropped[0]
        lines.append(f"  drop          {_n(n, 'valid record')} after the first damage "
                     f"({_seq_range(first.first_seq, plan.dropped[-1].last_seq)}: "
                     + ", ".join(f"{v:,} {k}" for k, v in sorted(kinds.items()))
                     + f"), from {rel(first.path)} offset {first.offset:,} on")
        if plan.mode == "point-in-time":
            lines.append("                (--mode skip-bad keeps every valid record and "
                         "drops only the damaged bytes)")
    lines.append(f"  afterwards    a new checkpoint at seq {plan.max_seen:,}; new writes "
                 f"start at seq {plan.max_seen + 1:,} (no seq is ever reused)")
    return lines


def _cmd_repair(args: argparse.Namespace) -> int:
    from ._repair import apply_plan, make_plan, repair_locks
    from ._types import Config
    from ._verify import verify

    root = _require_store(args.path)
    timeout = args.lock_timeout
    result: dict[str, Any] | None = None
    with repair_locks(root, exclusive=args.yes, timeout=timeout):
        plan = make_plan(root, args.mode)
        try:
            summary = plan.as_dict()
            if not args.json:
                print("\n".join(_explain(plan, args.path)))
            if plan.checkpoint_problems:
                if args.json:
                    _print_json({**summary, "repaired": False})
                print(f"mmwal repair: {args.path}: the checkpoint itself is damaged; repair "
                      "salvages the log only: restore the store from a backup",
                      file=sys.stderr)
                return 1
            if not plan.needed:
                if args.json:
                    _print_json({**summary, "repaired": False})
                else:
                    print("nothing to repair: the log holds no damage")
                return 0
            if not args.yes:
                if args.json:
                    _print_json({**summary, "repaired": False})
                else:
                    print("nothing was changed.  Re-run with --yes to repair; first, MANIFEST, "
                          "tail, every log segment and the checkpoint are copied to "
                          f"{os.path.join(args.path, 'repair-backup-<time>')}/")
                return 1
            result = apply_plan(plan, Config(lock_timeout=timeout), show_progress=not args.json)
        finally:
            plan.close()
    report = verify(root)
    if args.json:
        _print_json({**summary, "repaired": True, "result": result, "verify_ok": report.ok})
    else:
        print(f"repaired: checkpoint {result['checkpoint']} holds {result['documents']:,} "
              f"documents at seq {result['seq']:,}; new writes start at seq "
              f"{result['next_seq']:,} in segment {result['segment']}")
        print(f"backup:   {result['backup']}/ (restore it with `mmwal restore "
              f"{result['backup']} NEW_PATH`)")
        print(f"verify:   {'ok' if report.ok else 'PROBLEMS REMAIN'}")
        for p in report.problems:
            print(f"problem: {p}")
    return 0 if report.ok else 1


def _cmd_restore(args: argparse.Namespace) -> int:
    from ._repair import restore
    from ._verify import verify

    result = restore(args.backup, args.dest, show_progress=not args.json)
    report = verify(result["path"]) if args.verify else None
    if report is not None:
        result["verify_ok"] = report.ok
        result["problems"] = [str(p) for p in report.problems]
    if args.json:
        _print_json(result)
    else:
        print(f"restored: {result['path']}: {_n(result['files'], 'file')} "
              f"({_size(result['bytes'])}) from {result['backup']}, checked against the "
              "backup's sizes and CRC-32s")
        print("next:     stop every process using the store, then move the restored "
              "directory into its place")
        if report is not None:
            print(f"verify:   {'ok' if report.ok else 'problems (as before the repair)'}")
            for p in report.problems:
                print(f"problem: {p}")
    return 0


# ============================================================================ stress
def _cmd_import_chroma(args: argparse.Namespace) -> int:
    from .chroma import import_chroma

    try:
        counts = import_chroma(args.chroma_dir, args.mmwal_dir, batch_size=args.batch_size)
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    bad = [(n, a, b) for n, a, b in counts if a != b]
    for name, a, b in counts:
        print(f"{name}: {a:,} in Chroma, {b:,} in mmwal{'' if a == b else '  MISMATCH'}")
    if bad:
        print(f"mmwal import-chroma: counts differ for {', '.join(n for n, _, _ in bad)}",
              file=sys.stderr)
        return 1
    return 0


def _cmd_stress_missing(args: argparse.Namespace) -> int:
    print(f"mmwal stress: the stress harness is not available in this installation "
          f"({args._stress_error}); it ships as the mmwal.stress package", file=sys.stderr)
    return 2


# ============================================================================ serve
def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from . import serve
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    root = _require_store(args.path)  # checked here; only the workers open a Reader
    serve.run(root, host=args.host, port=args.port, workers=args.workers, token=args.token,
              refresh_every=args.refresh_every, insecure=args.insecure,
              max_body_bytes=args.max_body_bytes)
    return 0


# ============================================================================ bench
def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    from ._bench import benchmark_scripts, run_bench

    scripts = benchmark_scripts()
    say = (lambda s: print(s, file=sys.stderr)) if args.json else print
    if args.full:
        if not scripts:
            raise UsageError("--full needs the benchmark scripts of a source checkout "
                             "(benchmarks/bench_log.py, benchmarks/bench_read.py); this "
                             "installation has none")
        code = 0
        for script in scripts:
            cmd = [sys.executable, script, *(["--quick"] if args.quick else [])]
            say(f"$ {' '.join(cmd)}")
            code = max(code, subprocess.call(cmd))
        return code
    if scripts:
        say("The full benchmarks (mmwal against a raw ceiling, SQLite and LMDB, with their "
            "method) are in this checkout:")
        for s in scripts:
            say(f"  python {os.path.relpath(s)} --quick")
        say("(or: mmwal bench --full).  Below, the built-in micro-benchmark.\n")
    else:
        say("The full benchmarks are the scripts benchmarks/bench_log.py and "
            "benchmarks/bench_read.py of the source repository (see docs/benchmarks.md).  "
            "Below, the built-in micro-benchmark.\n")
    tty = sys.stdout.isatty() and not args.json

    def tick(name: str) -> None:
        if tty:
            sys.stdout.write(f"\r  running {name} ...\033[K")
            sys.stdout.flush()

    results = run_bench(quick=args.quick, base_dir=args.dir, tick=tick)
    if tty:
        sys.stdout.write("\r\033[K")
    if args.json:
        _print_json(results)
        return 0
    print(f"{'case':<12} {'median':>14} {'min':>10} {'max':>10}  what")
    for name, r in results.items():
        digits = 2 if r["unit"] == "ms" else 0
        med, lo, hi = (f"{r[k]:,.{digits}f}" for k in ("median", "min", "max"))
        print(f"{name:<12} {med + ' ' + r['unit']:>14} {lo:>10} {hi:>10}  {r['what']}")
    print(f"\nper-op add (\"os\") runs at {results['add_os']['vs_raw']:.2f} x the raw ceiling "
          "(target >= 0.6).  Medians of "
          f"{len(results['add_os']['rounds'])} rounds; a busy machine moves them.")
    return 0


# ============================================================================ parser
_EPILOGS = {
    "main": """\
Run `mmwal COMMAND --help` for the options and examples of each command.

examples:
  mmwal demo
  mmwal inspect my.store
  mmwal verify my.store --json
  mmwal dump my.store | head

exit codes: 0 ok, 1 problems found, 2 usage error or no store, 130 interrupted.
docs: docs/cli.md and docs/tutorial.md in the source repository.""",
    "demo": """\
4 ingestion processes write realistic documents concurrently, one checkpoint
folds the log, 2 query processes map it and search, an open Reader sees a
later write on refresh(), and verify checks it all.  The store is temporary.

examples:
  mmwal demo
  mmwal demo --quick              # a few thousand documents, a few seconds
  mmwal demo --keep --dir /data   # keep the store, on the disk you care about""",
    "inspect": """\
Reads MANIFEST, the checkpoint descriptor and the segment headers; never
writes (documents and seq come from a read-only Reader).  Exit 1 if a part
could not be read.

examples:
  mmwal inspect my.store
  mmwal inspect my.store --json > info.json""",
    "verify": """\
Checks the manifest, every segment header, frame checksum, sequence continuity
and payload, the checkpoint files against their descriptor (sizes, CRC-32s),
its id index, every content chunk.  A torn, unacknowledged tail is a note,
not a problem.  Exit 0 clean, 1 problems found, 2 no store at PATH.

examples:
  mmwal verify my.store
  mmwal verify my.store --json > report.json || echo damaged""",
    "dump": """\
One JSON object per line per live document, in row order:
{"id": ..., "content": ..., "metadata": ...} (+ "embedding": [...] with
--embeddings; bytes in metadata are written as base64 strings).  --ids
prints one id per line.  Reads through a Reader: never writes to the store.
--format parquet --output FILE writes the columns of Reader.to_arrow() (id,
content, metadata as JSON text, embedding) to a Parquet file instead (only
id with --ids); it needs pyarrow: pip install 'mmwal[arrow]'.

examples:
  mmwal dump my.store | head -3
  mmwal dump my.store --ids | wc -l
  mmwal dump my.store --embeddings > all.jsonl
  mmwal dump damaged.store --recovery skip-bad > salvage.jsonl
  mmwal dump my.store --format parquet --output docs.parquet""",
    "checkpoint": """\
Opens the store as a writer and folds the log into a new checkpoint (other
processes keep appending meanwhile), then retires old segments and
checkpoints beyond keep_checkpoints.

examples:
  mmwal checkpoint my.store
  mmwal checkpoint my.store --json""",
    "publish": """\
Uploads the store's current version to an fsspec URL (s3://, gs://, file://):
only the fragment files, deletion vectors and version file the destination
lacks, then the MANIFEST last, so a remote reader never sees a version whose
files are missing.  Idempotent; after a crash part way, run it again.  Remote
readers open the URL with mmwal.Reader(url, cache_dir=...).  Needs
pip install 'mmwal[s3]'.  Credentials come from the environment (AWS_*,
~/.aws), as fsspec finds them.

examples:
  mmwal publish my.store s3://bucket/stores/my
  mmwal publish my.store file:///mnt/share/my --keep 3 --json""",
    "compact": """\
Opens the store as a writer and publishes a new version whose fragments are
merged and hold no dead (replaced or removed) rows.  Without options, a full
compaction into one fragment; --target-fragments / --min-dead-fraction ask
for a partial, tiered one.  Writers keep appending and readers keep reading;
a running checkpoint is waited for (checkpoint.lock).  Exit status 0 also
when there was nothing to do.

examples:
  mmwal compact my.store
  mmwal compact my.store --target-fragments 4 --json""",
    "repair": """\
Scans the log and explains what a repair in the chosen mode keeps and drops,
file by file, with offsets and sequence numbers.  Nothing changes without
--yes.  With --yes it first copies MANIFEST, tail and every segment into
PATH/repair-backup-<time>/, then publishes the salvaged state as a new
checkpoint and restarts the log after the highest sequence number ever used
(none is reused).  No segment is ever truncated or rewritten in place.
Writers wait for the store's locks meanwhile.

modes:
  point-in-time  keep every record before the first damage, drop the rest
  skip-bad       keep every valid record, drop only the damaged bytes

exit codes: 0 repaired or nothing to repair, 1 damage found but not repaired
(no --yes, or the checkpoint itself is damaged), 2 usage or no store.

examples:
  mmwal repair my.store --mode point-in-time          # explain only
  mmwal repair my.store --mode skip-bad --yes         # repair""",
    "restore": """\
Rebuilds, at a new path, the store a repair backup (PATH/repair-backup-<time>/)
was taken of: the MANIFEST, tail record, log segments and checkpoint exactly
as they were before the repair, each checked against the size and CRC-32 the
backup's REPAIR.json lists.  The result appears at DEST only when complete;
the store in place is not touched.  To put it back: stop every process using
the store, move the store aside and DEST into its place.  Damage the repair
salvaged is there again (that is the point).

exit codes: 0 restored, 1 the backup is incomplete or damaged, 2 DEST exists.

examples:
  mmwal restore my.store/repair-backup-20260101T120000Z /srv/my.store.restored
  mmwal restore BACKUP DEST --json --no-verify""",
    "stress": """\
Starts writer, reader and checkpointer processes, kills them with SIGKILL at
random moments, restarts them, and verifies every acknowledged write at the
end.  Run it on the disk you will use.

`mmwal stress plot REPORT.json -o PNG` redraws the plot of a report saved
with --json (`mmwal stress plot --help`).

examples:
  mmwal stress --quick
  mmwal stress --dir /mnt/nvme/tmp --duration 600 --json run.json
  mmwal stress plot run.json -o run.png""",
    "serve": """\
Read-only JSON over HTTP: POST /search, GET /documents/{id}, GET /stats,
GET /healthz.  Each worker process opens its own Reader and refreshes it in
the background.  Needs pip install 'mmwal[server]'.  The token is best given
in the environment variable MMWAL_SERVE_TOKEN (an option shows in ps).
Stops cleanly on SIGTERM or Ctrl-C.  See docs/deployment.md.

examples:
  mmwal serve my.store --workers 2
  MMWAL_SERVE_TOKEN=$(cat token) mmwal serve my.store --host 0.0.0.0
  curl -s localhost:8000/search -d '{"vector": [0.1, 0.2, 0.3], "k": 3}'""",
    "import-chroma": """\
Copies every collection of a Chroma persistent directory (ids, embeddings,
documents, metadatas, uris, collection metadata and space) into an
mmwal.chroma client directory, in batches, with progress on stderr, then
compares the counts.  Needs chromadb (`pip install chromadb`) to read.

exit codes: 0 copied and counts equal, 1 counts differ, 2 usage or no chromadb.

examples:
  mmwal import-chroma ./chroma ./mmwal-db""",
    "bench": """\
Runs a micro-benchmark in a temporary directory: per-op add ("os" and
"fsync"), add_many(1000), Reader open, one search; medians of several rounds,
next to a raw os.write ceiling.  The full benchmarks (against SQLite and
LMDB) are benchmarks/bench_log.py and benchmarks/bench_read.py in the source
repository; --full runs them from a checkout.

examples:
  mmwal bench --quick
  mmwal bench --json > bench.json
  mmwal bench --dir /mnt/nvme/tmp""",
}


def _command_word(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The argument parser (``argv`` lets ``stress`` load its options only when used)."""
    parser = argparse.ArgumentParser(
        prog="mmwal", formatter_class=_RAW, epilog=_EPILOGS["main"],
        description="mmwal: a multi-process write-ahead-logged store of embedding documents.")
    parser.add_argument("--version", action="version", version=f"mmwal {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help: str, func: Callable[[argparse.Namespace], int],
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".",
                           epilog=_EPILOGS[name], formatter_class=_RAW)
        p.set_defaults(func=func)
        return p

    p = add("demo", "the main job on a temporary store, in under a minute", _cmd_demo)
    p.add_argument("--docs", type=int, metavar="N", help="documents to ingest (default 50000)")
    p.add_argument("--quick", action="store_true", help="a short run: 4000 documents")
    p.add_argument("--keep", action="store_true", help="keep the store and print its path")
    p.add_argument("--dir", metavar="DIR", help="create the temporary store under DIR")

    p = add("inspect", "what is on disk: documents, seq, checkpoint, segments, sizes",
            _cmd_inspect)
    p.add_argument("path", metavar="PATH", help="the store directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = add("verify", "scan a store for damage (exit 1 if any)", _cmd_verify)
    p.add_argument("path", metavar="PATH", help="the store directory")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = add("dump", "print the live documents as JSON lines", _cmd_dump)
    p.add_argument("path", metavar="PATH", help="the store directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--embeddings", action="store_true", help="include each embedding")
    g.add_argument("--ids", action="store_true", help="print only the ids, one per line")
    p.add_argument("--recovery", choices=("strict", "point-in-time", "skip-bad"),
                   default="strict", help="what to do with a damaged log record "
                   "(default strict: fail)")
    p.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl",
                   help="jsonl (default, to stdout) or parquet (to --output; needs pyarrow)")
    p.add_argument("--output", metavar="FILE", help="the Parquet file to write")

    p = add("checkpoint", "fold the log into a new checkpoint", _cmd_checkpoint)
    p.add_argument("path", metavar="PATH", help="the store directory")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = add("compact", "merge fragments and drop dead rows, as a new version", _cmd_compact)
    p.add_argument("path", metavar="PATH", help="the store directory")
    p.add_argument("--target-fragments", type=int, metavar="N",
                   help="at most N fragments, merging the smallest neighbours first "
                   "(default: a full compaction into one)")
    p.add_argument("--min-dead-fraction", type=float, metavar="F",
                   help="rewrite a fragment whose share of dead rows reaches F")
    p.add_argument("--lock-timeout", type=float, default=300.0, metavar="S",
                   help="seconds to wait for a running checkpoint (default 300)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = add("publish", "upload the current version to object storage (needs mmwal[s3])",
            _cmd_publish)
    p.add_argument("path", metavar="PATH", help="the store directory")
    p.add_argument("url", metavar="URL", help="destination: s3://bucket/prefix, file:///dir...")
    p.add_argument("--keep", type=int, metavar="N", help="keep the newest N remote versions "
                   "and delete the files no kept version lists (default: keep all)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = add("repair", "salvage a store whose log is damaged", _cmd_repair)
    p.add_argument("path", metavar="PATH", help="the store directory")
    p.add_argument("--mode", required=True, choices=("point-in-time", "skip-bad"),
                   help="what to keep (see below)")
    p.add_argument("--yes", action="store_true", help="carry the repair out (default: only "
                   "explain it)")
    p.add_argument("--json", action="store_true", help="print the plan and result as JSON")
    p.add_argument("--lock-timeout", type=float, default=30.0, metavar="S",
                   help="seconds to wait for the store's locks (default 30)")

    p = add("restore", "rebuild the pre-repair store from a repair backup, at a new path",
            _cmd_restore)
    p.add_argument("backup", metavar="BACKUP", help="a repair-backup-<time> directory")
    p.add_argument("dest", metavar="DEST", help="where to build the store (must not exist)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not run verify on the restored store")

    p = add("stress", "kill -9 loops that check the guarantees on your disk",
            _cmd_stress_missing)
    if _command_word(argv) == "stress":
        try:
            from . import stress
        except ImportError as exc:
            p.set_defaults(_stress_error=str(exc))  # main() then explains, exit code 2
        else:
            stress.add_arguments(p)
            p.set_defaults(func=stress.run)

    p = add("serve", "a read-only HTTP query service (needs mmwal[server])", _cmd_serve)
    p.add_argument("path", metavar="PATH", help="the store directory")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; "
                   "any other needs a token or --insecure)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes, each with its own Reader (default 1)")
    p.add_argument("--token", metavar="T", help="require 'Authorization: Bearer T' (default: "
                   "$MMWAL_SERVE_TOKEN, which does not show in ps)")
    p.add_argument("--refresh-every", type=float, default=1.0, metavar="S",
                   help="seconds between background refreshes (default 1; 0 never)")
    p.add_argument("--max-body-bytes", type=int, default=8 << 20, metavar="B",
                   help="largest request body (default 8 MiB; 413 past it)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host without a token")
    p = add("import-chroma", "copy a Chroma persistent directory into mmwal.chroma",
            _cmd_import_chroma)
    p.add_argument("chroma_dir", metavar="CHROMA_DIR", help="Chroma's persist directory")
    p.add_argument("mmwal_dir", metavar="MMWAL_DIR", help="the mmwal.chroma client directory")
    p.add_argument("--batch-size", type=int, default=1000, metavar="N",
                   help="records per batch (default 1000)")

    p = add("bench", "a quick micro-benchmark (the full benchmarks: benchmarks/)", _cmd_bench)
    p.add_argument("--quick", action="store_true", help="fewer operations and rounds")
    p.add_argument("--json", action="store_true", help="print the numbers as JSON")
    p.add_argument("--dir", metavar="DIR", help="run in a temporary directory under DIR")
    p.add_argument("--full", action="store_true",
                   help="run the repository's benchmark scripts instead (source checkout)")
    return parser


def _exit_code(exc: BaseException) -> int:
    return 2 if isinstance(exc, (StoreNotFoundError, InvalidInputError, UsageError,
                                 MissingDependencyError)) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra and not hasattr(args, "_stress_error"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    cmd = args.command
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"\nmmwal {cmd}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (``mmwal dump | head``): stop quietly,
        # and keep the interpreter's final flush from raising again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except (MmwalError, UsageError, OSError) as exc:
        if os.environ.get("MMWAL_DEBUG") == "1":
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"mmwal {cmd}: {msg}", file=sys.stderr)
        return _exit_code(exc)
    except Exception as exc:
        if os.environ.get("MMWAL_DEBUG") == "1":
            raise
        msg = " ".join(str(exc).split())
        print(f"mmwal {cmd}: unexpected error: {type(exc).__name__}: {msg} (a bug: set "
              "MMWAL_DEBUG=1 for the traceback and report it)", file=sys.stderr)
        return 1
