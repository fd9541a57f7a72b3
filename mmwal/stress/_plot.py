"""The plot of a stress run, drawn from its report alone (needs matplotlib).

Four panels on one time axis:

1. acknowledged documents and calls per second (a smoothed curve over the raw
   samples when they are dense);
2. reader lag (max and mean over readers) with the checkpoint completions
   behind it: lag falls when readers catch up, and a reader (re)opened far from
   the last checkpoint replays the whole tail;
3. kills per time bin, stacked by role (writer, reader, checkpointer);
4. how long each checkpoint took, and when the checkpointer was killed in the
   middle of one.

Events are counted per bin, so the number of drawn artists depends on the
number of bins (at most :data:`MAX_BINS`), never on the number of events: a
40-minute run with 10,000 kills draws what a 20-second run draws.  Curves are
drawn above every event mark.  The same code serves ``--plot`` during a run
and ``mmwal stress plot REPORT.json`` afterwards.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._timeline import ROLE_KINDS, Bins, Timeline, bin_timeline

__all__ = ["MAX_BINS", "figure", "write"]

#: The most time bins the kill track and the binned series use.
MAX_BINS = 120
#: Up to this many checkpoints are drawn one by one (one marker each, inside one artist).
CHECKPOINT_CAP = 400
#: Up to this many checkpoint completions are drawn as full-height lines behind the lag.
COMPLETION_LINES_CAP = 150
#: More samples than this: the raw curve goes faint and a smoothed one is drawn over it.
DENSE = 600

#: Legends sit right of the panels, where they hide no data.
_LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.005, 1.0), "fontsize": 8,
           "borderaxespad": 0.0, "frameon": False}
_ROLE_COLORS = {"writer": "tab:purple", "reader": "tab:green", "checkpointer": "tab:brown",
                "compactor": "tab:olive", "churner": "tab:cyan"}
_Z_MARKS, _Z_CURVES = 1.0, 3.0


def _count(x: float, _pos: Any = None) -> str:
    if abs(x) >= 1e6:
        return f"{x / 1e6:g}M"
    if abs(x) >= 1e4:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """A centred moving average that keeps the ends (NaN counts as missing)."""
    ok = ~np.isnan(y)
    k = np.ones(window)
    num = np.convolve(np.where(ok, y, 0.0), k, mode="same")
    den = np.convolve(ok.astype(np.float64), k, mode="same")
    return np.where(den > 0, num / np.maximum(den, 1.0), np.nan)  # type: ignore[no-any-return]


def _curve(ax: Any, t: np.ndarray, y: np.ndarray, color: str, label: str, lw: float,
           window: int) -> None:
    """The raw samples; when dense, faint, with a moving mean of ``window`` on top."""
    if window > 1:
        ax.plot(t, y, color=color, lw=0.5, alpha=0.3, zorder=_Z_CURVES)
        ax.plot(t, _smooth(y, window), color=color, lw=lw + 0.4, zorder=_Z_CURVES + 0.1,
                label=label)
    else:
        ax.plot(t, y, color=color, lw=lw, zorder=_Z_CURVES, label=label)


def _throughput(ax: Any, tl: Timeline) -> None:
    window = max(3, len(tl.t) // 200) if len(tl.t) > DENSE else 1
    _curve(ax, tl.t, tl.docs_per_s, "tab:blue", "documents/s", 1.1, window)
    _curve(ax, tl.t, tl.ops_per_s, "tab:cyan", "calls/s", 0.9, window)
    ax.set_ylabel("acknowledged / s")
    ax.set_ylim(bottom=0)
    title = None
    if window > 1:
        step = float(np.median(np.diff(tl.t))) if len(tl.t) > 1 else 0.0
        title = f"thick: mean of {window} samples\n(~{window * step:.0f} s); faint: each"
    ax.legend(**_LEGEND, title=title, title_fontsize=8, alignment="left")


def _lag(ax: Any, tl: Timeline) -> None:
    ax.plot(tl.t, tl.lag_max, color="tab:red", lw=1.0, zorder=_Z_CURVES,
            label="max over readers")
    ax.plot(tl.t, tl.lag_mean, color="tab:orange", lw=1.0, zorder=_Z_CURVES + 0.1,
            label="mean over readers")
    n = len(tl.checkpoints)
    if n:
        label = f"checkpoint completed ({n:,})"
        if n <= COMPLETION_LINES_CAP:
            ax.vlines(tl.checkpoints, 0, 1, transform=ax.get_xaxis_transform(), color="0.35",
                      lw=0.7, ls=":", alpha=0.7, zorder=_Z_MARKS, label=label)
        else:  # too many to see through: a rug along the bottom
            ax.vlines(tl.checkpoints, 0, 0.05, transform=ax.get_xaxis_transform(),
                      color="0.35", lw=0.5, alpha=0.5, zorder=_Z_MARKS, label=label)
    ax.set_ylabel("reader lag (records)")
    ax.set_ylim(bottom=0)
    ax.legend(**_LEGEND)


def _kills(ax: Any, tl: Timeline, b: Bins) -> None:
    from matplotlib.ticker import MaxNLocator

    base = np.zeros(b.n)
    kinds = [k for k in ROLE_KINDS if k in b.kills] + [k for k in b.kills if k not in ROLE_KINDS]
    for kind in kinds:
        counts = b.kills[kind].astype(np.float64)
        total = int(counts.sum())
        if kind not in ROLE_KINDS and not total:
            continue
        ax.stairs(base + counts, b.edges, baseline=base.copy(), fill=True, lw=0,
                  color=_ROLE_COLORS.get(kind, "0.5"), alpha=0.85, zorder=_Z_MARKS,
                  label=f"{kind} {total:,}")
        base = base + counts
    ax.set_ylabel(f"kills / {b.width:g} s")
    ax.set_ylim(0, max(1.0, float(base.max()) * 1.15))
    total = int(base.sum())
    ax.legend(**_LEGEND, title=f"{total:,} kills by role", title_fontsize=8,
              alignment="left")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))


def _checkpoints(ax: Any, tl: Timeline, b: Bins) -> None:
    from matplotlib.ticker import MaxNLocator

    n = len(tl.checkpoints)
    if tl.checkpoint_seconds is None:
        # An older report: completion times only.
        ax.stairs(b.checkpoints.astype(np.float64), b.edges, fill=True, color="0.45",
                  alpha=0.8, lw=0, zorder=_Z_MARKS, label=f"completed ({n:,})")
        ax.set_ylabel(f"checkpoints / {b.width:g} s")
        ax.set_ylim(0, max(1.0, float(b.checkpoints.max(initial=0)) * 1.35))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
        ax.text(0.995, 0.96, "checkpoint durations not recorded in this report (an older "
                "harness wrote it)", transform=ax.transAxes, ha="right", va="top",
                fontsize=8, color="0.3", bbox={"fc": "white", "ec": "none", "alpha": 0.8})
    elif n <= CHECKPOINT_CAP:
        ax.plot(tl.checkpoints, tl.checkpoint_seconds, color="black", lw=0.6, marker="o",
                ms=3, zorder=_Z_CURVES, label=f"duration of each checkpoint ({n:,})")
        ax.set_ylabel("checkpoint (s)")
    else:
        mid = (b.edges[:-1] + b.edges[1:]) / 2
        ax.plot(mid, b.checkpoint_max_s, color="black", lw=1.0, marker=".", ms=3,
                zorder=_Z_CURVES, label=f"longest per {b.width:g} s ({n:,} checkpoints)")
        ax.plot(mid, b.checkpoint_mean_s, color="0.5", lw=0.8, zorder=_Z_CURVES,
                label="mean")
        ax.set_ylabel("checkpoint (s)")
    m = tl.mid_checkpoint_kills
    if len(m) and tl.checkpoint_seconds is not None:
        label = f"checkpointer killed mid-checkpoint ({len(m):,})"
        if len(m) <= CHECKPOINT_CAP:
            ax.plot(m, np.zeros(len(m)), ls="none", marker="x", ms=4, color="tab:brown",
                    zorder=_Z_CURVES, clip_on=False, label=label)
        else:
            mb = np.bincount(np.clip(np.searchsorted(b.edges, m, side="right") - 1, 0,
                                     b.n - 1), minlength=b.n)
            mid = (b.edges[:-1] + b.edges[1:]) / 2
            ax.plot(mid[mb > 0], np.zeros(int((mb > 0).sum())), ls="none", marker="x", ms=4,
                    color="tab:brown", zorder=_Z_CURVES, clip_on=False, label=label)
    if not n and not len(m):
        ax.text(0.5, 0.5, "no checkpoint completed", transform=ax.transAxes, ha="center",
                va="center", fontsize=8, color="0.3")
    ax.set_ylim(bottom=0)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**_LEGEND)


def _title(rep: dict[str, Any], tl: Timeline) -> str:
    s = tl.settings
    ok = rep.get("ok")
    verdict = "PASSED" if ok else ("FAILED" if ok is False else "?")
    if rep.get("interrupted"):
        verdict += ", interrupted"
    name = rep.get("scenario", {}).get("name", "default") if isinstance(
        rep.get("scenario"), dict) else "default"

    def g(key: str, fmt: str = "") -> str:
        v = s.get(key)
        return "?" if v is None else format(v, fmt)

    line1 = (f"mmwal stress ({verdict}), scenario {name}: {tl.end:,.0f} s, {g('writers')} "
             f"writers, {g('readers')} readers, durability {g('durability')}, seed "
             f"{g('seed')}")
    parts = [f"kill every ~{g('kill_interval', 'g')} s",
             f"checkpoint every ~{g('checkpoint_interval', 'g')} s"]
    for key, what in (("kills", "kills"), ("checkpoints", "checkpoints"),
                      ("acknowledged", "documents acknowledged"), ("lost", "lost"),
                      ("phantoms", "phantoms"), ("duplicates", "duplicates")):
        v = rep.get(key)
        if isinstance(v, (int, float)):
            parts.append(f"{v:,} {what}")
    return line1 + "\n" + ", ".join(parts)


def figure(rep: dict[str, Any]) -> Any:
    """The matplotlib Figure of ``rep`` (InvalidInputError if it has no timeline)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    tl = Timeline.from_report(rep)
    b = bin_timeline(tl, MAX_BINS)
    fig = Figure(figsize=(12, 10), layout="constrained")
    axes = fig.subplots(4, 1, sharex=True, gridspec_kw={"height_ratios": [3, 3, 1.3, 1.8]})
    _throughput(axes[0], tl)
    _lag(axes[1], tl)
    _kills(axes[2], tl, b)
    _checkpoints(axes[3], tl, b)
    for ax in axes:
        ax.yaxis.set_major_formatter(FuncFormatter(_count))
        ax.margins(x=0)
        ax.grid(True, axis="y", lw=0.4, alpha=0.4, zorder=0)
        ax.set_xlim(0, tl.end)
    axes[-1].set_xlabel("seconds since the start of the run")
    fig.suptitle(_title(rep, tl), fontsize=10)
    return fig


def write(path: str, rep: dict[str, Any]) -> None:
    """Draw ``rep`` into the PNG file ``path``."""
    fig = figure(rep)
    fig.savefig(path, dpi=110, format="png")  # the name as given: no ".png" appended
