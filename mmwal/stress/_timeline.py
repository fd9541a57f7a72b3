"""A run's timeline read back from its report, and the same timeline in a few time bins.

The JSON report is the source of truth: the summary's per-interval table, the
live ``--plot`` and ``mmwal stress plot`` all read it through
:meth:`Timeline.from_report`, never the coordinator's memory.  A long run
holds thousands of kills; what a reader can take in is how many fell in each
stretch of time, so everything drawn or printed per event is first counted per
bin (:func:`bin_timeline`), and the number of bins is bounded whatever the
run length.

Reports written before checkpoint durations were recorded (no
``events.checkpoint_seconds``) still load: their durations are unknown (NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError

__all__ = ["ROLE_KINDS", "Bins", "Timeline", "bin_timeline", "nice_width"]

#: The kinds of role the killer picks from, in the order they are drawn and listed.
ROLE_KINDS = ("writer", "reader", "checkpointer", "compactor", "churner")
#: Kinds every kill track shows, even with no kill; the others only when killed.
_ALWAYS_SHOWN = ROLE_KINDS[:3]
#: One letter per kind for the per-interval table ("checkpointer" keeps its "c").
ROLE_LETTERS = {"writer": "w", "reader": "r", "checkpointer": "c", "compactor": "x",
                "churner": "u"}
#: Bin widths in seconds: a reader can add them up in their head.
_NICE = (0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0,
         600.0, 900.0, 1200.0, 1800.0, 3600.0, 7200.0, 10800.0, 21600.0, 43200.0, 86400.0)
#: Timeline columns every kill-loop report has held since the harness's first version.
_COLUMNS = ("t", "docs", "docs_per_s", "ops_per_s", "lag_max", "lag_mean")


def _floats(value: Any, where: str) -> np.ndarray:
    """``value`` as a 1-D float array (``None`` entries: NaN), or InvalidInputError."""
    if not isinstance(value, list):
        raise InvalidInputError(f"{where}: expected a list of numbers, got "
                                f"{type(value).__name__}", where=where)
    try:
        a = np.array([math.nan if v is None else v for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{where}: expected a list of numbers", where=where) from None
    if a.ndim != 1:
        raise InvalidInputError(f"{where}: expected a flat list of numbers", where=where)
    return a


@dataclass
class Timeline:
    """The samples and events of one run, as arrays (times in seconds since the start)."""

    t: np.ndarray
    docs: np.ndarray  # acknowledged documents so far
    docs_per_s: np.ndarray
    ops_per_s: np.ndarray
    lag_max: np.ndarray
    lag_mean: np.ndarray
    end: float  # the run's length (at least the last sample or event)
    kills: dict[str, np.ndarray]  # kind of role -> kill times
    mid_checkpoint_kills: np.ndarray  # kills of the checkpointer while it folded
    checkpoints: np.ndarray  # completion times
    checkpoint_seconds: np.ndarray | None  # durations; None: not recorded (older report)
    settings: dict[str, Any] = field(default_factory=dict)
    #: Fragments of the current version per sample (-1: unreadable); None: not recorded
    #: (a report of a harness before versions).
    fragments: np.ndarray | None = None
    #: Completion times of the compactor's calls (empty: none, or not recorded).
    compactions: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @classmethod
    def from_report(cls, rep: Any, where: str = "the report") -> Timeline:
        """Read ``rep["timeline"]`` and ``rep["events"]``; InvalidInputError if malformed."""
        if not isinstance(rep, dict):
            raise InvalidInputError(f"{where} is not an mmwal stress report (a JSON object), "
                                    f"got {type(rep).__name__}", where=where)
        tl = rep.get("timeline")
        if not isinstance(tl, dict):
            raise InvalidInputError(f"{where} is not an mmwal stress report: it has no "
                                    "'timeline' object (write one with mmwal stress --json)",
                                    where=where)
        if not tl.get("t"):
            name = rep.get("scenario", {}).get("name", "?") if isinstance(
                rep.get("scenario"), dict) else "?"
            raise InvalidInputError(
                f"{where} has no timeline to draw: scenario {name!r} runs no kill loop "
                "(only the kill-loop scenarios sample throughput and reader lag)", where=where)
        cols: dict[str, np.ndarray] = {}
        for key in _COLUMNS:
            if key not in tl:
                raise InvalidInputError(f"{where}: timeline.{key} is missing", where=where)
            cols[key] = _floats(tl[key], f"{where}: timeline.{key}")
            if len(cols[key]) != len(cols["t"]):
                raise InvalidInputError(
                    f"{where}: timeline.{key} has {len(cols[key])} values, timeline.t has "
                    f"{len(cols['t'])}", where=where)
        ev = rep.get("events") or {}
        if not isinstance(ev, dict):
            raise InvalidInputError(f"{where}: events is not an object", where=where)
        kill_list = ev.get("kills") or []
        if not isinstance(kill_list, list):
            raise InvalidInputError(f"{where}: events.kills is not a list", where=where)
        times: dict[str, list[float]] = {k: [] for k in _ALWAYS_SHOWN}
        mid: list[float] = []
        for i, k in enumerate(kill_list):
            # [t, role name ("writer-3", "checkpointer"), phase ("append", "checkpoint"...)]
            if (not isinstance(k, (list, tuple)) or len(k) < 2 or not isinstance(k[0], (int, float))
                    or not isinstance(k[1], str)):
                raise InvalidInputError(f"{where}: events.kills[{i}] is not "
                                        f"[seconds, role, phase]: {k!r}"[:200], where=where)
            kind = k[1].split("-")[0]
            times.setdefault(kind, []).append(float(k[0]))
            if kind == "checkpointer" and len(k) > 2 and k[2] == "checkpoint":
                mid.append(float(k[0]))
        ckpt = _floats(ev.get("checkpoints") or [], f"{where}: events.checkpoints")
        secs: np.ndarray | None = None
        if "checkpoint_seconds" in ev:
            secs = _floats(ev["checkpoint_seconds"], f"{where}: events.checkpoint_seconds")
            if len(secs) != len(ckpt):
                raise InvalidInputError(
                    f"{where}: events.checkpoint_seconds has {len(secs)} values, "
                    f"events.checkpoints has {len(ckpt)}", where=where)
        kills = {k: np.array(v, dtype=np.float64) for k, v in times.items()}
        run_s = rep.get("run_s")
        last = [float(cols["t"].max())]
        last += [float(v.max()) for v in kills.values() if len(v)]
        if len(ckpt):
            last.append(float(ckpt.max()))
        if isinstance(run_s, (int, float)):
            last.append(float(run_s))
        settings = rep.get("settings") if isinstance(rep.get("settings"), dict) else {}
        frags: np.ndarray | None = None
        if "fragments" in tl:
            frags = _floats(tl["fragments"], f"{where}: timeline.fragments")
            if len(frags) != len(cols["t"]):
                raise InvalidInputError(
                    f"{where}: timeline.fragments has {len(frags)} values, timeline.t has "
                    f"{len(cols['t'])}", where=where)
            frags = np.where(frags < 0, np.nan, frags)
        compactions = _floats(ev.get("compactions") or [], f"{where}: events.compactions")
        return cls(t=cols["t"], docs=cols["docs"], docs_per_s=cols["docs_per_s"],
                   ops_per_s=cols["ops_per_s"], lag_max=cols["lag_max"],
                   lag_mean=cols["lag_mean"], end=max(*last, 1e-3), kills=kills,
                   mid_checkpoint_kills=np.array(mid, dtype=np.float64), checkpoints=ckpt,
                   checkpoint_seconds=secs, settings=dict(settings or {}),
                   fragments=frags, compactions=compactions)


@dataclass
class Bins:
    """The timeline counted or summarised per bin: ``edges[i] <= t < edges[i + 1]``."""

    width: float
    edges: np.ndarray  # n + 1 edges; the last bin may be shorter than ``width``
    docs_per_s: np.ndarray  # NaN: no sample covers the bin
    ops_per_s: np.ndarray
    lag_max: np.ndarray  # the largest lag sampled in the bin
    lag_mean: np.ndarray  # the mean of the lag sampled in the bin
    kills: dict[str, np.ndarray]  # kind of role -> kills per bin
    checkpoints: np.ndarray  # checkpoints completed per bin
    checkpoint_max_s: np.ndarray  # the longest of them (NaN: none, or not recorded)
    checkpoint_mean_s: np.ndarray
    fragments_max: np.ndarray | None = None  # fragments per version, max of the samples
    fragments_mean: np.ndarray | None = None
    compactions: np.ndarray | None = None  # compactor calls completed per bin

    @property
    def n(self) -> int:
        return len(self.edges) - 1


def _bin_count(end: float, w: float) -> int:
    """Bins of width ``w`` over ``[0, end]``; a sliver under w/4 at the end joins the last."""
    n = max(1, math.ceil(end / w - 1e-9))
    if n > 1 and end - (n - 1) * w < 0.25 * w:
        n -= 1  # a 90.1 s run has 9 bins of 10 s, not a tenth of 0.1 s
    return n


def nice_width(end: float, max_bins: int) -> float:
    """The smallest round bin width that cuts ``[0, end]`` in at most ``max_bins`` bins."""
    for w in _NICE:
        if _bin_count(end, w) <= max_bins:
            return w
    return _NICE[-1] * math.ceil(end / (_NICE[-1] * max_bins))


def _which(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each time (the last bin includes the end)."""
    return np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2)


