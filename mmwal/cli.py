"""The ``mmwal`` command line."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np

from . import __version__
from ._replay import replay
from ._store import Store
from ._verify import verify
from .errors import MmwalError

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    root = tempfile.mkdtemp(prefix="mmwal-demo-")
    path = os.path.join(root, "store")
    try:
        rng = np.random.default_rng(0)
        n = args.docs
        vecs = rng.standard_normal((n, 384)).astype(np.float32)
        t0 = time.perf_counter()
        with Store(path, dim=384, durability="os") as store:
            for i in range(n):
                store.add(f"doc-{i}", vecs[i], content=f"document number {i}",
                          metadata={"source": f"file_{i % 100}.pdf", "page": i % 50})
        dt = time.perf_counter() - t0
        print(f"appended {n} documents in {dt:.2f} s ({n / dt:,.0f} docs/s) to {path}")
        t0 = time.perf_counter()
        ops = sum(1 for _ in replay(path))
        dt = time.perf_counter() - t0
        print(f"replayed {ops} operations in {dt:.3f} s")
        report = verify(path)
        print(f"verify: {'ok' if report.ok else 'PROBLEMS'} ({report.records} records)")
        return 0 if report.ok else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _verify(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.path) or not os.path.exists(os.path.join(args.path, "MANIFEST")):
        print(f"mmwal verify: no mmwal store at {args.path}", file=sys.stderr)
        return 2
    report = verify(args.path)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for p in report.problems:
            print(f"problem: {p}")
        for note in report.notes:
            print(f"note: {note}")
        print(f"{'ok' if report.ok else 'damaged'}: {report.records} records in "
              f"{report.segments} segments, seq {report.first_seq}..{report.last_seq}")
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmwal", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mmwal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="write, replay and verify a temporary store")
    p.add_argument("--docs", type=int, default=20_000, help="documents to write")
    p.set_defaults(func=_demo)
    p = sub.add_parser("verify", help="scan a store for damage (exit 1 if any)")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except MmwalError as exc:
        print(f"mmwal {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
