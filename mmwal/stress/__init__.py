"""``mmwal stress``: prove mmwal's guarantees on your own disk, with kill -9.

Modelled on RocksDB's ``db_crashtest.py`` (an expected-state oracle per
writer) and Qdrant's crasher.  A run starts real processes:

* **writers** calling ``add``/``add_many`` with mixed durability, each keeping
  a journal: "pending" before each call, "acknowledged" after it returned;
* **readers** refreshing an ``mmwal.Reader`` in a loop and checking, after each
  refresh, that every writer's visible records form a prefix of its calls,
  that vectors, contents and metadata equal their seeded values (never
  all-zero) and that seqs only grow;
* a **checkpointer** calling ``Store.checkpoint()`` every few seconds, with a
  small ``max_fragments`` and ``auto_compact``/``keep_checkpoints`` drawn per
  incarnation;
* a **compactor** calling ``Store.compact()`` with random arguments;
* **churners** replacing and removing documents of a small key space (so
  versions carry deletion vectors), checked by readers and at the end: no
  acknowledged upsert lost, no replaced or removed value resurrected;
* the **coordinator**, which SIGKILLs random roles at random moments
  (mid-append, mid-checkpoint, mid-compaction, mid-refresh), restarts them, follows the log
  with ``mmwal.replay`` and finally verifies the store against the journals:
  no acknowledged record lost, no phantom, no duplicate, per-writer order,
  exact values, ``mmwal.verify()`` clean, also after one last checkpoint.

The exit code is 0 when every check passed, 1 when any failed (the store is
then kept and its path printed), 2 for bad options.

``mmwal stress plot REPORT.json [-o PNG]`` redraws the plot of a saved report
(the JSON written by ``--json`` is the source of truth; ``--plot`` draws with
the same code during the run).

Examples
--------
From a shell::

    mmwal stress --quick --json report.json
    mmwal stress --dir /mnt/nvme/tmp --duration 600 --writers 8 --plot run.png
    mmwal stress plot report.json -o report.png

From Python (``python -m mmwal.stress`` is the same command)::

    import argparse, mmwal.stress
    p = argparse.ArgumentParser()
    mmwal.stress.add_arguments(p)
    code = mmwal.stress.run(p.parse_args(["--quick"]))
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Any

from ._scenarios import SCENARIOS, Scenario, register
from ._settings import DURABILITY_CHOICES, INJECT_KINDS, PROFILES, Settings

__all__ = ["SCENARIOS", "Scenario", "add_arguments", "plot_command", "register", "run"]

_PLOT_EPILOG = """\
Draws throughput, reader lag with the checkpoint completions, kills per time
bin by role and checkpoint durations from a report written by
`mmwal stress --json` (the same drawing as --plot during the run).  Exit 2 if
the report is missing or is not a kill-loop report, or matplotlib is missing.

