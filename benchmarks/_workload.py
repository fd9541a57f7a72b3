"""Shared helpers for the benchmark scripts: the standard workload, raw frames,
statistics, machine description and Markdown output.

Standard workload (docs/benchmarks.md, DESIGN "Performance targets"):
ids ``doc-{i}``, ~150 bytes of content, metadata
``{"source": f"file_{i%100}.pdf", "page": i%50, "tags": [...]}`` and 384-dim
float32 vectors.  Everything here is built *before* any timing starts.

Not a package: the scripts in this directory run as ``python benchmarks/x.py``
and import this module from their own directory.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import struct
import sys
import zlib
from dataclasses import dataclass

import msgpack
import numpy as np

DIM = 384
CONTENT_BYTES = 150

_TAGS = ("finance", "legal", "hr", "eng", "sales", "ops", "draft", "final", "q1", "q2", "q3", "q4")

_WORDS = (
    "the quarterly report shows revenue growth in all regions while operating "
    "costs remained stable and the board approved a new budget for research "
    "hiring plans were revised after the audit found minor issues in the "
    "procurement process which the legal team reviewed before the deadline "
    "customers asked for faster delivery and better documentation of the api "
).split()
# A long deterministic text; each document takes a different 150-byte window.
_TEXT = " ".join(_WORDS[(i * 7) % len(_WORDS)] for i in range(4000))


@dataclass
class Docs:
    """A slice of the standard workload: documents ``start .. start+n-1``."""

    start: int
    ids: list[str]
    contents: list[str]
    metadatas: list[dict]
    vecs: np.ndarray  # (n, DIM) float32, C-contiguous

    def __len__(self) -> int:
        return len(self.ids)


def content_for(i: int) -> str:
    head = f"Document {i}: "
    off = (i * 131) % (len(_TEXT) - 2 * CONTENT_BYTES)
    return head + _TEXT[off : off + CONTENT_BYTES - len(head)]


def metadata_for(i: int) -> dict:
    tags = [_TAGS[i % len(_TAGS)], _TAGS[(i // len(_TAGS)) % len(_TAGS)]]
    if i % 3 == 0:
        tags.append("reviewed")
    return {"source": f"file_{i % 100}.pdf", "page": i % 50, "tags": tags}


def make_docs(start: int, n: int, dim: int = DIM, seed: int = 1234) -> Docs:
    """Documents ``start .. start+n-1`` of the standard workload (deterministic)."""
    rng = np.random.default_rng([seed, start])
    vecs = np.ascontiguousarray(rng.standard_normal((n, dim), dtype=np.float32))
    rng_ids = range(start, start + n)
    return Docs(
        start=start,
        ids=[f"doc-{i}" for i in rng_ids],
        contents=[content_for(i) for i in rng_ids],
        metadatas=[metadata_for(i) for i in rng_ids],
        vecs=vecs,
    )


# --------------------------------------------------------------- raw frames
#: Raw ceiling frame header: 8-byte payload length + 4-byte CRC32 of the payload.
RAW_HEADER = struct.Struct("<QI")


def raw_frame(payload: bytes) -> bytes:
    return RAW_HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def raw_doc_frames(docs: Docs, lo: int = 0, hi: int | None = None) -> list[bytes]:
    """One pre-built frame per document: msgpack [id, content, metadata, vector bytes]."""
    hi = len(docs) if hi is None else hi
    packb = msgpack.packb
    return [
        raw_frame(
            packb(
                [docs.ids[i], docs.contents[i], docs.metadatas[i], docs.vecs[i].tobytes()],
                use_bin_type=True,
            )
        )
        for i in range(lo, hi)
    ]


def raw_batch_frame(docs: Docs, lo: int, hi: int) -> bytes:
    """One pre-built frame for documents lo..hi-1; the vectors as one contiguous block."""
    payload = msgpack.packb(
        [docs.ids[lo:hi], docs.contents[lo:hi], docs.metadatas[lo:hi], docs.vecs[lo:hi].tobytes()],
        use_bin_type=True,
    )
    return raw_frame(payload)


# --------------------------------------------------------------- statistics
def summarize(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "rounds": list(values),
    }


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "–"
    if x >= 100_000:
        return f"{x / 1000:,.0f}k"
    if x >= 10_000:
        return f"{x / 1000:,.1f}k"
    return f"{x:,.0f}"


def fmt_ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# --------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def filesystem_of(path: str) -> str:
    """'fstype on device (mountpoint)' for the mount holding *path* (Linux), else ''."""
    path = os.path.realpath(path)
    best = None
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                mnt = mnt.replace("\\040", " ")
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and (
                    best is None or len(mnt) > len(best[1])
                ):
                    best = (dev, mnt, fstype)
    except OSError:
        return ""
    return f"{best[2]} on {best[0]} ({best[1]})" if best else ""


def machine_info(base_dir: str) -> dict:
    import sqlite3

    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "msgpack": ".".join(map(str, msgpack.version)),
        "sqlite": sqlite3.sqlite_version,
        "base_dir": base_dir,
        "filesystem": filesystem_of(base_dir),
    }
    try:
        import lmdb

        info["lmdb"] = lmdb.__version__ + " (LMDB " + ".".join(map(str, lmdb.version())) + ")"
    except Exception:  # pragma: no cover - lmdb missing
        info["lmdb"] = None
    return info
