"""What a stress run tells its user: a live progress line, a summary, JSON, a plot.

The summary and the plot are made from the report alone (the dict that is also
written as JSON), so ``mmwal stress plot REPORT.json`` redraws exactly what
``--plot`` drew during the run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, TextIO

from ..errors import InvalidInputError

__all__ = ["Progress", "interval_lines", "load_report", "plot_available", "summary",
           "write_json", "write_plot"]

#: Rows of the summary's per-interval table: enough to see a trend, whatever the run length.
MAX_INTERVALS = 16


class Progress:
    """One updating line on a terminal; a plain line every ``every`` seconds otherwise."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False,
                 every: float = 5.0) -> None:
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self._last = 0.0
        self._width = 0

    def update(self, line: str) -> None:
        if self.quiet:
            return
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
            self.stream.flush()
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.stream.write(line + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (clears the progress line first)."""
        if self.quiet:
            return
        self.finish()
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def _n(x: float) -> str:
    return f"{x:,.0f}"


def summary(rep: dict[str, Any]) -> str:
    """The human summary printed at the end of every run."""
    s = rep["settings"]
    lines = []
    verdict = "PASSED" if rep["ok"] else "FAILED"
    if rep.get("interrupted"):
        verdict += " (interrupted)"
    lines.append(f"mmwal stress: {verdict} - scenario {rep['scenario']['name']}, "
                 f"{rep['run_s']:.1f} s, {s['writers']} writers, {s['readers']} readers, "
                 f"durability {s['durability']}, seed {s['seed']}")
    tp = rep["throughput"]
    by_dur = ", ".join(f"{k} {_n(v)}" for k, v in sorted(rep["acknowledged_by_durability"].items()))
    lines.append(f"  acknowledged  {_n(rep['acknowledged'])} documents in "
                 f"{_n(rep['acknowledged_ops'])} calls ({by_dur}); "
                 f"{_n(tp['docs_per_s'])} docs/s, {_n(tp['ops_per_s'])} calls/s, peak "
                 f"{_n(tp['peak_docs_per_s'])} docs/s")
    kr = ", ".join(f"{k} {v}" for k, v in sorted(rep["kills_by_role"].items()))
    kp = ", ".join(f"{k} {v}" for k, v in sorted(rep["kills_by_phase"].items()))
    if "crash_states" in rep:
        lines.append(f"  power loss    {_n(rep['crash_states'])} crash states at "
                     f"{_n(rep.get('crash_points', 0))} crash points recovered and checked; "
                     f"{_n(rep.get('strict_refusals', 0))} strict refusals (known limitation)")
    if "faults" in rep:
        lines.append(f"  I/O errors    {_n(rep['faults'])} faults injected in "
                     f"{_n(rep.get('cases', 0))} cases; {_n(rep.get('poisoned', 0))} Stores "
                     "poisoned")
    lines.append(f"  kills         {rep['kills']} ({kr or 'none'}); by moment: {kp or '-'}")
    lines.append(f"  checkpoints   {rep['checkpoints']} completed during the run; final "
                 f"checkpoint {rep['final_checkpoint'].get('documents', '-')} documents in "
                 f"{rep['final_checkpoint'].get('seconds', '-')} s")
    cp = rep.get("compaction")
    if cp is not None:  # absent from reports of older harnesses
        lines.append(
            f"  compaction    {_n(cp['compactor_calls'])} compact() calls, "
            f"{_n(cp['compactor_published'])} published, {_n(cp['auto_compactions'])} inside "
            f"checkpoints; {_n(cp['fragments_merged'])} fragments merged, "
            f"{_n(cp['rows_copied'])} rows copied, {_n(cp['rows_dropped'])} dead rows dropped")
        lines.append(
            f"  fragments     per version max {cp['fragments_max']}, mean "
            f"{cp['fragments_mean']}; deletion vectors in {_n(cp['samples_with_deletion_vectors'])}"
            f" of {_n(sum(cp['samples_with_fragments'].values()))} samples (max "
            f"{cp['deletion_vectors_max']}); {_n(cp['versions_seen'])} versions seen")
    ch = rep.get("churn")
    if ch is not None and ch.get("churners"):
        lines.append(
            f"  churn         {_n(ch['acknowledged'])} of {_n(ch['ops'])} upserts/removes "
            f"acknowledged ({_n(ch['removes_acknowledged'])} removes); {_n(ch['keys_present'])} "
            f"of {_n(ch['keys'])} keys present; lost {ch['lost']}, resurrected "
            f"{ch['resurrected']}; readers checked {_n(ch['keys_checked_by_readers'])} keys and "
            f"{_n(ch['old_snapshots_checked'])} old snapshots")
    rd = rep["readers"]
    lines.append(f"  readers       {_n(rd['refreshes'])} refreshes, {_n(rd['full_checks'])} full "
                 f"scans, {_n(rd['docs_checked'])} documents checked; lag p50 "
                 f"{_n(rd['lag_p50'])}, p99 {_n(rd['lag_p99'])}, max {_n(rd['lag_max'])} records")
    au = rep["audit"]
    lines.append(f"  log audit     {_n(au['records'])} of {_n(rep['last_seq'])} records checked "
                 f"in order ({_n(au['skipped'])} retired before the auditor got to them)")
    lines.append(f"  final state   {_n(rep['documents'])} documents at seq {_n(rep['last_seq'])};"
                 f" {rep['pending_landed']} of {rep['pending_unacknowledged']} interrupted calls "
                 f"landed; verify() {'ok' if rep['verify']['ok'] else 'FOUND PROBLEMS'}")
    lines.append(f"  lost {rep['lost']}  phantoms {rep['phantoms']}  duplicates "
                 f"{rep['duplicates']}  violations {sum(rep['violation_counts'].values())}")
    if "in_doubt" in rep:  # the I/O-error campaign: retried in-doubt records, not duplicates
        d = rep["in_doubt"]
        lines.append(f"  in-doubt retries {d['records']} records in {d['cases']} cases "
                     "(a failed attempt's frame reached the log and the retry logged it "
                     "again; the state holds one)")
    timeline = rep.get("timeline")
    if isinstance(timeline, dict) and timeline.get("t"):
        try:
            lines.extend(interval_lines(rep))
        except InvalidInputError as exc:  # a summary never fails over its table
            lines.append(f"  (no per-interval table: {exc})")
    for note in rep.get("notes", []):
        lines.append(f"  note: {note}")
    if rep["violations"]:
        lines.append("  violations:")
        for v in rep["violations"][:20]:
            detail = v["detail"].splitlines()[0] if v["detail"] else ""
            lines.append(f"    [{v['kind']}] {detail[:160]}")
        more = sum(rep["violation_counts"].values()) - min(20, len(rep["violations"]))
        if more > 0:
            lines.append(f"    ... and {more} more (see the JSON report)")
    return "\n".join(lines)


def _k(x: float) -> str:
    """A count in at most 6 characters: 950, 12.3k, 4.1M."""
    if math.isnan(x):
        return "-"
    if abs(x) < 10_000:
        return f"{x:,.0f}"
    if abs(x) < 1e6:
        return f"{x / 1e3:.1f}k" if abs(x) < 1e5 else f"{x / 1e3:.0f}k"
    return f"{x / 1e6:.1f}M"


def interval_lines(rep: dict[str, Any], max_rows: int = MAX_INTERVALS) -> list[str]:
    """The run cut in at most ``max_rows`` intervals: docs/s, kills, checkpoints, reader lag.

    One row per interval of a round width (``nice_width``), so a trend shows
    without a picture: throughput falling, checkpoints getting slower, lag
    growing.  Raises InvalidInputError if the report has no usable timeline.
    """
    from ._timeline import ROLE_KINDS, ROLE_LETTERS, Timeline, bin_timeline

    tl = Timeline.from_report(rep)
    b = bin_timeline(tl, max_rows)
    kinds = [k for k in ROLE_KINDS if k in b.kills] + [k for k in b.kills if k not in ROLE_KINDS]
    by = "/".join(ROLE_LETTERS.get(k, k[0]) for k in kinds)
    known = tl.checkpoint_seconds is not None
    fr = b.fragments_max is not None and b.fragments_mean is not None
    # Five kinds of role: "19/12/7/6/11" is wider than the three-kind column was.
    kw = max([11, len(by)] + [len("/".join(str(int(b.kills[x][i])) for x in kinds))
                              for i in range(b.n)])
    out = [f"  per interval of {b.width:g} s (kills by role {by}: "
           + ", ".join(kinds) + "; reader lag in records"
           + ("; fragments of the current version, mean/max of the samples; compact() "
              "calls completed" if fr else "") + "):",
           f"    {'t (s)':>13} {'docs/s':>8} {'kills':>6} {by:>{kw}} {'ckpts':>5} "
           f"{'ckpt max s':>10} {'lag mean':>8} {'lag max':>8}"
           + (f" {'frags':>9} {'compact':>7}" if fr else "")]
    for i in range(b.n):
        a, z = b.edges[i], b.edges[i + 1]
        k = [int(b.kills[x][i]) for x in kinds]
        ck = int(b.checkpoints[i])
        cs = b.checkpoint_max_s[i]
        ckpt_s = f"{cs:.2f}" if known and ck and not math.isnan(cs) else "-"
        span = f"{round(a, 1):g}-{round(z, 1):g}"
        line = (f"    {span:>13} {_k(b.docs_per_s[i]):>8} {sum(k):>6,} "
                f"{'/'.join(str(x) for x in k):>{kw}} {ck:>5} {ckpt_s:>10} "
                f"{_k(b.lag_mean[i]):>8} {_k(b.lag_max[i]):>8}")
        if b.fragments_max is not None and b.fragments_mean is not None:
            fm, fx = b.fragments_mean[i], b.fragments_max[i]
            frags = "-" if math.isnan(fx) else f"{fm:.1f}/{fx:.0f}"
            cc = 0 if b.compactions is None else int(b.compactions[i])
            line += f" {frags:>9} {cc:>7}"
        out.append(line)
    if not known and len(tl.checkpoints):
        out.append("    (checkpoint durations are not recorded in this report: an older "
                   "harness wrote it)")
    return out


def load_report(path: str) -> dict[str, Any]:
    """Read a JSON report written by ``--json``; InvalidInputError says what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise InvalidInputError(f"no such file: {path} (give the path of a report written "
                                "by mmwal stress --json)", path=path) from None
    except IsADirectoryError:
        raise InvalidInputError(f"{path} is a directory, not a JSON report", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}", path=path) from None
    try:
        rep = json.loads(text)
    except ValueError as exc:
        lineno, colno = getattr(exc, "lineno", "?"), getattr(exc, "colno", "?")
        raise InvalidInputError(f"{path} is not valid JSON (line {lineno}, column {colno}: "
                                f"{getattr(exc, 'msg', exc)}); was the run interrupted "
                                "while writing it?", path=path) from None
    from ._timeline import Timeline

    Timeline.from_report(rep, where=path)  # raises if the plot could not be drawn
    return rep  # type: ignore[no-any-return]


def write_json(path: str, rep: dict[str, Any]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(rep, f, indent=2, sort_keys=False, default=str)
        f.write("\n")
    os.replace(tmp, path)


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plot(path: str, rep: dict[str, Any]) -> None:
    """Draw the report's timeline to ``path`` (PNG): the live ``--plot`` and ``mmwal stress plot``.

    See :mod:`mmwal.stress._plot`; needs matplotlib (``pip install 'mmwal[plot]'``).
    """
    from ._plot import write

    write(path, rep)