examples:
  mmwal stress plot report.json -o report.png
  mmwal stress plot stress/results/soak.json      # writes stress/results/soak.png"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every ``mmwal stress`` option to ``parser``."""
    q, f = PROFILES["quick"], PROFILES["full"]

    def both(name: str, unit: str = "") -> str:
        return f"default {f[name]}{unit}, {q[name]}{unit} with --quick"

    a = parser.add_argument
    a("--dir", metavar="D", help="where to create the run directory (store, journals); "
      "default: a temporary directory. Point it at the disk you want to test")
    a("--duration", metavar="S", type=float, help=f"seconds of chaos ({both('duration', ' s')})")
    a("--writers", metavar="N", type=int, help=f"writer processes ({both('writers')})")
    a("--readers", metavar="M", type=int, help=f"reader processes ({both('readers')})")
    a("--durability", choices=DURABILITY_CHOICES,
      help="writers' durability; 'mixed' (default) rotates os/fsync/interval per writer "
      "and restart")
    a("--checkpoint-interval", metavar="S", type=float,
      help=f"seconds between checkpoints, 0: no checkpointer ({both('checkpoint_interval')})")
    a("--kill-interval", metavar="S", type=float,
      help=f"mean seconds between SIGKILLs, 0: no kills ({both('kill_interval')})")
    a("--seed", metavar="N", type=int, help="seed of the workload and the killer "
      "(default: random, printed)")
    a("--quick", action="store_true", default=None,
      help="a short run: under a minute on 2 cores, start to verdict")
    a("--json", metavar="REPORT", help="write the full report as JSON to this file")
    a("--plot", metavar="PNG", help="plot throughput, reader lag, kills per time bin and "
      "checkpoint durations (needs matplotlib: pip install 'mmwal[plot]'); "
      "'mmwal stress plot' redraws it later from a --json report")
    a("--scenario", choices=sorted(SCENARIOS), help="what else happens besides kills "
      "(default: 'default', SIGKILL only)")
    a("--keep", action="store_true", default=None,
      help="keep the run directory even when every check passed (it is always kept on "
      "failure)")
    a("--segment-bytes", metavar="N", type=int,
      help="log segment size (Config.segment_bytes); small values roll segments constantly "
      "(default 64 MiB, minimum 4096)")
    a("--batch-size", metavar="N", type=int,
      help=f"largest add_many batch, in documents ({both('batch_size')})")
    a("--many-percent", metavar="P", type=int,
      help="percentage of calls that are add_many (default 30)")
    a("--dim", metavar="N", type=int, help="vector dimension (default 16)")
    a("--max-rate", metavar="R", type=float,
      help=f"calls per second per writer, 0: as fast as possible ({both('max_rate')})")
    a("--quiet", action="store_true", default=None, help="no progress line")
    a("--keep-checkpoints", metavar="N", type=int,
      help="Config.keep_checkpoints of every role (default 2; 1 retires each checkpoint's "
      "files as soon as the next one is published)")
    a("--compact-interval", metavar="S", type=float,
      help=f"seconds between the compactor's Store.compact() calls (random arguments), 0: no "
      f"compactor ({both('compact_interval', ' s')})")
    a("--max-fragments", metavar="N", type=int,
      help="Config.max_fragments of every role (default 4: versions of several fragments "
      "are the normal state)")
    a("--churners", metavar="N", type=int,
      help=f"churner processes: upserts and removes over a small key space, so replaced "
      f"and removed rows (deletion vectors) ({both('churners')})")
    a("--churn-keys", metavar="N", type=int, help="keys per churner (default 256)")
    a("--churn-rate", metavar="R", type=float,
      help=f"ops per second per churner, 0: as fast as possible ({both('churn_rate')})")
    a("--verify-interval", metavar="S", type=float,
      help="reader 0 also runs mmwal.verify() every S seconds and reports any problem as a "
      "violation (default 0: off)")
    # Hidden: plant a violation to prove the checker catches it (tests/test_stress.py).
    a("--inject", choices=INJECT_KINDS, help=argparse.SUPPRESS)
    # An optional sub-command: without it the options above run a test, as always.
    sub = parser.add_subparsers(dest="stress_command", metavar="plot", required=False,
                                title="re-render a saved report (mmwal stress plot --help)")
    pp = sub.add_parser("plot", help="draw the plot of a report written by --json, again",
                        description="Draw the plot of a stress run from its JSON report.",
                        epilog=_PLOT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    pp.add_argument("report", metavar="REPORT.json", help="a report written by "
                    "mmwal stress --json (or kept in a failed run's directory)")
    pp.add_argument("-o", "--output", metavar="PNG", help="the image to write (default: the "
                    "report's path with .png instead of .json)")
    pp.set_defaults(func=plot_command)


def plot_command(args: argparse.Namespace) -> int:
    """``mmwal stress plot REPORT.json [-o PNG]``: redraw a saved report; return the exit code."""
    from ..errors import InvalidInputError
    from ._report import load_report, plot_available, write_plot

    out = args.output or (os.path.splitext(args.report)[0] + ".png")
    try:
        if os.path.abspath(out) == os.path.abspath(args.report):
            raise InvalidInputError(f"the output {out} is the report itself: give -o PNG",
                                    path=out)
        if os.path.isdir(out):
            raise InvalidInputError(f"cannot write {out}: it is a directory; give -o FILE.png",
                                    path=out)
        parent = os.path.dirname(os.path.abspath(out))
        if not os.path.isdir(parent):
            raise InvalidInputError(f"cannot write {out}: no directory {parent}", path=out)
        rep = load_report(args.report)
    except InvalidInputError as exc:
        print(f"mmwal stress plot: {exc}", file=sys.stderr)
        return 2
    if not plot_available():
        print("mmwal stress plot: matplotlib is missing; install it with "
              "pip install 'mmwal[plot]'", file=sys.stderr)
        return 2
    try:
        write_plot(out, rep)
    except InvalidInputError as exc:
        print(f"mmwal stress plot: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"mmwal stress plot: cannot write {out}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


def _run_campaign(settings: Any, root: str, progress: Any) -> dict[str, Any]:
    """Run the power-loss or I/O-error campaign of :mod:`mmwal._faults` in ``root``."""
    import time

    from .. import _faults

    fn = _faults.run_powerloss if settings.scenario == "powerloss" else _faults.run_io_errors
    t0 = time.perf_counter()
    raw = fn(root, quick=bool(settings.quick), seed=int(settings.seed),
             progress=lambda done, total: progress.update(
                 f"{settings.scenario}: {done}/{total}"))
    progress.finish()
    return _faults.stress_report(raw, run_dir=root, run_s=time.perf_counter() - t0)


def run(args: argparse.Namespace) -> int:
    """Run one stress test as ``args`` says; return the exit code (0: every check passed).

    ``args.stress_command == "plot"`` redraws a saved report instead (:func:`plot_command`).
    """
    if getattr(args, "stress_command", None) == "plot":
        return plot_command(args)
    from . import _scenarios
    from ._coordinator import Coordinator
    from ._report import Progress, plot_available, summary, write_json, write_plot

    try:
        settings = Settings.from_namespace(args)
        scenario = _scenarios.get(settings.scenario)
        scenario.configure(settings)
        settings.check()
    except ValueError as exc:
        print(f"mmwal stress: {exc}", file=sys.stderr)
        return 2
    if settings.plot and not plot_available():
        print("mmwal stress: matplotlib is missing: install mmwal[plot] for --plot "
              "(pip install 'mmwal[plot]')", file=sys.stderr)
        return 2
    if settings.dir:
        os.makedirs(settings.dir, exist_ok=True)
    root = os.path.abspath(tempfile.mkdtemp(prefix="mmwal-stress-", dir=settings.dir))
    progress = Progress(quiet=settings.quiet)
    progress.message(
        f"mmwal stress: scenario {settings.scenario}, {settings.duration:g} s, "
        f"{settings.writers} writers, {settings.readers} readers, checkpoint every "
        f"{settings.checkpoint_interval:g} s, kill every ~{settings.kill_interval:g} s, "
        f"durability {settings.durability}, seed {settings.seed}\n  run directory {root}")
    try:
        if getattr(scenario, "campaign", False):
            rep = _run_campaign(settings, root, progress)
        else:
            rep = Coordinator(settings, scenario, root, progress).execute()
    except KeyboardInterrupt:
        progress.finish()
        print(f"mmwal stress: interrupted; run directory kept at {root}", file=sys.stderr)
        return 130
    keep = bool(settings.keep) or not rep["ok"]
    rep["kept"] = keep
    if keep:
        write_json(os.path.join(root, "report.json"), rep)
    if settings.json:
        write_json(settings.json, rep)
    if settings.plot:
        try:
            # Drawn from the report as its JSON reads back, so that `mmwal stress plot`
            # on the saved report draws the very same picture.
            write_plot(settings.plot, json.loads(json.dumps(rep, default=str)))
        except Exception as exc:  # a plot is a nicety: never hide the verdict behind it
            print(f"mmwal stress: could not write the plot: {exc}", file=sys.stderr)
    print(summary(rep))
    if keep:
        print(f"store kept at {os.path.join(root, 'store')}\n  (journals in "
              f"{os.path.join(root, 'journal')}, findings in {os.path.join(root, 'violations')},"
              f" report in {os.path.join(root, 'report.json')})")
    else:
        shutil.rmtree(root, ignore_errors=True)
    sys.stdout.flush()
    return int(rep["exit_code"])
