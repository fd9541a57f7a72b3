"""fsspec access and the file list of a published version, with the checks both sides make.

A published store has the layout of a local one, restricted to what readers
use: ``MANIFEST`` and ``checkpoints/`` (fragments, deletion vectors, version
files).  Every remote name is built from integers here, never read from a
file (DESIGN.md, version-2 invariants), and every file has a known size and,
where the format gives one, a CRC-32 that an upload or a download checks.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from typing import Any

from .. import _format as F
from .._arrow import require
from .._checkpoint import FILES
from .._search.ann import ANN_FILE
from .._search.colfile import COLUMNS_FILE
from .._version import Version, deletion_size
from ..errors import CorruptionError, InvalidInputError

#: Files a fragment may have beside FILES, when its DESCRIPTOR lists them (only
#: these names: a name is never taken from a file).
OPTIONAL_FILES = (COLUMNS_FILE, ANN_FILE)

__all__ = ["FILES", "RemoteFile", "crc_of", "is_url", "open_fs", "version_files"]

#: Bytes read per step when a file is checked or copied.
CHUNK = 1 << 20
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(path: Any) -> bool:
    """Whether ``path`` is a URL with a scheme (``s3://``, ``file://``, ``memory://`` ...)."""
    return isinstance(path, str) and bool(_SCHEME.match(path))


def open_fs(url: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    """(fsspec filesystem, root path inside it) of a published store's URL."""
    if not is_url(url):
        raise InvalidInputError(f"{url!r} is not a URL with a scheme (s3://bucket/key, "
                                "file:///abs/path, gs://...)", got=url)
    if storage_options is not None and not isinstance(storage_options, dict):
        raise InvalidInputError("storage_options must be a dict of fsspec options, got "
                                f"{type(storage_options).__name__}",
                                got=type(storage_options).__name__)
    fsspec = require("fsspec", "s3", f"the URL {url}")
    try:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    except ImportError as exc:  # e.g. s3fs or gcsfs missing for its scheme
        scheme = url.split("://", 1)[0]
        extra = "s3"  # the extra that brings fsspec and s3fs
        from ..errors import MissingDependencyError

        raise MissingDependencyError(
            f"the URL {url} needs fsspec's {scheme}:// filesystem, which failed to import "
            f"({exc}); install it with: pip install 'mmwal[{extra}]' (or gcsfs/adlfs for "
            "gs:// and az://)", package=scheme, extra=extra) from exc
    except ValueError as exc:
        raise InvalidInputError(f"{url}: fsspec cannot open it: {exc}", got=url) from exc
    return fs, str(root).rstrip("/")


@dataclass(frozen=True)
class RemoteFile:
    """A file of a published version: its path relative to the store, size, CRC-32.

    ``crc`` is None for files that carry their own checksum in a header
    (DESCRIPTOR, version file, MANIFEST); ``size`` is None when only that
    header tells it (a DESCRIPTOR, whose size no other file records).
    """

    rel: str
    size: int | None
    crc: int | None


def fragment_dir(fid: int) -> str:
    return f"checkpoints/{fid:08d}"


def version_rel(vid: int) -> str:
    return f"checkpoints/{vid:08d}.version"


def deletion_rel(fid: int, vid: int) -> str:
    return f"checkpoints/{fid:08d}-{vid:08d}.deleted"


def descriptor_rel(fid: int) -> str:
    return f"{fragment_dir(fid)}/DESCRIPTOR"


def fragment_files(fid: int, descriptor: dict[str, Any], where: str) -> list[RemoteFile]:
    """The data files of fragment ``fid`` with the sizes and CRCs its DESCRIPTOR gives."""
    files = descriptor.get("files")
    out = []
    for name in (*FILES, *OPTIONAL_FILES):
        meta = files.get(name) if isinstance(files, dict) else None
        if meta is None and name in OPTIONAL_FILES:
            continue  # an older fragment, or one too small for an index
        if (not isinstance(meta, list) or len(meta) != 2
                or not all(type(x) is int and x >= 0 for x in meta)):
            raise CorruptionError(f"{where}: no valid entry for {name}; run `mmwal verify`",
                                  path=where, offset=F.MANIFEST_HEADER.size)
        out.append(RemoteFile(f"{fragment_dir(fid)}/{name}", meta[0], meta[1]))
    return out


def version_files(v: Version) -> list[RemoteFile]:
    """The version file and deletion vectors of ``v`` (fragments: see :func:`fragment_files`)."""
    out = []
    for e in v.entries:
        if e.dv:
            if e.dv_size != deletion_size(e.rows):
                raise CorruptionError(f"version {v.id}: deletion vector of fragment {e.fid} "
                                      f"said to be {e.dv_size} bytes", path=version_rel(v.id),
                                      offset=F.MANIFEST_HEADER.size)
            out.append(RemoteFile(deletion_rel(e.fid, e.dv), e.dv_size, e.dv_crc))
    if not v.legacy and v.id:
        out.append(RemoteFile(version_rel(v.id), None, None))
    return out


def decode_descriptor(raw: bytes, where: str, fid: int, dim: int,
                      rows: int | None) -> dict[str, Any]:
    """A fragment's DESCRIPTOR, checked against the fragment and version that list it.

    ``rows`` None: not known (a format-1 MANIFEST need not say it).
    """
    d = F.decode_manifest(raw, where, F.DESCRIPTOR_MAGIC, F.DESCRIPTOR_FIELDS)
    if d["id"] != fid or d["dim"] != dim or (rows is not None and d["count"] != rows):
        raise CorruptionError(f"{where}: describes fragment {d['id']} of dim {d['dim']} with "
                              f"{d['count']} rows, expected {fid} of dim {dim} with {rows}",
                              path=where, offset=F.MANIFEST_HEADER.size)
    return d


def crc_of(fd: int, size: int, path: str) -> int:
    """CRC-32 of the first ``size`` bytes of an open file (pread, so the offset stays)."""
    crc = 0
    pos = 0
    while pos < size:
        block = os.pread(fd, min(CHUNK, size - pos), pos)
        if not block:
            raise CorruptionError(f"{path}: ends at offset {pos}, expected {size} bytes",
                                  path=path, offset=pos)
        crc = zlib.crc32(block, crc)
        pos += len(block)
    return crc


def is_temp(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".tmp-") or base.endswith(".tmp")


def parse_rel(rel: str) -> tuple[str, int, int] | None:
    """What a path under ``checkpoints/`` names: ("fragment", F, 0), ("version", V, 0),
    ("deleted", F, V); None for anything else (temp files, strays)."""
    parts = rel.split("/")
    if len(parts) < 2 or parts[0] != "checkpoints":
        return None
    name = parts[1]
    if len(name) == 8 and name.isdigit() and name.isascii():
        return ("fragment", int(name), 0)
    if len(parts) != 2:
        return None
    if len(name) == 16 and name.endswith(".version") and name[:8].isdigit():
        return ("version", int(name[:8]), 0)
    if (len(name) == 25 and name.endswith(".deleted") and name[8] == "-"
            and name[:8].isdigit() and name[9:17].isdigit()):
        return ("deleted", int(name[:8]), int(name[9:17]))
    return None
