"""What a stress run tells its user: a live progress line, a summary, JSON, a plot."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, TextIO

__all__ = ["Progress", "plot_available", "summary", "write_json", "write_plot"]


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
    """Throughput and reader lag over time, with kill and checkpoint markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = rep["timeline"]
    ev = rep["events"]
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(11, 6.5))
    ax1.plot(tl["t"], tl["docs_per_s"], color="tab:blue", lw=1.2, label="documents/s")
    ax1.plot(tl["t"], tl["ops_per_s"], color="tab:cyan", lw=0.9, label="calls/s")
    ax1.set_ylabel("acknowledged per second")
    ax2.plot(tl["t"], tl["lag_max"], color="tab:red", lw=1.0, label="max over readers")
    ax2.plot(tl["t"], tl["lag_mean"], color="tab:orange", lw=1.0, label="mean over readers")
    ax2.set_ylabel("reader lag (records)")
    ax2.set_xlabel("seconds")
    colors = {"writer": "tab:purple", "reader": "tab:green", "checkpointer": "tab:brown"}
    seen: set[str] = set()
    for t, role, _phase in ev["kills"]:
        kind = role.split("-")[0]
        lab = f"kill {kind}" if kind not in seen else None
        seen.add(kind)
        for ax in (ax1, ax2):
            ax.axvline(t, color=colors.get(kind, "gray"), lw=0.6, alpha=0.45,
                       label=lab if ax is ax1 else None)
    for i, t in enumerate(ev["checkpoints"]):
        for ax in (ax1, ax2):
            ax.axvline(t, color="black", lw=0.8, ls=":", alpha=0.6,
                       label="checkpoint" if (i == 0 and ax is ax1) else None)
    ax1.legend(loc="upper right", fontsize=8, ncol=3)
    ax2.legend(loc="upper right", fontsize=8)
    s = rep["settings"]
    fig.suptitle(f"mmwal stress ({'PASSED' if rep['ok'] else 'FAILED'}): {s['writers']} writers, "
                 f"{s['readers']} readers, durability {s['durability']}, {rep['kills']} kills, "
                 f"{rep['checkpoints']} checkpoints", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
