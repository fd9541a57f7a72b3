"""The stress report on long runs: a plot that stays readable, replotting, the interval table.

A 40-minute run killed 10,802 processes; the first plot drew each kill as its own
vertical line and hid every curve behind them.  These tests render synthetic
reports of that size and count what the figure holds, round-trip the JSON of a
real ``--quick`` run through ``mmwal stress plot``, and re-render the committed
reports of ``stress/results/`` (older reports lack the newer fields).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

import mmwal.stress
from mmwal.cli import build_parser
from mmwal.stress import _report

pytest.importorskip("matplotlib")
from matplotlib.figure import Figure  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = sorted(glob.glob(os.path.join(HERE, "..", "stress", "results", "*.json")))
PNG = b"\x89PNG\r\n\x1a\n"


def synthetic_report(kills: int, points: int, *, run_s: float = 2400.0, checkpoints: int = 40,
                     durations: bool = True, seed: int = 5) -> dict:
    """A report shaped like the kill loop's, with ``kills`` kills and ``points`` samples."""
    rng = random.Random(seed)
    t = np.linspace(0.0, run_s, points)
    docs_per_s = 1700 + 300 * np.sin(t / 97.0)
    docs = np.concatenate([[0.0], np.cumsum(docs_per_s[1:] * np.diff(t))])
    lag = (t % 60.0) * 100 * (1 + t / run_s)
    roles = ["writer-0", "writer-1", "writer-2", "reader-0", "reader-1", "checkpointer"]
    phases = {"writer": "append", "reader": "refresh", "checkpointer": "checkpoint"}
    kill_events = []
    for k in sorted(rng.uniform(0, run_s) for _ in range(kills)):
        role = rng.choices(roles, weights=[2, 2, 2, 1, 1, 1.5])[0]
        kill_events.append([round(k, 3), role, phases[role.split("-")[0]]])
    ckpt_t = sorted(round(rng.uniform(1, run_s), 3) for _ in range(checkpoints))
    events: dict = {"kills": kill_events, "checkpoints": ckpt_t}
    if durations:
        events["checkpoint_seconds"] = [round(0.2 + x / run_s * 30, 3) for x in ckpt_t]
        events["checkpoint_seqs"] = [int(x * 1700) for x in ckpt_t]
    by_role: dict = {}
    for _t, role, _p in kill_events:
        by_role[role.split("-")[0]] = by_role.get(role.split("-")[0], 0) + 1
    return {
        "ok": True, "exit_code": 0, "interrupted": False,
        "scenario": {"name": "default", "help": ""},
        "settings": {"writers": 3, "readers": 2, "durability": "mixed", "seed": seed,
                     "kill_interval": 0.2, "checkpoint_interval": 3.0, "duration": run_s},
        "run_s": run_s, "kills": kills, "kills_by_role": by_role, "checkpoints": checkpoints,
        "acknowledged": int(docs[-1]), "lost": 0, "phantoms": 0, "duplicates": 0,
        "timeline": {"t": [round(float(x), 3) for x in t],
                     "docs": [round(float(x), 3) for x in docs],
                     "ops": [round(float(x) / 3, 3) for x in docs],
                     "docs_per_s": [round(float(x), 3) for x in docs_per_s],
                     "ops_per_s": [round(float(x) / 3, 3) for x in docs_per_s],
                     "lag_max": [round(float(x), 3) for x in lag],
                     "lag_mean": [round(float(x) / 2, 3) for x in lag],
                     "tail_seq": [round(float(x), 3) for x in docs]},
        "events": events,
    }


def render(rep: dict, path, monkeypatch) -> Figure:
    """Plot ``rep`` with the code ``--plot`` and ``mmwal stress plot`` use; return the figure."""
    saved: list[Figure] = []
    real = Figure.savefig

    def keep(self, *args, **kwargs):
        saved.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    _report.write_plot(str(path), rep)
    monkeypatch.undo()
    assert len(saved) == 1 and path.read_bytes()[:8] == PNG
    return saved[0]


def drawn(fig: Figure) -> int:
    """What the axes hold: lines, patches, collections, texts (and their legends' entries)."""
    n = 0
    for ax in fig.axes:
        n += len(ax.lines) + len(ax.patches) + len(ax.collections) + len(ax.texts)
        leg = ax.get_legend()
        if leg is not None:
            n += len(leg.get_texts()) + len(leg.legend_handles)
    return n


def has_curve(fig: Figure, x, y) -> bool:
    x, y = np.asarray(x, float), np.asarray(y, float)
    for ax in fig.axes:
        for line in ax.lines:
            lx = np.asarray(line.get_xdata(), float)
            ly = np.asarray(line.get_ydata(), float)
            if lx.shape == x.shape and np.array_equal(lx, x) and np.array_equal(ly, y):
                return True
    return False