def _per_bin(idx: np.ndarray, values: np.ndarray, n: int, how: str) -> np.ndarray:
    out = np.full(n, np.nan)
    ok = ~np.isnan(values)
    idx, values = idx[ok], values[ok]
    if not len(idx):
        return out
    if how == "max":
        np.fmax.at(out, idx, values)
    else:
        sums = np.bincount(idx, weights=values, minlength=n)
        cnt = np.bincount(idx, minlength=n)
        out = np.where(cnt > 0, sums / np.maximum(cnt, 1), np.nan)
    return out


def bin_timeline(tl: Timeline, max_bins: int) -> Bins:
    """Cut the run in at most ``max_bins`` bins of a round width; count and summarise each."""
    w = nice_width(tl.end, max_bins)
    n = _bin_count(tl.end, w)
    edges = np.minimum(np.arange(n + 1, dtype=np.float64) * w, tl.end)
    edges[-1] = tl.end
    # Rates from the cumulative count, between the samples that bound each bin: exact
    # over the bin, whatever the sampling interval.
    lo = np.clip(edges[:-1], tl.t[0], tl.t[-1])
    hi = np.clip(edges[1:], tl.t[0], tl.t[-1])
    span = hi - lo
    ok = span > 1e-9
    docs = np.interp(hi, tl.t, tl.docs) - np.interp(lo, tl.t, tl.docs)
    docs_per_s = np.where(ok, docs / np.where(ok, span, 1.0), np.nan)
    si = _which(tl.t, edges)
    ops_per_s = _per_bin(si, tl.ops_per_s, n, "mean")
    kills = {k: np.bincount(_which(v, edges), minlength=n) if len(v) else np.zeros(n, np.int64)
             for k, v in tl.kills.items()}
    ci = _which(tl.checkpoints, edges)
    ckpts = np.bincount(ci, minlength=n) if len(ci) else np.zeros(n, np.int64)
    secs = tl.checkpoint_seconds if tl.checkpoint_seconds is not None else np.full(
        len(ci), np.nan)
    return Bins(width=w, edges=edges, docs_per_s=docs_per_s, ops_per_s=ops_per_s,
                lag_max=_per_bin(si, tl.lag_max, n, "max"),
                lag_mean=_per_bin(si, tl.lag_mean, n, "mean"), kills=kills, checkpoints=ckpts,
                checkpoint_max_s=_per_bin(ci, secs, n, "max"),
                checkpoint_mean_s=_per_bin(ci, secs, n, "mean"),
                fragments_max=None if tl.fragments is None
                else _per_bin(si, tl.fragments, n, "max"),
                fragments_mean=None if tl.fragments is None
                else _per_bin(si, tl.fragments, n, "mean"),
                compactions=np.bincount(_which(tl.compactions, edges), minlength=n)
                if len(tl.compactions) else np.zeros(n, np.int64))
