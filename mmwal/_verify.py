"""``mmwal.verify``: a full integrity scan that reports instead of raising."""

from __future__ import annotations

import os

from ._fsutil import Paths
from ._replay import scan_log
from ._types import Problem, VerifyReport
from .errors import MmwalError

__all__ = ["verify"]


def verify(path: str | os.PathLike[str]) -> VerifyReport:
    """Scan the whole store and report every problem found (never raises for damage).

    Checks the manifest, every log segment header, every frame's checksum and
    sequence continuity, every payload's structure, and (when there is one)
    the checkpoint files against their descriptor.  A torn, unacknowledged
    tail is not a problem; it is listed in ``report.notes``.

    Examples
    --------
    >>> import numpy as np, mmwal, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with mmwal.Store(d, dim=2, durability="os") as s:
    ...     _ = s.add("a", [1.0, 0.0])
    >>> report = mmwal.verify(d)
    >>> report.ok, report.records
    (True, 1)
    """
    from ._store import open_manifest

    paths = Paths(os.fspath(path))
    report = VerifyReport(path=paths.root)
    try:
        manifest = open_manifest(paths)
    except MmwalError as exc:
        report.problems.append(Problem(paths.manifest, getattr(exc, "offset", 0), str(exc)))
        return report
    report.checkpoint = manifest["checkpoint"]
    report.segments, report.records, report.first_seq, report.last_seq = scan_log(
        paths, manifest["dim"], manifest["replay_segment"], report.problems, report.notes)
    if report.records and report.first_seq != manifest["checkpoint_seq"] + 1:
        report.problems.append(Problem(
            paths.segment(manifest["replay_segment"]), 32,
            f"the log starts at seq {report.first_seq}, the checkpoint ends at "
            f"{manifest['checkpoint_seq']}"))
    return report