# ============================================================================ the plot
def test_plot_of_a_long_run_stays_bounded_and_draws_its_curves(tmp_path, monkeypatch):
    big = synthetic_report(20_000, 5_000)
    small = synthetic_report(200, 5_000)
    fig_big = render(big, tmp_path / "big.png", monkeypatch)
    fig_small = render(small, tmp_path / "small.png", monkeypatch)
    n_big, n_small = drawn(fig_big), drawn(fig_small)
    # 100 times more kills draw (nearly) nothing more: the kills are counted per bin.
    assert n_big <= n_small + 10, (n_big, n_small)
    assert n_big < 300, n_big
    assert len(fig_big.findobj()) < 3000
    tl = big["timeline"]
    for key in ("docs_per_s", "ops_per_s", "lag_max", "lag_mean"):
        assert has_curve(fig_big, tl["t"], tl[key]), key
    # The curves are drawn above every event mark.
    for ax in fig_big.axes:
        curves = [ln.get_zorder() for ln in ax.lines if len(ln.get_xdata()) == 5_000]
        marks = [c.get_zorder() for c in ax.collections]
        if curves and marks:
            assert min(curves) > max(marks)
    # Checkpoint durations are a series of their own.
    ev = big["events"]
    assert has_curve(fig_big, ev["checkpoints"], ev["checkpoint_seconds"])


def test_kill_track_counts_every_kill_by_role(tmp_path, monkeypatch):
    rep = synthetic_report(20_000, 5_000)
    fig = render(rep, tmp_path / "k.png", monkeypatch)
    # The kill track: one stacked step patch per role, whose bins add up to the kills.
    steps = [p for ax in fig.axes for p in ax.patches if type(p).__name__ == "StepPatch"]
    by_label = {p.get_label().split()[0]: p for p in steps}
    assert set(by_label) == {"writer", "reader", "checkpointer"}
    for role, patch in by_label.items():
        values, _edges, baseline = patch.get_data()
        got = int(round(float(np.sum(values - (0 if baseline is None else baseline)))))
        assert got == rep["kills_by_role"][role], role
    nbins = len(by_label["writer"].get_data()[0])
    assert 20 <= nbins <= 200


def test_old_report_without_checkpoint_durations_still_plots(tmp_path, monkeypatch):
    rep = synthetic_report(3_000, 2_000, durations=False)
    fig = render(rep, tmp_path / "old.png", monkeypatch)
    assert has_curve(fig, rep["timeline"]["t"], rep["timeline"]["docs_per_s"])
    assert any("not recorded" in t.get_text() for ax in fig.axes for t in ax.texts)


@pytest.mark.parametrize("path", RESULTS, ids=[os.path.basename(p) for p in RESULTS])
def test_committed_reports_still_plot(tmp_path, monkeypatch, path):
    with open(path) as f:
        rep = json.load(f)
    fig = render(rep, tmp_path / "r.png", monkeypatch)
    assert has_curve(fig, rep["timeline"]["t"], rep["timeline"]["lag_max"])
    assert drawn(fig) < 300
    lines = _report.interval_lines(rep)
    assert 5 <= len(lines) <= 20


# ============================================================================ the summary
def test_summary_has_a_bounded_interval_table(tmp_path):
    for run_s, points in ((2400.0, 5_000), (14.0, 28), (480.0, 960)):
        rep = synthetic_report(int(run_s * 4), points, run_s=run_s)
        table = _report.interval_lines(rep)
        rows = [ln for ln in table if ln.strip()[:1].isdigit()]
        assert 5 <= len(rows) <= 16, (run_s, len(rows))
        assert "docs/s" in table[1] and "kills" in table[1] and "lag" in table[1]
    # The rows add up: every kill is in one interval.
    rep = synthetic_report(20_000, 5_000)
    rows = [ln.split() for ln in _report.interval_lines(rep) if ln.strip()[:1].isdigit()]
    assert sum(int(r[2].replace(",", "")) for r in rows) == 20_000
    # The summary of a whole report carries the table; a campaign's (no timeline) does not.
    full = dict(rep, acknowledged_ops=1, acknowledged_by_durability={}, throughput={
        "docs_per_s": 1.0, "ops_per_s": 1.0, "peak_docs_per_s": 1.0}, kills_by_phase={},
        final_checkpoint={}, readers={"refreshes": 1, "full_checks": 1, "docs_checked": 1,
                                      "lag_p50": 1, "lag_p99": 1, "lag_max": 1},
        audit={"records": 1, "skipped": 0}, last_seq=1, documents=1, pending_landed=0,
        pending_unacknowledged=0, verify={"ok": True}, violation_counts={}, violations=[])
    text = _report.summary(full)
    assert "per interval" in text and text.count("\n") < 40
    assert "per interval" not in _report.summary(dict(full, timeline={}))


