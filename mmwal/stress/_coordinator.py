"""The coordinator: starts the roles, kills and restarts them, audits, verifies, reports.

It is the one process the killer never touches, so it also follows the log
(:class:`~mmwal.stress._oracle.LogAuditor`) and samples reader lag from its
own Store (``Store.seq``: the tail of the log, any writer's).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import random
import signal
import sys
import time
import traceback
from collections import Counter
from typing import Any

import numpy as np

import mmwal

from . import _scenarios
from ._journal import JournalReader
from ._oracle import KINDS, ChurnLedger, FinalResult, LogAuditor, final_verification
from ._report import Progress
from ._roles import RoleSpec, RunPaths, role_main, role_name, store_config
from ._settings import Settings
from ._status import (
    AUTO_COMPACT,
    CHECKED,
    CHECKPOINTS,
    CHURN_CHECKED,
    CKPT_MICROS,
    CKPT_SEQ,
    COMPACT_MICROS,
    COMPACT_PUBLISHED,
    COMPACTIONS,
    DOCS,
    FULL_CHECKS,
    INJECTED,
    KEEP,
    LAST_SEQ,
    MERGED,
    OPS,
    PHASE,
    REFRESHES,
    ROWS_COPIED,
    ROWS_DROPPED,
    SNAP_CHECKS,
    STARTS,
    STOP,
    VIOLATIONS,
    Board,
    Phase,
)
from ._workload import churn_doc, churn_id, doc_id

__all__ = ["Coordinator"]

#: Where the killer aims for each kind of role when it waits for a busy moment.
_BUSY = {"writer": (Phase.APPEND,), "reader": (Phase.OPEN, Phase.REFRESH),
         "checkpointer": (Phase.CHECKPOINT,), "compactor": (Phase.COMPACT,),
         "churner": (Phase.APPEND,)}
#: Roles idle most of the time, struck only during their work (phase, duration field).
_AIMED = {"checkpointer": (Phase.CHECKPOINT, CKPT_MICROS),
          "compactor": (Phase.COMPACT, COMPACT_MICROS)}
_MAX_LISTED = 500
_SAMPLE_EVERY = 0.5


class _Role:
    def __init__(self, kind: str, index: int, slot: int) -> None:
        self.kind, self.index, self.slot = kind, index, slot
        self.name = role_name(kind, index)
        self.proc: Any = None
        self.restart_at = 0.0


class _Armed:
    """A kill the killer decided on and is timing."""

    def __init__(self, role: _Role, aimed: bool, deadline: float) -> None:
        self.role, self.aimed, self.deadline = role, aimed, deadline
        self.kill_at: float | None = None


class Coordinator:
    """One stress run in directory ``root`` (see :func:`mmwal.stress.run`)."""

    def __init__(self, settings: Settings, scenario: _scenarios.Scenario, root: str,
                 progress: Progress) -> None:
        self.s = settings
        self.scenario = scenario
        self.paths = RunPaths(root)
        self.progress = progress
        self.rng = random.Random(settings.seed ^ 0xC0FFEE)
        self.violations: list[dict[str, Any]] = []
        self._seen: set[tuple[str, str]] = set()
        self.counts: Counter[str] = Counter()
        self.kills_by_role: Counter[str] = Counter()
        self.kills_by_phase: Counter[str] = Counter()
        self.crashes: Counter[str] = Counter()
        self.restarts = 0
        self.spared = 0  # aimed kills called off (the checkpoint finished first)
        self._ckpts_at_kill = -1  # checkpoints completed when the checkpointer was last killed
        self.kill_events: list[list[Any]] = []  # [seconds, role, phase], as in the JSON
        # Completed checkpoints: when (seconds since the start), how long, up to which seq.
        self.ckpt_events: list[float] = []
        self.ckpt_seconds: list[float | None] = []
        self.ckpt_seqs: list[int | None] = []
        self._ckpts_seen = 0
        self.samples: dict[str, list[float]] = {k: [] for k in (
            "t", "docs", "ops", "docs_per_s", "ops_per_s", "lag_max", "lag_mean", "tail_seq",
            "fragments", "dead_rows", "deletion_vectors", "version")}
        # Completed compactor calls: when, and the fragments the version had after it.
        self.compact_events: list[float] = []
        self.compact_fragments: list[int] = []
        self._compactions_seen = 0
        self.configs: set[str] = set()  # "ROLE keep=K auto_compact=B" seen in incarnations
        self.lags: list[int] = []
        self.injected: dict[str, Any] | None = None
        self.interrupted = False
        if sys.platform.startswith("linux"):
            # fork: a restart costs a fork, not a new interpreter importing numpy.
            self.ctx: Any = multiprocessing.get_context("fork")
        else:  # pragma: no cover - macOS: fork is unsafe with system frameworks
            self.ctx = multiprocessing.get_context("spawn")

    # ------------------------------------------------------------------ findings
    def report(self, kind: str, detail: str, count: int = 1) -> None:
        if (kind, detail) in self._seen:
            return
        self._seen.add((kind, detail))
        self.counts[kind] += 1
        if len(self.violations) < _MAX_LISTED:
            self.violations.append({"kind": kind, "source": "coordinator", "detail": detail,
                                    "count": int(count), "time": time.time()})

    # ------------------------------------------------------------------ roles
    def _spec(self, role: _Role) -> RoleSpec:
        self.board.add(role.slot, STARTS)
        return RoleSpec(kind=role.kind, index=role.index, slot=role.slot,
                        roles=len(self.roles), incarnation=self.board.get(role.slot, STARTS),
                        root=self.paths.root, settings=self.s, parent=os.getpid())

    def _start(self, role: _Role) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.board.set(role.slot, PHASE, Phase.OPEN)
        p = self.ctx.Process(target=role_main, args=(self._spec(role),), name=role.name,
                             daemon=True)
        p.start()
        role.proc = p

    def _kill(self, role: _Role, now: float) -> None:
        p = role.proc
        if p is None or not p.is_alive():
            return
        phase = Phase.NAMES[self.board.get(role.slot, PHASE)]
        p.kill()
        p.join(10)
        self.kills_by_role[role.kind] += 1
        if role.kind == "checkpointer":
            self._ckpts_at_kill = self._checkpoints_done()
        self.kills_by_phase[f"{role.kind}:{phase}"] += 1
        self.kill_events.append([round(now - self.t0, 3), role.name, phase])
        self._start(role)
        self.restarts += 1

    def _reap(self, now: float) -> None:
        """Restart roles that died on their own (a crash is a violation)."""
        for role in self.roles:
            p = role.proc
            if p is None or p.is_alive():
                continue
            if role.restart_at == 0.0:
                code = p.exitcode
                self.crashes[role.kind] += 1
                if code is not None and code < 0:
                    try:
                        sig = signal.Signals(-code).name
                    except ValueError:
                        sig = str(-code)
                    self.report("crash", f"{role.name} died of {sig} without being killed", 1)
                elif code != 3:  # 3: the role logged its own traceback
                    self.report("crash", f"{role.name} exited with code {code}", 1)
                role.restart_at = now + 0.2  # no tight restart loop on a persistent fault
            elif now >= role.restart_at:
                role.restart_at = 0.0
                self._start(role)
                self.restarts += 1

    # ------------------------------------------------------------------ the killer
    def _next_kill_time(self, now: float) -> float:
        return now + self.s.kill_interval * self.rng.uniform(0.3, 1.7)

    def _arm(self, now: float, busy: set[str]) -> _Armed | None:
        """Pick the next victim among roles not already armed (``busy``)."""
        free = [r for r in self.roles if r.name not in busy]
        kinds = sorted({r.kind for r in free if self.s.kill_weights.get(r.kind, 0.0) > 0})
        if "checkpointer" in kinds and self._ckpts_at_kill == self._checkpoints_done():
            # No checkpoint finished since the checkpointer was last killed: let one
            # finish, or the log would never be folded (and checkpoints get slower).
            kinds.remove("checkpointer")
        if not kinds:
            return None
        kind = self.rng.choices(kinds, weights=[self.s.kill_weights[k] for k in kinds])[0]
        role = self.rng.choice([r for r in free if r.kind == kind])
        if kind == "checkpointer":
            # Always aimed: a checkpointer is idle most of the time.
            return _Armed(role, True, now + self.s.checkpoint_interval * 1.6 + 1.0)
        if kind == "compactor":
            return _Armed(role, True, now + self.s.compact_interval * 1.6 + 1.0)
        # 70 % wait (up to 2 s) for the busy phase, 30 % strike at once.
        return _Armed(role, self.rng.random() < 0.7, now + 2.0)

    def _tick_checkpointer(self, armed: _Armed, now: float) -> bool:
        """Mid-checkpoint: once one starts, strike up to twice the last one's duration later.

        About half the checkpoints finish first and the kill is called off: a
        store whose checkpoints are all killed would never fold its log.  The
        compactor is struck the same way, mid-compaction.
        """
        role = armed.role
        busy, micros = _AIMED[role.kind]
        phase = self.board.get(role.slot, PHASE)
        if armed.kill_at is None:
            if phase == busy:
                est = max(0.05, self.board.get(role.slot, micros) / 1e6)
                armed.kill_at = now + self.rng.uniform(0.0, 2 * est)
                return False
            if now >= armed.deadline:
                self.spared += 1  # no checkpoint started in time
                return True
            return False
        if phase != busy:
            self.spared += 1
            return True
        if now >= armed.kill_at:
            self._kill(role, now)
            return True
        return False

    def _tick_killer(self, armed: list[_Armed], now: float) -> list[_Armed]:
        """Advance the armed kills; return those still waiting."""
        waiting: list[_Armed] = []
        spin: list[_Armed] = []
        for a in armed:
            role = a.role
            if role.proc is None or not role.proc.is_alive():
                continue  # died meanwhile; _reap handles it
            if role.kind in _AIMED:
                if not self._tick_checkpointer(a, now):
                    waiting.append(a)
            elif not a.aimed or now >= a.deadline:
                self._kill(role, now)
            else:
                spin.append(a)
        # Writers and readers: watch their phase closely for a moment, strike when busy.
        end = time.monotonic() + 0.02
        while spin and time.monotonic() < end:
            for a in spin:
                if self.board.get(a.role.slot, PHASE) in _BUSY[a.role.kind]:
                    self._kill(a.role, now)
                    spin.remove(a)
                    break
        return waiting + spin

    # ------------------------------------------------------------------ sampling
    def _sample(self, now: float) -> None:
        w = [r.slot for r in self.roles if r.kind == "writer"]
        rd = [r for r in self.roles if r.kind == "reader"]
        docs = int(self.board.column(DOCS)[w].sum())
        ops = int(self.board.column(OPS)[w].sum())
        seqs = [self.board.get(r.slot, LAST_SEQ) for r in rd
                if r.proc is not None and r.proc.is_alive()
                and self.board.get(r.slot, REFRESHES) > 0]
        tail = self.st.seq
        lags = [max(0, tail - s) for s in seqs]
        self.lags.extend(lags)
        sm = self.samples
        t = now - self.t0
        if sm["t"]:
            dt = max(1e-6, t - sm["t"][-1])
            sm["docs_per_s"].append((docs - sm["docs"][-1]) / dt)
            sm["ops_per_s"].append((ops - sm["ops"][-1]) / dt)
        else:
            sm["docs_per_s"].append(docs / max(1e-6, t))
            sm["ops_per_s"].append(ops / max(1e-6, t))
        sm["t"].append(round(t, 3))
        sm["docs"].append(docs)
        sm["ops"].append(ops)
        sm["lag_max"].append(max(lags) if lags else 0)
        sm["lag_mean"].append(sum(lags) / len(lags) if lags else 0)
        sm["tail_seq"].append(tail)
        frags, dead, dvs, vid = self._version_now()
        sm["fragments"].append(frags)
        sm["dead_rows"].append(dead)
        sm["deletion_vectors"].append(dvs)
        sm["version"].append(vid)
        for r in self.roles:
            if r.kind in _AIMED and self.board.get(r.slot, KEEP) > 0:
                self.configs.add(f"{r.kind} keep={self.board.get(r.slot, KEEP)} auto_compact="
                                 f"{bool(self.board.get(r.slot, AUTO_COMPACT))}")

    def _version_now(self) -> tuple[int, int, int, int]:
        """(fragments, dead rows, deletion vectors, version id) of the current version.

        Read from the MANIFEST and the version file it names, as a Reader opens
        them (``Reader.stats()`` reports one entry for the whole version); a
        version retired between the two reads is read again.
        """
        from .._fsutil import Paths
        from .._store import open_manifest
        from .._version import read_version

        paths = Paths(self.paths.store)
        for _ in range(5):
            try:
                v = read_version(paths, open_manifest(paths))
            except (mmwal.MmwalError, OSError):
                continue
            return (len(v.entries), sum(e.dead for e in v.entries),
                    sum(1 for e in v.entries if e.dv), v.id)
        return (-1, -1, -1, -1)

    def _watch_checkpoints(self, now: float) -> None:
        """Record each checkpoint completed since the last look (every loop turn).

        The board keeps only the last checkpoint's duration and seq; looking every
        few milliseconds sees each one (a checkpoint takes longer than that).  Two
        completed between looks: the earlier one's duration is unknown (None).
        """
        ck = self._checkpoints_done()
        if ck <= self._ckpts_seen:
            return
        slot = next(r.slot for r in self.roles if r.kind == "checkpointer")
        t = round(now - self.t0, 3)
        for i in range(ck - self._ckpts_seen):
            last = i == ck - self._ckpts_seen - 1
            self.ckpt_events.append(t)
            self.ckpt_seconds.append(
                round(self.board.get(slot, CKPT_MICROS) / 1e6, 4) if last else None)
            self.ckpt_seqs.append(self.board.get(slot, CKPT_SEQ) if last else None)
        self._ckpts_seen = ck

    def _watch_compactions(self, now: float) -> None:
        """Record each compactor call completed since the last look."""
        done = self._board_sum(COMPACTIONS, "compactor")
        if done <= self._compactions_seen:
            return
        frags = self._version_now()[0]
        t = round(now - self.t0, 3)
        for _ in range(done - self._compactions_seen):
            self.compact_events.append(t)
            self.compact_fragments.append(frags)
        self._compactions_seen = done

    def _board_sum(self, field: int, *kinds: str) -> int:
        return sum(self.board.get(r.slot, field) for r in self.roles if r.kind in kinds)

    def _checkpoints_done(self) -> int:
        return sum(self.board.get(r.slot, CHECKPOINTS) for r in self.roles
                   if r.kind == "checkpointer")

    def _progress_line(self, now: float) -> str:
        sm = self.samples
        rate = sm["docs_per_s"][-1] if sm["docs_per_s"] else 0.0
        calls = sm["ops_per_s"][-1] if sm["ops_per_s"] else 0.0
        docs = sm["docs"][-1] if sm["docs"] else 0
        lag = sm["lag_max"][-1] if sm["lag_max"] else 0
        viol = sum(self.counts.values()) + int(self.board.column(VIOLATIONS).sum())
        frags = int(sm["fragments"][-1]) if sm["fragments"] else 0
        return (f"[{now - self.t0:5.1f}/{self.s.duration:.0f}s] {rate:7,.0f} docs/s "
                f"{calls:6,.0f} calls/s | acked "
                f"{docs:,} | kills {sum(self.kills_by_role.values())} | checkpoints "
                f"{self._checkpoints_done()} | compactions "
                f"{self._board_sum(COMPACT_PUBLISHED, 'compactor', 'checkpointer')} | "
                f"fragments {frags} | reader lag {lag:,.0f} | audited "
                f"{self.auditor.last:,} | violations {viol}")

    def _inject_drop(self, now: float) -> None:
        """``--inject drop-ack``: delete an acknowledged document behind the oracle's back."""
        h = self.journals[0].poll()
        for k in range(h.attempted - 1, -1, -1):
            if h.ack[k] >= 0:
                key = doc_id(0, k, 0)
                seq = self.st.remove(key)
                self.board.set_global(INJECTED, 1)
                self.injected = {"kind": "drop-ack", "id": key, "op": k,
                                 "acknowledged_seq": int(h.ack[k]), "remove_seq": seq,
                                 "at": round(now - self.t0, 3)}
                return

    def _inject_resurrect(self, now: float) -> None:
        """``--inject resurrect``: once every role stopped, write back an old churn value.

        The value of an earlier upsert of a key whose later op (a replace or a
        remove) was acknowledged: what a lost deletion vector or a compaction
        copying a dead row would show.  The final check must call it resurrected.
        """
        for lg in self.ledgers:
            lg.journal.poll()
            lg.note_acked()
            first: dict[int, int] = {}
            for k in range(len(lg.key)):
                key = lg.key[k]
                if not lg.remove[k] and key not in first:
                    first[key] = k
                a = lg.last_acked[key]
                u = first.get(key, -1)
                if 0 <= u < a:
                    vec, content, meta = churn_doc(self.s.seed, lg.c, u, key, self.s.dim)
                    seq = self.st.add(churn_id(lg.c, key), vec, content, meta)
                    self.board.set_global(INJECTED, 1)
                    self.injected = {"kind": "resurrect", "id": churn_id(lg.c, key), "op": u,
                                     "superseded_by": a, "seq": seq,
                                     "at": round(now - self.t0, 3)}
                    return

    # ------------------------------------------------------------------ the run
    def execute(self) -> dict[str, Any]:
        s = self.s
        p = self.paths
        os.makedirs(p.journals, exist_ok=True)
        os.makedirs(p.violations, exist_ok=True)
        self.roles: list[_Role] = [_Role("writer", i, i) for i in range(s.writers)]
        self.roles += [_Role("reader", i, s.writers + i) for i in range(s.readers)]
        if s.checkpoint_interval > 0:
            self.roles.append(_Role("checkpointer", 0, len(self.roles)))
        if s.compact_interval > 0:
            self.roles.append(_Role("compactor", 0, len(self.roles)))
        self.roles += [_Role("churner", c, len(self.roles) + c) for c in range(s.churners)]
        self.board = Board(p.board, len(self.roles), create=True)
        self.journals = [JournalReader(p.journal(w)) for w in range(s.writers)]
        self.ledgers = [ChurnLedger(s.seed, s.dim, c, s.churn_keys,
                                    JournalReader(p.churn_journal(c)))
                        for c in range(s.churners)]
        self.st = mmwal.Store(p.store, dim=s.dim, durability="os", config=store_config(s))
        self.auditor = LogAuditor(p.store, s.seed, s.dim, self.journals, self.report)
        old_int = signal.getsignal(signal.SIGINT)

        def on_int(_sig: int, _frame: Any) -> None:
            if self.interrupted:
                raise KeyboardInterrupt  # a second Ctrl-C: stop verifying too
            self.interrupted = True

        signal.signal(signal.SIGINT, on_int)
        started = time.time()
        final = FinalResult()
        run_s = verify_s = 0.0
        try:
            self.t0 = time.monotonic()
            for role in self.roles:
                self._start(role)
            self._loop()
            run_s = time.monotonic() - self.t0
            self.progress.finish()
            self._stop()
            if s.checkpoint_interval > 0:
                # One may have completed while the roles stopped: the report counts it.
                self._watch_checkpoints(time.monotonic())
            self._watch_compactions(time.monotonic())
            if s.inject == "resurrect":
                self._inject_resurrect(time.monotonic())
            self.progress.message(f"stopped all roles after {run_s:.1f} s; verifying "
                                  f"{self.st.seq:,} records ...")
            self.st.close()
            t1 = time.monotonic()
            try:
                self.scenario.before_verify(p.store, s)
                final = final_verification(
                    p.store, s.seed, s.dim, self.journals, self.auditor, self.report,
                    self.scenario.must_survive, churn=self.ledgers)
            except Exception as exc:
                self.report("crash", f"final verification raised {type(exc).__name__}: {exc}\n"
                            f"{traceback.format_exc(limit=8)}", 1)
            verify_s = time.monotonic() - t1
        finally:
            signal.signal(signal.SIGINT, old_int)
            self._stop()
            self.st.close()
        return self._build_report(final, started, run_s, verify_s)

    def _loop(self) -> None:
        s = self.s
        end = self.t0 + s.duration
        next_kill = self._next_kill_time(self.t0) if s.kill_interval > 0 else float("inf")
        armed: list[_Armed] = []
        next_sample = self.t0
        inject_at = self.t0 + 0.3 * s.duration if s.inject == "drop-ack" else float("inf")
        while not self.interrupted:
            now = time.monotonic()
            if now >= end:
                break
            self._reap(now)
            if now >= next_kill:
                a = self._arm(now, {x.role.name for x in armed})
                if a is not None:
                    armed.append(a)
                next_kill = self._next_kill_time(now)  # waiting for a moment is not a pause
            if armed:
                armed = self._tick_killer(armed, now)
            if s.checkpoint_interval > 0:
                self._watch_checkpoints(time.monotonic())
            if s.compact_interval > 0:
                self._watch_compactions(time.monotonic())
            if now >= inject_at and self.injected is None:
                self._inject_drop(now)
            if now >= next_sample:
                next_sample = now + _SAMPLE_EVERY
                self.auditor.step(0.08)
                self._sample(now)
                self.progress.update(self._progress_line(now))
            else:
                self.auditor.step(0.03)
            time.sleep(0.005 if armed else 0.02)

    def _stop(self) -> None:
        if not hasattr(self, "board"):
            return
        self.board.set_global(STOP, 1)
        deadline = time.monotonic() + 5.0
        for role in self.roles:
            if role.proc is not None:
                role.proc.join(max(0.0, deadline - time.monotonic()))
        for role in self.roles:
            if role.proc is not None and role.proc.is_alive():
                role.proc.kill()
                role.proc.join(10)
            role.proc = None

    # ------------------------------------------------------------------ the report
    def _notes(self, rep: dict[str, Any]) -> list[str]:
        """Not violations: conditions that made some checks thin, said plainly."""
        s = self.s
        notes = []
        run_s = max(rep["run_s"], 1e-9)
        if s.readers and rep["readers"]["refreshes"] < 5 * s.readers * max(1.0, run_s / 20):
            notes.append(
                f"readers made little progress ({rep['readers']['refreshes']} refreshes in "
                f"{run_s:.0f} s, lag up to {rep['readers']['lag_max']:,.0f} records): opening "
                "a Reader replays the log tail since the last checkpoint, and restarted readers "
                "spent their time there; their checks were thin (the final verification is not)")
        if s.checkpoint_interval and rep["checkpoints"] < run_s / (8 * s.checkpoint_interval):
            notes.append(
                f"checkpoints fell behind: {rep['checkpoints']} completed in {run_s:.0f} s, "
                f"one asked every ~{s.checkpoint_interval:g} s; the last one folded "
                f"{rep['final_checkpoint'].get('documents', 0):,} documents in "
                f"{rep['final_checkpoint'].get('seconds', 0)} s")
        if rep["audit"]["skipped"] > rep["last_seq"] / 2:
            notes.append(f"the log auditor read {rep['audit']['records']:,} of "
                         f"{rep['last_seq']:,} records before checkpoints retired them; the "
                         "final accounting covered the rest")
        return notes

    def _role_violations(self) -> tuple[list[dict[str, Any]], Counter[str]]:
        out: list[dict[str, Any]] = []
        counts: Counter[str] = Counter()
        try:
            names = sorted(os.listdir(self.paths.violations))
        except FileNotFoundError:
            names = []
        for name in names:
            with open(os.path.join(self.paths.violations, name), encoding="utf-8") as f:
                for line in f:
                    try:
                        v = json.loads(line)
                    except ValueError:
                        continue  # a line cut by a kill mid-write: not a finding
                    counts[v.get("kind", "?")] += 1
                    out.append(v)
        # Findings beyond what each role writes out in full are only counted.
        logged = sum(counts.values())
        total = int(self.board.column(VIOLATIONS).sum())
        if total > logged:
            counts["unlisted"] += total - logged
        return out, counts

    def _compaction_report(self) -> dict[str, Any]:
        """What the compactor and the checkpoints' automatic compactions did, and the
        fragments per version over the run (sampled every half second)."""
        frags = [int(x) for x in self.samples["fragments"] if x >= 0]
        dvs = [int(x) for x in self.samples["deletion_vectors"] if x >= 0]
        versions = {int(x) for x in self.samples["version"] if x > 0}
        return {
            "compactor_calls": self._board_sum(COMPACTIONS, "compactor"),
            "compactor_published": self._board_sum(COMPACT_PUBLISHED, "compactor"),
            "auto_compactions": self._board_sum(COMPACT_PUBLISHED, "checkpointer"),
            "fragments_merged": self._board_sum(MERGED, "compactor", "checkpointer"),
            "rows_copied": self._board_sum(ROWS_COPIED, "compactor"),
            "rows_dropped": self._board_sum(ROWS_DROPPED, "compactor"),
            "fragments_max": max(frags, default=0),
            "fragments_mean": round(sum(frags) / len(frags), 2) if frags else 0.0,
            "samples_with_fragments": {str(n): frags.count(n) for n in sorted(set(frags))},
            "deletion_vectors_max": max(dvs, default=0),
            "samples_with_deletion_vectors": sum(1 for x in dvs if x),
            "versions_seen": len(versions),
            "configs": sorted(self.configs),
        }

    def _build_report(self, final: FinalResult, started: float, run_s: float,
                      verify_s: float) -> dict[str, Any]:
        s = self.s
        if final.acknowledged == 0 and not self.interrupted:
            self.report("crash", "no write was acknowledged during the whole run", 1)
        role_v, role_counts = self._role_violations()
        counts = Counter(self.counts)
        counts.update(role_counts)
        violations = (self.violations + role_v)[:_MAX_LISTED]
        for v in violations:
            v.pop("time", None)
        rd = [r for r in self.roles if r.kind == "reader"]
        lags = np.array(self.lags, dtype=np.float64) if self.lags else np.zeros(1)
        sm = self.samples
        peak = 0.0
        for i in range(2, len(sm["t"])):  # one-second windows smooth out sampling jitter
            dt = sm["t"][i] - sm["t"][i - 2]
            if dt > 0:
                peak = max(peak, (sm["docs"][i] - sm["docs"][i - 2]) / dt)
        wslots = [r.slot for r in self.roles if r.kind == "writer"]
        ok = not counts and not self.interrupted
        rep: dict[str, Any] = {
            "ok": ok,
            "exit_code": 0 if ok else (130 if self.interrupted and not counts else 1),
            "scenario": self.scenario.describe(),
            "settings": s.as_dict(),
            "mmwal_version": mmwal.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "run_dir": self.paths.root,
            "store": self.paths.store,
            "kept": False,
            "interrupted": self.interrupted,
            "run_s": round(run_s, 3),
            "verify_s": round(verify_s, 3),
            "acknowledged": final.acknowledged,
            "acknowledged_ops": final.acknowledged_ops,
            "acknowledged_by_durability": final.acknowledged_by_durability,
            "pending_unacknowledged": final.pending_ops,
            "pending_landed": final.pending_present,
            "lost": final.lost,
            "phantoms": final.phantoms,
            "duplicates": final.duplicates,
            "documents": final.documents,
            "last_seq": final.last_seq,
            "kills": sum(self.kills_by_role.values()),
            "kills_by_role": dict(self.kills_by_role),
            "kills_by_phase": dict(self.kills_by_phase),
            "crashes": dict(self.crashes),
            "restarts": self.restarts,
            "kills_called_off": self.spared,
            "checkpoints": self._checkpoints_done(),
            "final_checkpoint": final.final_checkpoint,
            "throughput": {
                "docs_per_s": round(final.acknowledged / run_s, 1) if run_s else 0.0,
                "ops_per_s": round(final.acknowledged_ops / run_s, 1) if run_s else 0.0,
                "peak_docs_per_s": round(peak, 1),
                "docs_by_writer": [int(x) for x in self.board.column(DOCS)[wslots]],
            },
            "readers": {
                "refreshes": sum(self.board.get(r.slot, REFRESHES) for r in rd),
                "full_checks": sum(self.board.get(r.slot, FULL_CHECKS) for r in rd),
                "docs_checked": sum(self.board.get(r.slot, CHECKED) for r in rd),
                "lag_p50": float(np.percentile(lags, 50)),
                "lag_p99": float(np.percentile(lags, 99)),
                "lag_max": float(lags.max()),
                "lag_mean": round(float(lags.mean()), 1),
            },
            "audit": {"records": final.audited, "skipped": final.audit_skipped,
                      "gaps": self.auditor.gaps, "churn_records": self.auditor.churn_records},
            "compaction": self._compaction_report(),
            "churn": {"churners": s.churners, "keys": s.churn_keys * s.churners,
                      "ops": final.churn.ops, "acknowledged": final.churn.acknowledged,
                      "removes_acknowledged": final.churn.removes_acknowledged,
                      "interrupted": final.churn.pending,
                      "keys_present": final.churn.keys_present,
                      "lost": final.churn.lost, "resurrected": final.churn.resurrected,
                      "keys_checked_by_readers": sum(self.board.get(r.slot, CHURN_CHECKED)
                                                     for r in rd),
                      "old_snapshots_checked": sum(self.board.get(r.slot, SNAP_CHECKS)
                                                   for r in rd)},
            "verify": {"ok": final.verify_ok, "problems": final.verify_problems,
                       "notes": final.verify_notes[:20]},
            "injected": None,
            "violation_counts": dict(sorted(counts.items())),
            "violation_kinds": {k: KINDS.get(k, "") for k in sorted(counts)},
            "violations": violations,
            "timeline": {k: [round(float(x), 3) for x in v] for k, v in sm.items()},
            # Kills: [seconds, role, phase].  Checkpoints: completion times, with their
            # durations and seqs in parallel lists (absent from reports of older harnesses).
            "events": {"kills": self.kill_events, "checkpoints": self.ckpt_events,
                       "checkpoint_seconds": self.ckpt_seconds,
                       "checkpoint_seqs": self.ckpt_seqs,
                       "compactions": self.compact_events,
                       "compaction_fragments": self.compact_fragments},
        }
        rep["notes"] = self._notes(rep)
        if s.inject in ("drop-ack", "resurrect"):
            rep["injected"] = dict(self.injected or {"kind": s.inject}, done=bool(self.injected))
        elif s.inject:
            rep["injected"] = {"kind": s.inject, "done": bool(self.board.get_global(INJECTED))}
        return rep