# ============================================================================ the command
def _cli(*args, timeout=120, env=None):
    return subprocess.run([sys.executable, "-m", "mmwal", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_stress_plot_parses_beside_the_run_options():
    ns = build_parser(["stress", "plot", "r.json", "-o", "x.png"]).parse_args(
        ["stress", "plot", "r.json", "-o", "x.png"])
    assert (ns.stress_command, ns.report, ns.output) == ("plot", "r.json", "x.png")
    ns = build_parser(["stress", "--quick"]).parse_args(["stress", "--quick", "--writers", "2"])
    assert ns.stress_command is None and ns.quick is True and ns.writers == 2
    assert ns.func is mmwal.stress.run
    p = argparse.ArgumentParser()
    mmwal.stress.add_arguments(p)  # python -m mmwal.stress: the same two forms
    assert p.parse_args(["plot", "a.json"]).output is None
    assert p.parse_args(["--duration", "5"]).duration == 5
    out = _cli("stress", "--help").stdout
    assert "plot" in out and "--quick" in out
    out = _cli("stress", "plot", "--help").stdout
    assert "REPORT" in out and "-o" in out


def test_stress_plot_refuses_a_missing_or_invalid_report(tmp_path):
    res = _cli("stress", "plot", str(tmp_path / "nope.json"), "-o", str(tmp_path / "x.png"))
    assert res.returncode == 2 and "no such file" in res.stderr and "nope.json" in res.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"ok": true,')
    res = _cli("stress", "plot", str(bad), "-o", str(tmp_path / "x.png"))
    assert res.returncode == 2 and "not valid JSON" in res.stderr and "line 1" in res.stderr
    other = tmp_path / "other.json"
    other.write_text('{"ok": true, "timeline": {"t": [0, 1], "docs_per_s": "x"}}')
    res = _cli("stress", "plot", str(other), "-o", str(tmp_path / "x.png"))
    assert res.returncode == 2 and "timeline" in res.stderr
    campaign = tmp_path / "campaign.json"
    campaign.write_text(json.dumps({"ok": True, "scenario": {"name": "powerloss"},
                                    "timeline": {}, "events": {"kills": [], "checkpoints": []}}))
    res = _cli("stress", "plot", str(campaign), "-o", str(tmp_path / "x.png"))
    assert res.returncode == 2 and "no timeline" in res.stderr and "powerloss" in res.stderr
    assert not (tmp_path / "x.png").exists()
    good = tmp_path / "good.json"
    good.write_text(json.dumps(synthetic_report(10, 20, run_s=10)))
    res = _cli("stress", "plot", str(good), "-o", str(tmp_path))  # a directory
    assert res.returncode == 2 and "is a directory" in res.stderr
    assert not (tmp_path.parent / (tmp_path.name + ".png")).exists()


def test_stress_plot_without_matplotlib_says_how_to_install_it(tmp_path):
    good = tmp_path / "r.json"
    good.write_text(json.dumps(synthetic_report(10, 20, run_s=10)))
    code = ("import sys; sys.modules['matplotlib'] = None\n"
            "from mmwal.cli import main\n"
            f"sys.exit(main(['stress', 'plot', {str(good)!r}, '-o', {str(tmp_path / 'x.png')!r}]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode != 0
    assert "pip install 'mmwal[plot]'" in res.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_stress_plot_round_trips_a_quick_run(tmp_path):
    report, live = tmp_path / "report.json", tmp_path / "live.png"
    res = _cli("stress", "--quick", "--quiet", "--duration", "5", "--dir", str(tmp_path / "runs"),
               "--json", str(report), "--plot", str(live), timeout=280)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    assert "per interval" in res.stdout
    rep = json.loads(report.read_text())
    ev = rep["events"]
    assert len(ev["checkpoint_seconds"]) == len(ev["checkpoints"]) == len(ev["checkpoint_seqs"])
    assert all(s is None or s > 0 for s in ev["checkpoint_seconds"])
    again = tmp_path / "again.png"
    res = _cli("stress", "plot", str(report), "-o", str(again))
    assert res.returncode == 0, res.stderr
    assert str(again) in res.stdout
    # The JSON is the source of truth: the replot is the live plot, byte for byte.
    assert again.read_bytes() == live.read_bytes()
    default = tmp_path / "report.png"  # without -o: next to the report
    res = _cli("stress", "plot", str(report))
    assert res.returncode == 0 and default.read_bytes() == live.read_bytes()
